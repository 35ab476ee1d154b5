"""Prompt lookup decoding: draft a chain by copying what followed the last n-gram earlier in the context.

Saxena, "Prompt Lookup Decoding" (2023), https://github.com/apoorvumang/prompt-lookup-decoding ;
the same idea as transformers' `PromptLookupCandidateGenerator`. Lossless (drafts are verified; no draft
distribution, so the point-mass rejection rule keeps sampling exact).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import Method, Proposal
from ..params import param


@dataclass
class PromptLookupParams:
    max_ngram: int = param(3, "longest suffix n-gram to look up", lo=1, hi=8)
    min_ngram: int = param(1, "shortest suffix n-gram to look up", lo=1, hi=8)
    draft_len: int = param(10, "tokens copied after the match", lo=1, hi=64)


def find_continuation(seq: list[int], max_ngram: int, min_ngram: int, length: int) -> tuple[list[int], int, int]:
    """Tokens that followed the most recent earlier occurrence of the longest matching suffix n-gram.
    Returns (tokens, n, match_start); ([], 0, -1) when nothing matches."""
    arr = np.asarray(seq, dtype=np.int64)
    n_seq = len(arr)
    for n in range(min(max_ngram, n_seq - 1), min_ngram - 1, -1):
        # windows starting at 0 .. n_seq - n - 1, so each match has at least one token after it
        windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
        hits = np.flatnonzero((windows == arr[n_seq - n:]).all(axis=1))
        if len(hits):
            start = int(hits[-1])  # the most recent match
            return [int(t) for t in arr[start + n:start + n + length]], n, start
    return [], 0, -1


class PromptLookup(Method):
    name = "prompt_lookup"
    title = "Prompt lookup (n-gram copy)"
    paper = "Saxena 2023, Prompt Lookup Decoding (github.com/apoorvumang/prompt-lookup-decoding)"
    lossless = True
    Params = PromptLookupParams

    def propose(self, seq, sampling, generator):
        p = self.params
        if p.min_ngram > p.max_ngram:
            raise ValueError("min_ngram must not exceed max_ngram")
        cont, n, start = find_continuation(seq, p.max_ngram, p.min_ngram, p.draft_len)
        return Proposal(tokens=cont, parents=list(range(-1, len(cont) - 1)),
                        state={"ngram": n, "match_at": start} if cont else {"ngram": 0})

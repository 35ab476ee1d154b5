"""Prompt lookup decoding: draft a chain by copying what followed the last n-gram earlier in the context.

Saxena, "Prompt Lookup Decoding" (2023), https://github.com/apoorvumang/prompt-lookup-decoding ;
the same idea as transformers' `PromptLookupCandidateGenerator`. Lossless (drafts are verified; no draft
distribution, so the point-mass rejection rule keeps sampling exact).

`match=first` (the default) takes the EARLIEST occurrence of the longest matching suffix n-gram, as the
reference and transformers do: with `max_ngram=2, min_ngram=1, draft_len=10` its drafts are transformers'
`prompt_lookup_num_tokens=10` candidates token for token (a test compares them). `match=last` (the variant,
labkit's earlier default) takes the most recent occurrence, which follows the text being written now.
Departure: the reference copies only when a full `draft_len` continuation exists; here (as in transformers) a
shorter one is copied too.

With `sizing=auto` (off by default: the original method copies `draft_len` tokens) the draft length is chosen every round by `labkit.sizing.ChainSizer`: the length
(0 .. draft_len) that maximises expected tokens per second given this device's measured latency curve and the
per-depth acceptance observed so far. When copying stops paying it drafts nothing (plain decoding) but keeps
looking the continuation up, and learns from whether its first token was the one the target produced.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import sizing
from ..engine import Method, Proposal, Verified
from ..params import param


@dataclass
class PromptLookupParams:
    max_ngram: int = param(3, "longest suffix n-gram to look up", lo=1, hi=8)
    min_ngram: int = param(1, "shortest suffix n-gram to look up", lo=1, hi=8)
    draft_len: int = param(10, "tokens copied after the match (with sizing=auto: the most it may copy)", lo=1, hi=64)
    sizing: str = param("off", "auto: draft length from the measured latency curve and the observed acceptance "
                               "(down to no draft); off: always up to draft_len (the original method)",
                        choices=("auto", "off"))
    match: str = param("first", "which earlier occurrence of the suffix n-gram to copy from: first (the reference's "
                                "and transformers') or last (the most recent)", choices=("first", "last"))


def find_continuation(seq: list[int], max_ngram: int, min_ngram: int, length: int,
                      match: str = "last") -> tuple[list[int], int, int]:
    """Tokens that followed the earliest (`match="first"`) or most recent (`"last"`) earlier occurrence of the
    longest matching suffix n-gram. Returns (tokens, n, match_start); ([], 0, -1) when nothing matches."""
    arr = np.asarray(seq, dtype=np.int64)
    n_seq = len(arr)
    for n in range(min(max_ngram, n_seq - 1), min_ngram - 1, -1):
        # windows starting at 0 .. n_seq - n - 1, so each match has at least one token after it
        windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)
        hits = np.flatnonzero((windows == arr[n_seq - n:]).all(axis=1))
        if len(hits):
            start = int(hits[0] if match == "first" else hits[-1])
            return [int(t) for t in arr[start + n:start + n + length]], n, start
    return [], 0, -1


# A prompt whose answer repeats the context: where copying drafts shine (prompt lookup, copy drafts)
COPY_EXAMPLE = ('Here is a note: "The library opens at nine on weekdays and at ten on Saturdays. It is closed on '
                'Sundays and public holidays. Books can be borrowed for three weeks." Repeat the note word for word, '
                'then answer: when does the library open on Saturdays?')


class PromptLookup(Method):
    name = "prompt_lookup"
    title = "Prompt lookup (n-gram copy)"
    paper = "Saxena 2023, Prompt Lookup Decoding (github.com/apoorvumang/prompt-lookup-decoding)"
    lossless = True
    Params = PromptLookupParams
    example = COPY_EXAMPLE
    variants = ({"match": "last"},)

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        self.sizer = sizing.ChainSizer(lm, self.params.draft_len) if self.params.sizing == "auto" else None
        self._shadow: int | None = None
        self._t_propose = 0.0

    def reset(self) -> None:
        if self.sizer is not None:
            self.sizer.reset()

    def propose(self, seq, sampling, generator):
        p = self.params
        if p.min_ngram > p.max_ngram:
            raise ValueError("min_ngram must not exceed max_ngram")
        t0 = self.sizer.clock() if self.sizer is not None else 0.0
        length = self.sizer.length() if self.sizer is not None else p.draft_len
        cont, n, start = find_continuation(seq, p.max_ngram, p.min_ngram, max(length, 1), p.match)
        state = {"ngram": n, "match_at": start} if cont else {"ngram": 0}
        self._shadow = None
        if self.sizer is not None:
            state["sizing"] = self.sizer.state()
            if length == 0:  # not drafting this round; remember the would-be first token to learn from it
                self._shadow = cont[0] if cont else None
                cont = []
        self._t_propose = (self.sizer.clock() - t0) if self.sizer is not None else 0.0
        return Proposal(tokens=cont, parents=list(range(-1, len(cont) - 1)), state=state)

    def observe(self, v: Verified) -> dict:
        if self.sizer is None:
            return {}
        t0 = self.sizer.clock()
        if v.proposal.tokens:
            self.sizer.observe(len(v.proposal.tokens), len(v.path))
        elif self._shadow is not None:
            self.sizer.acceptance.update_first(self._shadow == v.bonus)
        if v.proposal.tokens:
            self.sizer.overhead.add(self._t_propose + self.sizer.clock() - t0)
        return {}

"""Copy drafts: propose the continuation of the longest earlier span that matches the current suffix.

Dumitru et al., "CopySpec: Accelerating LLMs with Speculative Copy-and-Paste Without Compromising Quality"
(2025, arXiv:2502.08923); in the line of aggressive decoding (Ge et al., "Lossless Acceleration for Seq2seq
Generation with Aggressive Decoding", 2022, arXiv:2205.10350). Lossless: the copied chain is verified by
the target; it has no draft distribution (point masses), so the default rule keeps sampling exact.

Two modes.

`mode=reference` follows the paper's code (`speculative_copying.py`, RazvanDu/SpeculativeCopying): every
gamma-gram of the context (prompt and generated text; gamma = 5) is hashed into a table of its start
positions; when the last gamma tokens are in the table, the FIRST occurrence is taken (if it has a token after
it) and a fixed `copy_len` = 10 tokens after it are copied. Otherwise the round is plain decoding (the
reference then runs its optional draft model, which labkit's copy mode does not have).

`mode=labkit` (the default) is labkit's own design, measured beside the reference in docs/zoo_sources.md (it
commits more tokens per target forward there, 1.16 against 1.04, at about the same speed), and differs from prompt lookup (which takes one occurrence of a suffix n-gram of at most `max_ngram` tokens and
copies a fixed number of tokens):

- every `min_match`-gram of the context (prompt and generated text) is hashed into an index as it appears
  (CopySpec's rolling hash table), so a lookup costs one dictionary probe per round;
- among the earlier occurrences of the last `min_match` tokens, the match is extended backwards token by
  token and the LONGEST one wins (ties: the most recent), so the copy source is the span that agrees with
  the most context;
- the copy length adapts: a fully accepted copy doubles the next one (up to `max_len`); a partly rejected
  copy sets it to what was accepted plus one. A long verbatim repeat is thus copied in few rounds, while free
  text wastes few verify positions.
Approximation: CopySpec copies inside a standard draft-model pipeline; here the copy is the only draft source.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine import Method, Proposal, Verified
from ..params import param
from .prompt_lookup import COPY_EXAMPLE


@dataclass
class CopySpecParams:
    mode: str = param("labkit", "labkit: longest match, most recent on ties, adaptive copy length; reference: the "
                                "paper's code (first occurrence of the last `gamma` tokens, a fixed `copy_len`)",
                      choices=("labkit", "reference"))
    gamma: int = param(5, "reference mode: the suffix length hashed and matched", lo=1, hi=16)
    copy_len: int = param(10, "reference mode: tokens copied after the match", lo=1, hi=128)
    min_match: int = param(1, "labkit mode: shortest suffix match that is copied (3-5 copies less often but "
                              "more surely)", lo=1, hi=16)
    init_len: int = param(6, "labkit mode: tokens copied in the first round of a generation", lo=1, hi=64)
    max_len: int = param(16, "labkit mode: longest copy (a GPU verifies 32-64 tokens at the cost of one; raise it "
                             "there)", lo=1, hi=128)
    max_candidates: int = param(32, "labkit mode: most recent occurrences examined per lookup", lo=1, hi=1024)
    max_extend: int = param(256, "labkit mode: how far back a match is extended when ranking occurrences",
                            lo=1, hi=4096)


class SpanIndex:
    """Positions of every k-gram of a growing token list, for longest-suffix-match lookups."""

    def __init__(self, k: int):
        self.k = k
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}  # k-gram -> end positions (inclusive), oldest first

    def sync(self, seq: list[int]) -> None:
        """Index the tokens of `seq` not seen yet (re-index from scratch if `seq` is not an extension)."""
        n_old = len(self.tokens)
        if len(seq) < n_old or (n_old and seq[n_old - 1] != self.tokens[-1]):
            self.tokens, self.ends, n_old = [], {}, 0
        self.tokens.extend(seq[n_old:])
        k = self.k
        for end in range(max(n_old, k - 1), len(self.tokens)):
            self.ends.setdefault(tuple(self.tokens[end - k + 1:end + 1]), []).append(end)

    def longest_match(self, max_candidates: int, max_extend: int) -> tuple[int, int]:
        """(end, length): the earlier span ending at `end` that matches the longest suffix of the tokens
        (at least k long, at most max_extend), ties to the most recent; (-1, 0) if none. Only spans with
        at least one token after them count."""
        toks = self.tokens
        n = len(toks)
        if n <= self.k:
            return -1, 0
        cands = [e for e in self.ends.get(tuple(toks[n - self.k:]), ()) if e < n - 1][-max_candidates:]
        best_end, best_len = -1, 0
        for e in reversed(cands):  # most recent first, so a tie keeps the most recent
            length = self.k
            while length < max_extend and e - length >= 0 and toks[e - length] == toks[n - 1 - length]:
                length += 1
            if length > best_len:
                best_end, best_len = e, length
        return best_end, best_len

    def first_match(self) -> int:
        """The end of the FIRST occurrence of the last k tokens, if a token follows it; -1 otherwise (the
        reference looks at the first occurrence only)."""
        n = len(self.tokens)
        if n < self.k:
            return -1
        ends = self.ends.get(tuple(self.tokens[n - self.k:]), ())
        return ends[0] if ends and ends[0] < n - 1 else -1


class CopySpec(Method):
    name = "copy_spec"
    title = "Copy drafts (CopySpec / aggressive decoding)"
    paper = ("Dumitru et al. 2025, CopySpec: Accelerating LLMs with Speculative Copy-and-Paste (arXiv:2502.08923); "
             "Ge et al. 2022, Lossless Acceleration for Seq2seq Generation with Aggressive Decoding (arXiv:2205.10350)")
    lossless = True
    Params = CopySpecParams
    example = COPY_EXAMPLE
    variants = ({"mode": "reference"},)

    def __init__(self, lm, params=None):
        super().__init__(lm, params)
        self.reset()

    @property
    def reference(self) -> bool:
        return self.params.mode == "reference"

    def reset(self) -> None:
        self.index = SpanIndex(self.params.gamma if self.reference else self.params.min_match)
        self.length = self.params.copy_len if self.reference else self.params.init_len

    def start(self, prompt, sampling) -> None:
        self.reset()

    def propose(self, seq, sampling, generator) -> Proposal:
        p = self.params
        self.index.sync(seq)
        if self.reference:
            end, match = self.index.first_match(), p.gamma
        else:
            end, match = self.index.longest_match(p.max_candidates, p.max_extend)
        if end < 0:
            return Proposal(state={"match_len": 0, "copy_len": self.length})
        cont = self.index.tokens[end + 1:end + 1 + self.length]
        return Proposal(tokens=cont, parents=list(range(-1, len(cont) - 1)),
                        state={"match_len": match, "match_end": end, "copy_len": self.length, "copied": len(cont)})

    def observe(self, v: Verified) -> dict:
        n = len(v.proposal.tokens)
        if n == 0 or self.reference:  # the reference copies a fixed length
            return {}
        p = self.params
        before = self.length
        if len(v.path) == n:
            self.length = min(p.max_len, max(self.length, n) * 2)
        else:
            self.length = min(p.max_len, len(v.path) + 1)
        return {"next_copy_len": self.length, "copy_len_change": self.length - before}

    def describe(self) -> str:
        p = self.params
        if self.reference:
            return f"CopySpec (the paper's code): first occurrence of the last {p.gamma} tokens, copy {p.copy_len}"
        return (f"Copy drafts (labkit's variant): longest earlier match (>= {p.min_match} tokens), adaptive copy of "
                f"up to {p.max_len}")

"""TokenSelect: per-head query-key criticality, a soft vote across heads, and a selection cache.

Wu et al. 2024, "TokenSelect: Efficient Long-Context Inference and Length Extrapolation for LLMs via Dynamic
Token-Level KV Cache Selection" (arXiv:2411.02886, EMNLP 2025). At each layer every head scores the committed
tokens by q.k, the scores are softmax-normalized per head and summed (each head casts a soft vote), and the
top-k tokens, plus a few initial and local tokens, are the ones attended. Consecutive queries are similar, so
a layer reuses its last selection while the cosine similarity of the current query to the one that made it
stays above a threshold (the Selection Cache).

Here: the selection is per query row (a speculative verify pass selects for each row) unless the cache hits,
which is judged on the round's root query and then serves every row. Not modelled: the paged dot-product
kernel, length extrapolation. Nothing is evicted: "KV kept" counts the entries a layer reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...params import ParamError, param
from .base import Policy
from .streaming import streaming_keep


def soft_vote(logits_past: torch.Tensor) -> torch.Tensor:
    """[H, q, past] scaled q.k -> [q, past]: per-head softmax, summed over heads."""
    return torch.softmax(logits_past.float(), -1).sum(0)


def vote_keep(votes: torch.Tensor, k: int, sinks: int, local: int) -> torch.Tensor:
    """votes [q, past] -> bool [1, q, past]: the initial and local tokens, plus the top-k others by vote."""
    q, past = votes.shape
    fixed = streaming_keep(past, sinks, local, votes.device)
    k = min(k, int((~fixed).sum()))
    keep = fixed.expand(q, past).clone()
    if k > 0:
        idx = torch.topk(votes.masked_fill(fixed, float("-inf")), k, dim=-1).indices
        keep.scatter_(-1, idx, True)
    return keep[None]


@dataclass
class TokenSelectParams:
    budget: int = param(256, "committed KV entries each layer reads: initial + local + top-k", lo=1, hi=1 << 20)
    sinks: int = param(4, "initial tokens always read", lo=0, hi=1024)
    local: int = param(32, "most recent tokens always read", lo=0, hi=1 << 16)
    threshold: float = param(0.9, "selection-cache reuse when cos(query, cached query) >= threshold (> 1: never)",
                             lo=-1.0, hi=2.0)


class TokenSelect(Policy):
    name = "token_select"
    title = "TokenSelect (per-head soft vote, selection cache)"
    paper = ("Wu et al. 2024, TokenSelect: Efficient Long-Context Inference and Length Extrapolation for LLMs via "
             "Dynamic Token-Level KV Cache Selection (arXiv:2411.02886)")
    granularity = "layer"
    Params = TokenSelectParams

    def __init__(self, params=None):
        super().__init__(params)
        p = self.params
        if p.sinks + p.local >= p.budget:
            raise ParamError(f"token_select: sinks + local ({p.sinks + p.local}) must be below the budget ({p.budget})")
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (unit query, keep [past_then])
        self._hits = self._misses = 0

    def reset(self):
        self.cache.clear()
        self._hits = self._misses = 0

    def select(self, call):
        p = self.params
        if call.layer == 0:
            self._hits = self._misses = 0
        if call.past <= p.budget:
            return None
        q0 = call.query[:, 0].reshape(-1).float()
        q0 = q0 / q0.norm().clamp_min(1e-12)
        cached = self.cache.get(call.layer)
        if cached is not None and float(q0 @ cached[0]) >= p.threshold:
            self._hits += 1
            keep = torch.zeros(call.past, dtype=torch.bool, device=call.device)
            keep[:cached[1].shape[0]] = cached[1]
            keep |= streaming_keep(call.past, p.sinks, p.local, call.device)
            return keep[None, None]
        self._misses += 1
        votes = soft_vote(call.logits()[:, :, :call.past])
        keep = vote_keep(votes, p.budget - p.sinks - p.local, p.sinks, p.local)
        self.cache[call.layer] = (q0, keep[0, 0])
        return keep

    def step_state(self):
        return {"cache_hits": self._hits, "cache_misses": self._misses}

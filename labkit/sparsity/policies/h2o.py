"""H2O and A2SF: accumulated attention scores, a fixed budget, eviction of the lightest entries.

H2O: Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"
(NeurIPS 2023). Each KV entry accumulates the attention it receives; the cache keeps a recent window plus
the "heavy hitters" with the largest accumulated scores, evicting the lightest one whenever it overflows.

A2SF: Jo & Shin 2024, "A2SF: Accumulative Attention Scoring with Forgetting Factor for Token Pruning in
Transformer Decoder" (arXiv:2407.20485). The plain sum favours old tokens (they were attended by more
queries); A2SF multiplies the running score by a forgetting factor alpha < 1 at every query:
score_k = sum_q alpha^(n-q) * attn[q, k]. alpha = 1 is H2O.

Here: scores accumulate over the prefill (all prompt queries) and every committed decode query, from the
attention the query actually paid (after earlier evictions). Selection is per KV head (the scores of the
query heads sharing a KV head are summed), so "KV kept" is real memory under GQA. Eviction is permanent.
A speculative round commits several queries at once; their rows are folded in order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...params import param
from .base import Policy


def accumulate(scores: torch.Tensor, attn: torch.Tensor, forget: float) -> torch.Tensor:
    """scores [G, n_old] + the attention of r committed query rows attn [G, r, n] (n >= n_old, rows in order)
    -> [G, n]: score = forget * score + row, for each row."""
    g, r, n = attn.shape
    s = torch.zeros(g, n, dtype=torch.float32, device=attn.device)
    s[:, :scores.shape[1]] = scores
    w = forget ** torch.arange(r - 1, -1, -1, dtype=torch.float32, device=attn.device)  # forget^(r-1-j)
    return (forget ** r) * s + torch.einsum("grn,r->gn", attn.float(), w)


def evict(scores: torch.Tensor, kept: torch.Tensor, budget: int, recent: int) -> torch.Tensor:
    """Evict, per row, the lowest-scoring kept entries outside the last `recent` positions until at most
    `budget` remain. scores [G, n], kept bool [G, n] -> new kept (a copy)."""
    kept = kept.clone()
    n = kept.shape[1]
    protected = torch.zeros(n, dtype=torch.bool, device=kept.device)
    if recent > 0:
        protected[max(n - recent, 0):] = True
    for g in range(kept.shape[0]):
        extra = int(kept[g].sum()) - budget
        if extra <= 0:
            continue
        cand = kept[g] & ~protected
        s = scores[g].masked_fill(~cand, float("inf"))
        idx = torch.topk(s, min(extra, int(cand.sum())), largest=False).indices
        kept[g, idx] = False
    return kept


@dataclass
class H2OParams:
    budget: int = param(256, "committed KV entries kept per KV head (heavy hitters + recent window)", lo=1, hi=1 << 20)
    recent_ratio: float = param(0.5, "share of the budget reserved for the most recent tokens", lo=0.0, hi=1.0)
    forget: float = param(1.0, "forgetting factor alpha of the accumulated score (1 = H2O, < 1 = A2SF)", lo=0.0, hi=1.0)


@dataclass
class A2SFParams(H2OParams):
    forget: float = param(0.9, "forgetting factor alpha of the accumulated score (1 = H2O, < 1 = A2SF)", lo=0.0, hi=1.0)


class H2O(Policy):
    name = "h2o"
    title = "H2O (heavy hitters + recent window, accumulated attention)"
    paper = "Zhang et al. 2023, H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs (NeurIPS)"
    granularity = "kv_head"
    Params = H2OParams

    def __init__(self, params=None):
        super().__init__(params)
        self.scores: dict[int, torch.Tensor] = {}  # layer -> [Hkv, n] accumulated score per committed entry
        self.kept: dict[int, torch.Tensor] = {}  # layer -> bool [Hkv, n]
        self.pending: dict[int, torch.Tensor] = {}  # layer -> [Hkv, q, kv] attention of the last forward's rows
        self._evicted = 0

    @property
    def recent(self) -> int:
        return int(round(self.params.budget * self.params.recent_ratio))

    def reset(self):
        self.scores.clear()
        self.kept.clear()
        self.pending.clear()
        self._evicted = 0

    def _by_kv_head(self, call, p: torch.Tensor) -> torch.Tensor:
        return p.reshape(call.n_kv_heads, call.groups, *p.shape[1:]).sum(1)

    def observe(self, call, sel):
        f = self.params.forget
        if call.past == 0:  # prefill: every prompt query is committed; fold them in now, in chunks
            w = f ** torch.arange(call.q_len - 1, -1, -1, dtype=torch.float32, device=call.device)
            self.scores[call.layer] = self._by_kv_head(call, call.column_mass(w))
            self.kept[call.layer] = torch.ones(call.n_kv_heads, call.kv_len, dtype=torch.bool, device=call.device)
        else:
            self.pending[call.layer] = self._by_kv_head(call, call.probs(sel))

    def commit(self, rows, past):
        for layer, p in self.pending.items():
            prev_past = p.shape[-1] - p.shape[1]
            if prev_past + len(rows) != past:
                raise RuntimeError(f"h2o: {len(rows)} committed rows after {prev_past} entries != {past}")
            cols = torch.cat([torch.arange(prev_past), prev_past + torch.tensor(rows, dtype=torch.long)]).to(p.device)
            attn = p[:, rows][:, :, cols]
            self.scores[layer] = accumulate(self.scores[layer], attn, self.params.forget)
            new = torch.ones(p.shape[0], len(rows), dtype=torch.bool, device=p.device)
            self.kept[layer] = torch.cat([self.kept[layer], new], 1)
        self.pending.clear()
        self._evicted = 0

    def select(self, call):
        kept = self.kept.get(call.layer)
        if kept is None or kept.shape[1] != call.past:
            raise RuntimeError(f"h2o: layer {call.layer} has state for "
                               f"{None if kept is None else kept.shape[1]} entries, the cache has {call.past}")
        if int(kept.sum(-1).max()) > self.params.budget:
            before = int(kept.sum())
            kept = evict(self.scores[call.layer], kept, self.params.budget, self.recent)
            self.kept[call.layer] = kept
            self._evicted += before - int(kept.sum())
        if bool(kept.all()):
            return None
        return kept[:, None, :]

    def step_state(self):
        return {"evicted": self._evicted}


class A2SF(H2O):
    name = "a2sf"
    title = "A2SF (H2O with a forgetting factor)"
    paper = ("Jo & Shin 2024, A2SF: Accumulative Attention Scoring with Forgetting Factor for Token Pruning "
             "(arXiv:2407.20485)")
    Params = A2SFParams

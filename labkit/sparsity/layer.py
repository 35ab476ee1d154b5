"""What a policy sees of one attention layer in one forward pass, and the selection it answers with.

Shapes (batch 1): query [H, q, D], key [Hkv, kv, D] (GQA keys arrive unrepeated: query head h reads KV head
h // (H / Hkv)). The last q of the kv entries are this forward's own tokens; the first `past = kv - q` are the
committed context. A policy selects among the committed entries only: a query always sees this forward's own
tokens as far as the incoming mask allows (causal for chains, ancestors only for trees).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """A policy's answer for one layer.

    keep: bool [G, qs, past], G in {1, Hkv, H} (shared by all heads, per KV head, per query head), qs in {1, q}
    (shared by all query rows, or per row). Optionally one extra KV entry appended after the real ones (RazorAttention's
    compensation token): extra_key/extra_value [Hkv, 1, D] and extra_heads bool [H] (the query heads that read it).
    extra_count: how many entries the extra one stands for; its attention score gains log(extra_count), so it
    weighs as that many copies of itself would (1: an ordinary entry).
    """

    keep: torch.Tensor
    extra_key: torch.Tensor | None = None
    extra_value: torch.Tensor | None = None
    extra_heads: torch.Tensor | None = None
    extra_count: float = 1.0

    @property
    def extra_bias(self) -> float:
        """What the extra entry's score gains: log(extra_count)."""
        return math.log(self.extra_count)


def expand_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[G, ...] -> [H, ...] for G in {1, Hkv, H} (GQA order: query head h belongs to group h // (H / G))."""
    g = t.shape[0]
    if g == n_heads:
        return t
    if n_heads % g:
        raise ValueError(f"cannot spread {g} selection groups over {n_heads} heads")
    return t.repeat_interleave(n_heads // g, dim=0)


class LayerCall:
    """One layer's attention inputs, with the scores computed on demand (and memoized)."""

    def __init__(self, layer: int, query: torch.Tensor | None, key: torch.Tensor | None, mask: torch.Tensor | None,
                 scaling: float | None, past: int, *, value: torch.Tensor | None = None,
                 logits: torch.Tensor | None = None, n_kv_heads: int | None = None):
        self.layer = layer
        self.query, self.key, self.value, self.mask = query, key, value, mask
        self._logits = logits.float() if logits is not None else None
        if logits is not None:
            self.n_heads, self.q_len, self.kv_len = logits.shape
            self.n_kv_heads = n_kv_heads or (key.shape[0] if key is not None else self.n_heads)
        else:
            self.n_heads, self.q_len, _ = query.shape
            self.n_kv_heads, self.kv_len, _ = key.shape
        self.scaling = scaling if scaling is not None else (query.shape[-1] ** -0.5 if query is not None else 1.0)
        self.past = past
        self.groups = self.n_heads // self.n_kv_heads
        self._probs: dict = {}
        self._all: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor, past: int, *, layer: int = 0, n_kv_heads: int | None = None,
                    query: torch.Tensor | None = None) -> "LayerCall":
        """For tests: hand-made scores [H, q, kv] (-inf where a query may not look)."""
        return cls(layer, query, None, None, None, past, logits=logits, n_kv_heads=n_kv_heads)

    @property
    def device(self):
        return self._logits.device if self._logits is not None else self.query.device

    def allowed(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Bool [Hm, r, kv] (Hm in {1, H}): what the incoming mask lets each query row see."""
        if self.mask is None:  # causal: build only the rows asked for (a long prefill asks in chunks)
            r = torch.arange(self.q_len, device=self.device) if rows is None else rows.to(self.device)
            k = torch.arange(self.kv_len, device=self.device)
            return (k[None, :] <= (self.past + r)[:, None])[None]
        m = self.mask[0] if rows is None else self.mask[0][:, rows]
        return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2

    def logits(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float32 [H, r, kv]: scaled q.k with -inf where the incoming mask forbids (rows: subset of query rows)."""
        if self._logits is not None:
            return self._logits if rows is None else self._logits[:, rows]
        if rows is None:  # the whole forward's scores are shared by the policy and the recorder
            if self._all is None:
                self._all = self._scores(None)
            return self._all
        return self._scores(rows)

    def _scores(self, rows: torch.Tensor | None) -> torch.Tensor:
        q = self.query if rows is None else self.query[:, rows]
        r, d = q.shape[1], q.shape[2]
        # GQA without repeating the keys: [Hkv, groups, r, D] @ [Hkv, 1, D, kv]
        q = q.float().reshape(self.n_kv_heads, self.groups, r, d)
        s = torch.matmul(q, self.key.float()[:, None].transpose(-1, -2))
        s = s.reshape(self.n_heads, r, self.kv_len) * self.scaling
        return s.masked_fill_(~self.allowed(rows), float("-inf"))

    def probs(self, sel: Selection | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float32 [H, r, kv]: the attention weights under the selection (dense when sel is None); with a
        compensation entry the rows sum to 1 minus the weight it took."""
        key = (id(sel), None if rows is None else tuple(rows.tolist()))
        if key in self._probs:
            return self._probs[key]
        s = self.logits(rows)
        if sel is not None:
            s = s.masked_fill(~self.keep_full(sel, rows), float("-inf"))
            if sel.extra_key is not None:
                q = self.query if rows is None else self.query[:, rows]
                ek = expand_heads(sel.extra_key, self.n_heads).float()  # [H, 1, D]
                extra = torch.matmul(q.float(), ek.transpose(-1, -2)) * self.scaling + sel.extra_bias  # [H, r, 1]
                extra = extra.masked_fill(~sel.extra_heads[:, None, None], float("-inf"))
                p = torch.softmax(torch.cat([s, extra], -1), -1)[..., :-1]
                self._probs[key] = p
                return p
        p = torch.softmax(s, -1)
        if rows is None:  # memoize whole-forward results only (row subsets are cheap)
            self._probs[key] = p
        return p

    def keep_full(self, sel: Selection, rows: torch.Tensor | None = None) -> torch.Tensor:
        """bool [H, r, kv]: the selection over committed entries, this forward's own entries always kept."""
        keep = expand_heads(sel.keep, self.n_heads)
        if keep.shape[1] != 1 and rows is not None:
            keep = keep[:, rows]
        r = self.q_len if rows is None else len(rows)
        keep = keep.expand(self.n_heads, r, self.past)
        own = torch.ones(self.n_heads, r, self.kv_len - self.past, dtype=torch.bool, device=keep.device)
        return torch.cat([keep, own], -1)

    def column_mass(self, weights: torch.Tensor, chunk_bytes: int = 4 << 20) -> torch.Tensor:
        """float32 [H, kv]: sum over all query rows r of weights[r] * dense attention row r, computed in chunks of
        rows (about `chunk_bytes` of scores each) so that a long prefill never materializes the whole
        [H, q, kv] attention matrix."""
        chunk = max(1, chunk_bytes // (4 * self.n_heads * self.kv_len))
        out = torch.zeros(self.n_heads, self.kv_len, device=self.device)
        for a in range(0, self.q_len, chunk):
            rows = torch.arange(a, min(a + chunk, self.q_len), device=self.device)
            p = torch.softmax(self.logits(rows), -1)
            out += torch.einsum("hrk,r->hk", p, weights[rows].to(p))
        return out

"""TidalDecode: a few token-selection layers with full attention; the layers in between reuse their top-k.

Yang et al. 2024, "TidalDecode: Fast and Accurate LLM Decoding with Position Persistent Sparse Attention"
(arXiv:2410.05076). The first layers run full attention; a token-selection layer (layer 2 in the paper)
runs full attention and picks the `budget` positions with the highest attention; every following layer
attends only to those positions, until a re-selection layer (a middle layer: 13 of Llama-3-8B's 32) picks
a fresh set for the rest of the stack. Selection is made per query row (each row of a speculative verify pass
selects for itself) and, with `per_head=True` (the default, the reference's), per head: each head keeps the
positions IT attended to most in the selection layer. `per_head=False` (labkit's earlier variant) shares one
selection across a layer's heads (attention summed over heads).

Not modelled: the paper's periodic KV-cache correction (re-filling sparsely decoded tokens' KV with full
attention) and its kernels. Nothing is evicted: "KV kept" counts the entries a layer reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...params import ParamError, param
from .base import Policy


def top_positions(probs_past: torch.Tensor, k: int, per_head: bool = False) -> torch.Tensor:
    """probs_past [H, q, past] -> bool [H, q, past] (per head) or [1, q, past] (attention summed over heads): per
    query row, the k positions with the largest attention."""
    score = probs_past if per_head else probs_past.sum(0, keepdim=True)
    k = min(k, score.shape[-1])
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(score, k, dim=-1).indices, True)
    return keep


def selection_layers(spec: str, n_layers: int) -> list[int]:
    """'auto' -> [2, round(13/32 * L)] (the paper's Llama-3-8B choice scaled), clipped to the model; or '2,13'."""
    if spec.strip() == "auto":
        layers = {min(2, n_layers - 1), min(round(n_layers * 13 / 32), n_layers - 1)}
    else:
        try:
            layers = {int(x) for x in spec.split(",") if x.strip()}
        except ValueError:
            raise ParamError(f"tidal_decode: select_layers={spec!r}: expected 'auto' or comma-separated "
                             "layer indices") from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ParamError(f"tidal_decode: selection layers {sorted(layers)} must lie in 0..{n_layers - 1}")
    return sorted(layers)


@dataclass
class TidalParams:
    budget: int = param(256, "positions the sparse layers read (top-k chosen by the selection layers)",
                        lo=1, hi=1 << 20)
    select_layers: str = param("auto", "token-selection layers (full attention + top-k): 'auto' = 2 and ~13/32 of "
                                       "the depth, or comma-separated indices; layers before the first are dense")
    per_head: bool = param(True, "each head keeps its own top positions (the reference's); off: one selection "
                                 "shared by the layer's heads (attention summed over heads)")


class TidalDecode(Policy):
    name = "tidal_decode"
    title = "TidalDecode (position-persistent sparse attention)"
    paper = ("Yang et al. 2024, TidalDecode: Fast and Accurate LLM Decoding with Position Persistent Sparse "
             "Attention (arXiv:2410.05076)")
    granularity = "head"  # per_head=True (default); "layer" with per_head=False
    Params = TidalParams

    def __init__(self, params=None):
        super().__init__(params)
        self.layers: list[int] = []
        self._current: torch.Tensor | None = None

    def start(self, lm):
        self.layers = selection_layers(self.params.select_layers, lm.config.num_hidden_layers)

    def reset(self):
        self._current = None

    def select(self, call):
        if call.past <= self.params.budget or call.layer < self.layers[0]:
            return None
        if call.layer in self.layers:
            p = call.probs(None)[:, :, :call.past]
            self._current = top_positions(p, self.params.budget, self.params.per_head)
            return None  # a selection layer attends fully
        return self._current

    def step_state(self):
        return {"select_layers": list(self.layers)}

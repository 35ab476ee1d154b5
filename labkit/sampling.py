"""Sampling settings and the logits -> probabilities transform shared by draft and target.

The same `SamplingConfig` is applied to the draft's and the target's logits (temperature, then top-k,
then top-p, then min-p, then locally typical filtering -- the order of transformers' logits warpers), so
speculative sampling preserves exactly the distribution `model.generate` would sample from with those
settings. `temperature == 0` means greedy.

- min-p (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs",
  arXiv:2407.01082): drop tokens whose probability is below `min_p` times the top token's probability.
- locally typical sampling (Meister et al. 2023, "Locally Typical Sampling", TACL, arXiv:2202.00666): keep
  the tokens whose surprisal is closest to the entropy, up to `typical_p` of the probability mass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    min_p: float = 0.0  # 0 = off
    typical_p: float = 1.0  # 1 = off

    def __post_init__(self):
        if not (self.temperature >= 0 and self.temperature <= 100):
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (0 <= self.min_p < 1):
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if not (0 < self.typical_p <= 1):
            raise ValueError(f"typical_p must be in (0, 1], got {self.typical_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        if self.greedy:
            return "greedy"
        parts = [f"T={self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k={self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p={self.top_p:g}")
        if self.min_p > 0:
            parts.append(f"min-p={self.min_p:g}")
        if self.typical_p < 1:
            parts.append(f"typical-p={self.typical_p:g}")
        return "sampling " + ", ".join(parts) + f", seed={self.seed}"


GREEDY = SamplingConfig()


def probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Probabilities [..., V] in float32. Greedy returns the plain softmax (temperature 1), used for display."""
    x = logits.float()
    if cfg.greedy:
        return torch.softmax(x, dim=-1)
    x = x / cfg.temperature
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = torch.topk(x, cfg.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=False)
        cum = torch.softmax(sorted_x, dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - cfg.top_p)
        remove_sorted[..., -1] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, idx, remove_sorted)
        x = x.masked_fill(remove, float("-inf"))
    if cfg.min_p > 0:
        x = _min_p(x, cfg.min_p)
    if cfg.typical_p < 1.0:
        x = _typical(x, cfg.typical_p)
    return torch.softmax(x, dim=-1)


def _min_p(x: torch.Tensor, min_p: float) -> torch.Tensor:
    """Mask tokens with probability < min_p * (top probability); the top token always stays."""
    p = torch.softmax(x, dim=-1)
    remove = p < min_p * p.amax(dim=-1, keepdim=True)
    remove.scatter_(-1, p.argmax(dim=-1, keepdim=True), False)
    return x.masked_fill(remove, float("-inf"))


def _typical(x: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical filtering, as transformers' TypicalLogitsWarper (min_tokens_to_keep=1): sort tokens by
    |surprisal - entropy|, keep the smallest set whose probability reaches `mass` (ties at the cut kept)."""
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    entropy = -(logp * p).nansum(-1, keepdim=True)
    shifted = (-logp - entropy).abs()
    sorted_shift, idx = torch.sort(shifted, dim=-1, descending=False)
    cum = x.gather(-1, idx).softmax(dim=-1).cumsum(dim=-1)
    last = (cum < mass).sum(dim=-1, keepdim=True).clamp(max=x.shape[-1] - 1)
    remove_sorted = sorted_shift > sorted_shift.gather(-1, last)
    remove_sorted[..., :1] = False
    remove = remove_sorted.scatter(-1, idx, remove_sorted)
    return x.masked_fill(remove, float("-inf"))


def generate_kwargs(cfg: SamplingConfig) -> dict:
    """Arguments for `model.generate` that sample from the same distribution."""
    if cfg.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k or None,
            "top_p": cfg.top_p, "min_p": cfg.min_p or None, "typical_p": cfg.typical_p}

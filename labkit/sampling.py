"""Sampling settings and the logits -> probabilities transform shared by draft and target.

The same `SamplingConfig` is applied to the draft's and the target's logits (temperature, then top-k,
then top-p), so speculative sampling preserves exactly the distribution `model.generate` would sample from
with those settings. `temperature == 0` means greedy.
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

    def __post_init__(self):
        if not (self.temperature >= 0 and self.temperature <= 100):
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

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
    return torch.softmax(x, dim=-1)


def generate_kwargs(cfg: SamplingConfig) -> dict:
    """Arguments for `model.generate` that sample from the same distribution."""
    if cfg.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k or None,
            "top_p": cfg.top_p}

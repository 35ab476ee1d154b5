"""StreamingLLM: attention sinks + a recent window.

Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks" (arXiv:2309.17453, ICLR 2024).
Every head keeps the first `sinks` tokens (which soak up attention mass whatever their content) and the most
recent `budget - sinks` tokens; everything in between is evicted for good.

Approximation: the paper re-numbers positions inside the rolling cache (so a model can stream past its
trained length); here positions keep their original values, as the evaluation stays within the context.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...params import ParamError, param
from .base import Policy


def streaming_keep(past: int, sinks: int, window: int, device=None) -> torch.Tensor:
    """Bool [past]: the first `sinks` entries and the last `window` entries."""
    keep = torch.zeros(past, dtype=torch.bool, device=device)
    keep[:min(sinks, past)] = True
    if window > 0:
        keep[max(past - window, 0):] = True
    return keep


@dataclass
class StreamingParams:
    budget: int = param(256, "committed KV entries each head reads: sinks + recent window", lo=1, hi=1 << 20)
    sinks: int = param(4, "initial tokens always kept (attention sinks)", lo=0, hi=1024)


class StreamingLLM(Policy):
    name = "streaming_llm"
    title = "StreamingLLM (attention sinks + recent window)"
    paper = "Xiao et al. 2023, Efficient Streaming Language Models with Attention Sinks (arXiv:2309.17453)"
    granularity = "layer"
    Params = StreamingParams

    def __init__(self, params=None):
        super().__init__(params)
        if self.params.sinks >= self.params.budget:
            raise ParamError(f"streaming_llm: sinks ({self.params.sinks}) must be below the budget "
                             f"({self.params.budget})")

    def select(self, call):
        p = self.params
        if call.past <= p.budget:
            return None
        return streaming_keep(call.past, p.sinks, p.budget - p.sinks, call.device)[None, None]

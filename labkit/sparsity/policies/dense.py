"""Dense attention: the reference. Every query reads every committed KV entry."""
from __future__ import annotations

from .base import Policy


class Dense(Policy):
    name = "dense"
    title = "Dense attention (reference)"
    paper = "Vaswani et al. 2017, Attention Is All You Need (NeurIPS)"

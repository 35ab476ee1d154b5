"""The KV-selection policy protocol.

A policy decides, for every layer of every decode forward, which committed KV entries each query may read
(`select`). The capture applies the answer inside the attention function (the unselected entries are masked
before SDPA), so it changes what the model computes. Policies that learn from attention (H2O / A2SF) get the
weights they caused (`observe`) and are told which query rows were committed (`commit`).

Lifecycle: `start(lm)` once per capture (e.g. RazorAttention detects its retrieval heads), `reset()` at each
prefill (a new sequence), then per forward: `commit(...)` for the previous forward (not for the prefill), and
per layer `select(call)` then `observe(call, selection)`.

Budgets count committed KV entries a head may read; a query always sees this forward's own tokens too.
A policy whose budget covers the whole context must return None (keep everything), so that it is
token-identical to dense decoding.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from ..layer import LayerCall, Selection


class Policy:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    granularity: ClassVar[str] = "layer"  # what one selection is shared by: layer | kv_head | head
    Params: ClassVar[type | None] = None

    def __init__(self, params: Any = None):
        self.params = params if params is not None else (self.Params() if self.Params else None)

    def start(self, lm) -> None:
        """Called once when a capture starts, before any hook is installed (may run the model itself)."""

    def reset(self) -> None:
        """A new sequence starts (prefill): forget per-sequence state."""

    def select(self, call: LayerCall) -> Selection | torch.Tensor | None:
        """Which committed entries (call.past of them) each query may read: None = all of them, a bool tensor
        [G, qs, past] or a Selection."""
        return None

    def observe(self, call: LayerCall, sel: Selection | None) -> None:
        """After the layer's attention: the weights this selection caused are `call.probs(sel)`."""

    def commit(self, rows: list[int], past: int) -> None:
        """The previous forward's query rows that were committed (root first), and the new committed length."""

    def step_state(self) -> dict:
        """What the policy did in the last forward (JSON-plain; goes into the frame's `state`)."""
        return {}

    def describe(self) -> str:
        if self.params is None:
            return self.name
        args = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.params).items())
        return f"{self.name}({args})"

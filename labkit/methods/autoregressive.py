"""Autoregressive decoding: the baseline, through the same engine and instrumentation as every method.

Lossless by definition: one token per target forward, chosen by argmax (greedy) or sampled.
"""
from __future__ import annotations

from ..engine import Method


class Autoregressive(Method):
    name = "autoregressive"
    title = "Autoregressive (baseline)"
    paper = "-- (one token per forward pass; the reference every method is measured against)"
    lossless = True
    kind = "baseline"

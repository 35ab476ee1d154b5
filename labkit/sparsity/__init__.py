"""Attention-sparsity instrumentation: KV-selection policies applied while a model decodes, with per-step
frames of what each layer and head attended to and kept, and what that cost against dense attention.

    from labkit import sparsity
    with sparsity.capture(lm, sparsity.create("h2o", {"budget": 128})) as cap: ...   # any engine decode inside
    steps, frames = sparsity.run(lm, method, prompt_ids, "streaming_llm")
    Session().stream("token_recycling", "...", sparsity="tidal_decode")     # Steps, each followed by its frame

See docs/sparsity.md. Importing this package registers the "sparsity" trace event.
"""
from .instrument import Capture, LayerHeadSelection, capture
from .decode import DenseShadow, Options, decode, describe, options, run
from .frames import AttnRow, HeadFrame, LayerFrame, Residency, SparsityFrame, frames_of, residency
from .layer import LayerCall, Selection
from .policies import REGISTRY, Policy, create, get, info

__all__ = ["Capture", "LayerHeadSelection", "capture", "DenseShadow", "Options", "decode", "describe", "options", "run",
           "AttnRow", "HeadFrame", "LayerFrame", "Residency", "SparsityFrame", "frames_of", "residency",
           "LayerCall", "Selection", "REGISTRY", "Policy", "create", "get", "info"]

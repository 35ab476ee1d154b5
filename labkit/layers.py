"""Run a chosen subset of the target's own decoder layers through the generation's KV cache.

Self-speculative drafters (layer skipping, early exit) are the target model with some layers left out.
`LayerStack` calls the stock submodules of a Hugging Face causal LM in its own loop:

    embed_tokens -> rotary embedding -> model.model.layers[i] for i in the chosen order -> norm -> lm_head

with explicit position ids and explicit additive attention masks (one per layer type, so Gemma-3's
sliding-window layers see only their window). Nothing is forked or patched: the layers are the model's own
modules, called with the arguments `LlamaModel` / `Qwen2Model` / `Gemma3TextModel` pass them.

The KV cache is the target's (`engine.Target.cache`): a drafter reads the full model's keys and values of
the committed prefix at every layer it runs (that is what makes self-speculation cheap), and appends its
own draft tokens to those layers only. `scratch(cache)` records every layer's length and crops back what
was appended, per layer, when the block ends, so the target finds its cache exactly as it left it.

Positions: cache index j holds the token at position j (the engine keeps it that way), so a chain of q
tokens fed at position `start` attends to keys 0 .. start + q - 1 causally.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from . import tree
from .models import LM, cache_kwargs

FULL = "full_attention"
SLIDING = "sliding_attention"


class _NoAttention(torch.nn.Module):
    """Stands in for a decoder layer's `self_attn` while a draft skips it: adds nothing to the residual stream,
    reads and writes no KV cache."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class _NoMLP(torch.nn.Module):
    """Stands in for a decoder layer's `mlp` while a draft skips it: adds nothing to the residual stream."""

    def forward(self, hidden_states):
        return torch.zeros_like(hidden_states)


_NO_ATTENTION, _NO_MLP = _NoAttention(), _NoMLP()


@contextmanager
def _without(layer: torch.nn.Module, attention: bool, mlp: bool) -> Iterator[None]:
    """The layer with its attention and / or MLP sub-layer swapped out for the call (the residual stream passes
    them by: a skipped sub-layer's output is zero, and a norm of zero is zero), put back afterwards."""
    saved = {}
    if attention:
        saved["self_attn"] = layer.self_attn
        layer.self_attn = _NO_ATTENTION
    if mlp:
        saved["mlp"] = layer.mlp
        layer.mlp = _NO_MLP
    try:
        yield
    finally:
        for name, module in saved.items():
            setattr(layer, name, module)


def _layer_len(layer) -> int:
    keys = getattr(layer, "keys", None)
    return 0 if keys is None else int(keys.shape[-2])


@contextmanager
def scratch(cache) -> Iterator[None]:
    """Undo, on exit, every append made to `cache` inside the block (per layer: a layer that was not run
    keeps its length). Raises if a layer got shorter, which no drafter may do."""
    before = [_layer_len(layer) for layer in cache.layers]
    try:
        yield
    finally:
        for i, layer in enumerate(cache.layers):
            grown = _layer_len(layer) - (before[i] if i < len(before) else 0)
            if grown < 0:
                raise RuntimeError(f"layer {i} of the KV cache shrank while drafting ({grown} entries)")
            if grown:
                layer.crop(-grown)


class LayerStack:
    """The target's decoder as callable pieces: `run(cache, ids, start, layers)` and `logits(hidden)`."""

    def __init__(self, lm: LM):
        model = lm.model
        base = model.get_decoder()
        for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(base, attr):
                raise TypeError(f"{type(base).__name__} has no {attr}: not a Llama-style decoder")
        self.lm = lm
        self.device, self.dtype = lm.device, lm.dtype  # looked up once: the LM properties walk the parameters
        self.config = model.config
        self.embed = base.embed_tokens
        self.layers = base.layers
        self.norm = base.norm
        self.rotary = base.rotary_emb
        self.head = model.get_output_embeddings()
        self.softcap = getattr(self.config, "final_logit_softcapping", None)
        n = len(self.layers)
        types = list(getattr(self.config, "layer_types", None) or [FULL] * n)
        window = getattr(self.config, "sliding_window", None)
        self.window = int(window) if window and SLIDING in types else None
        self.types = [t if (t == FULL or self.window is not None) else FULL for t in types]
        self.rotary_per_type = "layer_type" in inspect.signature(self.rotary.forward).parameters

    @classmethod
    def unsupported(cls, lm: LM) -> str | None:
        """None if the model's decoder can be run layer by layer, else why not."""
        base = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else None
        missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(base, a)]
        if base is None or missing:
            return f"its decoder has no {', '.join(missing) or 'get_decoder()'} (not a Llama-style decoder stack)"
        types = set(getattr(lm.config, "layer_types", None) or [FULL])
        if not types <= {FULL, SLIDING}:
            return f"layer types {sorted(types - {FULL, SLIDING})} are not supported"
        return None

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def _mask(self, have: int, start: int, q: int, window: int | None) -> torch.Tensor:
        """Additive mask [1, 1, q, have + q] for q chain queries at positions start.. after `have` cached keys:
        a query sees cached keys 0 .. start - 1 and the new keys up to itself; cached keys at `start` or later
        (tokens being re-run, see `run`) are hidden. With `window`, keys `window` or more positions back too."""
        q_pos = torch.arange(start, start + q)
        k_pos = torch.cat([torch.arange(have), q_pos])
        allowed = torch.zeros(q, have + q, dtype=torch.bool)
        allowed[:, :start] = True
        allowed[:, have:] = torch.ones(q, q, dtype=torch.bool).tril()
        if window is not None:
            allowed &= tree.within_window(q_pos, k_pos, window)
        return tree.additive_mask(allowed, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def run(self, cache, ids: Sequence[int], start: int, layers: Sequence[int],
            hidden: torch.Tensor | None = None, skip_attention: frozenset[int] = frozenset(),
            skip_mlp: frozenset[int] = frozenset()) -> torch.Tensor:
        """Feed the chain `ids` (positions start .. start + len(ids) - 1) through `layers`, in order. Each of
        those cache layers grows by len(ids) (undo it with `scratch`). A layer normally holds exactly `start`
        entries; if it holds more, the tokens are being re-run over the committed context (teacher forcing for
        scoring a layer set): the cached entries from `start` on are masked out, the rest is read as is.
        With `hidden` ([1, q, d], an earlier call's output) the embedding is skipped and `hidden` is the input.
        `skip_attention` / `skip_mlp`: layers whose attention / MLP sub-layer is passed by (SWIFT's sub-layer
        skipping; a layer without attention neither reads nor grows its cache). The sub-layers are swapped out of
        the shared model for the call: a method using them holds the model's gate alone (`exclusive_model`).
        Returns the hidden states after the last layer run ([1, q, d], before the final norm)."""
        dev = self.device
        q = len(ids)
        h = self.embed(torch.tensor([list(ids)], device=dev)) if hidden is None else hidden
        pos = torch.arange(start, start + q, device=dev)[None]
        rope: dict[str, tuple] = {}
        masks: dict[tuple[str, int], torch.Tensor] = {}
        for i in layers:
            if i in skip_attention and i in skip_mlp:
                continue
            kind = self.types[i]
            if kind not in rope:
                rope[kind] = self.rotary(h, pos, kind) if self.rotary_per_type else self.rotary(h, pos)
            mask = None
            if i not in skip_attention:
                have = _layer_len(cache.layers[i]) if i < len(cache.layers) else 0
                if have < start:
                    raise RuntimeError(f"layer {i} holds {have} cached positions, fewer than the start {start}")
                if (kind, have) not in masks:
                    masks[(kind, have)] = self._mask(have, start, q, self.window if kind == SLIDING else None)
                mask = masks[(kind, have)]
            with _without(self.layers[i], i in skip_attention, i in skip_mlp):
                h = self.layers[i](h, attention_mask=mask, position_embeddings=rope[kind],
                                   position_ids=pos, **cache_kwargs(self.layers[i], cache), use_cache=True)
        return h

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head (and Gemma's logit soft-capping) on hidden states [..., d] -> [..., V]."""
        out = self.head(self.norm(hidden))
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def head_cost(self) -> float:
        """The LM head's multiply-adds in units of one decoder layer's (for cost models)."""
        cfg = self.config
        d = cfg.hidden_size
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or d // heads
        kv = getattr(cfg, "num_key_value_heads", heads) or heads
        attn = d * head_dim * (2 * heads + 2 * kv)
        mlp = 3 * d * cfg.intermediate_size
        return self.head.weight.shape[0] * d / (attn + mlp)

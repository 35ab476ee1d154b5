"""A KV cache that grows in place: transformers' `DynamicCache` API, without a copy of the cache per step.

transformers' `DynamicLayer` appends a step's keys and values with `torch.cat`: every forward allocates a new
tensor per layer and copies the whole cache into it (at 1,000 tokens of context on SmolLM2, ~45 MB per step,
and the freed buffers fragment the allocator, so process memory creeps up with the cache). `GrowingLayer`
subclasses that public class and keeps a buffer with spare capacity, doubled when full: `keys` and `values`
are views of its filled part, so

- an update writes the new entries into the buffer (a copy of the new entries only);
- `crop` (transformers' own, slicing the view) and the engine's in-place compaction of an accepted tree path
  (`layer.keys[..., a:b, :] = ...`) work unchanged, on the buffer;
- the model reads the same values as from a concatenated tensor (the tests check token identity).

`GrowingCache()` is a `DynamicCache` whose layers are `GrowingLayer`s. The fast execution path uses it for the
engine's target cache (`labkit.backends.new_cache`); the stock path keeps transformers' `DynamicCache`.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

MIN_CAPACITY = 256  # tokens allocated at least


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` over a buffer with spare capacity along the sequence axis (doubled when full)."""

    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None

    def _owns_view(self) -> bool:
        """True if `keys`/`values` are still views at the start of this layer's buffers (a method that replaced
        them, e.g. a batch reorder, leaves tensors of its own: the next update adopts those)."""
        return (self._kbuf is not None and self.keys is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == self._kbuf.data_ptr() and self.values.data_ptr() == self._vbuf.data_ptr()
                and self.keys.shape[:-2] == self._kbuf.shape[:-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.numel() else 0
        m = key_states.shape[-2]
        owned = n > 0 and self._owns_view()
        if not owned or n + m > self._kbuf.shape[-2] or self._kbuf.dtype != key_states.dtype:
            cap = max(MIN_CAPACITY, 2 * (n + m))
            shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
            vshape = (*value_states.shape[:-2], cap, value_states.shape[-1])
            kbuf = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
            vbuf = torch.empty(vshape, dtype=value_states.dtype, device=value_states.device)
            if n:
                kbuf[..., :n, :] = self.keys
                vbuf[..., :n, :] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[..., n:n + m, :] = key_states
        self._vbuf[..., n:n + m, :] = value_states
        self.keys = self._kbuf[..., :n + m, :]
        self.values = self._vbuf[..., :n + m, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


class GrowingCache(DynamicCache):
    """`DynamicCache()` whose layers grow in place (`GrowingLayer`)."""

    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


__all__ = ["GrowingLayer", "GrowingCache"]

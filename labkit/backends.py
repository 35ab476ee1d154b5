"""Execution paths: how the loaded stock Hugging Face model runs, as a reversible transformation of it.

A backend changes how modules compute, never what the model is: no forked modeling file, no patch of
transformers' code. It is applied to the loaded model object, so the autoregressive baseline,
`model.generate` and every method run on it alike, and "token-identical to `model.generate`" stays the test
of losslessness on every path.

- `stock`: the model as transformers loaded it.
- `fast` (CPU, float32/bfloat16): three changes, through public classes and extension points.
  1. Every `nn.Linear` runs through oneDNN over a weight packed ONCE into the kernel's blocked layout. Stock
  PyTorch on a CPU runs a one-row linear as a matrix-vector product but a few-row one as a GEMM that
  re-packs the whole weight on every call: on a 2-core machine a verify pass
  over 4-24 tokens then costs about twice a one-token step, and the lesson "a draft verified in one pass
  is nearly free" is false there. With the weight packed once, t(8) is about 1.15 x t(1) (measured: see
  docs/benchmark.md), and with two threads the one-token step itself is faster too. The packed kernel is row-consistent:
  a row's result does not depend on how many rows the pass has (stock MKL's does), so a tree verify
  computes exactly what one-token steps would in every linear layer.
  Sibling projections of the same input (q/k/v, gate/up) are packed together and computed in one GEMM
  (`FusedGroup`): fewer, larger calls, bitwise the same outputs.
  2. Attention with grouped KV heads (GQA) is registered with transformers' `AttentionInterface` as
  `labkit_fast_sdpa`: for a pass over several tokens it regroups the query heads onto their KV head (as
  transformers itself does for one token, `pack_gqa`) instead of copying every KV head out to its query heads
  (`repeat_kv`: the whole KV cache copied, per layer, per pass). Anything else goes to transformers' SDPA.
  3. The engine's KV caches grow in place (`labkit.kvcache.GrowingCache`, a `DynamicCache` whose layers keep
  spare capacity) instead of concatenating the whole cache every step (`new_cache`).

    lm = labkit.load()                          # backend="auto": fast on CPU, stock on GPU
    backends.current(lm.model)                  # 'fast'
    with backends.use(lm.model, "stock"):       # e.g. to time stock model.generate on the same object
        ...

The packed copy doubles the memory of the linear weights (the originals stay: embeddings may share them,
and `stock` switches back in place). A deep copy re-packs lazily; a dtype or device change falls back to
the stock kernel for that layer.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("stock", "fast")
CHOICES = ("auto",) + BACKENDS
_PACKABLE = (torch.float32, torch.bfloat16)


class BackendError(ValueError):
    """An unknown backend, or one this device cannot run; the message says what to pass instead."""


def fast_available(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """None if the fast path can run here, else a one-line reason."""
    device = torch.device(device)
    if device.type != "cpu":
        return f"the fast path is a CPU path (this model is on {device.type})"
    if dtype not in _PACKABLE:
        return f"the fast path packs float32 or bfloat16 weights, not {str(dtype).replace('torch.', '')}"
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return "this torch build has no oneDNN (mkldnn) linear kernels"
    return None


def resolve(backend: str | None, device: torch.device | str, dtype: torch.dtype) -> str:
    """'auto' (or None) -> 'fast' where it can run, else 'stock'; an explicit 'fast' that cannot run raises."""
    backend = (backend or "auto").lower()
    if backend not in CHOICES:
        raise BackendError(f"unknown backend {backend!r}; use one of {', '.join(CHOICES)}")
    reason = fast_available(device, dtype)
    if backend == "auto":
        return "stock" if reason else "fast"
    if backend == "fast" and reason:
        raise BackendError(f"backend 'fast' cannot run here: {reason}; use --backend stock")
    return backend


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


class PackedLinear(torch.nn.Linear):
    """An `nn.Linear` (same parameters, same state dict) whose forward runs oneDNN over a weight packed once.

    Made by changing the class of a loaded `nn.Linear` in place (`apply`). Switched to 'stock', it computes
    `F.linear(x, weight, bias)`, exactly what `nn.Linear.forward` does."""

    _packed: torch.Tensor | None = None
    _packed_for: tuple | None = None  # (data_ptr, dtype) of the weight that was packed
    enabled: bool = True
    _group: "FusedGroup | None" = None  # sibling projections of the same input, packed together
    _cols: tuple[int, int] = (0, 0)  # this layer's columns in the group's output

    def repack(self) -> None:
        self._packed = _pack(self.weight)
        self._packed_for = (self.weight.data_ptr(), self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (not self.enabled or x.dtype is not w.dtype or w.dtype not in _PACKABLE or x.device.type != "cpu"
                or w.device.type != "cpu" or (w.requires_grad and torch.is_grad_enabled())):
            return F.linear(x, w, self.bias)  # what nn.Linear.forward computes
        if self._group is not None:
            return self._group.output(x)[..., self._cols[0]:self._cols[1]]
        if self._packed_for != (w.data_ptr(), w.dtype):  # a deep copy, a new dtype or new weights: pack again
            self.repack()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def __getstate__(self):  # copy.deepcopy / pickle: the opaque packed tensor cannot be copied; re-packed lazily
        state = dict(self.__dict__)
        state.pop("_packed", None)
        state.pop("_packed_for", None)
        return state


FAST_ATTENTION = "labkit_fast_sdpa"


def fast_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
              **kwargs):
    """SDPA for a pass of several query tokens over grouped KV heads, with no copy of the KV cache: query heads
    [b, h, m, d] are viewed as [b, h_kv, n_rep * m, d] (head h = kv head h // n_rep, as `repeat_kv` orders them)
    and the mask rows repeated n_rep times, so each KV head is read once by all its query heads. Other calls
    (one token, no GQA, no mask, per-head masks, position biases, training) go to transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n_rep = getattr(module, "num_key_value_groups", 1)
    b, h, m, d = query.shape
    if (n_rep > 1 and m > 1 and isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4
            and attention_mask.shape[1] == 1 and kwargs.get("position_bias") is None and not dropout
            and kwargs.get("softcap") is None and key.shape[1] * n_rep == h and query.device.type == "cpu"):
        q = query.reshape(b, h // n_rep, n_rep * m, d)
        mask = attention_mask.repeat(1, 1, n_rep, 1)
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
        return out.reshape(b, h, m, d).transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FAST_ATTENTION, fast_sdpa)
    AttentionMaskInterface.register(FAST_ATTENTION, sdpa_mask)  # the model builds the same masks as for SDPA


def _switch_attention(model: torch.nn.Module, fast: bool) -> None:
    """fast: SDPA models move to `labkit_fast_sdpa` (the previous implementation is remembered); back: restore."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        return
    impl = getattr(config, "_attn_implementation", None)
    if fast and impl == "sdpa":
        _register_attention()
        model.set_attn_implementation(FAST_ATTENTION)
        model._labkit_attn_before = impl
    elif not fast and impl == FAST_ATTENTION:
        model.set_attn_implementation(getattr(model, "_labkit_attn_before", "sdpa"))


def new_cache(model: torch.nn.Module | None):
    """An empty KV cache for a generation on `model`'s path: on the fast path a `labkit.kvcache.GrowingCache`
    (grows in place instead of concatenating), on the stock path (or without a model) transformers'
    `DynamicCache`."""
    from transformers import DynamicCache

    if model is not None and current(model) == "fast":
        from .kvcache import GrowingCache

        return GrowingCache()
    return DynamicCache()


# Sibling projections that a decoder layer applies to the same input (transformers' module names).
FUSE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedGroup:
    """Sibling `PackedLinear`s that read the same input (q/k/v; gate/up), packed as ONE weight: the first member
    called on an input computes every member's columns in one oneDNN GEMM, the others take their slice of it
    (fewer, larger GEMMs: on SmolLM2, an 8-token verify pass 46.5-47.3 -> 44-45 ms and a 16-token one 58-59 ->
    53-54 ms, one-token steps unchanged, A/B in one process; bitwise the same outputs). The result is kept only
    while the next call passes the very same input tensor, unmodified."""

    def __init__(self, members: list[PackedLinear]):
        self.members = members
        bounds, at = [], 0
        for lin in members:
            bounds.append((at, at + lin.out_features))
            at += lin.out_features
        for lin, cols in zip(members, bounds):
            lin._group, lin._cols = self, cols
        self._packed = self._bias = self._for = None
        self._last: tuple | None = None  # (input tensor, its version, output)

    def pack(self) -> None:
        """Pack the members' weights (and biases) as one; `apply` does it at load time."""
        with torch.no_grad():
            self._packed = _pack(torch.cat([m.weight.detach() for m in self.members]))
            biases = [m.bias for m in self.members]
            self._bias = None if all(b is None for b in biases) else torch.cat(
                [b.detach() if b is not None else torch.zeros(m.out_features, dtype=m.weight.dtype)
                 for b, m in zip(biases, self.members)])
        self._for = self._key()

    def _key(self) -> tuple:
        return tuple((m.weight.data_ptr(), m.weight.dtype) for m in self.members)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        last = self._last
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        if last is not None and last[0] is x and last[1] == version:
            return last[2]
        if self._for != self._key():  # a deep copy or new weights: pack the concatenation again
            self.pack()
        out = torch.ops.mkldnn._linear_pointwise(x, self._packed, self._bias, "none", [], "")
        self._last = (x, version, out)
        return out

    def __getstate__(self):  # deep copies re-pack lazily (the opaque packed tensor cannot be copied)
        return {"members": self.members, "_packed": None, "_bias": None, "_for": None, "_last": None}


def _fuse(model: torch.nn.Module) -> None:
    """Group the sibling projections of every module (see FUSE_GROUPS)."""
    for module in model.modules():
        for names in FUSE_GROUPS:
            members = [getattr(module, n, None) for n in names]
            if all(isinstance(m, PackedLinear) and m._group is None for m in members) and \
                    len({(m.in_features, m.weight.dtype, m.weight.device) for m in members}) == 1:
                FusedGroup(members)


def current(model: torch.nn.Module) -> str:
    """The backend a model runs on now."""
    return getattr(model, "_labkit_backend", "stock")


def _linears(model: torch.nn.Module) -> Iterator[torch.nn.Linear]:
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module) not in seen:
            seen.add(id(module))
            yield module


def apply(model: torch.nn.Module, backend: str, *, log: Callable[[str], None] | None = None) -> str:
    """Switch `model` to `backend` ('stock' or 'fast', or 'auto') in place; returns the backend in use.

    Switching to 'fast' packs every linear weight once (0.3 s for SmolLM2-135M here; `log` gets one line
    before and after); switching back to 'stock' keeps the packed weights, so switching again is free."""
    try:
        param = next(model.parameters())
    except StopIteration:
        return current(model)
    backend = resolve(backend, param.device, param.dtype)
    if backend == current(model):
        return backend
    if backend == "stock":
        for lin in _linears(model):
            if isinstance(lin, PackedLinear):
                lin.enabled = False  # the packed weight stays: switching back is free
        _switch_attention(model, False)
        model._labkit_backend = "stock"
        return backend
    linears = list(_linears(model))
    t0 = time.perf_counter()
    if log is not None:
        log(f"[labkit] fast CPU path: packing {len(linears)} linear layers once...")
    with torch.no_grad():
        for lin in linears:
            lin.__class__ = PackedLinear
            lin.enabled = True
        _fuse(model)  # grouped layers compute through their group's packed weight
        for lin in linears:
            if lin.weight.dtype not in _PACKABLE or lin.weight.device.type != "cpu":
                continue
            group = lin._group
            if group is None and lin._packed_for != (lin.weight.data_ptr(), lin.weight.dtype):
                lin.repack()
            elif group is not None and group.members[0] is lin and group._for != group._key():
                group.pack()
    _switch_attention(model, True)
    model._labkit_backend = "fast"
    if log is not None:
        log(f"[labkit] fast CPU path ready ({time.perf_counter() - t0:.1f} s)")
    return backend


@contextlib.contextmanager
def use(model: torch.nn.Module, backend: str) -> Iterator[str]:
    """Run a block on `backend`, then switch back to the backend the model had."""
    before = current(model)
    used = apply(model, backend)
    try:
        yield used
    finally:
        apply(model, before)


def describe(backend: str) -> str:
    return {"fast": "fast CPU path (oneDNN linears over weights packed once)",
            "stock": "stock PyTorch kernels"}.get(backend, backend)


__all__ = ["BACKENDS", "CHOICES", "BackendError", "PackedLinear", "apply", "use", "current", "resolve",
           "fast_available", "describe"]

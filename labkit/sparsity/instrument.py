"""The capture: run a stock HF model with a KV-selection policy applied and its attention recorded.

    with capture(lm, policy=H2O(...), record=LayerHeadSelection()) as cap:
        for step in engine.decode(lm, method, prompt):
            frame = cap.frame(step)          # a SparsityFrame for that Step

How: transformers' public attention-function registry. On entry the capture registers one attention
function (`labkit_sparsity`, which wraps SDPA) and switches the model to it with `set_attn_implementation`;
forward pre-hooks on the attention modules hand that function this capture through the attention kwargs (so
no global state routes calls), and a pre/post hook on the model sees each forward's cache and logits. On
exit the model gets its previous implementation back and every hook is removed.

Per layer, the function asks the policy which committed KV entries each query may read, combines that with
the incoming mask (causal, tree ancestors, sliding window: never replaced, only narrowed) and calls SDPA.
SDPA returns no weights, so for the layers and heads being recorded the capture computes softmax(q.k) itself,
dense (for recall) and under the selection (what the model actually attended to). That is the capture's
cost: with nothing recorded and the dense policy, it is a dictionary lookup per layer.

Only forwards on the generation's KV cache are captured when `method` is given (its `target.cache`):
a draft model (even the target itself drafting on its own cache) and the dense shadow used for fidelity
run plain SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import frames
from .layer import LayerCall, Selection, expand_heads
from .policies.base import Policy

ATTN_NAME = "labkit_sparsity"
KWARG = "labkit_capture"


def _sdpa(module, query, key, value, mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def attention(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: SDPA, or the capture's policy-applying path when a capture is active."""
    cap = kwargs.pop(KWARG, None)
    if cap is None or not cap.active:
        return _sdpa(module, query, key, value, attention_mask, **kwargs)
    return cap.attend(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)  # the model builds the same masks as for SDPA


@dataclass(frozen=True)
class LayerHeadSelection:
    """What to record: layers and heads (None = all), full rows up to `full_row_max` positions, else top-k."""

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    full_row_max: int = 256
    top_k: int = 32
    digits: int = 6  # decimals kept for attention weights in frames

    def layer_ids(self, n_layers: int) -> list[int]:
        ids = list(range(n_layers)) if self.layers is None else sorted(set(self.layers))
        bad = [i for i in ids if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"recorded layers {bad} are not in 0..{n_layers - 1}")
        return ids

    def head_ids(self, n_heads: int) -> list[int]:
        ids = list(range(n_heads)) if self.heads is None else sorted(set(self.heads))
        bad = [i for i in ids if not 0 <= i < n_heads]
        if bad:
            raise ValueError(f"recorded heads {bad} are not in 0..{n_heads - 1}")
        return ids


@dataclass
class _LayerRec:
    keep: torch.Tensor | None  # bool [G, qs, past] or None (everything)
    heads: list[int] = field(default_factory=list)
    full: torch.Tensor | None = None  # [Hr, r, kv] attention under the policy (short contexts)
    top_idx: torch.Tensor | None = None  # [Hr, r, k] columns (long contexts)
    top_val: torch.Tensor | None = None
    recall: torch.Tensor | None = None  # [Hr, r]


@dataclass
class _Forward:
    past: int
    q_len: int
    layers: dict[int, _LayerRec] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # [r, V] the forward's output logits
    state: dict = field(default_factory=dict)
    rows: list[int] | None = None  # its committed query rows, once known


def attention_modules(model) -> list:
    """The model's attention modules the capture hooks (those with a layer index and grouped KV heads)."""
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]


def unsupported(lm, attn: list | None = None) -> str | None:
    """Why the capture cannot instrument this model, in one line (None: it can): it needs one attention module
    per decoder layer. `attn`: the model's `attention_modules`, when already found."""
    n = len(attention_modules(lm.model) if attn is None else attn)
    layers = int(lm.config.num_hidden_layers)
    if n != layers:
        return (f"found {n} attention modules for {layers} layers: {type(lm.model).__name__} is not supported by "
                "the sparsity capture")
    return None


def _as_selection(sel) -> Selection | None:
    if sel is None or isinstance(sel, Selection):
        return sel
    return Selection(keep=sel)


class Capture:
    def __init__(self, lm, policy: Policy | None = None, record: LayerHeadSelection | None = LayerHeadSelection(),
                 method=None, cache_filter: Callable[[Any], bool] | None = None):
        from .policies.dense import Dense

        self.lm = lm
        self.model = lm.model
        self.policy = policy if policy is not None else Dense()
        self.record = record
        cfg = lm.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_heads = int(cfg.num_attention_heads)
        self._rec_layers = set(record.layer_ids(self.n_layers)) if record else set()
        self._rec_heads = record.head_ids(self.n_heads) if record else []
        if cache_filter is None and method is not None:
            cache_filter = lambda cache: method.target is not None and cache is method.target.cache  # noqa: E731
        self.cache_filter = cache_filter
        self.active = False
        self._fwd: _Forward | None = None  # the forward in progress
        self.last: _Forward | None = None  # the last completed captured forward
        self._hooks: list = []
        self._prev_impl: str | None = None

    # ---- entering and leaving ----
    def __enter__(self) -> "Capture":
        self.policy.start(self.lm)
        _register()
        attn = attention_modules(self.model)
        reason = unsupported(self.lm, attn)
        if reason:
            raise ValueError(reason)
        self._prev_impl = self.model.config._attn_implementation
        try:
            for m in attn:
                self._hooks.append(m.register_forward_pre_hook(self._inject, with_kwargs=True))
            self._hooks.append(self.model.register_forward_pre_hook(self._begin, with_kwargs=True))
            self._hooks.append(self.model.register_forward_hook(self._end, with_kwargs=True))
            self.model.set_attn_implementation(ATTN_NAME)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self._prev_impl is not None and self.model.config._attn_implementation != self._prev_impl:
            self.model.set_attn_implementation(self._prev_impl)
        self.active = False

    # ---- hooks ----
    def _inject(self, module, args, kwargs):
        return args, {**kwargs, KWARG: self}

    def _begin(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the keyword transformers' version takes
        self.active = self.cache_filter is None or bool(self.cache_filter(cache))
        if not self.active:
            return None
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        q_len = int(ids.shape[1]) if ids is not None else int(kwargs["inputs_embeds"].shape[1])
        past = int(cache.get_seq_length()) if cache is not None else 0
        if past == 0:
            self.policy.reset()
        elif self.last is not None and self.last.past > 0:
            rows = self.last.rows if self.last.rows is not None else list(range(past - self.last.past))
            self.policy.commit(rows, past)  # the previous round's committed query rows
        self._fwd = _Forward(past=past, q_len=q_len)
        return None

    def _end(self, module, args, kwargs, output):
        if self.active:
            self._fwd.logits = output.logits[0].detach()
            self._fwd.state = self.policy.step_state()
            self.last = self._fwd
        self.active = False
        return None

    # ---- the attention path ----
    def attend(self, module, query, key, value, mask, **kwargs):
        if query.shape[0] != 1:
            raise ValueError("the sparsity capture supports batch size 1")
        if kwargs.get("softcap") is not None:
            raise ValueError("the sparsity capture does not support attention logit soft-capping")
        layer = int(module.layer_idx)
        past = key.shape[2] - query.shape[2]
        call = LayerCall(layer, query[0], key[0], mask, kwargs.get("scaling"), past, value=value[0])
        sel = _as_selection(self.policy.select(call)) if past > 0 else None
        if sel is not None and sel.extra_key is None and bool(sel.keep.all()):
            sel = None
        if sel is None:
            out = _sdpa(module, query, key, value, mask, **kwargs)
        else:
            k2, v2, m2 = _gather(call, sel, key, value) or _apply(call, sel, key, value)
            out = _sdpa(module, query, k2, v2, m2, **kwargs)
        self.policy.observe(call, sel)
        self._fwd.layers[layer] = self._record(call, sel)
        return out

    def _record(self, call: LayerCall, sel: Selection | None) -> _LayerRec:
        rec = _LayerRec(keep=None if sel is None else sel.keep)
        if call.layer not in self._rec_layers:
            return rec
        heads = torch.tensor(self._rec_heads, device=call.device)
        rows = None if call.past > 0 else torch.tensor([call.q_len - 1], device=call.device)
        dense = call.probs(None, rows)[heads]
        actual = dense if sel is None else call.probs(sel, rows)[heads]
        if sel is None:
            rec.recall = dense.sum(-1)
        else:
            rec.recall = (dense * call.keep_full(sel, rows)[heads]).sum(-1)
        rec.heads = list(self._rec_heads)
        width = call.kv_len if call.past == 0 else call.past + 1  # the (root) row's length
        if width <= self.record.full_row_max:
            rec.full = actual
        else:
            k = min(self.record.top_k, call.kv_len)
            rec.top_val, rec.top_idx = torch.topk(actual, k, dim=-1)
        return rec

    # ---- frames ----
    def frame(self, step, dense_logits: torch.Tensor | None = None) -> frames.SparsityFrame:
        """The SparsityFrame of a Step just yielded by the engine (call once per Step, in order). With
        `dense_logits` ([rows, V]: dense decoding's logits at the round's committed query rows), the frame also
        carries the next-token KL and top-1 agreement."""
        f = self.last
        if f is None:
            raise RuntimeError("no captured forward for this step (is the method verifying through the engine?)")
        prefill = step.kind == "prefill"
        rows = [0] if prefill else [0] + [i + 1 for i in step.accepted]
        f.rows = None if prefill else rows
        queries = (f.q_len - 1,) if prefill else tuple(f.past + j for j in range(len(rows)))
        kv_kept = []
        layers = []
        for layer in range(self.n_layers):
            rec = f.layers.get(layer)
            union = self._union(rec, rows, f.past, prefill)
            kv_kept.append(tuple(int(x) for x in union.sum(-1).tolist()))
            if rec is not None and rec.heads:
                layers.append(self._layer_frame(layer, rec, union, rows, f, prefill))
        recalls = [r for lf in layers for hf in lf.heads for r in hf.recall]
        kl = top1 = None
        if dense_logits is not None:
            mine = f.logits[-1:] if prefill else f.logits[rows]
            kl, top1 = fidelity(dense_logits, mine)
        return frames.SparsityFrame(step=step.index, kind=step.kind, policy=self.policy.describe(),
                               kv_len=0 if prefill else f.past, queries=queries, layers=tuple(layers),
                               kv_kept=tuple(kv_kept), recall=sum(recalls) / len(recalls) if recalls else None,
                               kl=kl, top1=top1, state=dict(f.state))

    def _union(self, rec: _LayerRec | None, rows: list[int], past: int, prefill: bool) -> torch.Tensor:
        """bool [H, past]: the committed entries each head read for any committed row of the round."""
        if prefill:
            return torch.zeros(self.n_heads, 0, dtype=torch.bool)
        if rec is None or rec.keep is None:
            return torch.ones(self.n_heads, past, dtype=torch.bool)
        keep = rec.keep if rec.keep.shape[1] == 1 else rec.keep[:, rows]
        return expand_heads(keep.any(1).cpu(), self.n_heads)

    def _layer_frame(self, layer, rec: _LayerRec, union, rows, f: _Forward, prefill) -> frames.LayerFrame:
        digits = self.record.digits
        heads = []
        for hi, h in enumerate(rec.heads):
            attn_rows, recall = [], []
            for j, r in enumerate(rows):
                src = 0 if prefill else r  # prefill recorded only its last row
                # positions 0..past-1 are columns 0..past-1; position past + i is the column of the i-th
                # committed row (the verify pass's columns follow its rows); the prefill's columns are positions
                own = {} if prefill else {f.past + c: f.past + i for i, c in enumerate(rows[:j + 1])}
                recall.append(float(rec.recall[hi, src]))
                if rec.full is not None:
                    cols = torch.arange(f.q_len) if prefill else torch.tensor(list(range(f.past)) + list(own))
                    vals = rec.full[hi, src].cpu()[cols]
                    attn_rows.append(frames.AttnRow(full=tuple(round(v, digits) for v in vals.tolist()),
                                               mass=float(vals.sum())))
                else:
                    limit = f.q_len if prefill else f.past
                    attn_rows.append(_top_row(rec.top_idx[hi, src].tolist(), rec.top_val[hi, src].tolist(),
                                              limit, own, digits))
            kept = () if prefill else frames.to_ranges(union[h])
            heads.append(frames.HeadFrame(head=h, kept=kept, n_kept=int(union[h].sum()), recall=tuple(recall),
                                     rows=tuple(attn_rows)))
        return frames.LayerFrame(layer=layer, heads=tuple(heads))


def _top_row(idx: list[int], val: list[float], limit: int, own: dict[int, int], digits: int) -> frames.AttnRow:
    """Top-k columns of a row -> positions: columns below `limit` are positions, the others map through `own`
    (the verify columns on the accepted path; the rest, never attended by this row, are dropped)."""
    pairs = sorted((c if c < limit else own[c], v) for c, v in zip(idx, val) if v > 0 and (c < limit or c in own))
    return frames.AttnRow(top=tuple(p for p, _ in pairs), weights=tuple(round(v, digits) for _, v in pairs),
                     mass=float(sum(v for _, v in pairs)))


def _gather(call: LayerCall, sel: Selection, key, value):
    """When every selection group keeps the same number of entries for all query rows (StreamingLLM, H2O,
    TidalDecode and TokenSelect while decoding one token), attend over the kept entries only: gather them (per
    KV head where the selection is) and narrow the incoming mask to those columns. None when not applicable."""
    keep = sel.keep
    g = keep.shape[0]
    if keep.shape[1] != 1 or g not in (1, call.n_kv_heads):
        return None
    counts = keep[:, 0].sum(-1)
    if bool((counts != counts[0]).any()):
        return None
    own = torch.arange(call.past, call.kv_len, device=keep.device)
    cols = torch.cat([torch.nonzero(keep[:, 0])[:, 1].reshape(g, -1), own.expand(g, -1)], -1)  # [g, n]
    idx = cols[None, :, :, None].expand(1, call.n_kv_heads, cols.shape[1], key.shape[-1])
    k2, v2 = key.gather(2, idx), value.gather(2, idx)
    mask = None
    if call.mask is not None or call.q_len > 1:
        allowed = call.allowed()  # [Hm, q, kv] -> the gathered columns, per query head
        heads = expand_heads(cols, call.n_heads)  # [H, n]
        mask = allowed.expand(call.n_heads, -1, -1).gather(2, heads[:, None, :].expand(-1, call.q_len, -1))[None]
    if sel.extra_key is not None:
        extra = sel.extra_heads[None, :, None, None].expand(1, call.n_heads, call.q_len, 1)
        base = torch.ones(1, call.n_heads, call.q_len, cols.shape[1], dtype=torch.bool, device=keep.device)
        mask = _extra_mask(torch.cat([base if mask is None else mask, extra], -1), sel, k2.dtype)
        k2 = torch.cat([k2, sel.extra_key[None].to(k2.dtype)], 2)
        v2 = torch.cat([v2, sel.extra_value[None].to(v2.dtype)], 2)
    return k2, v2, mask


def _apply(call: LayerCall, sel: Selection, key, value):
    """Key, value and a boolean SDPA mask [1, H, q, kv(+1)] for the selection, narrowing the incoming mask."""
    allowed = call.allowed() & call.keep_full(sel)  # [H, q, kv]
    if sel.extra_key is not None:
        extra = sel.extra_heads[:, None, None].expand(call.n_heads, call.q_len, 1)
        allowed = torch.cat([allowed, extra], -1)
        key = torch.cat([key, sel.extra_key[None].to(key.dtype)], 2)
        value = torch.cat([value, sel.extra_value[None].to(value.dtype)], 2)
        return key, value, _extra_mask(allowed[None], sel, key.dtype)
    return key, value, allowed[None]


def _extra_mask(allowed: torch.Tensor, sel: Selection, dtype) -> torch.Tensor:
    """The SDPA mask [1, H, q, kv+1] whose last column is the extra entry: boolean when that entry is an ordinary
    one, else additive, with log(extra_count) on the extra column where it is read."""
    if sel.extra_count == 1:
        return allowed
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    bias[..., -1] = sel.extra_bias
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def fidelity(dense_logits: torch.Tensor, policy_logits: torch.Tensor) -> tuple[float, float]:
    """Mean KL(dense || policy) of the next-token distributions, and the share of rows with the same argmax."""
    d = torch.log_softmax(dense_logits.double(), -1)
    p = torch.log_softmax(policy_logits.double().to(d.device), -1)
    kl = (d.exp() * (d - p)).sum(-1).clamp_min(0.0)
    agree = (dense_logits.argmax(-1).to(d.device) == policy_logits.argmax(-1).to(d.device)).double()
    return float(kl.mean()), float(agree.mean())


def capture(lm, policy: Policy | None = None, record: LayerHeadSelection | None = LayerHeadSelection(), *,
            method=None, cache_filter: Callable[[Any], bool] | None = None) -> Capture:
    """Context manager: apply `policy` (default dense) and record `record` (None: record no attention rows, only
    KV counts and fidelity) while the model decodes; the model is restored on exit."""
    return Capture(lm, policy, record, method=method, cache_filter=cache_filter)

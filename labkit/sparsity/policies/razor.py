"""RazorAttention: retrieval heads keep the whole cache, every other head keeps sinks + a recent window.

Tang et al. 2024, "RazorAttention: Efficient KV Cache Compression Through Retrieval Heads"
(arXiv:2407.15891). Most heads only read local context; a few "retrieval heads" reach across the whole
context: echo heads (attend to the previous occurrence of the current token) and induction heads (attend
to the token that followed it). RazorAttention finds them once per model on a repeated random token
sequence, keeps their full cache, and truncates every other head to the attention sinks plus a recent
window, folding the dropped entries into one "compensation token" (the mean of their keys and values).

Here: detection runs the model on `repeats` copies of `period` random tokens and scores every head by
its mean attention to the previous occurrence (echo) and to its successor (induction); the top
`induction_frac` (by induction score) plus `echo_frac` (by echo score) of the KV heads are retrieval heads
(the paper: 14% + 1%). Scores are taken per KV head (the max over the query heads sharing it), so the
kept cache is real memory under GQA. The compensation entry is one extra KV entry per KV head, not counted
in "KV kept".

The compensation token's weight: the public implementation (Huawei's MindSpore Golden Stick,
`mindspore_gs/experimental/long_context_compress/razor_attention/wrappers/vllm_mindspore/attention_wrappers.py`,
`use_virtual_token=True`) writes the mean key and value into the cache as one ordinary entry, so it enters
attention with weight 1: `compensation=mean`, the default. `compensation=count` weights it by the number of
entries N it stands for (its score gains log N: it weighs as N copies of itself), the reading of the paper's
equation 5 that issue 14 asks about; the paper's text itself could not be read from this project's machines.
`compensation=off` drops the entries (sinks + window only). docs/sparsity.md measures the three.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...models import cache_kwargs
from ...params import param
from .base import Policy
from .streaming import streaming_keep


def head_scores(attn: dict[int, torch.Tensor], period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """attn[layer] = [H, n, n] attention on a sequence that repeats every `period` tokens ->
    (induction [L, H], echo [L, H]): mean attention from position i to i - period + 1 (the token that followed
    the previous occurrence) and to i - period (the previous occurrence), over i in the repeats."""
    induction, echo = [], []
    for layer in sorted(attn):
        a = attn[layer]
        n = a.shape[-1]
        i = torch.arange(period, n)
        induction.append(a[:, i, i - period + 1].mean(-1))
        echo.append(a[:, i, i - period].mean(-1))
    return torch.stack(induction), torch.stack(echo)


def pick_retrieval(induction: torch.Tensor, echo: torch.Tensor, induction_frac: float,
                   echo_frac: float) -> torch.Tensor:
    """bool [L, G]: the top ceil(induction_frac * L*G) heads by induction score plus the top
    ceil(echo_frac * L*G) by echo score."""
    total = induction.numel()
    out = torch.zeros(total, dtype=torch.bool)
    for scores, frac in ((induction, induction_frac), (echo, echo_frac)):
        k = min(total, math.ceil(frac * total))
        if k > 0:
            out[torch.topk(scores.flatten().float(), k).indices] = True
    return out.reshape(induction.shape)


def razor_keep(past: int, sinks: int, window: int, retrieval: torch.Tensor) -> torch.Tensor:
    """retrieval bool [G] -> keep bool [G, 1, past]: everything for retrieval heads, sinks + window otherwise."""
    local = streaming_keep(past, sinks, window, retrieval.device)
    return (local[None, :] | retrieval[:, None])[:, None, :]


class _Probe(Policy):
    """Dense, and keeps each layer's full prefill attention (short probe sequences only)."""

    name = "probe"

    def __init__(self):
        super().__init__()
        self.attn: dict[int, torch.Tensor] = {}

    def observe(self, call, sel):
        if call.past == 0:
            self.attn[call.layer] = call.probs(None).cpu()


@torch.inference_mode()
def detect(lm, period: int = 64, repeats: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction and echo scores [L, Hkv] (max over each KV head's query heads) of a model."""
    from transformers import DynamicCache

    from ..instrument import capture

    vocab = lm.config.vocab_size
    period = min(period, vocab - 1)
    gen = torch.Generator().manual_seed(seed)
    block = torch.randperm(vocab, generator=gen)[:period]
    ids = block.repeat(repeats)[None].to(lm.device)
    probe = _Probe()
    with capture(lm, probe, record=None):
        lm.model(input_ids=ids, **cache_kwargs(lm.model, DynamicCache()), use_cache=True)
    induction, echo = head_scores(probe.attn, period)
    g = lm.config.num_attention_heads // lm.config.num_key_value_heads
    by_kv = lambda s: s.reshape(s.shape[0], -1, g).amax(-1)  # noqa: E731
    return by_kv(induction), by_kv(echo)


@dataclass
class RazorParams:
    budget: int = param(256, "committed KV entries a non-retrieval head keeps: sinks + recent window", lo=1, hi=1 << 20)
    sinks: int = param(4, "initial tokens every head keeps", lo=0, hi=1024)
    induction_frac: float = param(0.14, "share of KV heads kept whole for their induction score", lo=0.0, hi=1.0)
    echo_frac: float = param(0.01, "share of KV heads kept whole for their echo score", lo=0.0, hi=1.0)
    compensation: str = param("mean", "the dropped entries of a non-retrieval head become one compensation token "
                              "(their mean key and value) read as one ordinary entry (mean, as in the public "
                              "implementation), or weighted by the number of entries it stands for (count), or "
                              "are simply dropped (off)", choices=("mean", "count", "off"))


class RazorAttention(Policy):
    name = "razor_attention"
    title = "RazorAttention (retrieval heads keep all, others sinks + window)"
    paper = ("Tang et al. 2024, RazorAttention: Efficient KV Cache Compression Through Retrieval Heads "
             "(arXiv:2407.15891)")
    granularity = "kv_head"
    Params = RazorParams

    def __init__(self, params=None):
        super().__init__(params)
        self.retrieval: torch.Tensor | None = None  # bool [L, Hkv]
        self.scores: tuple[torch.Tensor, torch.Tensor] | None = None
        self._model = None

    def start(self, lm):
        if self._model is not lm.model:  # detection once per model
            self.scores = detect(lm)
            self.retrieval = pick_retrieval(*self.scores, self.params.induction_frac, self.params.echo_frac)
            self._model = lm.model

    def select(self, call):
        p = self.params
        if call.past <= p.budget:
            return None
        retrieval = self.retrieval[call.layer].to(call.device)
        keep = razor_keep(call.past, p.sinks, p.budget - p.sinks, retrieval)
        if p.compensation == "off":
            return keep
        from ..layer import Selection, expand_heads

        lo, hi = min(p.sinks, call.past), call.past - (p.budget - p.sinks)
        return Selection(keep=keep, extra_key=call.key[:, lo:hi].mean(-2, keepdim=True),
                         extra_value=call.value[:, lo:hi].mean(-2, keepdim=True),
                         extra_heads=expand_heads(~retrieval, call.n_heads),
                         extra_count=float(hi - lo) if p.compensation == "count" else 1.0)

    def step_state(self):
        return {"retrieval_heads": int(self.retrieval.sum()) if self.retrieval is not None else 0}

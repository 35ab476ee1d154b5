"""Decoding with a sparsity policy: Steps from the engine, each followed by its SparsityFrame.

    for event in decode(lm, method, prompt_ids, "h2o", max_new_tokens=64): ...

Fidelity "against dense decoding of the same prefix": a dense shadow keeps its own KV cache (a copy of the
prefill's, which is dense for every policy) and is fed each round's committed tokens, one extra forward per
round, so its logits at the round's query rows are what dense attention predicts after exactly the prefix the
policy produced. KL and top-1 agreement compare those with the policy's logits. The shadow runs only when
fidelity is measured (default: every policy but dense, whose logits are the dense ones by construction).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from .. import engine
from ..sampling import GREEDY, SamplingConfig
from ..gate import hold
from ..models import cache_kwargs
from . import policies
from .instrument import LayerHeadSelection, capture
from .frames import SparsityFrame
from .policies.base import Policy


@dataclass
class Options:
    """A sparsity request: which policy (a name or an instance), its parameters (with a name), what to record,
    and whether to measure fidelity against dense (None: unless the policy is dense)."""

    policy: str | Policy = "dense"
    params: dict = field(default_factory=dict)
    record: LayerHeadSelection | None = LayerHeadSelection()
    fidelity: bool | None = None

    def build(self) -> Policy:
        if isinstance(self.policy, Policy):
            if self.params:
                raise ValueError("pass parameters to the policy instance, not to Options")
            return self.policy
        return policies.create(self.policy, self.params)


def options(spec: Any) -> Options:
    """A policy name, a Policy, a dict of Options fields, or Options."""
    if isinstance(spec, Options):
        return spec
    if isinstance(spec, (str, Policy)):
        return Options(policy=spec)
    if isinstance(spec, dict):
        return Options(**spec)
    raise TypeError(f"sparsity= expects a policy name, a Policy or labkit.sparsity.Options, got {type(spec).__name__}")


def describe(spec: Any) -> str:
    """One line naming the policy and its parameters (for run configs and traces)."""
    return options(spec).build().describe()


class DenseShadow:
    """Dense decoding of the policy's own prefix: a KV cache of its own, one forward per round."""

    def __init__(self, lm):
        self.lm = lm
        self.cache = None
        self.length = 0

    def start(self, target_cache, length: int) -> None:
        self.cache = copy.deepcopy(target_cache)
        self.length = length

    @torch.inference_mode()
    def logits(self, tokens: list[int]) -> torch.Tensor:
        dev = self.lm.device
        pos = list(range(self.length, self.length + len(tokens)))
        out = self.lm.model(input_ids=torch.tensor([tokens], device=dev), position_ids=torch.tensor([pos], device=dev),
                            **cache_kwargs(self.lm.model, self.cache), use_cache=True)
        self.length += len(tokens)
        return out.logits[0]


def decode(lm, method: engine.Method, prompt: list[int], sparsity: Any = "dense", *, max_new_tokens: int = 128,
           sampling: SamplingConfig = GREEDY, detail: bool = True,
           should_stop: Callable[[], bool] | None = None) -> Iterator:
    """Validate now, then return a generator of events: each Step followed by its SparsityFrame."""
    opts = options(sparsity)
    policy = opts.build()
    if method.custom_loop:
        raise ValueError(f"{method.name} runs its own loop; the sparsity capture needs a method that verifies "
                         "through the engine's Target")
    engine.check_request(lm, prompt, max_new_tokens)
    measure = opts.fidelity if opts.fidelity is not None else policy.name != "dense"
    return _events(lm, method, prompt, policy, opts.record, measure, max_new_tokens=max_new_tokens,
                   sampling=sampling, detail=detail, should_stop=should_stop)


def _events(lm, method, prompt, policy, record, measure, **kw) -> Iterator:
    shadow = DenseShadow(lm) if measure else None
    # the capture changes how the shared model computes: run alone
    with hold(lm, exclusive=True, should_stop=kw.get("should_stop")) as held:
        if held:
            yield from _captured(lm, method, prompt, policy, record, shadow, **kw)


def _captured(lm, method, prompt, policy, record, shadow, **kw) -> Iterator:
    with capture(lm, policy, record=record, method=method) as cap:
        for step in engine.decode(lm, method, prompt, **kw):
            yield step
            yield cap.frame(step, _dense_logits(shadow, cap, method, step))


def _dense_logits(shadow: DenseShadow | None, cap, method, step) -> torch.Tensor | None:
    if shadow is None:
        return None
    if step.kind == "prefill":  # the prefill is dense for every policy: its logits are the dense ones
        shadow.start(method.target.cache, method.target.kv_len)
        return cap.last.logits[-1:]
    tokens = [step.root] + [step.nodes[i].token for i in step.accepted]
    return shadow.logits(tokens)


def run(lm, method, prompt, sparsity: Any = "dense", **kw) -> tuple[list, list[SparsityFrame]]:
    """Decode to the end: (steps, frames)."""
    steps, frames = [], []
    for e in decode(lm, method, prompt, sparsity, **kw):
        (frames if isinstance(e, SparsityFrame) else steps).append(e)
    return steps, frames

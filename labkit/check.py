"""Losslessness check: does a method produce exactly what `model.generate(do_sample=False)` produces?

On a mismatch it explains the first divergent position: the two tokens, the target's top-2 logit margin
there, and whether a float64 re-run of that step sides with the method or with the baseline (a margin
of ~1e-5 that float64 resolves the other way is numerics; a large margin is a bug).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from . import engine
from .models import LM


@dataclass(frozen=True)
class CheckResult:
    prompt: str
    identical: bool
    n_method: int
    n_baseline: int
    position: int | None = None  # first divergent generated-token index
    method_token: str = ""
    baseline_token: str = ""
    margin: float | None = None  # target's top-2 logit gap at that position (fp32)
    fp64_sides_with: str = ""  # "method" | "baseline" | "neither"
    verdict: str = ""

    def line(self) -> str:
        head = self.prompt if len(self.prompt) <= 40 else self.prompt[:37] + "..."
        if self.identical:
            return f"identical      {self.n_method:4d} tokens  {head!r}"
        return (f"NOT identical  first divergence at token {self.position}: method {self.method_token!r} vs "
                f"generate {self.baseline_token!r}; top-2 margin {self.margin:.2e}; float64 sides with "
                f"{self.fp64_sides_with} -> {self.verdict}  {head!r}")


def token_label(lm: LM, token: int) -> str:
    """A token's text for a divergence report; "<end>" where one output has already ended (token -1)."""
    return lm.token_texts([token])[0] if token >= 0 else "<end>"


def first_divergence(tokens: Sequence[int], reference: Sequence[int], *, partial: bool = False) -> int | None:
    """The first output position where `tokens` differ from `reference`, None if they are identical. A length
    difference counts as a divergence at the shorter length, unless `partial` (runs still streaming, or
    stopped): then only the positions both have produced are compared."""
    pos = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    if pos is None and not partial and len(tokens) != len(reference):
        pos = min(len(tokens), len(reference))
    return pos


def greedy_reference(lm: LM, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids], device=lm.device), max_new_tokens=max_new_tokens,
                                do_sample=False, attention_mask=torch.ones(1, len(ids), dtype=torch.long,
                                                                           device=lm.device))
    return out[0, len(ids):].tolist()


@torch.inference_mode()
def _next_logits(model, ids: list[int], device) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]


def _assign(root: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    if leaf in module._parameters:
        module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[leaf] = tensor


@torch.inference_mode()
def fp64_next_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """The next-token logits of `ids` in float64 on the CPU, whatever the model's device, dtype and size.

    A skeleton of the model's class on the meta device receives, in float64 on the CPU, the weights outside the
    decoder layers (embeddings, final norm, head) and each decoder layer's weights only while that layer runs (a
    forward pre-hook copies them in, a forward hook drops them): the peak is those weights plus ONE layer in
    float64, not a float64 copy of the whole model beside it (which a 7B model on a GPU would not fit)."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.config)
    with torch.device("meta"):
        shadow = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="sdpa")
    source = {**dict(model.named_buffers()), **model.state_dict()}  # non-persistent buffers (rotary) too
    converted: dict[int, torch.Tensor] = {}

    def fp64(t: torch.Tensor) -> torch.Tensor:  # a tensor shared under two names (tied head) converts once
        if id(t) not in converted:
            converted[id(t)] = t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype)
        return converted[id(t)]

    layer_of = {}
    # every name, tied ones included (a tied head is its own name here; `fp64` converts the shared tensor once)
    own = ({n for n, _ in shadow.named_parameters(remove_duplicate=False)}
           | {n for n, _ in shadow.named_buffers(remove_duplicate=False)})
    for name in source:
        m = re.match(r"(.*\.layers\.\d+)\.", name)
        if m:
            layer_of.setdefault(m.group(1), []).append(name)
        elif name in own:
            _assign(shadow, name, fp64(source[name]))

    def bring(prefix):
        def pre(module, args, kwargs):
            for name in layer_of[prefix]:
                _assign(shadow, name, source[name].detach().to("cpu", torch.float64))

        def post(module, args, kwargs, output):
            for name in layer_of[prefix]:
                _assign(shadow, name, torch.empty_like(source[name], device="meta", dtype=torch.float64))
        return pre, post

    handles = []
    for prefix in layer_of:
        pre, post = bring(prefix)
        layer = shadow.get_submodule(prefix)
        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    try:
        return shadow(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()


def explain(lm: LM, prefix: list[int], method_tok: int, base_tok: int) -> tuple[float, str, str]:
    """Why the method and generate differ at `prefix`: the target's top-2 margin there, and which side a float64
    re-run of that one step (`fp64_next_logits`, on the CPU) takes."""
    logits = _next_logits(lm.model, prefix, lm.device).float()
    top2 = torch.topk(logits, 2).values
    margin = float(top2[0] - top2[1])
    winner = int(fp64_next_logits(lm.model, prefix).argmax())
    side = "method" if winner == method_tok else "baseline" if winner == base_tok else "neither"
    verdict = ("numerics (near-tie)" if margin < 1e-3 or side == "method"
               else "a bug in the method (large margin, float64 agrees with generate)")
    return margin, side, verdict


def check(lm: LM, method: engine.Method, prompts: Sequence[str], *, max_new_tokens: int = 64,
          chat: bool = True) -> list[CheckResult]:
    results = []
    for prompt in prompts:
        ids = lm.encode(prompt, chat=chat)
        ref = greedy_reference(lm, ids, max_new_tokens)
        got = [t for s in engine.decode(lm, method, ids, max_new_tokens=max_new_tokens, detail=False) for t in s.tokens]
        if got == ref:
            results.append(CheckResult(prompt, True, len(got), len(ref)))
            continue
        pos = first_divergence(got, ref)
        m_tok = got[pos] if pos < len(got) else -1
        b_tok = ref[pos] if pos < len(ref) else -1
        margin, side, verdict = explain(lm, ids + ref[:pos], m_tok, b_tok)
        results.append(CheckResult(prompt, False, len(got), len(ref), pos, token_label(lm, m_tok),
                                   token_label(lm, b_tok), margin,
                                   side, verdict))
    return results

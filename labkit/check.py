"""Losslessness check: does a method produce exactly what `model.generate(do_sample=False)` produces?

On a mismatch it explains the first divergent position: the two tokens, the target's top-2 logit margin
there, and whether a float64 re-run of that step sides with the method or with the baseline (a margin
of ~1e-5 that float64 resolves the other way is numerics; a large margin is a bug).
"""
from __future__ import annotations

import copy
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


def explain(lm: LM, prefix: list[int], method_tok: int, base_tok: int, fp64_model=None) -> tuple[float, str, str]:
    logits = _next_logits(lm.model, prefix, lm.device).float()
    top2 = torch.topk(logits, 2).values
    margin = float(top2[0] - top2[1])
    model64 = fp64_model if fp64_model is not None else copy.deepcopy(lm.model).to(torch.float64)
    winner = int(_next_logits(model64, prefix, lm.device).argmax())
    side = "method" if winner == method_tok else "baseline" if winner == base_tok else "neither"
    verdict = ("numerics (near-tie)" if margin < 1e-3 or side == "method"
               else "a bug in the method (large margin, float64 agrees with generate)")
    return margin, side, verdict


def check(lm: LM, method: engine.Method, prompts: Sequence[str], *, max_new_tokens: int = 64,
          chat: bool = True) -> list[CheckResult]:
    results = []
    fp64 = None
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
        if fp64 is None:
            fp64 = copy.deepcopy(lm.model).to(torch.float64)
        margin, side, verdict = explain(lm, ids + ref[:pos], m_tok, b_tok, fp64)
        results.append(CheckResult(prompt, False, len(got), len(ref), pos, token_label(lm, m_tok),
                                   token_label(lm, b_tok), margin,
                                   side, verdict))
    return results

"""Token provenance: which committed token came from an accepted draft and which from the target itself.

Provenance values: "draft" (an accepted draft token), "bonus" (the target's own token ending a speculative
round), "autoregressive" (a baseline / strategy token), "prefill" (the first token, read off the prompt).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .trace import Step

DRAFT, BONUS, AUTOREGRESSIVE, PREFILL = "draft", "bonus", "autoregressive", "prefill"


@dataclass(frozen=True)
class Span:
    token: int
    text: str
    provenance: str
    step: int


def spans(steps: Iterable[Step], *, autoregressive: bool = False) -> list[Span]:
    """One span per committed token, in order. Token texts come from the steps (recorded with detail=True);
    without detail a step's whole text delta becomes one span."""
    out: list[Span] = []
    for s in steps:
        if s.kind == "prefill":
            out.append(Span(s.tokens[0], s.bonus_text or s.text, PREFILL, s.index))
            continue
        path_tokens = [s.nodes[i] for i in s.accepted][: len(s.tokens)]
        if s.nodes and (s.bonus_text or not s.tokens):
            for n in path_tokens:
                out.append(Span(n.token, n.text, DRAFT, s.index))
            if len(s.tokens) > len(path_tokens):
                out.append(Span(s.bonus, s.bonus_text, AUTOREGRESSIVE if autoregressive else BONUS, s.index))
        elif not s.nodes and s.bonus_text:
            out.append(Span(s.bonus, s.bonus_text, AUTOREGRESSIVE if autoregressive else BONUS, s.index))
        else:
            prov = DRAFT if len(path_tokens) else (AUTOREGRESSIVE if autoregressive else BONUS)
            out.append(Span(s.tokens[-1] if s.tokens else -1, s.text, prov, s.index))
    return out


def text(steps: Iterable[Step]) -> str:
    return "".join(s.text for s in steps)

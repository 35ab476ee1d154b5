"""Acceptance rules as pure functions over verified trees.

Notation, fixed for all of labkit:
- p: the TARGET model's distribution (after temperature / top-k / top-p), the one we must preserve.
- q: the DRAFT distribution a candidate token x was drawn from. Draft sources without a distribution
  (Token Recycling, prompt lookup, ...) are point masses: q = one-hot(x).
- Verify positions: 0 is the root, i + 1 is node i (see `labkit.tree`). `p[j]` is the target's
  distribution for the children of verify position j; `q[i]` is the draft distribution node i was drawn from.

Rules:
- `greedy_tree`: longest path whose every token equals the target argmax; the bonus is the argmax after it.
- `rejection_tree`: standard speculative sampling generalised to trees by recursive rejection over
  siblings (SpecInfer; RSD when siblings were drawn without replacement). At a node with target
  distribution p and candidates x_1..x_m: accept x_j with probability min(1, p(x_j) / q(x_j)); on rejection
  set p <- norm(max(0, p - q)) (and, without replacement, q <- q with x_j removed, renormalised). If every
  candidate is rejected the bonus token is drawn from the final residual p. With point-mass drafts this is
  sampling without replacement from p, so any deterministic tree stays lossless.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import tree as T
from .trace import ACCEPTED, BONUS_ARGMAX, BONUS_RESIDUAL, BONUS_SAMPLED, NOT_REACHED, REJECTED


@dataclass
class Decision:
    status: str = NOT_REACHED
    reason: str = ""
    accept_prob: float | None = None
    draw: float | None = None


@dataclass
class Outcome:
    path: list[int]  # accepted node indices, root to leaf
    bonus: int
    bonus_how: str
    decisions: list[Decision]


def _mark_unreached(decisions: list[Decision], parents: Sequence[int]) -> None:
    for i, p in enumerate(parents):
        d = decisions[i]
        if d.status == NOT_REACHED:
            parent_ok = p < 0 or decisions[p].status == ACCEPTED
            d.reason = "a sibling was accepted first" if parent_ok else "parent not accepted"


def greedy_tree(parents: Sequence[int], tokens: Sequence[int], target_argmax: Sequence[int],
                label: Callable[[int], str] = str) -> Outcome:
    """`target_argmax[j]` is the target's argmax at verify position j (length n + 1)."""
    kids = T.children(parents)
    decisions = [Decision() for _ in parents]
    path: list[int] = []
    pos = 0
    while True:
        want = target_argmax[pos]
        nxt = None
        for c in kids[pos]:
            if nxt is None and tokens[c] == want:
                decisions[c] = Decision(ACCEPTED, "matches the target argmax")
                nxt = c
            elif nxt is None:
                decisions[c] = Decision(REJECTED, f"argmax was {label(want)!r}")
        if nxt is None:
            _mark_unreached(decisions, parents)
            return Outcome(path, int(want), BONUS_ARGMAX, decisions)
        path.append(nxt)
        pos = nxt + 1


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)); falls back to p if the residual vanishes numerically (p == q: never rejected)."""
    r = torch.clamp(p - q, min=0)
    s = r.sum()
    return r / s if s > 1e-12 else p


def rejection_tree(parents: Sequence[int], tokens: Sequence[int], p: torch.Tensor, q: torch.Tensor | None,
                   generator: torch.Generator, *, without_replacement: bool = False) -> Outcome:
    """Recursive rejection sampling down a tree. `p` is [n+1, V]; `q` is [n, V] (row i: the distribution
    node i was drawn from; siblings share it) or None for point-mass drafts."""
    kids = T.children(parents)
    decisions = [Decision() for _ in parents]
    path: list[int] = []
    pos = 0
    while True:
        p_cur = p[pos].clone()
        q_cur = q[kids[pos][0]].clone() if (q is not None and kids[pos]) else None
        nxt = None
        for c in kids[pos]:
            x = tokens[c]
            qx = 1.0 if q_cur is None else float(q_cur[x])
            px = float(p_cur[x])
            ratio = px / qx if qx > 0 else 0.0
            u = float(torch.rand((), generator=generator, device=p.device))
            a = min(1.0, ratio)
            if u < ratio:
                decisions[c] = Decision(ACCEPTED, f"u={u:.2f} < p/q={ratio:.2f}", a, u)
                nxt = c
                break
            decisions[c] = Decision(REJECTED, f"u={u:.2f} >= p/q={ratio:.2f}", a, u)
            if q_cur is None:
                p_cur[x] = 0.0
                s = p_cur.sum()
                p_cur = p_cur / s if s > 1e-12 else p[pos]
            else:
                p_cur = residual(p_cur, q_cur)
                if without_replacement:
                    q_cur[x] = 0.0
                    s = q_cur.sum()
                    q_cur = q_cur / s if s > 1e-12 else q_cur
        if nxt is None:
            _mark_unreached(decisions, parents)
            how = BONUS_RESIDUAL if kids[pos] else BONUS_SAMPLED
            bonus = int(torch.multinomial(p_cur, 1, generator=generator))
            return Outcome(path, bonus, how, decisions)
        path.append(nxt)
        pos = nxt + 1


def sample(p: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(p, 1, generator=generator))

"""Metrics from Steps: one function for every method and the baseline.

Definitions (also shown in the views' legends):
- new_tokens: tokens committed, prefill's first token included.
- target_forwards: target-model forward passes, the prefill included.
- mean_accept_len: tokens committed per target forward in the decode rounds (prefill excluded), the bonus
  token included; autoregressive decoding scores exactly 1.0. (Spec-Bench's "accept length".)
- draft_acceptance_rate: accepted draft tokens / drafted tokens.
- per_depth: at depth d, (rounds that accepted a token at depth d) / (rounds that tried a token at depth d
  on the accepted path). A round tries depth d when its path reached d-1 and a child was drafted there.
  A CONDITIONAL rate (given the path reached d-1).
- vLLM's spec-decode counters, under vLLM's names: num_drafts (decode rounds that drafted at least one token),
  num_draft_tokens (= drafted; for a tree every node counts), num_accepted_tokens (= accepted),
  num_accepted_tokens_per_pos[i] (rounds whose accepted path reached position i + 1, i.e. depth i + 1).
  per_position = num_accepted_tokens_per_pos / num_drafts is vLLM's UNCONDITIONAL per-position acceptance rate.
- accept_hist[L]: number of decode rounds that accepted exactly L draft tokens.
- tokens_per_s: new_tokens / the summed wall time of all rounds (prefill included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .trace import ACCEPTED, REJECTED, Step


# how mean acceptance length is counted, said wherever it is shown
MAL_NOTE = ("mean acceptance length = tokens committed per target forward pass in the decode rounds, "
            "bonus token included (autoregressive = 1.00)")


@dataclass(frozen=True)
class Metrics:
    new_tokens: int
    target_forwards: int
    draft_forwards: int
    rounds: int
    mean_accept_len: float
    drafted: int
    accepted: int
    draft_acceptance_rate: float
    per_depth: tuple[tuple[int, float, int], ...]  # (depth, rate, attempts)
    accept_hist: tuple[int, ...]
    wall: float
    tokens_per_s: float
    phase: tuple[tuple[str, float], ...]  # summed seconds per phase
    num_drafts: int = 0  # vLLM's counters (see the module docstring)
    num_accepted_tokens_per_pos: tuple[int, ...] = ()

    @property
    def per_position(self) -> tuple[float, ...]:
        """vLLM's unconditional per-position acceptance rate: accepted at position i / drafts."""
        return tuple(n / self.num_drafts for n in self.num_accepted_tokens_per_pos) if self.num_drafts else ()

    def as_dict(self) -> dict:
        return {"new_tokens": self.new_tokens, "target_forwards": self.target_forwards,
                "draft_forwards": self.draft_forwards, "rounds": self.rounds,
                "mean_accept_len": self.mean_accept_len, "draft_acceptance_rate": self.draft_acceptance_rate,
                "per_depth": [list(x) for x in self.per_depth], "accept_hist": list(self.accept_hist),
                "wall": self.wall, "tokens_per_s": self.tokens_per_s, "phase": dict(self.phase),
                "num_drafts": self.num_drafts, "num_draft_tokens": self.drafted,
                "num_accepted_tokens": self.accepted,
                "num_accepted_tokens_per_pos": list(self.num_accepted_tokens_per_pos),
                "per_position": list(self.per_position)}


def compute(steps: Iterable[Step]) -> Metrics:
    steps = list(steps)
    decode = [s for s in steps if s.kind == "decode"]
    new_tokens = sum(len(s.tokens) for s in steps)
    target_forwards = sum(s.target_forwards for s in steps)
    draft_forwards = sum(s.draft_forwards for s in steps)
    dec_tokens = sum(len(s.tokens) for s in decode)
    dec_forwards = sum(s.target_forwards for s in decode)
    drafted = sum(len(s.nodes) for s in decode)
    # accepted draft tokens: the accepted path (SpecTr can show two accepted nodes holding one token); a
    # strategy round has no path, its one chosen candidate is the accepted node
    accepted = sum(len(s.accepted) or sum(1 for n in s.nodes if n.status == ACCEPTED) for s in decode)
    max_depth = max((n.depth for s in decode for n in s.nodes), default=0)
    hits = [0] * (max_depth + 1)
    tries = [0] * (max_depth + 1)
    hist = [0] * (max_depth + 1)
    for s in decode:
        acc_depth = len(s.accepted)
        hist[acc_depth] += 1
        for d in range(1, acc_depth + 1):
            hits[d] += 1
            tries[d] += 1
        if any(n.status == REJECTED and n.depth == acc_depth + 1 for n in s.nodes):
            tries[acc_depth + 1] += 1
    per_depth = tuple((d, hits[d] / tries[d], tries[d]) for d in range(1, max_depth + 1) if tries[d])
    wall = sum(s.timing.total for s in steps)
    phase = tuple((k, sum(getattr(s.timing, k) for s in steps)) for k in ("draft", "verify", "accept", "commit"))
    return Metrics(new_tokens=new_tokens, target_forwards=target_forwards, draft_forwards=draft_forwards,
                   rounds=len(decode), mean_accept_len=dec_tokens / dec_forwards if dec_forwards else 0.0,
                   drafted=drafted, accepted=accepted,
                   draft_acceptance_rate=accepted / drafted if drafted else 0.0, per_depth=per_depth,
                   accept_hist=tuple(hist), wall=wall, tokens_per_s=new_tokens / wall if wall > 0 else 0.0,
                   phase=phase, num_drafts=sum(1 for s in decode if s.nodes),
                   num_accepted_tokens_per_pos=tuple(hits[1:]))


def format_metrics(m: Metrics) -> str:
    depth = " ".join(f"d{d}={r:.0%}" for d, r, _ in m.per_depth[:8]) or "-"
    return (f"{m.new_tokens} tokens in {m.wall:.2f} s = {m.tokens_per_s:.1f} tok/s | target forwards {m.target_forwards}"
            f" | mean acceptance length {m.mean_accept_len:.2f} tokens/forward (bonus token included)"
            f" | draft acceptance {m.accepted}/{m.drafted} = {m.draft_acceptance_rate:.0%}"
            f" | per depth {depth} (conditional)")

"""Hardware-aware sizing: how many draft tokens to verify per round on THIS device, for THIS acceptance.

A verify pass over n drafted nodes (n + 1 query tokens, the root included) costs t(n) seconds; it commits on
average E(n) tokens (the bonus token included, so E(0) = 1: plain decoding). The best draft size maximises

    E(n) / (t(n) + c(n))        c(n) = the method's own drafting/bookkeeping cost per round (0 for n = 0)

over n = 0 .. N. On a GPU t(n) is nearly flat up to tens of tokens, so big trees pay; on a small CPU it climbs
early, so small trees (or no draft at all) win. n = 0 is always a candidate, so a method whose drafts stop
paying degrades to plain decoding instead of running slower than it.

Pieces (each usable on its own):
- `LatencyCurve` / `latency_curve(lm)` (in `labkit.latency`, importable from here): t(n), measured once per
  (model, device, dtype, threads, path) and cached. `curve.points()` feeds `views.latency_curve`.
- `RankAcceptance`: per-depth, per-rank hit rates for rank-ordered trees (Token Recycling, static templates):
  P(the rank-r candidate under a node is the target's next token | the node was reached). Token Recycling
  measures it for EVERY verified position (root and nodes, accepted or not), so unexplored branches get
  estimates too. Exponentially forgotten, with a prior, backing off from deep to shallow depths.
- `ChainAcceptance`: per-depth conditional acceptance for chains (prompt lookup, draft models).
- `choose(expected, latency, overhead)`: the argmax above; `TreeSizer` and `ChainSizer` wire it all together.
- Probes: when plain decoding wins, a non-empty draft is still verified now and then so the estimate of deeper
  levels stays fresh, spaced by `probe_interval` so that probing costs at most 2% of decoding time.

Plugging a draft method in (prompt lookup does exactly this; see docs/benchmark.md):

    self.sizer = sizing.ChainSizer(lm, max_len=p.draft_len)          # in __init__ (measures lazily)
    n = self.sizer.length()                                          # in propose: the draft length to use
    ... draft up to n tokens ...; Proposal(state={..., "sizing": self.sizer.state()})
    self.sizer.observe(len(prop.tokens), len(v.path))                # in observe
    self.sizer.overhead.add(seconds)                                 # optional: the method's own cost per round
                                                                     # (timed with self.sizer.clock())
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .latency import (SIZES, LatencyCurve, cpu_clock, expected_speedup, ideal_seconds, latency_curve,  # noqa: F401
                      measure, synchronize)


# ---- the decision ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Choice:
    nodes: int  # drafted nodes to verify (0 = plain decoding)
    expected_tokens: float  # E(n): tokens committed per round, bonus included
    seconds: float  # t(n) + c(n)
    tokens_per_s: float  # expected_tokens / seconds
    plain_tokens_per_s: float  # 1 / t(0)

    def state(self) -> dict:
        return {"nodes": self.nodes, "expected_tokens": round(self.expected_tokens, 3),
                "round_ms": round(self.seconds * 1e3, 3), "expected_speedup": round(
                    self.tokens_per_s / self.plain_tokens_per_s, 3) if self.plain_tokens_per_s else None}


def choose(expected: Sequence[float], latency: Sequence[float], overhead: float | Sequence[float] = 0.0,
           min_nodes: int = 0) -> Choice:
    """Pick n >= min_nodes maximising expected[n] / (latency[n] + overhead[n]) (overhead only counts for n > 0).

    `expected[n]` = E(tokens per round) with n drafted nodes (expected[0] = 1); `latency[n]` = t(n). Ties go to
    the smaller n."""
    m = min(len(expected), len(latency))
    if m == 0:
        raise ValueError("choose() needs at least expected[0] and latency[0]")
    exp = np.asarray(expected[:m], dtype=float)
    lat = np.asarray(latency[:m], dtype=float)
    over = np.broadcast_to(np.asarray(overhead, dtype=float), (m,)) if np.ndim(overhead) == 0 else \
        np.asarray(overhead[:m], dtype=float)
    cost = lat + np.where(np.arange(m) > 0, over, 0.0)
    rate = exp / np.maximum(cost, 1e-12)
    lo = min(min_nodes, m - 1)
    top = rate[lo:].max()
    best = lo + int(np.argmax(rate[lo:] >= top * (1 - 1e-9)))  # first (smallest) n within rounding of the max
    return Choice(nodes=best, expected_tokens=float(exp[best]), seconds=float(cost[best]),
                  tokens_per_s=float(rate[best]), plain_tokens_per_s=float(rate[0]))


PROBE_BUDGET = 0.02  # probing may cost at most this share of plain decoding's time


def probe_interval(probe: Choice, plain_seconds: float, budget: float = PROBE_BUDGET, cap: int = 512) -> int:
    """Rounds between probes when plain decoding was chosen. A probe verifies the best non-empty draft anyway, so
    that the acceptance estimates of depths that only a draft can observe stay fresh. Its expected loss against
    plain decoding is t(n) + c(n) - E(n) x t(0) seconds (the time a probe round takes minus the time plain
    decoding needs for the tokens it is expected to commit); spacing probes loss / (budget x t(0)) rounds apart
    keeps what probing costs at `budget` of the decoding time, however steep the latency curve is. A probe that
    is expected to lose nothing may come every round; none comes closer than every `cap` rounds."""
    if plain_seconds <= 0:
        return 1
    loss = probe.seconds - probe.expected_tokens * plain_seconds
    if loss <= 0:
        return 1
    return int(min(cap, max(1, np.ceil(loss / (budget * plain_seconds)))))


# ---- acceptance models -----------------------------------------------------------------------------

class RankAcceptance:
    """P(rank-r candidate is the target's token | its parent was reached), per child depth d (1..max_depth).

    Counts are exponentially forgotten (`decay` per update) so the estimate follows a warming matrix. The rate
    at depth d shrinks towards the rate at depth d - 1 (and depth 1 towards `prior`) with `strength`
    pseudo-observations, so depths with few observations borrow from shallower ones."""

    def __init__(self, k: int, max_depth: int = 8, prior: Sequence[float] = (), strength: float = 8.0,
                 decay: float = 0.98):
        self.k, self.max_depth, self.strength, self.decay = k, max_depth, strength, decay
        base = list(prior)[:k] + [(prior[-1] if prior else 0.01)] * max(0, k - len(prior))
        self.prior = np.asarray(base, dtype=float)
        self.hits = np.zeros((max_depth + 1, k))
        self.trials = np.zeros(max_depth + 1)

    def reset(self) -> None:
        self.hits[:] = 0
        self.trials[:] = 0

    def update(self, child_depth: Sequence[int], hit_rank: Sequence[int]) -> None:
        """One observation per verified position: its children's depth and the rank whose token matched the
        target's next token there (-1: none did, e.g. an unknown row)."""
        self.hits *= self.decay
        self.trials *= self.decay
        d = np.minimum(np.asarray(child_depth, dtype=int), self.max_depth)
        r = np.asarray(hit_rank, dtype=int)
        np.add.at(self.trials, d, 1.0)
        ok = (r >= 0) & (r < self.k)
        np.add.at(self.hits, (d[ok], r[ok]), 1.0)

    def rates(self) -> np.ndarray:
        """[max_depth + 1, k]: row d = rates at child depth d (row 0 unused)."""
        out = np.zeros((self.max_depth + 1, self.k))
        prev = self.prior
        for d in range(1, self.max_depth + 1):
            out[d] = (self.hits[d] + self.strength * prev) / (self.trials[d] + self.strength)
            prev = out[d]
        return np.clip(out, 0.0, 1.0)

    def path_probs(self, paths: Sequence[tuple[int, ...]]) -> np.ndarray:
        """P(every node on the path is accepted) for each template path, as a product of rates."""
        rates = self.rates()
        out = np.ones(len(paths))
        for i, path in enumerate(paths):
            for depth, rank in enumerate(path, start=1):
                out[i] *= rates[min(depth, self.max_depth), rank] if rank < self.k else 0.0
        return out

    def state(self) -> dict:
        r = self.rates()
        return {"rank_rates_d1": [round(float(x), 3) for x in r[1]],
                "rank0_by_depth": [round(float(x), 3) for x in r[1:, 0]],
                "observations_d1": round(float(self.trials[1]), 1)}


class ChainAcceptance:
    """Per-depth conditional acceptance of chain drafts: c_d = P(token d accepted | tokens < d accepted)."""

    def __init__(self, max_len: int, prior: float = 0.5, strength: float = 4.0, decay: float = 0.98):
        self.max_len, self.prior, self.strength, self.decay = max_len, prior, strength, decay
        self.hits = np.zeros(max_len + 1)
        self.trials = np.zeros(max_len + 1)

    def reset(self) -> None:
        self.hits[:] = 0
        self.trials[:] = 0

    def update(self, proposed: int, accepted: int) -> None:
        """A round that drafted `proposed` tokens of which the first `accepted` were accepted."""
        self.hits *= self.decay
        self.trials *= self.decay
        tried = min(proposed, accepted + 1, self.max_len)
        self.trials[1:tried + 1] += 1
        self.hits[1:min(accepted, self.max_len) + 1] += 1

    def update_first(self, hit: bool) -> None:
        """A free depth-1 observation: the draft was not verified (n = 0 chosen), but whether its first token
        equals the token the target produced is known after the round."""
        self.hits *= self.decay
        self.trials *= self.decay
        self.trials[1] += 1
        self.hits[1] += float(hit)

    def conditional(self) -> np.ndarray:
        out = np.zeros(self.max_len + 1)
        prev = self.prior
        for d in range(1, self.max_len + 1):
            out[d] = (self.hits[d] + self.strength * prev) / (self.trials[d] + self.strength)
            prev = out[d]
        return np.clip(out, 0.0, 1.0)

    def expected(self) -> np.ndarray:
        """E(tokens per round) for draft lengths 0..max_len: 1 + sum_d prod_{j<=d} c_j."""
        c = self.conditional()
        c[0] = 1.0
        return 1.0 + np.concatenate([[0.0], np.cumsum(np.cumprod(c[1:]))])


# ---- sizers: what a method holds ---------------------------------------------------------------------

@dataclass
class Overhead:
    """Exponential moving average of a method's own per-round cost (drafting, tree building, bookkeeping)."""

    alpha: float = 0.1
    seconds: float = 0.0
    seen: int = 0

    def add(self, seconds: float) -> None:
        if self.seen >= 5:  # a preempted round is not the method's cost: clip outliers
            seconds = min(seconds, 3 * self.seconds)
        self.seconds = seconds if self.seen == 0 else (1 - self.alpha) * self.seconds + self.alpha * seconds
        self.seen += 1


@dataclass
class _Lazy:
    lm: object
    max_nodes: int
    curve: LatencyCurve | None = None
    table: np.ndarray | None = None

    def get(self) -> np.ndarray:
        if self.table is None:
            self.curve = latency_curve(self.lm, max_tokens=max(2, self.max_nodes + 1))
            self.table = self.curve.table(self.max_nodes)
        return self.table


def clock_for(lm) -> Callable[[], float]:
    """The clock a method times its own overhead with: the same one the latency curve was measured with."""
    device = getattr(lm, "device", None)
    return (cpu_clock(device) if device is not None else None) or time.perf_counter


class TreeSizer:
    """Chooses the tree (size AND shape) for rank-ordered templates: the template paths ordered by estimated
    probability of acceptance, cut at the size that maximises expected tokens per second."""

    def __init__(self, lm, candidates: Sequence[tuple[int, ...]], k: int, max_nodes: int,
                 prior: Sequence[float] = (), every: int = 4, curve: LatencyCurve | None = None,
                 probe: float = PROBE_BUDGET):
        self.candidates = [tuple(c) for c in candidates]
        self.max_nodes = min(max_nodes, len(self.candidates))
        depth = max((len(c) for c in self.candidates), default=1)
        self.acceptance = RankAcceptance(k, max_depth=depth, prior=prior)
        self.overhead = Overhead()
        self.clock = clock_for(lm)
        self.every = every
        self._lat = _Lazy(lm, self.max_nodes, curve, curve.table(self.max_nodes) if curve is not None else None)
        self.probe = probe
        self._rounds = 0
        self._current: tuple[list[tuple[int, ...]], Choice] | None = None
        self._probing = False
        self._idle = 0  # rounds in a row without a draft

    @property
    def curve(self) -> LatencyCurve:
        self._lat.get()
        return self._lat.curve

    def use_curve(self, curve: LatencyCurve) -> None:
        """Decide on `curve` instead of this device's measured one (tests, what-if teaching)."""
        self._lat = _Lazy(self._lat.lm, self._lat.max_nodes, curve, curve.table(self._lat.max_nodes))
        self._current = None

    def reset(self) -> None:
        self.acceptance.reset()
        self._current = None
        self._rounds = 0
        self._idle = 0

    def choose(self) -> tuple[list[tuple[int, ...]], Choice]:
        """The template paths to draft this round (prefix-closed, BFS order) and the decision behind them."""
        if self._current is None or self._rounds % self.every == 0 or self._probing:  # a probe lasts one round
            probs = self.acceptance.path_probs(self.candidates)
            order = sorted(range(len(self.candidates)),
                           key=lambda i: (-probs[i], len(self.candidates[i]), self.candidates[i]))
            ranked = [self.candidates[i] for i in order][: self.max_nodes]
            expected = 1.0 + np.concatenate([[0.0], np.cumsum(probs[order][: self.max_nodes])])
            table = self._lat.get()
            choice, self._probing = _decide(expected, table, self.overhead.seconds, self.probe, self._idle)
            paths = _prefix_closed(ranked[: choice.nodes])
            self._current = (sorted(paths, key=lambda c: (len(c), c)), choice)
        self._rounds += 1
        self._idle = 0 if self._current[1].nodes else self._idle + 1
        return self._current

    def state(self) -> dict:
        choice = self._current[1] if self._current else None
        out = choice.state() if choice else {}
        out["overhead_ms"] = round(self.overhead.seconds * 1e3, 3)
        if getattr(self, "_probing", False):
            out["probe"] = True
        return out


class ChainSizer:
    """Chooses the draft length of chain drafts (prompt lookup, draft models, ...)."""

    def __init__(self, lm, max_len: int, prior: float = 0.5, every: int = 1, curve: LatencyCurve | None = None,
                 probe: float = PROBE_BUDGET):
        self.max_len = max_len
        self.acceptance = ChainAcceptance(max_len, prior=prior)
        self.overhead = Overhead()
        self.clock = clock_for(lm)
        self.every = every
        self.probe = probe
        self._lat = _Lazy(lm, max_len, curve, curve.table(max_len) if curve is not None else None)
        self._rounds = 0
        self._current: Choice | None = None
        self._probing = False
        self._idle = 0  # rounds in a row without a draft

    @property
    def curve(self) -> LatencyCurve:
        self._lat.get()
        return self._lat.curve

    def use_curve(self, curve: LatencyCurve) -> None:
        """Decide on `curve` instead of this device's measured one (tests, what-if teaching)."""
        self._lat = _Lazy(self._lat.lm, self._lat.max_nodes, curve, curve.table(self._lat.max_nodes))
        self._current = None

    def reset(self) -> None:
        self.acceptance.reset()
        self._current = None
        self._rounds = 0
        self._idle = 0

    def length(self) -> int:
        if self._current is None or self._rounds % self.every == 0:
            expected, table = self.acceptance.expected(), self._lat.get()
            self._current, self._probing = _decide(expected, table, self.overhead.seconds, self.probe, self._idle)
        self._rounds += 1
        self._idle = 0 if self._current.nodes else self._idle + 1
        return self._current.nodes

    def observe(self, proposed: int, accepted: int) -> None:
        if proposed > 0:
            self.acceptance.update(proposed, accepted)

    def state(self) -> dict:
        out = self._current.state() if self._current else {}
        out["overhead_ms"] = round(self.overhead.seconds * 1e3, 3)
        if self._probing:
            out["probe"] = True
        return out


def _decide(expected, table, overhead: float, budget: float, idle: int) -> tuple[Choice, bool]:
    """The size to draft, and whether this round is a probe: plain decoding was chosen, but `idle` rounds in a
    row without a draft reached the probe interval that `budget` allows (see `probe_interval`)."""
    choice = choose(expected, table, overhead)
    if choice.nodes or not budget or len(expected) < 2:
        return choice, False
    alt = choose(expected, table, overhead, min_nodes=1)
    if idle + 1 >= probe_interval(alt, float(table[0]), budget):
        return alt, True
    return choice, False


def _prefix_closed(paths: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Drop paths whose parent path is missing (cannot happen when rates are <= 1, kept as a guard)."""
    kept: set[tuple[int, ...]] = set()
    for p in sorted(paths, key=len):
        if len(p) == 1 or p[:-1] in kept:
            kept.add(p)
    return [p for p in paths if p in kept]


__all__ = ["LatencyCurve", "latency_curve", "measure", "choose", "Choice", "probe_interval", "PROBE_BUDGET",
           "RankAcceptance", "ChainAcceptance",
           "TreeSizer", "ChainSizer", "Overhead", "ideal_seconds", "expected_speedup", "synchronize", "SIZES"]

"""Hardware-aware sizing: how many draft tokens to verify per round on THIS device, for THIS acceptance.

A verify pass over n drafted nodes (n + 1 query tokens, the root included) costs t(n) seconds; it commits on
average E(n) tokens (the bonus token included, so E(0) = 1: plain decoding). The best draft size maximises

    E(n) / (t(n) + c(n))        c(n) = the method's own drafting/bookkeeping cost per round (0 for n = 0)

over n = 0 .. N. On a GPU t(n) is nearly flat up to tens of tokens, so big trees pay; on a small CPU it climbs
early, so small trees (or no draft at all) win. n = 0 is always a candidate, so a method whose drafts stop
paying degrades to plain decoding instead of running slower than it.

Pieces (each usable on its own):
- `LatencyCurve` / `latency_curve(lm)`: t(n) measured once per (model, device, dtype, threads) with a real
  tree verify pass through `engine.Target`, cached in memory (on the method) and on disk under
  `<labkit cache>/sizing/` (`refresh=True` re-measures). `curve.points()` feeds `views.latency_curve`.
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

import hashlib
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import backends

# Query-token counts measured (the root included); t(n) for other sizes is interpolated linearly.
SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 81)
CACHE_VERSION = 4


# ---- the latency curve -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyCurve:
    """Seconds of one verify forward over `tokens[i]` query tokens (root + drafted nodes): the fastest of the
    repeats (contention only ever adds time), made non-decreasing in the token count."""

    tokens: tuple[int, ...]
    seconds: tuple[float, ...]
    key: str = ""
    kv_len: int = 0
    samples: tuple[tuple[int, float], ...] = ()  # every timed forward, (tokens, seconds)
    measured_at: str = ""
    load: float | None = None  # 1-minute load average when it was measured (CPU contention shows here)

    def t(self, nodes: int) -> float:
        """Seconds for a verify pass with `nodes` drafted nodes (nodes + 1 query tokens)."""
        return float(np.interp(nodes + 1, self.tokens, self.seconds)) if nodes + 1 <= self.tokens[-1] else \
            self.seconds[-1] + (nodes + 1 - self.tokens[-1]) * self._last_slope()

    def _last_slope(self) -> float:
        if len(self.tokens) < 2:
            return 0.0
        return max(0.0, (self.seconds[-1] - self.seconds[-2]) / (self.tokens[-1] - self.tokens[-2]))

    def table(self, max_nodes: int) -> np.ndarray:
        """t(0), t(1), ..., t(max_nodes)."""
        return np.array([self.t(n) for n in range(max_nodes + 1)])

    def points(self) -> list[tuple[int, float]]:
        """(query tokens, seconds) pairs, every timed forward: what `views.latency_curve` draws."""
        return [tuple(p) for p in self.samples] or list(zip(self.tokens, self.seconds))

    def ratios(self) -> list[tuple[int, float]]:
        return [(n, s / self.seconds[0]) for n, s in zip(self.tokens, self.seconds)]

    def to_json(self) -> dict:
        d = asdict(self)
        d["version"] = CACHE_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict) -> "LatencyCurve":
        return cls(tokens=tuple(int(x) for x in d["tokens"]), seconds=tuple(float(x) for x in d["seconds"]),
                   key=d.get("key", ""), kv_len=int(d.get("kv_len", 0)),
                   samples=tuple((int(a), float(b)) for a, b in d.get("samples", ())),
                   measured_at=d.get("measured_at", ""), load=d.get("load"))

    def describe(self) -> str:
        return " ".join(f"{n}:{s * 1e3:.0f}ms" for n, s in zip(self.tokens, self.seconds))


def curve_key(lm) -> str:
    """What the curve depends on: model (and its shape), device, dtype, backend, CPU threads, torch version."""
    cfg = lm.config
    shape = [getattr(cfg, a, None) for a in ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
                                              "num_attention_heads", "num_key_value_heads", "vocab_size")]
    dev = lm.device
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.machine()}x{os.cpu_count()}"
    backend = backends.current(lm.model)
    raw = json.dumps([lm.name, shape, str(dev), str(lm.dtype), backend, torch.get_num_threads(), torch.__version__,
                      where])
    digest = hashlib.sha1(raw.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(lm.name))[-40:]
    return f"{safe}-{str(lm.dtype).replace('torch.', '')}-{dev.type}-{backend}-{digest}"


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (timing on CUDA needs it; a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_clock(device: torch.device):
    """`time.process_time` when the model runs on the CPU with ONE torch thread: then the process's CPU time is
    the forward's own cost, unaffected by other jobs taking turns on the cores (wall time is not). None
    otherwise (on a GPU, or with several threads whose spin-waits would count as CPU time)."""
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else None


def _bench_tree(nodes: int) -> list[int]:
    """A bushy tree (node i hangs under node i // 2 - 1): exercises the 4D tree mask like real drafts do."""
    return [(i + 1) // 2 - 1 for i in range(nodes)]


@torch.inference_mode()
def measure(lm, sizes: Sequence[int] = SIZES, *, kv_len: int = 256, repeats: int = 7) -> LatencyCurve:
    """Time one verify forward per size (tree mask, `kv_len` tokens of context), `repeats` rounds over all
    sizes, each round in a new random order (so drift and the scheduler's time slices hit every size alike),
    after a warm-up. Per size the minimum (noise from other
    work on the machine only ever adds time), then a running maximum over sizes (more tokens never cost less
    in the model; an occasional cheaper big GEMM is not worth betting a tree on)."""
    from .engine import Target

    sizes = sorted({int(s) for s in sizes if s >= 1})
    if not sizes or sizes[0] != 1:
        sizes = [1] + sizes
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    kv_len = max(1, min(kv_len, lm.max_length - sizes[-1] - 1))
    prefix = torch.randint(0, vocab, (kv_len,), generator=gen).tolist()
    draft = torch.randint(0, vocab, (sizes[-1],), generator=gen).tolist()
    target = Target(lm)
    target.prefill(prefix)
    root = prefix[-1]
    clock = cpu_clock(lm.device) or time.perf_counter

    def once(q_tokens: int) -> float:
        nodes = q_tokens - 1
        synchronize(lm.device)
        t0 = clock()
        target.verify(root, draft[:nodes], _bench_tree(nodes))
        synchronize(lm.device)
        dt = clock() - t0
        target.cache.crop(-(nodes + 1))  # back to the prefix
        return dt

    for s in (1, sizes[len(sizes) // 2], sizes[-1], 1):  # warm-up: allocator, kernels, caches
        once(s)
    samples: list[tuple[int, float]] = []
    order = random.Random(0)
    for _ in range(repeats):
        for s in order.sample(sizes, len(sizes)):
            samples.append((s, once(s)))
    samples.sort(key=lambda x: x[0])
    best = np.maximum.accumulate([min(t for n, t in samples if n == s) for s in sizes]).tolist()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return LatencyCurve(tokens=tuple(sizes), seconds=tuple(best), key=curve_key(lm), kv_len=kv_len,
                        samples=tuple(samples), measured_at=time.strftime("%Y-%m-%d %H:%M:%S"), load=load)


def cache_path(key: str) -> Path:
    from .models import cache_dir

    return cache_dir() / "sizing" / f"{key}.json"


def latency_curve(lm, *, refresh: bool = False, max_tokens: int = SIZES[-1], log: Callable[[str], None] | None = None
                  ) -> LatencyCurve:
    """The model's latency curve on its device: read from the labkit cache dir, else measured (a few seconds)
    and saved. `refresh=True` measures again (e.g. after the machine got quieter)."""
    key = curve_key(lm)
    path = cache_path(key)
    if not refresh and path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") == CACHE_VERSION and data["tokens"][-1] >= min(max_tokens, SIZES[-1]) \
                and not _quieter_now(data.get("load"), lm.device):
            return LatencyCurve.from_json(data)
    if log is not None:
        log(f"[labkit] measuring {lm.name}'s verify latency for 1..{max_tokens} tokens on "
            f"{lm.device} ({str(lm.dtype).replace('torch.', '')}); cached afterwards")
    sizes = [s for s in SIZES if s < max_tokens] + [max_tokens]
    curve = measure(lm, sizes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(curve.to_json()), encoding="utf-8")
    os.replace(tmp, path)
    return curve


def _quieter_now(load_then: float | None, device: torch.device) -> bool:
    """A CPU curve measured while the machine was oversubscribed (load above the core count) is re-measured
    once the load has at least halved: contention inflates and distorts it."""
    if device.type != "cpu" or load_then is None or not hasattr(os, "getloadavg"):
        return False
    cores = os.cpu_count() or 1
    return load_then > cores and os.getloadavg()[0] < load_then / 2


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


def ideal_seconds(node_counts: Sequence[int], curve: LatencyCurve) -> float:
    """Seconds the verify passes alone would take for rounds with these tree sizes (the latency model)."""
    table = curve.table(max(node_counts, default=0))
    return float(sum(table[n] for n in node_counts))


def expected_speedup(steps, curve: LatencyCurve | None) -> float | None:
    """What the latency curve predicts for a run's decode rounds: committed tokens x t(plain step) / the summed
    t(tree) of the verify passes actually run (1.0 for plain decoding), i.e. the speedup if drafting and
    bookkeeping cost nothing. None without a curve or decode rounds."""
    decode = [s for s in steps if s.kind == "decode"]
    if curve is None or not decode:
        return None
    ideal = ideal_seconds([len(s.nodes) for s in decode], curve)
    return sum(len(s.tokens) for s in decode) * curve.t(0) / ideal if ideal > 0 else None


__all__ = ["LatencyCurve", "latency_curve", "measure", "choose", "Choice", "probe_interval", "PROBE_BUDGET",
           "RankAcceptance", "ChainAcceptance",
           "TreeSizer", "ChainSizer", "Overhead", "ideal_seconds", "expected_speedup", "synchronize", "SIZES"]


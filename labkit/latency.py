"""The latency curve: t(n), the seconds one verify pass over n drafted nodes (n + 1 query tokens) takes on THIS
device, measured once per (model, device, dtype, threads, execution path) with a real tree verify pass through
`engine.Target`, bracketed by device synchronisation, and cached on disk under `<labkit cache>/sizing/`
(`refresh=True` re-measures). It is labkit's one latency measurement: the sizers (`labkit.sizing`), the
bench, the app's expected speedups and the notebooks all read it.
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
from .devices import device_name, synchronize


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
    where = device_name(dev) if dev.type != "cpu" else f"{platform.machine()}x{os.cpu_count()}"
    backend = backends.current(lm.model)
    raw = json.dumps([lm.name, shape, str(dev), str(lm.dtype), backend, torch.get_num_threads(), torch.__version__,
                      where])
    digest = hashlib.sha1(raw.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(lm.name))[-40:]
    return f"{safe}-{str(lm.dtype).replace('torch.', '')}-{dev.type}-{backend}-{digest}"


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


def ideal_seconds(node_counts: Sequence[int], curve: LatencyCurve) -> float:
    """Seconds the verify passes alone would take for rounds with these tree sizes (the latency model)."""
    table = curve.table(max(node_counts, default=0))
    return float(sum(table[n] for n in node_counts))


def expected_speedup(steps, curve: LatencyCurve | None, *, with_draft: bool = False) -> float | None:
    """What the latency curve predicts for a run's decode rounds: committed tokens x t(plain step) / the summed
    t(tree) of the verify passes actually run (1.0 for plain decoding), i.e. the speedup if drafting and
    bookkeeping cost nothing. `with_draft=True` also charges the drafting, at its measured cost relative to the
    verify passes of the same rounds (drafting time / verify time, both on the run's clock, so a machine busier
    during the run than when the curve was measured does not inflate it): the prediction for this draft as it ran
    (a self-drafting method pays for its own forward passes). None without a curve or decode rounds."""
    decode = [s for s in steps if s.kind == "decode"]
    if curve is None or not decode:
        return None
    ideal = ideal_seconds([len(s.nodes) for s in decode], curve)
    verify = sum(s.timing.verify for s in decode)
    if with_draft and verify > 0:
        ideal *= 1 + sum(s.timing.draft for s in decode) / verify
    return sum(len(s.tokens) for s in decode) * curve.t(0) / ideal if ideal > 0 else None


def draft_share(steps) -> float:
    """The share of the decode rounds' wall time spent drafting (0 when there is none)."""
    decode = [s for s in steps if s.kind == "decode"]
    total = sum(s.timing.total for s in decode)
    return sum(s.timing.draft for s in decode) / total if total > 0 else 0.0


DRAFT_SHARE_SHOWN = 0.05  # below this share of the decode time, drafting is a lookup and the verify passes are the cost


def predicted(steps, curve: LatencyCurve | None) -> tuple[float, float | None] | None:
    """The curve's prediction for a run, the one rule every view uses: (if drafting were free, with its drafting
    charged), the second None when drafting took under DRAFT_SHARE_SHOWN of the decode time (a lookup: the
    verify passes are the cost). None without a curve or decode rounds."""
    free = expected_speedup(steps, curve)
    if free is None:
        return None
    if draft_share(steps) < DRAFT_SHARE_SHOWN:
        return free, None
    return free, expected_speedup(steps, curve, with_draft=True)


def expected_text(steps, curve: LatencyCurve | None) -> str | None:
    """The curve's prediction for a run in a few words: "×1.09" when drafting is cheap, else "×0.61 with its
    drafting (×1.09 if free)". None without a curve or decode rounds."""
    pred = predicted(steps, curve)
    if pred is None:
        return None
    free, drafted = pred
    return f"×{free:.2f}" if drafted is None else f"×{drafted:.2f} with its drafting (×{free:.2f} if free)"

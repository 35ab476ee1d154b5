"""`labkit bench memory`: method state and process memory while generating long outputs."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from .measure import Spec, _load, state_bytes
from .questions import load_questions, select


# ---- memory ----------------------------------------------------------------------------------------------

def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def kv_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def memory_check(lm, specs: list[Spec], args) -> int:
    """Each method generates `--tokens` tokens (EOS ignored) on one long-answer question; RSS is sampled as it
    goes. Growth after the first 10% of the tokens minus the KV cache's growth should be ~0."""
    import gc

    from .. import engine, methods

    free_lm = _without_eos(lm)
    q = select(load_questions(), 1, ["mt_bench"])[0]
    ids = lm.encode(q["turns"][0])
    rows = []
    for s in specs:
        if s.traced:
            continue
        m = methods.create(s.name, free_lm, dict(s.params))
        gc.collect()
        marks = []
        n = 0
        t0 = time.perf_counter()
        for step in engine.decode(free_lm, m, ids, max_new_tokens=args.tokens, detail=False):
            n += len(step.tokens)
            if not marks or n >= marks[-1][0] + max(args.tokens // 20, 1) or step.finished:
                marks.append((n, rss_bytes(), kv_bytes(m.target.cache) if m.target is not None else 0))
        wall = time.perf_counter() - t0
        start = next(mk for mk in marks if mk[0] >= args.tokens // 10)
        end = marks[-1]
        row = {"method": s.label, "tokens": n, "seconds": wall, "state_bytes": state_bytes(m),
               "rss_start": start[1], "rss_end": end[1], "kv_start": start[2], "kv_end": end[2],
               "growth_beyond_kv": (end[1] - start[1]) - (end[2] - start[2]), "marks": marks}
        rows.append(row)
        print(f"{s.label:28s} {n} tokens in {wall:.0f} s | state {row['state_bytes'] / 2**20:.2f} MiB | RSS "
              f"{start[1] / 2**20:.0f} -> {end[1] / 2**20:.0f} MiB (from token {start[0]}) | KV "
              f"{start[2] / 2**20:.1f} -> {end[2] / 2**20:.1f} MiB | growth beyond KV "
              f"{row['growth_beyond_kv'] / 2**20:+.1f} MiB", flush=True)
        del m
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "dtype": str(lm.dtype), "tokens": args.tokens,
                                              "load": _load(), "rows": rows}, indent=1), encoding="utf-8")
    return 0


def _without_eos(lm):
    """The same model, with no end-of-sequence token (for fixed-length generations)."""
    from ..models import LM

    class NoEOS(LM):
        @property
        def eos_ids(self) -> frozenset[int]:
            return frozenset()

    return NoEOS(**{f.name: getattr(lm, f.name) for f in dataclasses.fields(LM)})

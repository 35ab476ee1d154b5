"""`labkit bench`: Spec-Bench questions, every method against the autoregressive baseline in one process.

Questions: Spec-Bench (Xia et al., "Unlocking Efficiency in Large Language Model Inference: A Comprehensive
Survey of Speculative Decoding", 2024), 480 questions, Apache-2.0, copied into labkit/data/spec_bench with
its license. Categories: mt_bench (the 80 MT-Bench questions), translation, summarization, qa,
math_reasoning, rag. The first turn of each question is used.

    labkit bench --methods autoregressive,prompt_lookup,token_recycling --n 10 --out runs/fp32.jsonl
    labkit bench --shard 0/4 --out runs/s0.jsonl ...   # four independent shards (alike machines) ...
    labkit bench merge runs/s*.jsonl --out runs/all.jsonl             # ... merged into one file and report
    labkit bench memory --methods token_recycling --tokens 2000       # method state and RSS growth

Per question, in one process and interleaved (the order rotates question by question, so drift in machine
speed hits every method alike): `model.generate(do_sample=False)`, the autoregressive baseline through the
labkit engine, every requested method, and (with --trace-overhead) the same methods again with full tracing
(per-node detail + a JSON-lines trace written). Timed regions are bracketed by device synchronisation.

Output: one JSON line per (question, method) with Spec-Bench's field names (`question_id`, `category`,
`model_id`, `choices: [{turns, new_tokens, wall_time, accept_lengths, decoding_steps}]`) plus labkit's own
(`labkit: {...}`); a line is flushed as soon as it is measured, so an interrupted run resumes where it stopped
(lines already in --out are skipped). A sidecar `<out>.meta.jsonl` records each invocation (machine, load,
latency curve, method state sizes). The report (`<out>.md`, `<out>.html` with plotly.js inlined, and
per-method Spec-Bench files under `<out>.spec_bench/`) is computed by `summarize` — one function for every
method, the baseline and `model.generate` alike.

Definitions (the report repeats them):
- tokens/s = the sum of new tokens / the sum of wall times (prefill included) over the questions;
- speedup = a method's tokens/s / the autoregressive baseline's tokens/s (same run, same process, same
  questions); "vs generate" divides by `model.generate`'s instead;
- mean acceptance length = tokens committed per target forward in decode rounds (Spec-Bench's accept length);
- efficiency = measured decode-phase speedup / ideal speedup, ideal = (decode tokens / the latency model's
  time for the verify passes actually run) x t(plain forward); 1.0 = no per-round overhead beyond the forward.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from . import metrics as M

CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
BASELINE = "autoregressive"
GENERATE = "generate"  # stock model.generate on the stock, untransformed model: what a user would run instead
GENERATE_PLD = "generate+pld"  # the peer: transformers' own prompt lookup, generate(prompt_lookup_num_tokens=10)
PLD_TOKENS = 10
TRACE_SUFFIX = "+trace"


def load_questions() -> list[dict]:
    path = resources.files("labkit").joinpath("data/spec_bench/question.jsonl")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            q["bench_category"] = "mt_bench" if q["category"] in MT_BENCH else q["category"]
            out.append(q)
    return out


def select(questions: list[dict], n: int, categories: Sequence[str] = CATEGORIES) -> list[dict]:
    """The first n questions of each category, in category order."""
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r}; Spec-Bench has {', '.join(CATEGORIES)}")
    out = []
    for c in categories:
        out.extend([q for q in questions if q["bench_category"] == c][:n])
    return out


def shard(questions: list[dict], spec: str | None) -> list[dict]:
    """`i/k`: every k-th question starting at i (0-based). Shards are disjoint and together cover the set."""
    if not spec:
        return questions
    try:
        i, k = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/k (e.g. 0/4), got {spec!r}") from None
    if not (k >= 1 and 0 <= i < k):
        raise ValueError(f"--shard {spec}: need 0 <= i < k")
    return questions[i::k]


# ---- method specs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """A method as the benchmark runs it: `name` or `name:param=value:param=value` (the label)."""

    label: str
    name: str
    params: tuple[tuple[str, str], ...] = ()
    traced: bool = False

    @classmethod
    def parse(cls, text: str) -> "Spec":
        from . import methods
        from .params import build, parse_assignments

        parts = [p.strip() for p in text.strip().split(":")]
        name, params = parts[0], parse_assignments([p for p in parts[1:] if p])
        cls_ = methods.get(name)
        build(cls_.Params, params)  # fail fast on a bad name or value
        return cls(label=text.strip(), name=name, params=tuple(sorted(params.items())))

    def with_trace(self) -> "Spec":
        return dataclasses.replace(self, label=self.label + TRACE_SUFFIX, traced=True)


def parse_specs(methods_arg: str, trace_arg: str) -> list[Spec]:
    labels = [m.strip() for m in methods_arg.split(",") if m.strip()]
    specs = [Spec.parse(m) for m in labels]
    if BASELINE not in [s.label for s in specs]:
        specs.insert(0, Spec.parse(BASELINE))
    seen = set()
    for s in specs:
        if s.label in seen:
            raise ValueError(f"method {s.label!r} listed twice")
        seen.add(s.label)
    wanted = [t.strip() for t in (trace_arg or "").split(",") if t.strip()]
    if wanted == ["all"]:
        wanted = [s.label for s in specs]
    unknown = [t for t in wanted if t not in seen]
    if unknown:
        raise ValueError(f"--trace-overhead {unknown[0]!r} is not one of the benchmarked methods")
    return specs + [s.with_trace() for s in specs if s.label in wanted]


# ---- measuring one question --------------------------------------------------------------------------

def state_bytes(method) -> int:
    """Memory a method keeps across prompts (e.g. Token Recycling's matrix): its own `state_bytes()` or the
    tensors and arrays among its attributes."""
    own = getattr(method, "state_bytes", None)
    if callable(own):
        return int(own())
    total = 0
    for key, value in vars(method).items():
        if key in ("lm", "target", "params"):
            continue
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
    return total


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _record(q: dict, spec_label: str, method_name: str, params: dict, model_id: str, text: str, tokens: list[int],
            wall: float, accept_lengths: list[int], extra: dict) -> dict:
    return {"question_id": q["question_id"], "category": q["category"], "bench_category": q["bench_category"],
            "model_id": model_id, "method": spec_label, "method_name": method_name, "params": params,
            "choices": [{"index": 0, "turns": [text], "new_tokens": [len(tokens)], "wall_time": [wall],
                         "accept_lengths": accept_lengths, "decoding_steps": [len(accept_lengths)]}],
            "tokens": tokens, "tstamp": time.time(), "labkit": extra}


def run_method(lm, method, spec: Spec, q: dict, ids: list[int], *, max_new_tokens: int, sampling, curve,
               model_id: str) -> dict:
    """One question through the labkit engine, timed from outside (device-synchronised)."""
    from . import engine, sizing
    from .trace import TraceWriter

    sizing.synchronize(lm.device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    steps = engine.decode(lm, method, ids, max_new_tokens=max_new_tokens, sampling=sampling, detail=spec.traced)
    if spec.traced:
        with tempfile.TemporaryDirectory() as tmp:
            with TraceWriter(Path(tmp) / "trace.jsonl", {"method": spec.name, "prompt_ids": ids}) as w:
                seen = []
                for s in steps:
                    w.write(s)
                    seen.append(s)
        steps = seen
    else:
        steps = list(steps)
    sizing.synchronize(lm.device)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    m = M.compute(steps)
    decode = [s for s in steps if s.kind == "decode"]
    nodes = [len(s.nodes) for s in decode]
    chosen = [s.state["sizing"]["nodes"] for s in decode if isinstance(s.state.get("sizing"), dict)
              and "nodes" in s.state["sizing"]]
    extra = {**m.as_dict(), "wall_outside": wall, "cpu_time": cpu, "load": _load(),
             "decode_tokens": sum(len(s.tokens) for s in decode),
             "decode_wall": sum(s.timing.total for s in decode),
             "ideal_decode_seconds": sizing.ideal_seconds(nodes, curve) if curve is not None else None,
             "nodes_per_round": float(np.mean(nodes)) if nodes else 0.0,
             "sizing_nodes": _histogram(chosen), "finished": steps[-1].finished if steps else "",
             "prompt_tokens": len(ids), "traced": spec.traced}
    text = "".join(s.text for s in steps)
    return _record(q, spec.label, spec.name, dict(spec.params), model_id, text, [t for s in steps for t in s.tokens],
                   wall, [len(s.tokens) for s in decode], extra)


def run_generate(lm, q: dict, ids: list[int], *, max_new_tokens: int, sampling, model_id: str,
                 label: str = GENERATE) -> dict:
    """`model.generate` on the same prompt, on the STOCK model (the backend is switched to 'stock' for the call):
    the reference speed (greedy unless sampling is on). `label=GENERATE_PLD`: with transformers' prompt lookup."""
    from . import backends, sizing
    from . import sampling as S

    x = torch.tensor([ids], device=lm.device)
    mask = torch.ones_like(x)
    kwargs = S.generate_kwargs(sampling)
    if label == GENERATE_PLD:
        kwargs["prompt_lookup_num_tokens"] = PLD_TOKENS
    if not sampling.greedy:
        torch.manual_seed(sampling.seed)
    with backends.use(lm.model, "stock"):
        sizing.synchronize(lm.device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(x, attention_mask=mask, max_new_tokens=max_new_tokens, **kwargs)
        sizing.synchronize(lm.device)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    tokens = out[0, len(ids):].tolist()
    eos = lm.eos_ids
    cut = next((i + 1 for i, t in enumerate(tokens) if t in eos), len(tokens))
    tokens = tokens[:cut]
    n = len(tokens)
    pld = label == GENERATE_PLD  # its forwards and acceptance happen inside generate, unseen
    extra = {"new_tokens": n, "target_forwards": None if pld else n, "draft_forwards": 0, "rounds": max(n - 1, 0),
             "mean_accept_len": None if pld else (1.0 if n > 1 else 0.0), "draft_acceptance_rate": 0.0, "per_depth": [],
             "accept_hist": [max(n - 1, 0)], "wall": wall, "tokens_per_s": n / wall if wall else 0.0, "phase": {},
             "wall_outside": wall, "cpu_time": cpu, "load": _load(), "decode_tokens": None, "decode_wall": None,
             "ideal_decode_seconds": None, "nodes_per_round": 0.0, "sizing_nodes": {}, "prompt_tokens": len(ids),
             "traced": False, "finished": "eos" if tokens and tokens[-1] in eos else "length"}
    return _record(q, label, label, {}, model_id, lm.decode(tokens), tokens, wall, [1] * max(n - 1, 0), extra)


def _histogram(values: Iterable[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


# ---- files -------------------------------------------------------------------------------------------

def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a bench JSONL file; a final line cut off mid-write (an interrupted run) is dropped."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    lines = p.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # partial last line
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return out


def _truncate_partial(path: Path) -> None:
    """Drop a partial last line (so appended records start on a fresh line)."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_meta(out: str | os.PathLike) -> list[dict]:
    return read_records(str(out) + ".meta.jsonl")


def merge(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[dict]:
    """Combine shard files into `out` (records de-duplicated by (question, method), first wins; sorted by
    question id then method) and their sidecars into `out.meta.jsonl`."""
    seen = set()
    records = []
    metas = []
    for p in paths:
        for r in read_records(p):
            key = (r["question_id"], r["method"])
            if key not in seen:
                seen.add(key)
                records.append(r)
        metas.extend(read_meta(p))
    records.sort(key=lambda r: (r["question_id"], r["method"]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    Path(str(out) + ".meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas), encoding="utf-8")
    return records


# ---- the one metrics function --------------------------------------------------------------------------

def summarize(records: Sequence[dict], t_plain: float | None = None) -> dict:
    """Aggregate metrics of one method over some questions. The same function for every method, the
    autoregressive baseline and `model.generate`."""
    new_tokens = sum(sum(r["choices"][0]["new_tokens"]) for r in records)
    wall = sum(sum(r["choices"][0]["wall_time"]) for r in records)
    accept = [a for r in records for a in r["choices"][0]["accept_lengths"]]
    hits: dict[int, float] = {}
    tries: dict[int, float] = {}
    for r in records:
        for d, rate, n in r["labkit"].get("per_depth", []):
            hits[int(d)] = hits.get(int(d), 0.0) + rate * n
            tries[int(d)] = tries.get(int(d), 0.0) + n
    dec_tok = [r["labkit"].get("decode_tokens") for r in records]
    dec_wall = [r["labkit"].get("decode_wall") for r in records]
    ideal = [r["labkit"].get("ideal_decode_seconds") for r in records]
    have_decode = records and all(x is not None for x in dec_tok + dec_wall)
    sizes: dict[str, int] = {}
    for r in records:
        for k, v in r["labkit"].get("sizing_nodes", {}).items():
            sizes[k] = sizes.get(k, 0) + v
    loads = [r["labkit"].get("load") for r in records if r["labkit"].get("load") is not None]
    nodes = [r["labkit"].get("nodes_per_round", 0.0) * len(r["choices"][0]["accept_lengths"]) for r in records]
    cpu = [r["labkit"].get("cpu_time") for r in records]
    cpu_total = sum(cpu) if records and all(c is not None for c in cpu) else None
    out = {
        "questions": len(records), "new_tokens": new_tokens, "wall": wall,
        "tokens_per_s": new_tokens / wall if wall > 0 else 0.0,
        "tokens_per_cpu_s": new_tokens / cpu_total if cpu_total else None,
        "mean_accept_len": float(np.mean(accept)) if accept else 0.0,
        "per_depth": {d: hits[d] / tries[d] for d in sorted(tries) if tries[d] > 0},
        "decode_tokens_per_s": (sum(dec_tok) / sum(dec_wall)) if have_decode and sum(dec_wall) > 0 else None,
        "ideal_decode_tokens_per_s": (sum(dec_tok) / sum(ideal)) if have_decode and all(
            x is not None for x in ideal) and sum(ideal) > 0 else None,
        "nodes_per_round": sum(nodes) / len(accept) if accept else 0.0,
        "sizing_nodes": sizes,
        "sizing_mode": int(max(sizes, key=lambda k: sizes[k])) if sizes else None,
        "load": float(np.mean(loads)) if loads else None,
    }
    if records and all(r["method"] == GENERATE_PLD for r in records):
        # transformers' prompt lookup runs inside generate: its acceptance is not observable from outside
        out["mean_accept_len"], out["per_depth"] = None, {}
    if t_plain and out["ideal_decode_tokens_per_s"] is not None:
        out["ideal_speedup"] = out["ideal_decode_tokens_per_s"] * t_plain
    return out


def identical_rate(records: Sequence[dict], reference: dict[int, list[int]]) -> tuple[int, int]:
    """(questions whose tokens equal the reference's, questions compared)."""
    same = [r["tokens"] == reference[r["question_id"]] for r in records if r["question_id"] in reference]
    return sum(same), len(same)


def table(records: Sequence[dict], t_plain: float | None = None) -> list[dict]:
    """One row per (method, category) plus "overall": every metric of the report."""
    labels = list(dict.fromkeys(r["method"] for r in records))
    cats = [c for c in CATEGORIES if any(r["bench_category"] == c for r in records)]
    rows = []
    for cat in cats + ["overall"]:
        rs = [r for r in records if cat == "overall" or r["bench_category"] == cat]
        by = {lab: [r for r in rs if r["method"] == lab] for lab in labels}
        # ratios only over questions every compared method has (resumed / partial runs stay fair)
        base_q = {r["question_id"] for r in by.get(BASELINE, [])}
        gen_q = {r["question_id"] for r in by.get(GENERATE, [])}
        ref_ar = {r["question_id"]: r["tokens"] for r in by.get(BASELINE, [])}
        ref_gen = {r["question_id"]: r["tokens"] for r in by.get(GENERATE, [])}
        for lab in labels:
            if not by[lab]:
                continue
            s = summarize(by[lab], t_plain)
            row = {"method": lab, "category": cat, **s}
            mine = {r["question_id"] for r in by[lab]}
            row["speedup"] = _ratio(by[lab], by.get(BASELINE, []), mine & base_q, t_plain)
            row["speedup_vs_generate"] = _ratio(by[lab], by.get(GENERATE, []), mine & gen_q, t_plain)
            row["identical_vs_baseline"] = identical_rate(by[lab], ref_ar)
            row["identical_vs_generate"] = identical_rate(by[lab], ref_gen)
            if lab.endswith(TRACE_SUFFIX):
                plain = lab[: -len(TRACE_SUFFIX)]
                common = mine & {r["question_id"] for r in by.get(plain, [])}
                ratio = _ratio(by[lab], by.get(plain, []), common, t_plain)
                row["tracing_overhead"] = 1 - ratio["tokens_per_s"] if ratio else None
                row["tracing_overhead_cpu"] = 1 - ratio["cpu"] if ratio and ratio.get("cpu") else None
            rows.append(row)
    return rows


def _ratio(mine: Sequence[dict], base: Sequence[dict], questions: set, t_plain: float | None) -> dict | None:
    if not questions:
        return None
    a = summarize([r for r in mine if r["question_id"] in questions], t_plain)
    b = summarize([r for r in base if r["question_id"] in questions], t_plain)
    out = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else float("nan")}
    if a["tokens_per_cpu_s"] and b["tokens_per_cpu_s"]:
        out["cpu"] = a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]
    if a["decode_tokens_per_s"] and b["decode_tokens_per_s"]:
        out["decode"] = a["decode_tokens_per_s"] / b["decode_tokens_per_s"]
        if a.get("ideal_speedup") and b.get("ideal_speedup"):
            ideal = a["ideal_speedup"] / b["ideal_speedup"]
            out["ideal"] = ideal
            out["efficiency"] = out["decode"] / ideal if ideal > 0 else None
            if out.get("cpu"):
                out["efficiency_cpu"] = out["cpu"] / ideal if ideal > 0 else None
    return out


# ---- the report ----------------------------------------------------------------------------------------

def _f(x, fmt="{:.2f}", none="-"):
    return none if x is None else fmt.format(x)


def latency_curves(meta: Sequence[dict]) -> dict[str, dict]:
    """{backend: curve} of the newest run in `meta`: the backend the methods ran on first, then 'stock'."""
    m = next((m for m in reversed(list(meta)) if m.get("latency_curve")), None)
    if m is None:
        return {}
    out = {m["latency_curve"].get("backend") or m.get("backend") or "measured": m["latency_curve"]}
    if m.get("latency_curve_stock"):
        out["stock"] = m["latency_curve_stock"]
    return out


def markdown(rows: list[dict], meta: Sequence[dict] = ()) -> str:
    lines = []
    if meta:
        m = meta[-1]
        lines.append(f"model **{m.get('model')}**, {m.get('dtype')} on {m.get('device')} ({m.get('machine')}), "
                     f"methods on the {m.get('backend', 'stock')} path, `generate` rows on the stock model; "
                     f"max_new_tokens {m.get('max_new_tokens')}; {m.get('sampling')}; warm-up {m.get('warmup')} "
                     f"questions; load average at start "
                     f"{', '.join(str(x.get('load_start')) for x in meta if x.get('phase') != 'end')}")
        lines.append("")
    head = ("| category | method | questions | tokens/s | speedup vs AR | vs generate | CPU-time speedup vs AR | "
            "vs generate (CPU) | decode speedup | ideal | "
            "efficiency (wall / CPU) | mean accept len | per-depth acceptance (d1 d2 d3 d4) | nodes/round | sizing picked | "
            "identical vs AR | identical vs generate | tracing overhead (wall / CPU) |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sp = r.get("speedup") or {}
        sg = r.get("speedup_vs_generate") or {}
        depth = " ".join(f"{r['per_depth'].get(d, 0):.2f}" for d in range(1, 5) if d in r["per_depth"]) or "-"
        ia, na = r["identical_vs_baseline"]
        ig, ng = r["identical_vs_generate"]
        lines.append(
            f"| {r['category']} | {r['method']} | {r['questions']} | {r['tokens_per_s']:.1f} | "
            f"{_f(sp.get('tokens_per_s'), '{:.2f}x')} | {_f(sg.get('tokens_per_s'), '{:.2f}x')} | "
            f"{_f(sp.get('cpu'), '{:.2f}x')} | {_f(sg.get('cpu'), '{:.2f}x')} | "
            f"{_f(sp.get('decode'), '{:.2f}x')} | {_f(sp.get('ideal'), '{:.2f}x')} | {_f(sp.get('efficiency'))} / {_f(sp.get('efficiency_cpu'))} | "
            f"{_f(r['mean_accept_len'])} | {depth} | {r['nodes_per_round']:.1f} | {_f(r['sizing_mode'], '{}')} | "
            f"{ia}/{na} | {ig}/{ng} | {_f(r.get('tracing_overhead'), '{:+.1%}')} / "
            f"{_f(r.get('tracing_overhead_cpu'), '{:+.1%}')} |")
    lines.append("")
    lines.append("tokens/s = new tokens / wall time summed over questions (prefill included); speedup = tokens/s "
                 "over the autoregressive baseline's on the same questions in the same process; CPU-time speedup = "
                 "the same with the process's CPU time instead of wall time (meaningful with --threads 1: it "
                 "ignores other jobs taking turns on the cores); decode speedup = "
                 "the same over decode rounds only; ideal = mean acceptance length x t(1 token) / t(tree) from the "
                 "measured latency curve; efficiency = decode speedup / ideal; sizing picked = the tree size / "
                 "draft length the hardware-aware sizing chose most often; tracing overhead = 1 - tokens/s with "
                 "full tracing (per-node detail + trace file) / tokens/s without, same method, same questions.")
    curves = latency_curves(meta)
    if curves:
        first = next(iter(curves.values()))
        lines.append("")
        lines.append("Latency curve per execution path (one verify forward, tree mask, KV "
                     f"{first.get('kv_len')}; fastest of 7 repeats, non-decreasing; ms and ratio to 1 token):")
        lines.append("")
        lines.append("| tokens | " + " | ".join(str(n) for n in first["tokens"]) + " |")
        lines.append("|---|" + "---|" * len(first["tokens"]))
        for name, c in curves.items():
            lines.append(f"| {name} ms | " + " | ".join(f"{s * 1e3:.1f}" for s in c["seconds"]) + " |")
            lines.append(f"| {name} ratio | " + " | ".join(f"{s / c['seconds'][0]:.2f}" for s in c["seconds"]) + " |")
    states = next((m.get("state_bytes") for m in reversed(list(meta)) if m.get("state_bytes")), None)
    if states:
        lines.append("")
        lines.append("Method state kept across prompts: " + ", ".join(
            f"{k} {v / 2**20:.2f} MiB" for k, v in states.items()))
    return "\n".join(lines) + "\n"


def html(rows: list[dict], meta: Sequence[dict] = (), title: str = "labkit bench") -> str:
    """A self-contained page (plotly.js inlined, no CDN): the table and the figures."""
    import plotly.graph_objects as go

    figs = []
    overall = [r for r in rows if r["category"] == "overall" and not r["method"].endswith(TRACE_SUFFIX)]
    labels = [r["method"] for r in overall if r["method"] not in (BASELINE,)]
    cats = list(dict.fromkeys(r["category"] for r in rows))
    fig = go.Figure()
    for lab in labels:
        ys = [next(((r.get("speedup") or {}).get("tokens_per_s") for r in rows
                    if r["method"] == lab and r["category"] == c), None) for c in cats]
        fig.add_trace(go.Bar(name=lab, x=cats, y=ys))
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray")
    fig.update_layout(title="Speedup over the autoregressive baseline (same process)", barmode="group",
                      template="plotly_white", yaxis_title="x baseline tokens/s", height=420)
    figs.append(fig)
    fig = go.Figure()
    for r in overall:
        if r["per_depth"]:
            ds = sorted(r["per_depth"])
            fig.add_trace(go.Scatter(x=ds, y=[r["per_depth"][d] for d in ds], mode="lines+markers", name=r["method"]))
    fig.update_layout(title="Acceptance per depth (overall)", template="plotly_white", xaxis_title="depth",
                      yaxis=dict(title="accepted / tried", range=[0, 1]), height=380)
    figs.append(fig)
    curves = latency_curves(meta)
    if curves:
        fig = go.Figure()
        for name, c in curves.items():
            fig.add_trace(go.Scatter(x=c["tokens"], y=[s * 1e3 for s in c["seconds"]], mode="lines+markers",
                                     name=f"{name}: latency model"))
            if c.get("samples"):
                fig.add_trace(go.Scatter(x=[a for a, _ in c["samples"]], y=[b * 1e3 for _, b in c["samples"]],
                                         mode="markers", marker=dict(size=4, opacity=0.35), name=f"{name}: each forward"))
        fig.update_layout(title="Latency of one verify forward vs tokens in it, per execution path",
                          template="plotly_white", xaxis=dict(title="query tokens (root + drafted nodes)", type="log"),
                          yaxis=dict(title="ms", rangemode="tozero"), height=380)
        figs.append(fig)
    fig = go.Figure()
    for r in overall:
        if r["sizing_nodes"]:
            ks = sorted(r["sizing_nodes"], key=int)
            fig.add_trace(go.Bar(x=[int(k) for k in ks], y=[r["sizing_nodes"][k] for k in ks], name=r["method"]))
    if fig.data:
        fig.update_layout(title="Draft size chosen by the hardware-aware sizing (rounds)", template="plotly_white",
                          xaxis_title="nodes", yaxis_title="rounds", barmode="group", height=360)
        figs.append(fig)
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    md = markdown(rows, meta)
    table_html = _md_table_to_html(md)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:nth-child(-n+2){text-align:left}"
            "</style></head><body><h1>" + title + "</h1>" + table_html + "".join(parts) + "</body></html>")


def _md_table_to_html(md: str) -> str:
    import html as H

    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{H.escape(c)}</{tag}>" for c in cells) + "</tr>")
        else:
            if in_table:
                out.append("</table>")
                in_table = False
            if line.strip():
                out.append(f"<p>{H.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def write_report(out: str | os.PathLike, records: Sequence[dict] | None = None) -> tuple[Path, Path]:
    """`<out>.md`, `<out>.html` and per-method Spec-Bench files `<out>.spec_bench/<model_id>.jsonl`."""
    out = Path(out)
    records = read_records(out) if records is None else records
    meta = read_meta(out)
    curve = next((m.get("latency_curve") for m in reversed(meta) if m.get("latency_curve")), None)
    t_plain = curve["seconds"][0] if curve else None
    rows = table(records, t_plain)
    md_path, html_path = out.with_suffix(".md"), out.with_suffix(".html")
    md_path.write_text(markdown(rows, meta), encoding="utf-8")
    html_path.write_text(html(rows, meta, title=f"labkit bench: {out.name}"), encoding="utf-8")
    split = Path(str(out.with_suffix("")) + ".spec_bench")
    split.mkdir(parents=True, exist_ok=True)
    by_model: dict[str, list[dict]] = {}
    for r in records:
        by_model.setdefault(r["model_id"], []).append(r)
    for model_id, rs in by_model.items():
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in model_id)
        (split / f"{safe}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs),
                                             encoding="utf-8")
    return md_path, html_path


# ---- the command ---------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("action", nargs="?", default="run", choices=("run", "merge", "report", "memory", "latency"),
                   help="run (default): benchmark; merge FILES: combine shard outputs and report; report FILE: "
                        "re-write the report; memory: method state and RSS growth over a long generation; "
                        "latency: measure and print the latency curve")
    p.add_argument("files", nargs="*", help="with merge / report: bench JSONL files")
    p.add_argument("--methods", default="autoregressive,prompt_lookup:sizing=auto,token_recycling",
                   help="comma-separated methods, each `name` or `name:param=value:...` "
                        "(the autoregressive baseline is always run)")
    p.add_argument("--n", type=int, default=3, help="questions per category")
    p.add_argument("--categories", default=",".join(CATEGORIES))
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2,
                   help="questions (not among the measured ones) run first by every method and not counted; they "
                        "also warm Token Recycling's matrix")
    p.add_argument("--seed", type=int, default=0, help="torch seed; sampling seeds are seed + question id")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--out", default=None, help="output JSONL (default runs/bench/<model>-<dtype>[-shard].jsonl); "
                                               "lines already there are skipped (resume)")
    p.add_argument("--fresh", action="store_true", help="overwrite --out instead of resuming")
    p.add_argument("--shard", default=None, metavar="I/K", help="run only every K-th question from the I-th")
    p.add_argument("--no-generate", action="store_true", help="skip the model.generate reference")
    p.add_argument("--no-peer", action="store_true",
                   help=f"skip the {GENERATE_PLD} row (stock generate with prompt_lookup_num_tokens={PLD_TOKENS})")
    p.add_argument("--trace-overhead", default="", metavar="METHODS",
                   help="also run these methods (or 'all') with full tracing, to measure its cost")
    p.add_argument("--remeasure-latency", action="store_true",
                   help="measure the latency curve again instead of reading the cached one")
    p.add_argument("--tokens", type=int, default=2000, help="with memory: tokens to generate")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice). On an oversubscribed CPU, 1 avoids OpenMP "
                        "threads waiting on each other; the latency curve is cached per thread count")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="auto: spread a model larger than one device over all of them (accelerate)")
    p.add_argument("--sparsity", default=None, metavar="POLICIES",
                   help="benchmark KV-sparsity policies instead (comma-separated; see labkit.sparsity)")
    __import__("labkit.sparsity.bench", fromlist=["add_arguments"]).add_arguments(p)  # --budgets etc. (issue 4)


def _default_out(args, lm) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(args.model)).name)
    suffix = f"-shard{args.shard.replace('/', 'of')}" if args.shard else ""
    return f"runs/bench/{name}-{str(lm.dtype).replace('torch.', '')}{suffix}.jsonl"


def main(args) -> int:
    if getattr(args, "sparsity", None):
        from .sparsity import bench as sparsity_bench  # the KV-sparsity benchmark (issue 4)

        return sparsity_bench.main(args)
    action = getattr(args, "action", "run")
    if action in ("merge", "report"):
        return _merge_or_report(args, action)
    specs = parse_specs(args.methods, getattr(args, "trace_overhead", ""))
    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be at least 1")
    questions = shard(select(load_questions(), args.n, [c.strip() for c in args.categories.split(",") if c.strip()]),
                      args.shard)
    from .models import load

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    lm = load(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
              device_map=getattr(args, "device_map", None), backend=getattr(args, "backend", "auto"))
    if action == "latency":
        return _latency(lm, args)
    if action == "memory":
        return memory_check(lm, specs, args)
    return _run(lm, specs, questions, args)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _latency(lm, args) -> int:
    from . import sizing

    curve = sizing.latency_curve(lm, refresh=args.remeasure_latency, log=_log)
    print(f"{lm.name} {lm.dtype} on {lm.device}, KV {curve.kv_len}, measured {curve.measured_at} "
          f"(load {curve.load})")
    for n, s in zip(curve.tokens, curve.seconds):
        print(f"{n:4d} tokens {s * 1e3:8.2f} ms  x{s / curve.seconds[0]:.2f}")
    return 0


def _run(lm, specs: list[Spec], questions: list[dict], args) -> int:
    from . import methods, sizing
    from .session import sampling_config

    torch.manual_seed(args.seed)
    out = Path(args.out or _default_out(args, lm))
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for p in (out, Path(str(out) + ".meta.jsonl")):
            if p.exists():
                p.unlink()
    _truncate_partial(out)
    done = {(r["question_id"], r["method"]) for r in read_records(out)}
    from . import backends

    references = [] if args.no_generate else [GENERATE] + ([] if getattr(args, "no_peer", False) else [GENERATE_PLD])
    labels = references + [s.label for s in specs]
    todo = [q for q in questions if any((q["question_id"], lab) not in done for lab in labels)]
    dtype = str(lm.dtype).replace("torch.", "")
    curve = sizing.latency_curve(lm, refresh=args.remeasure_latency, log=_log)
    stock_curve = None
    if lm.backend != "stock":  # the report shows both execution paths' curves side by side
        with backends.use(lm.model, "stock"):
            stock_curve = sizing.latency_curve(lm, refresh=args.remeasure_latency, log=_log)
    instances = {s.label: methods.create(s.name, lm, dict(s.params)) for s in specs}
    meta = {"model": args.model, "dtype": dtype, "device": str(lm.device), "machine": _machine(lm),
            "backend": lm.backend,
            "max_new_tokens": args.max_new_tokens, "warmup": args.warmup, "seed": args.seed,
            "sampling": "greedy" if args.temperature == 0 else f"T={args.temperature}",
            "methods": labels, "shard": args.shard, "questions": len(questions), "todo": len(todo),
            "load_start": _load(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "latency_curve": {**curve.to_json(), "samples": [list(x) for x in curve.samples], "backend": lm.backend},
            "latency_curve_stock": {**stock_curve.to_json(), "samples": [list(x) for x in stock_curve.samples],
                                    "backend": "stock"} if stock_curve is not None else None,
            "command": " ".join(sys.argv)}
    _log(f"labkit bench: {lm.name} ({dtype}, {lm.device}); {len(questions)} questions ({len(todo)} to run, "
         f"{len(questions) - len(todo)} done in {out}); methods {', '.join(labels)}; max_new_tokens "
         f"{args.max_new_tokens}; load {meta['load_start']}")
    chosen = {q["question_id"] for q in select(load_questions(), args.n, CATEGORIES)}
    warm = [q for q in load_questions() if q["question_id"] not in chosen][: max(args.warmup, 0)] if todo else []
    for q in warm:  # not counted: allocator, kernels, Token Recycling's matrix, the sizing's acceptance estimate
        ids = lm.encode(q["turns"][0])
        for s in specs:
            # a method may offer `warm_up()`, a context manager for its warm-up (Token Recycling: big trees)
            hook = getattr(instances[s.label], "warm_up", None)
            with hook() if callable(hook) else contextlib.nullcontext():
                run_method(lm, instances[s.label], s, q, ids, max_new_tokens=args.max_new_tokens,
                           sampling=sampling_config(args.temperature, seed=args.seed), curve=curve,
                           model_id="warmup")
        for ref in references:
            run_generate(lm, q, ids, max_new_tokens=args.max_new_tokens,
                         sampling=sampling_config(args.temperature, seed=args.seed), model_id="warmup", label=ref)
    meta_path = str(out) + ".meta.jsonl"
    with open(meta_path, "a", encoding="utf-8") as f:  # at the start too: an interrupted run still has its curve
        f.write(json.dumps({**meta, "phase": "start"}) + "\n")
    progress = _progress(len(todo), args.no_progress)
    with open(out, "a", encoding="utf-8") as f:
        for i, q in enumerate(todo):
            ids = lm.encode(q["turns"][0])
            sampling = sampling_config(args.temperature, seed=args.seed + int(q["question_id"]))
            order = labels[i % len(labels):] + labels[: i % len(labels)]  # rotate: spread drift over methods
            for lab in order:
                if (q["question_id"], lab) in done:
                    continue
                model_id = f"{Path(str(args.model)).name}-{lab}-{dtype}"
                if lab in references:
                    rec = run_generate(lm, q, ids, max_new_tokens=args.max_new_tokens, sampling=sampling,
                                       model_id=model_id, label=lab)
                else:
                    spec = next(s for s in specs if s.label == lab)
                    rec = run_method(lm, instances[lab], spec, q, ids, max_new_tokens=args.max_new_tokens,
                                     sampling=sampling, curve=curve, model_id=model_id)
                rec.update({"dtype": dtype, "device": str(lm.device), "seed": args.seed, "shard": args.shard})
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
            progress.update(1)
            progress.set_postfix_str(f"{q['bench_category']} load {_load()}")
    progress.close()
    meta.update({"load_end": _load(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "state_bytes": {lab: state_bytes(m) for lab, m in instances.items()},
                 "sizing_state": {lab: m.sizer.state() for lab, m in instances.items()
                                  if getattr(m, "sizer", None) is not None}})
    with open(meta_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({**meta, "phase": "end"}) + "\n")
    md_path, html_path = write_report(out)
    print(md_path.read_text(encoding="utf-8"))
    _log(f"records: {out}\nreport: {md_path}, {html_path}")
    return 0


def _merge_or_report(args, action: str) -> int:
    if not args.files:
        raise ValueError(f"bench {action} needs at least one JSONL file")
    if action == "merge":
        if not args.out:
            raise ValueError("bench merge needs --out (the merged JSONL file)")
        missing = [f for f in args.files if not Path(f).exists()]
        if missing:
            raise ValueError(f"no such file: {missing[0]}")
        merge(args.files, args.out)
        target = args.out
    else:
        target = args.files[0]
    md_path, html_path = write_report(target)
    print(md_path.read_text(encoding="utf-8"))
    _log(f"report: {md_path}, {html_path}")
    return 0


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, off: bool):
    if off:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="question", dynamic_ncols=True)


def _machine(lm) -> str:
    if lm.device.type == "cuda":
        return torch.cuda.get_device_name(lm.device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch " \
           f"threads, {socket.gethostname()}"


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

    from . import engine, methods

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
    from .models import LM

    class NoEOS(LM):
        @property
        def eos_ids(self) -> frozenset[int]:
            return frozenset()

    return NoEOS(**{f.name: getattr(lm, f.name) for f in dataclasses.fields(LM)})

"""`labkit bench` on the command line: arguments, the resumable run, merge and report."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ..devices import device_name
from .measure import Spec, _load, interleaved, parse_specs, state_bytes, warm_up
from .memory import memory_check
from .questions import CATEGORIES, GENERATE, GENERATE_PLD, PLD_TOKENS, load_questions, select, shard
from .records import _truncate_partial, merge, read_records, table
from .report import write_report


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
    p.add_argument("--sparsity", default=None, metavar="POLICIES",
                   help="benchmark KV-sparsity policies instead (comma-separated; see labkit.sparsity)")
    from . import sparsity as sparsity_bench

    sparsity_bench.add_arguments(p)  # --budgets etc.


def run(methods: str | Sequence[str] = "autoregressive,prompt_lookup:sizing=auto,token_recycling", *,
        categories: str | Sequence[str] | None = None, out: str | os.PathLike | None = None, **options) -> list[dict]:
    """`labkit bench` as a Python function: the same harness, files and report as the command, with its option
    names as keywords (`n=1, max_new_tokens=32, threads=1, model="gemma3-270m", ...`). Returns the report's
    rows (`bench.table`: one per method and category, and "overall"); the records stay in `out` (resumable)."""
    from ..cli import build_parser

    args = build_parser().parse_args(["bench"])  # the command's defaults, in one place
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"bench.run() got unknown options {', '.join(unknown)}; see `labkit bench --help`")
    args.methods = methods if isinstance(methods, str) else ",".join(methods)
    if categories is not None:
        args.categories = categories if isinstance(categories, str) else ",".join(categories)
    args.out = None if out is None else str(out)
    args.no_progress = options.pop("no_progress", True)
    for key, value in options.items():
        setattr(args, key, value)
    status = main(args)
    if status:
        raise RuntimeError(f"labkit bench ended with status {status}")
    return table(read_records(args.out)) if args.action == "run" else []


def _default_out(args, lm) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(args.model)).name)
    suffix = f"-shard{args.shard.replace('/', 'of')}" if args.shard else ""
    return f"runs/bench/{name}-{str(lm.dtype).replace('torch.', '')}{suffix}.jsonl"


def main(args) -> int:
    if getattr(args, "sparsity", None):
        from . import sparsity as sparsity_bench  # the KV-sparsity benchmark

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
    from ..models import load

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
    from .. import latency

    curve = latency.latency_curve(lm, refresh=args.remeasure_latency, log=_log)
    print(f"{lm.name} {lm.dtype} on {lm.device}, KV {curve.kv_len}, measured {curve.measured_at} "
          f"(load {curve.load})")
    for n, s in zip(curve.tokens, curve.seconds):
        print(f"{n:4d} tokens {s * 1e3:8.2f} ms  x{s / curve.seconds[0]:.2f}")
    return 0


def _run(lm, specs: list[Spec], questions: list[dict], args) -> int:
    from .. import latency, methods
    from ..session import sampling_config

    torch.manual_seed(args.seed)
    out = Path(args.out or _default_out(args, lm))
    args.out = str(out)  # bench.run reads the records back from here
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for p in (out, Path(str(out) + ".meta.jsonl")):
            if p.exists():
                p.unlink()
    _truncate_partial(out)
    done = {(r["question_id"], r["method"]) for r in read_records(out)}
    from .. import backends

    references = [] if args.no_generate else [GENERATE] + ([] if getattr(args, "no_peer", False) else [GENERATE_PLD])
    labels = references + [s.label for s in specs]
    todo = [q for q in questions if any((q["question_id"], lab) not in done for lab in labels)]
    dtype = str(lm.dtype).replace("torch.", "")
    curve = latency.latency_curve(lm, refresh=args.remeasure_latency, log=_log)
    stock_curve = None
    if lm.backend != "stock":  # the report shows both execution paths' curves side by side
        with backends.use(lm.model, "stock"):
            stock_curve = latency.latency_curve(lm, refresh=args.remeasure_latency, log=_log)
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
    warm_up(lm, specs, instances, warm, max_new_tokens=args.max_new_tokens,
            sampling=sampling_config(args.temperature, seed=args.seed), curve=curve, references=references)
    meta_path = str(out) + ".meta.jsonl"
    with open(meta_path, "a", encoding="utf-8") as f:  # at the start too: an interrupted run still has its curve
        f.write(json.dumps({**meta, "phase": "start"}) + "\n")
    progress = _progress(len(todo), args.no_progress)
    per_question = len(labels)
    with open(out, "a", encoding="utf-8") as f:
        records = interleaved(lm, specs, instances, todo, max_new_tokens=args.max_new_tokens, curve=curve,
                              sampling_for=lambda q: sampling_config(args.temperature,
                                                                     seed=args.seed + int(q["question_id"])),
                              references=references, done=frozenset(done),
                              model_id=lambda lab: f"{Path(str(args.model)).name}-{lab}-{dtype}")
        seen: dict = {}
        for rec in records:
            rec.update({"dtype": dtype, "device": str(lm.device), "seed": args.seed, "shard": args.shard})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            qid = rec["question_id"]
            seen[qid] = seen.get(qid, 0) + 1
            if seen[qid] + sum((qid, lab) in done for lab in labels) == per_question:  # the question is complete
                progress.update(1)
                progress.set_postfix_str(f"{rec['bench_category']} load {_load()}")
    progress.close()
    meta.update({"load_end": _load(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "state_bytes": {lab: state_bytes(m) for lab, m in instances.items()},
                 "sizing_state": {lab: m.sizer.state() for lab, m in instances.items()
                                  if m.sizer is not None}})
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
    if lm.device.type != "cpu":
        return device_name(lm.device)
    return f"{device_name(lm.device)}, {torch.get_num_threads()} torch threads, {socket.gethostname()}"

"""`labkit bench`: Spec-Bench questions, every method against the autoregressive baseline in one process.

Questions: Spec-Bench (Xia et al., "Unlocking Efficiency in Large Language Model Inference: A Comprehensive
Survey of Speculative Decoding", 2024), 480 questions, Apache-2.0, copied into labkit/data/spec_bench with
its license. Categories: mt_bench (the 80 MT-Bench questions), translation, summarization, qa,
math_reasoning, rag.

Speed is reported as ratios measured in this run: each method's tokens/s divided by the autoregressive
baseline's, both run through the same engine, interleaved question by question to spread machine noise.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Sequence

from . import metrics as M

CATEGORIES = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


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


@dataclass
class Result:
    method: str
    category: str
    question_id: int
    tokens: list[int]
    metrics: M.Metrics


@dataclass
class Table:
    results: list[Result] = field(default_factory=list)

    def rows(self, baseline: str = "autoregressive") -> list[dict]:
        out = []
        by_method: dict[str, list[Result]] = {}
        for r in self.results:
            by_method.setdefault(r.method, []).append(r)
        base = {r.question_id: r for r in by_method.get(baseline, [])}
        base_tps = _tps(by_method.get(baseline, []))
        for name, rs in by_method.items():
            steps_tokens = sum(r.metrics.new_tokens for r in rs)
            dec_tokens = sum(r.metrics.new_tokens - 1 for r in rs)
            dec_fwd = sum(r.metrics.target_forwards - 1 for r in rs)
            same = [r.tokens == base[r.question_id].tokens for r in rs if r.question_id in base]
            out.append({"method": name, "questions": len(rs), "tokens": steps_tokens, "tokens_per_s": _tps(rs),
                        "speedup": _tps(rs) / base_tps if base_tps else float("nan"),
                        "mean_accept_len": dec_tokens / dec_fwd if dec_fwd else 0.0,
                        "identical": f"{sum(same)}/{len(same)}"})
        return out


def _tps(rs: list[Result]) -> float:
    wall = sum(r.metrics.wall for r in rs)
    return sum(r.metrics.new_tokens for r in rs) / wall if wall else 0.0


def format_table(rows: list[dict]) -> str:
    head = f"{'method':18s} {'tok/s':>7s} {'speedup':>8s} {'accept len':>10s} {'identical':>10s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:18s} {r['tokens_per_s']:7.1f} {r['speedup']:7.2f}x {r['mean_accept_len']:10.2f} "
                     f"{r['identical']:>10s}")
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--methods", default="autoregressive,prompt_lookup,token_recycling",
                   help="comma-separated method names (the baseline is always run)")
    p.add_argument("--n", type=int, default=3, help="questions per category")
    p.add_argument("--categories", default=",".join(CATEGORIES))
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1, help="questions run first and not counted")
    p.add_argument("--sparsity", default=None, metavar="POLICIES",
                   help="benchmark KV-sparsity policies instead (comma-separated; see labkit.sparsity)")
    __import__("labkit.sparsity.bench", fromlist=["add_arguments"]).add_arguments(p)  # --budgets etc. (issue 4)


def main(args) -> int:
    from . import methods
    from .session import Session

    if getattr(args, "sparsity", None):
        from .sparsity import bench as sparsity_bench  # the KV-sparsity benchmark (issue 4)

        return sparsity_bench.main(args)

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    for n in names:
        methods.get(n)
    if "autoregressive" in names:
        names.remove("autoregressive")
    names = ["autoregressive"] + names
    if args.n < 1:
        raise ValueError("--n must be at least 1")
    questions = select(load_questions(), args.n, [c.strip() for c in args.categories.split(",") if c.strip()])
    lab = Session(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    print(f"model {lab.model_name} ({lab.lm.dtype}, {lab.lm.device}); {len(questions)} questions; "
          f"max_new_tokens {args.max_new_tokens}; greedy", flush=True)
    warm = [q for q in load_questions() if q["question_id"] not in {x["question_id"] for x in questions}][: args.warmup]
    for q in warm:
        for name in names:
            lab.run(name, q["turns"][0], max_new_tokens=32, detail=False)
    table = Table()
    t0 = time.time()
    for i, q in enumerate(questions, 1):
        for name in names:  # interleaved, so drift in machine speed hits every method alike
            run = lab.run(name, q["turns"][0], max_new_tokens=args.max_new_tokens, detail=False)
            table.results.append(Result(name, q["bench_category"], q["question_id"], run.tokens, run.metrics))
        print(f"\r[{i}/{len(questions)}] {q['bench_category']:15s} {time.time() - t0:6.0f} s", end="", flush=True)
    print()
    print(format_table(table.rows()))
    return 0

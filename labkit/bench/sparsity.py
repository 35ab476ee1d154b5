"""`labkit bench --sparsity POLICIES`: KV-sparsity policies on long Spec-Bench prompts, against dense decoding.

    labkit bench --sparsity streaming_llm,h2o,tidal_decode --budgets 64,256 --n 2 --max-new-tokens 32
    labkit bench --sparsity razor_attention,razor_attention:compensation=count --budgets 64   # a policy's setting

Per question (default categories: summarization and rag, the long prompts) and in one process:
1. dense decoding with the capture off (the reference speed), through the capture with nothing recorded
   (the hooks' cost), and through the capture recording every layer and head (the capture's cost);
2. per policy and budget, a timed run (the policy applied, nothing recorded, no fidelity measurement) and a
   measured run (every layer and head recorded, plus the dense shadow for KL / top-1).

Speeds are decode-phase tokens/s (the prefill is dense for every policy and excluded), summed over the
questions, and reported relative to dense with the capture off. Recall, KL and top-1 are means over the decode
steps; KV kept is the mean share of the dense KV entries read (per layer and head, committed context).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import engine, methods
from .questions import CATEGORIES, load_questions, select
from ..params import ParamError, parse_assignments, split_spec
from ..sparsity import policies
from ..sparsity.instrument import LayerHeadSelection
from ..sparsity.decode import Options, run

LONG = ("summarization", "rag")


def add_arguments(p) -> None:
    p.add_argument("--budgets", default="64,256", help="with --sparsity: comma-separated KV budgets per policy")
    p.add_argument("--policy-param", action="append", default=[], metavar="NAME=VALUE",
                   help="with --sparsity: a parameter for every policy that has it (repeatable), e.g. sinks=4")
    p.add_argument("--sparsity-method", default="autoregressive",
                   help="with --sparsity: the decoding method the policies run under (default autoregressive)")
    p.add_argument("--sparsity-context", type=int, default=0, metavar="TOKENS",
                   help="with --sparsity: instead of questions, one prompt of this many tokens made of the "
                        "categories' documents (e.g. 4096 for the memory check)")


@dataclass
class Cell:
    """Accumulated numbers for one configuration over the questions."""

    tokens: int = 0
    seconds: float = 0.0
    recall: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    top1: list = field(default_factory=list)
    kv: list = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _decode_speed(steps) -> tuple[int, float]:
    dec = [s for s in steps if s.kind == "decode"]
    return sum(len(s.tokens) for s in dec), sum(s.timing.total for s in dec)


def _timed(cell: Cell, steps) -> None:
    n, t = _decode_speed(steps)
    cell.tokens += n
    cell.seconds += t


def _measured(cell: Cell, frames) -> None:
    for f in frames:
        if f.kind != "decode":
            continue
        cell.recall.append(f.recall)
        cell.kl.append(f.kl)
        cell.top1.append(f.top1)
        cell.kv.append(f.kv_ratio)


def _prompts(lm, args) -> list[tuple[str, list[int]]]:
    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    if args.categories == ",".join(CATEGORIES):  # the generic default: use the long-prompt categories
        cats = list(LONG)
    if args.sparsity_context:
        docs = [q["turns"][0] for q in load_questions() if q["bench_category"] in cats]
        ids: list[int] = []
        for d in docs:
            ids += lm.encode(d, chat=False)
            if len(ids) >= args.sparsity_context:
                break
        if len(ids) < args.sparsity_context:
            raise ValueError(f"the {', '.join(cats)} documents hold only {len(ids)} tokens")
        return [(f"{args.sparsity_context}-token context", ids[:args.sparsity_context])]
    if args.n < 1:
        raise ValueError("--n must be at least 1")
    return [(f"{q['bench_category']} #{q['question_id']}", lm.encode(q["turns"][0]))
            for q in select(load_questions(), args.n, cats)]


def _policy_configs(specs: list[str], budgets: list[int], extra: dict) -> list[tuple[str, str, int, dict]]:
    """(label, policy, budget, params) per spec ('name' or 'name:param=value...') and budget; `extra` reaches
    every policy that has the parameter, a spec's own settings win."""
    out = []
    for spec in specs:
        name, own = split_spec(spec)
        cls = policies.get(name)
        if name == "dense":
            continue
        fields = {f for f in (cls.Params.__dataclass_fields__ if cls.Params else {})}
        mine = {k: v for k, v in extra.items() if k in fields}
        for b in budgets:
            params = {**mine, **own, "budget": b}
            policies.create(name, params)  # validate now, before any model runs
            out.append((spec, name, b, params))
    return out


def main(args) -> int:
    from ..session import Session

    names = [s.strip() for s in args.sparsity.split(",") if s.strip()]
    try:
        budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise ParamError(f"--budgets expects comma-separated integers, got {args.budgets!r}") from None
    configs = _policy_configs(names, budgets, parse_assignments(args.policy_param))
    lab = Session(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    lm = lab.lm
    method = methods.create(args.sparsity_method, lm)
    prompts = _prompts(lm, args)
    n_new = args.max_new_tokens
    lens = [len(ids) for _, ids in prompts]
    print(f"model {lm.name} ({lm.dtype}, {lm.device}); method {method.name}; {len(prompts)} prompt(s) of "
          f"{min(lens)}-{max(lens)} tokens; {n_new} new tokens each; greedy", flush=True)
    for _ in range(max(args.warmup, 0)):
        _, ids = prompts[0]
        list(engine.decode(lm, method, ids[:64], max_new_tokens=4, detail=False))

    all_rec, none_rec = LayerHeadSelection(), None
    plain, hooks, recording = Cell(), Cell(), Cell()
    cells = {(label, b): (Cell(), Cell()) for label, _, b, _ in configs}
    t0 = time.time()
    for i, (label, ids) in enumerate(prompts, 1):
        method.reset()
        _timed(plain, list(engine.decode(lm, method, ids, max_new_tokens=n_new, detail=False)))
        method.reset()
        _timed(hooks, run(lm, method, ids, Options("dense", record=none_rec), max_new_tokens=n_new, detail=False)[0])
        method.reset()
        _timed(recording, run(lm, method, ids, Options("dense", record=all_rec), max_new_tokens=n_new, detail=False)[0])
        for label, name, b, params in configs:
            timed, measured = cells[(label, b)]
            method.reset()
            steps, _ = run(lm, method, ids, Options(name, params, record=none_rec, fidelity=False),
                           max_new_tokens=n_new, detail=False)
            _timed(timed, steps)
            method.reset()
            _, frames = run(lm, method, ids, Options(name, params, record=all_rec, fidelity=True),
                            max_new_tokens=n_new, detail=False)
            _measured(measured, frames)
        print(f"\r[{i}/{len(prompts)}] {label:24s} {time.time() - t0:6.0f} s", end="", flush=True)
    print()
    print(format_table(plain, hooks, recording, configs, cells))
    from .memory import rss_bytes  # the one RSS reader (no Unix-only module at import)

    rss = rss_bytes() / 2**20
    print(f"RSS of this process at the end: {rss:.0f} MB (longest prompt {max(lens)} tokens)")
    return 0


def format_table(plain: Cell, hooks: Cell, recording: Cell, configs, cells) -> str:
    ref = plain.tps
    lines = ["capture overhead (dense decoding, decode-phase tokens/s):",
             f"  capture off                         {plain.tps:8.2f} tok/s",
             f"  capture on, nothing recorded        {hooks.tps:8.2f} tok/s  ({_ratio(hooks.tps, ref)} of off)",
             f"  capture on, every layer+head        {recording.tps:8.2f} tok/s  ({_ratio(recording.tps, ref)} of off)",
             ""]
    w = max([16] + [len(label) for label, *_ in configs])
    head = (f"{'policy':{w}s} {'budget':>6s} {'recall':>7s} {'top-1':>6s} {'KL':>8s} {'KV kept':>8s} "
            f"{'tok/s':>7s} {'vs dense':>8s}")
    lines += [head, "-" * len(head)]
    lines.append(f"{'dense':{w}s} {'-':>6s} {1.0:7.3f} {1.0:6.3f} {0.0:8.4f} {1.0:7.1%} {ref:7.2f} {1.0:7.2f}x")
    for label, _, b, _ in configs:
        timed, m = cells[(label, b)]
        lines.append(f"{label:{w}s} {b:6d} {_mean(m.recall):7.3f} {_mean(m.top1):6.3f} {_mean(m.kl):8.4f} "
                     f"{_mean(m.kv):7.1%} {timed.tps:7.2f} {timed.tps / ref if ref else float('nan'):7.2f}x")
    return "\n".join(lines)


def _ratio(x: float, ref: float) -> str:
    return f"{x / ref:.2f}x" if ref else "n/a"

"""The `labkit` command: run, demo, methods, check, bench.

Bad input (unknown method, bad parameter, empty or too long prompt, missing model) prints one line
`labkit: error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from . import methods, metrics
from . import stream
from .models import DEFAULT_MODEL, EMBEDDED, ModelLoadError
from .params import ParamError, build, parse_assignments
from .trace import TraceError

GREEN, CYAN, DIM, BOLD, RESET = "\033[32m", "\033[36m", "\033[2m", "\033[1m", "\033[0m"

DEMO_PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Explain in a few sentences why the sea is blue.",
    "Write a short Python function that checks whether a number is prime, and explain it.",
]


class UsageError(Exception):
    pass


def _sampling(args):
    from .session import sampling_config

    if not args.sample:
        return sampling_config(seed=args.seed)
    return sampling_config(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded name ({', '.join(EMBEDDED)}), local path or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    p.add_argument("--backend", default="auto", choices=("auto", "fast", "stock"),
                   help="execution path: fast = oneDNN linears over weights packed once (CPU), stock = stock "
                        "PyTorch kernels; auto (default) = fast on CPU, stock on GPU")


def _add_gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true", help="do not wrap the prompt in the chat template")


def _session(args):
    from .session import Session

    return Session(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                   backend=args.backend)


def _print_stream(steps, color: bool, out=sys.stdout) -> list:
    seen = []
    for step in steps:
        seen.append(step)
        for span in stream.spans([step]):
            if color and span.provenance == stream.DRAFT:
                out.write(GREEN + span.text + RESET)
            else:
                out.write(span.text)
        out.flush()
    out.write("\n")
    return seen


def cmd_run(args) -> int:
    if not args.prompt or not args.prompt.strip():
        raise UsageError("the prompt is empty: pass --prompt \"...\"")
    params = parse_assignments(args.param or [])
    build(methods.get(args.method).Params, params)  # fail fast on a wrong name or value, before loading the model
    lab = _session(args)
    color = sys.stdout.isatty() and not args.no_color or args.color
    method = lab.method(args.method, **params)
    steps = lab.stream(method, args.prompt, max_new_tokens=args.max_new_tokens, sampling=_sampling(args),
                       chat=not args.no_chat, trace=args.trace)
    print(f"{DIM}{method.describe()} on {lab.model_name} ({_sampling(args).describe()})"
          f"{'; green = accepted draft token' if color else ''}{RESET if color else ''}")
    seen = _print_stream(steps, color)
    print(metrics.format_metrics(metrics.compute(seen)))
    if args.trace:
        print(f"trace written to {args.trace}")
    return 0


def cmd_demo(args) -> int:
    """The main job: Token Recycling on a few prompts, coloured, with metrics after each."""
    lab = _session(args)
    color = sys.stdout.isatty() and not args.no_color or args.color
    method = lab.method("token_recycling")
    print(f"{BOLD}labkit demo{RESET if color else ''}: {method.describe()} on {lab.model_name}, greedy, "
          f"{lab.lm.dtype}. {'Green text = draft tokens the target accepted; plain = the target' + chr(39) + 's own tokens. ' if color else ''}"
          "The adjacency matrix starts empty and warms up across prompts.\n")
    for i, prompt in enumerate(DEMO_PROMPTS[: args.prompts], 1):
        print(f"{CYAN if color else ''}[{i}] {prompt}{RESET if color else ''}")
        seen = _print_stream(lab.stream(method, prompt, max_new_tokens=args.max_new_tokens), color)
        print(f"{DIM if color else ''}{metrics.format_metrics(metrics.compute(seen))}{RESET if color else ''}\n")
    return 0


def cmd_methods(args) -> int:
    for name in methods.REGISTRY:
        info = methods.info(name)
        tag = "lossless" if info["lossless"] else "LOSSY"
        print(f"{name}  [{tag}, {info['kind']}]  {info['title']}")
        print(f"    paper: {info['paper']}")
        for p in info["params"]:
            rng = f" [{p['lo']}, {p['hi']}]" if p["lo"] is not None or p["hi"] is not None else ""
            print(f"    --param {p['name']}={p['default']}{rng}  {p['help']}")
    return 0


def cmd_check(args) -> int:
    from .check import check

    params = parse_assignments(args.param or [])
    names = list(methods.REGISTRY) if args.method == "all" else [args.method]
    for n in names:
        methods.get(n)
    lab = _session(args)
    prompts = args.prompt or DEMO_PROMPTS
    bad = 0
    for n in names:
        cls = methods.get(n)
        if not cls.lossless:
            print(f"{n}: lossy by design, skipped")
            continue
        results = check(lab.lm, lab.method(n, **(params if args.method != "all" else {})), prompts,
                        max_new_tokens=args.max_new_tokens, chat=not args.no_chat)
        for r in results:
            print(f"{n:18s} {r.line()}")
            bad += not r.identical
    return 1 if bad else 0


def cmd_bench(args) -> int:
    from . import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="labkit", description="Watch fast decoding happen.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="decode one prompt with a method, streaming coloured text and metrics")
    p.add_argument("--method", default="token_recycling")
    p.add_argument("--prompt", required=True)
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("--trace", help="write the steps to this JSON-lines file")
    p.add_argument("--color", action="store_true", help="force colours")
    p.add_argument("--no-color", action="store_true")
    _add_model_args(p)
    _add_gen_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="Token Recycling on a few prompts, coloured, with metrics")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--color", action="store_true")
    p.add_argument("--no-color", action="store_true")
    _add_model_args(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("methods", help="list the registered methods with paper, lossless/lossy, parameters")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("check", help="is a method token-identical to model.generate(do_sample=False)?")
    p.add_argument("--method", default="all", help="a method name, or 'all' (default)")
    p.add_argument("--prompt", action="append", help="prompt to check (repeatable; default: three built-ins)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-chat", action="store_true")
    _add_model_args(p)
    p.set_defaults(fn=cmd_check)

    from . import bench
    bench.add_arguments(sub.add_parser("bench", help="Spec-Bench questions: speed and acceptance per method"))
    sub.choices["bench"].set_defaults(fn=cmd_bench)
    _add_model_args(sub.choices["bench"])
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (UsageError, ParamError, ModelLoadError, TraceError, ValueError) as e:
        if os.environ.get("LABKIT_DEBUG"):
            raise
        print(f"labkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlabkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

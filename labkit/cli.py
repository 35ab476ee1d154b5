"""The `labkit` command (also `python -m labkit`): run, demo, methods, check, bench, trace, app.

Bad input (unknown method, bad parameter, empty or too long prompt, missing model) prints one line
`labkit: error: ...` and exits with status 2. Colour only on a terminal, never with NO_COLOR set
(https://no-color.org) or `--no-color`; `--json` (run, methods, check) prints one JSON document instead of text.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

from . import __version__, methods, metrics
from . import stream
from .extras import MissingExtra
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


def _use_color(args) -> bool:
    if getattr(args, "color", False):
        return True
    if getattr(args, "no_color", False) or os.environ.get("NO_COLOR") or getattr(args, "json", False):
        return False
    return sys.stdout.isatty()


def _paint(color: bool):
    """`paint(code, text)`: `text` in an ANSI style when colour is on, plain otherwise."""
    return (lambda code, text: f"{code}{text}{RESET}") if color else (lambda code, text: text)


def _prompt(text: str | None) -> str | None:
    """`-` reads the prompt from standard input."""
    return sys.stdin.read() if text == "-" else text


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _sampling(args):
    from .session import sampling_config

    if not args.sample:
        return sampling_config(seed=args.seed)
    return sampling_config(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded name ({', '.join(EMBEDDED)}), local path or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, mps, xpu ... (default: the machine's accelerator if torch sees one)")
    p.add_argument("--device-map", default=None, metavar="MAP",
                   help="spread a large model over the devices with accelerate: auto, balanced, sequential")
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
                   backend=args.backend, device_map=args.device_map)


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
    prompt = _prompt(args.prompt)
    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty: pass --prompt \"...\" (or --prompt - to read it from stdin)")
    params = parse_assignments(args.param or [])
    build(methods.get(args.method).Params, params)  # fail fast on a wrong name or value, before loading the model
    lab = _session(args)
    color = _use_color(args)
    paint = _paint(color)
    method = lab.method(args.method, **params)
    steps = lab.stream(method, prompt, max_new_tokens=args.max_new_tokens, sampling=_sampling(args),
                       chat=not args.no_chat, trace=args.trace)
    if args.json:
        seen = list(steps)
        _print_json({"method": method.describe(), "model": lab.model_name, "sampling": _sampling(args).describe(),
                     "prompt": prompt, "text": "".join(s.text for s in seen),
                     "tokens": [t for s in seen for t in s.tokens],
                     "metrics": metrics.compute(seen).as_dict(), "trace": args.trace})
        return 0
    print(paint(DIM, f"{method.describe()} on {lab.model_name} ({_sampling(args).describe()})"
                     f"{'; green = accepted draft token' if color else ''}"))
    seen = _print_stream(steps, color)
    print(metrics.format_metrics(metrics.compute(seen)))
    if args.trace:
        print(f"trace written to {args.trace}")
    return 0


def cmd_demo(args) -> int:
    """The main job: Token Recycling on a few prompts, coloured, with metrics after each."""
    lab = _session(args)
    color = _use_color(args)
    paint = _paint(color)
    method = lab.method("token_recycling")
    key = "Green text = draft tokens the target accepted; plain = the target's own tokens. " if color else ""
    print(f"{paint(BOLD, 'labkit demo')}: {method.describe()} on {lab.model_name}, greedy, {lab.lm.dtype}. "
          f"{key}The adjacency matrix starts empty and warms up across prompts.\n")
    for i, prompt in enumerate(DEMO_PROMPTS[: args.prompts], 1):
        print(paint(CYAN, f"[{i}] {prompt}"))
        seen = _print_stream(lab.stream(method, prompt, max_new_tokens=args.max_new_tokens), color)
        print(paint(DIM, metrics.format_metrics(metrics.compute(seen))) + "\n")
    return 0


def cmd_methods(args) -> int:
    if args.json:
        _print_json([methods.info(name) for name in methods.REGISTRY])
        return 0
    for name in methods.REGISTRY:
        info = methods.info(name)
        tag = "lossless" if info["lossless"] else "LOSSY"
        print(f"{name}  [{tag}, {info['kind']}]  {info['title']}")
        print(f"    paper: {info['paper']}")
        for p in info["params"]:
            rng = f" [{p['lo']}, {p['hi']}]" if p["lo"] is not None or p["hi"] is not None else ""
            rng += f" {{{'|'.join(map(str, p['choices']))}}}" if p.get("choices") else ""
            print(f"    --param {p['name']}={p['default']}{rng}  {p['help']}")
        for spec in info["variants"]:
            print(f"    variant: {spec}")
    return 0


def cmd_check(args) -> int:
    from .check import check

    params = parse_assignments(args.param or [])
    names = list(methods.REGISTRY) if args.method == "all" else [args.method]
    for n in names:
        methods.get(n)
    prompts = [_prompt(p) for p in args.prompt] if args.prompt else DEMO_PROMPTS
    if any(not p or not p.strip() for p in prompts):
        raise UsageError("a prompt is empty")
    lab = _session(args)
    bad = 0
    report = []
    for n in names:
        cls = methods.get(n)
        if not cls.lossless:
            report.append({"method": n, "skipped": "lossy by design"})
            if not args.json:
                print(f"{n}: lossy by design, skipped")
            continue
        results = check(lab.lm, lab.method(n, **(params if args.method != "all" else {})), prompts,
                        max_new_tokens=args.max_new_tokens, chat=not args.no_chat)
        for r in results:
            report.append({"method": n, **dataclasses.asdict(r)})
            if not args.json:
                print(f"{n:18s} {r.line()}")
            bad += not r.identical
    if args.json:
        _print_json(report)
    return 1 if bad else 0


def cmd_trace(args) -> int:
    """`labkit trace export --chrome FILE` / `labkit trace schema`."""
    if args.action == "schema":
        from .trace import json_schema

        _print_json(json_schema())
        return 0
    from .timeline import export_chrome

    if not args.chrome:
        raise UsageError("say the format: labkit trace export --chrome run.jsonl")
    print(export_chrome(args.chrome, args.out))
    return 0


def cmd_app(args) -> int:
    """`labkit app ...`: the Gradio app (its own options: `labkit app --help`)."""
    from .extras import require

    require("gradio", "app", "labkit app")
    from .app.ui import main as app_main

    return app_main(args.app_args, prog="labkit app")


def cmd_bench(args) -> int:
    from . import bench

    return bench.main(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="labkit", description="Watch fast decoding happen.")
    ap.add_argument("--version", action="version", version=f"labkit {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="decode one prompt with a method, streaming coloured text and metrics")
    p.add_argument("--method", default="token_recycling")
    p.add_argument("--prompt", required=True, help="the prompt ('-' reads it from stdin)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("--trace", help="write the steps to this JSON-lines file")
    p.add_argument("--json", action="store_true", help="print the text, tokens and metrics as one JSON object")
    p.add_argument("--color", action="store_true", help="force colours")
    p.add_argument("--no-color", action="store_true", help="no colours (also: the NO_COLOR environment variable)")
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
    p.add_argument("--json", action="store_true", help="the list as JSON")
    p.set_defaults(fn=cmd_methods)

    p = sub.add_parser("check", help="is a method token-identical to model.generate(do_sample=False)?")
    p.add_argument("--method", default="all", help="a method name, or 'all' (default)")
    p.add_argument("--prompt", action="append",
                   help="prompt to check (repeatable; '-' reads one from stdin; default: three built-ins)")
    p.add_argument("--json", action="store_true", help="one JSON record per method and prompt")
    p.add_argument("--param", action="append", metavar="NAME=VALUE")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-chat", action="store_true")
    _add_model_args(p)
    p.set_defaults(fn=cmd_check)

    from . import bench
    bench.add_arguments(sub.add_parser("bench", help="Spec-Bench questions: speed and acceptance per method"))
    sub.choices["bench"].set_defaults(fn=cmd_bench)
    _add_model_args(sub.choices["bench"])

    p = sub.add_parser("trace", help="export a trace (JSON lines) for other tools, or print its JSON Schema")
    p.add_argument("action", choices=("export", "schema"))
    p.add_argument("--chrome", metavar="TRACE", help="write TRACE as a Chrome / Perfetto trace-event file")
    p.add_argument("--out", "-o", help="output path (default: beside the trace, NAME.chrome.json)")
    p.set_defaults(fn=cmd_trace)

    p = sub.add_parser("app", help="the Gradio app (labkit app --help for its options)", add_help=False)
    p.add_argument("app_args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_app)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:  # everything after `app` is the app's own (argparse would take --help etc. itself)
        args = argparse.Namespace(fn=cmd_app, app_args=argv[1:])
    else:
        args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (UsageError, ParamError, ModelLoadError, TraceError, ValueError, MissingExtra) as e:
        if os.environ.get("LABKIT_DEBUG"):
            raise
        print(f"labkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlabkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A trace on a timeline: the Chrome / Perfetto trace-event format, so a run opens in chrome://tracing or
https://ui.perfetto.dev beside a torch profile (`torch.profiler` exports the same format).

    labkit trace export --chrome run.jsonl            # writes run.chrome.json

One complete event ("ph": "X") per round, from its `timing.start` for its `timing.total`, named after what
it did ("decode 12: 3 accepted + bonus"), with its phases (draft, verify, accept, commit) as events nested
inside it in the order the engine runs them; the round's tokens, text and counts are its `args`. Times are
microseconds since the run began.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .trace import Step, Trace, load_trace

# the order the engine runs a round's phases (the prefill observes the logits, i.e. commits, before accepting)
PHASES = {"prefill": ("verify", "commit", "accept"), "decode": ("draft", "verify", "accept", "commit")}


def _name(step: Step) -> str:
    if step.kind == "prefill":
        return "prefill"
    return f"decode {step.index}: {len(step.accepted)} accepted + bonus" if step.nodes else f"decode {step.index}"


def chrome_events(trace: Trace) -> dict:
    """The trace-event JSON object (`traceEvents`, `displayTimeUnit`, `otherData`) for one trace."""
    cfg = trace.config
    title = f"labkit: {cfg.get('method_description') or cfg.get('method', 'run')} on {cfg.get('model', '?')}"
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": title}},
                          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "rounds"}}]
    for step in trace.steps:
        t = step.timing
        start = t.start * 1e6
        events.append({"name": _name(step), "cat": step.kind, "ph": "X", "pid": 1, "tid": 1, "ts": start,
                       "dur": t.total * 1e6,
                       "args": {"tokens": list(step.tokens), "text": step.text, "drafted": len(step.nodes),
                                "accepted": len(step.accepted), "target_forwards": step.target_forwards,
                                "draft_forwards": step.draft_forwards, "kv_len": step.kv_len}})
        at = start
        for phase in PHASES.get(step.kind, PHASES["decode"]):
            seconds = getattr(t, phase)
            if seconds > 0:
                events.append({"name": phase, "cat": "phase", "ph": "X", "pid": 1, "tid": 1, "ts": at,
                               "dur": seconds * 1e6})
                at += seconds * 1e6
    other = {k: cfg[k] for k in ("model", "method", "backend", "device", "dtype", "labkit") if k in cfg}
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def export_chrome(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the trace at `path` as a Chrome trace-event file (default: beside it, `<name>.chrome.json`);
    written to a temporary file and renamed, so a failure leaves no half-written file."""
    src = Path(path)
    doc = chrome_events(load_trace(src))
    dest = Path(out) if out else src.with_name(src.name.removesuffix(".jsonl") + ".chrome.json")
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, dest)
    return dest

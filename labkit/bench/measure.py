"""Measuring: method specs, one question with one method (or model.generate), and the one interleaved harness
that `labkit bench` and the app's Bench tab both run."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .. import metrics
from ..gate import hold
from .questions import BASELINE, GENERATE, GENERATE_PLD, PLD_TOKENS, TRACE_SUFFIX


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
        from .. import methods
        from ..params import build

        name, params = methods.split_spec(text)
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
    """Memory a method keeps across prompts (`Method.state_bytes`)."""
    return int(method.state_bytes())


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _record(q: dict, spec_label: str, method_name: str, params: dict, model_id: str, text: str, tokens: list[int],
            wall: float, accept_lengths: list[int], extra: dict) -> dict:
    answer = hashlib.sha1(f"{model_id}\0{q['question_id']}\0{spec_label}".encode()).hexdigest()[:22]
    return {"question_id": q["question_id"], "answer_id": answer, "category": q["category"],
            "bench_category": q["bench_category"], "model_id": model_id, "method": spec_label, "method_name": method_name, "params": params,
            "choices": [{"index": 0, "turns": [text], "new_tokens": [len(tokens)], "wall_time": [wall],
                         "accept_lengths": accept_lengths, "decoding_steps": [len(accept_lengths)]}],
            "tokens": tokens, "tstamp": time.time(), "labkit": extra}


def run_method(lm, method, spec: Spec, q: dict, ids: list[int], *, max_new_tokens: int, sampling, curve,
               model_id: str) -> dict:
    """One question through the labkit engine, timed from outside (device-synchronised)."""
    from .. import engine, latency
    from ..trace import TraceWriter

    latency.synchronize(lm.device)
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
    latency.synchronize(lm.device)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    m = metrics.compute(steps)
    decode = [s for s in steps if s.kind == "decode"]
    nodes = [len(s.nodes) for s in decode]
    chosen = [s.state["sizing"]["nodes"] for s in decode if isinstance(s.state.get("sizing"), dict)
              and "nodes" in s.state["sizing"]]
    extra = {**m.as_dict(), "wall_outside": wall, "cpu_time": cpu, "load": _load(),
             "decode_tokens": sum(len(s.tokens) for s in decode),
             "decode_wall": sum(s.timing.total for s in decode),
             "ideal_decode_seconds": latency.ideal_seconds(nodes, curve) if curve is not None else None,
             "nodes_per_round": float(np.mean(nodes)) if nodes else 0.0,
             "sizing_nodes": _histogram(chosen), "finished": steps[-1].finished if steps else "",
             "prompt_tokens": len(ids), "traced": spec.traced, "description": method.describe()}
    text = "".join(s.text for s in steps)
    return _record(q, spec.label, spec.name, dict(spec.params), model_id, text, [t for s in steps for t in s.tokens],
                   wall, [len(s.tokens) for s in decode], extra)


def run_generate(lm, q: dict, ids: list[int], *, max_new_tokens: int, sampling, model_id: str,
                 label: str = GENERATE) -> dict:
    """`model.generate` on the same prompt, on the STOCK model (the backend is switched to 'stock' for the call):
    the reference speed (greedy unless sampling is on). `label=GENERATE_PLD`: with transformers' prompt lookup."""
    from .. import backends, latency
    from ..sampling import generate_kwargs
    x = torch.tensor([ids], device=lm.device)
    mask = torch.ones_like(x)
    kwargs = generate_kwargs(sampling)
    if label == GENERATE_PLD:
        kwargs["prompt_lookup_num_tokens"] = PLD_TOKENS
    if not sampling.greedy:
        torch.manual_seed(sampling.seed)
    # switching the shared model's execution path is a change other runs must not compute through (labkit.gate)
    with hold(lm, exclusive=True), backends.use(lm.model, "stock"):
        latency.synchronize(lm.device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(x, attention_mask=mask, max_new_tokens=max_new_tokens, **kwargs)
        latency.synchronize(lm.device)
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


# ---- the harness ----------------------------------------------------------------------------------------

def warm_up(lm, specs: Sequence[Spec], instances: dict, questions: Sequence[dict], *, max_new_tokens: int, sampling,
            curve, references: Sequence[str] = ()) -> None:
    """Run every method (and reference) on `questions` without keeping the numbers: the allocator, the kernels,
    Token Recycling's matrix and the sizing's acceptance estimate all settle before anything is timed. A method
    may offer `warm_up()`, a context manager for its warm-up (Token Recycling: big trees)."""
    for q in questions:
        ids = lm.encode(q["turns"][0])
        for s in specs:
            with instances[s.label].warm_up():
                run_method(lm, instances[s.label], s, q, ids, max_new_tokens=max_new_tokens, sampling=sampling,
                           curve=curve, model_id="warmup")
        for ref in references:
            run_generate(lm, q, ids, max_new_tokens=max_new_tokens, sampling=sampling, model_id="warmup", label=ref)


def interleaved(lm, specs: Sequence[Spec], instances: dict, questions: Sequence[dict], *, max_new_tokens: int,
                sampling_for: Callable[[dict], object], curve, references: Sequence[str] = (),
                done: frozenset = frozenset(), model_id: Callable[[str], str] = str,
                should_stop: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """The one harness (`labkit bench` and the app's Bench tab): per question, every reference
    (`model.generate` rows) and method once, in an order that rotates question by question so drift in machine
    speed hits every method alike; yields one record per (question, method) as soon as it is measured, skipping
    the pairs in `done` (a resumed run). `should_stop` is checked before each measurement."""
    labels = list(references) + [s.label for s in specs]
    by_label = {s.label: s for s in specs}
    for i, q in enumerate(questions):
        ids = lm.encode(q["turns"][0])
        sampling = sampling_for(q)
        for lab in labels[i % len(labels):] + labels[: i % len(labels)]:
            if (q["question_id"], lab) in done:
                continue
            if should_stop():
                return
            if lab in references:
                yield run_generate(lm, q, ids, max_new_tokens=max_new_tokens, sampling=sampling,
                                   model_id=model_id(lab), label=lab)
            else:
                yield run_method(lm, instances[lab], by_label[lab], q, ids, max_new_tokens=max_new_tokens,
                                 sampling=sampling, curve=curve, model_id=model_id(lab))

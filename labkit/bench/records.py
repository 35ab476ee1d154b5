"""Records on disk (JSON lines, resumable, mergeable) and the one metrics function over them (`summarize`, `table`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .questions import BASELINE, CATEGORIES, GENERATE, GENERATE_PLD, TRACE_SUFFIX


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
    drafts = sum(r["labkit"].get("num_drafts", 0) for r in records)
    at_pos: dict[int, int] = {}
    for r in records:
        for i, n in enumerate(r["labkit"].get("num_accepted_tokens_per_pos", []), 1):
            at_pos[i] = at_pos.get(i, 0) + n
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
    per_question = [sum(r["choices"][0]["new_tokens"]) / sum(r["choices"][0]["wall_time"]) for r in records
                    if sum(r["choices"][0]["wall_time"]) > 0]
    out = {
        "questions": len(records), "new_tokens": new_tokens, "wall": wall,
        "tokens_per_s": new_tokens / wall if wall > 0 else 0.0,
        # Spec-Bench's evaluation/speed.py: the mean over questions of each question's tokens/s
        "tokens_per_s_question_mean": float(np.mean(per_question)) if per_question else 0.0,
        "tokens_per_cpu_s": new_tokens / cpu_total if cpu_total else None,
        "mean_accept_len": float(np.mean(accept)) if accept else 0.0,
        "per_depth": {d: hits[d] / tries[d] for d in sorted(tries) if tries[d] > 0},  # conditional
        "num_drafts": drafts,  # vLLM's counter and its unconditional per-position rate (labkit.metrics)
        "per_position": {i: n / drafts for i, n in sorted(at_pos.items())} if drafts else {},
        "decode_tokens_per_s": (sum(dec_tok) / sum(dec_wall)) if have_decode and sum(dec_wall) > 0 else None,
        "ideal_decode_tokens_per_s": (sum(dec_tok) / sum(ideal)) if have_decode and all(
            x is not None for x in ideal) and sum(ideal) > 0 else None,
        "nodes_per_round": sum(nodes) / len(accept) if accept else 0.0,
        "sizing_nodes": sizes,
        "sizing_mode": int(max(sizes, key=lambda k: sizes[k])) if sizes else None,
        "load": float(np.mean(loads)) if loads else None,
        "description": next((r["labkit"]["description"] for r in records if r["labkit"].get("description")), ""),
    }
    if records and all(r["method"] == GENERATE_PLD for r in records):
        # transformers' prompt lookup runs inside generate: its acceptance is not observable from outside
        out["mean_accept_len"], out["per_depth"], out["per_position"] = None, {}, {}
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
    out = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else float("nan"),
           "spec_bench": (a["tokens_per_s_question_mean"] / b["tokens_per_s_question_mean"]
                          if b["tokens_per_s_question_mean"] else float("nan"))}
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

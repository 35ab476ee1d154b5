"""The report: markdown and offline HTML tables, the latency curves, Spec-Bench's per-method files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence


from .questions import TRACE_SUFFIX
from .records import read_meta, read_records, table


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
    head = ("| category | method | questions | tokens/s | speedup vs AR | vs AR, Spec-Bench's speed.py | vs generate | "
            "CPU-time speedup vs AR | "
            "vs generate (CPU) | decode speedup | ideal | "
            "efficiency (wall / CPU) | mean accept len | per-depth acceptance, conditional (d1 d2 d3 d4) | "
            "per-position acceptance, vLLM's unconditional (p1 p2 p3 p4) | nodes/round | sizing picked | "
            "identical vs AR | identical vs generate | tracing overhead (wall / CPU) |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sp = r.get("speedup") or {}
        sg = r.get("speedup_vs_generate") or {}
        depth = " ".join(f"{r['per_depth'].get(d, 0):.2f}" for d in range(1, 5) if d in r["per_depth"]) or "-"
        pos = " ".join(f"{r['per_position'][i]:.2f}" for i in range(1, 5) if i in r.get("per_position", {})) or "-"
        ia, na = r["identical_vs_baseline"]
        ig, ng = r["identical_vs_generate"]
        lines.append(
            f"| {r['category']} | {r['method']} | {r['questions']} | {r['tokens_per_s']:.1f} | "
            f"{_f(sp.get('tokens_per_s'), '{:.2f}x')} | {_f(sp.get('spec_bench'), '{:.2f}x')} | "
            f"{_f(sg.get('tokens_per_s'), '{:.2f}x')} | "
            f"{_f(sp.get('cpu'), '{:.2f}x')} | {_f(sg.get('cpu'), '{:.2f}x')} | "
            f"{_f(sp.get('decode'), '{:.2f}x')} | {_f(sp.get('ideal'), '{:.2f}x')} | {_f(sp.get('efficiency'))} / {_f(sp.get('efficiency_cpu'))} | "
            f"{_f(r['mean_accept_len'])} | {depth} | {pos} | {r['nodes_per_round']:.1f} | {_f(r['sizing_mode'], '{}')} | "
            f"{ia}/{na} | {ig}/{ng} | {_f(r.get('tracing_overhead'), '{:+.1%}')} / "
            f"{_f(r.get('tracing_overhead_cpu'), '{:+.1%}')} |")
    lines.append("")
    lines.append("tokens/s = new tokens / wall time summed over questions (prefill included); speedup = tokens/s "
                 "over the autoregressive baseline's on the same questions in the same process (labkit's definition: "
                 "summed tokens over summed time); Spec-Bench's speed.py = the ratio of the means over questions "
                 "of each question's tokens/s (what evaluation/speed.py computes from the .spec_bench/ files); "
                 "per-depth acceptance = accepted at depth d / rounds whose path reached d - 1 and tried d "
                 "(conditional); per-position = vLLM's num_accepted_tokens_per_pos / num_drafts (unconditional); "
                 "CPU-time speedup = "
                 "the same with the process's CPU time instead of wall time (meaningful with --threads 1: it "
                 "ignores other jobs taking turns on the cores); decode speedup = "
                 "the same over decode rounds only; ideal = mean acceptance length x t(1 token) / t(tree) from the "
                 "measured latency curve; efficiency = decode speedup / ideal; sizing picked = the tree size / "
                 "draft length the hardware-aware sizing chose most often; tracing overhead = 1 - tokens/s with "
                 "full tracing (per-node detail + trace file) / tokens/s without, same method, same questions.")
    described = [(r["method"], r["description"]) for r in rows if r["category"] == "overall" and r.get("description")]
    if described:  # what each row ran (e.g. which sizing Token Recycling used)
        lines.append("")
        lines += [f"- `{label}`: {text}" for label, text in described]
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

    from .. import views
    from ..latency import LatencyCurve

    # the same speedup chart the app's Bench tab and notebook 7 draw (one chart; wall-clock ratios here)
    figs = [views.bench_summary([r for r in rows if not r["method"].endswith(TRACE_SUFFIX)], clock="wall",
                                title="Speedup over the autoregressive baseline (same process) and acceptance length")]
    overall = [r for r in rows if r["category"] == "overall" and not r["method"].endswith(TRACE_SUFFIX)]
    fig = go.Figure()
    for r in overall:
        if r["per_depth"]:
            ds = sorted(r["per_depth"])
            fig.add_trace(go.Scatter(x=ds, y=[r["per_depth"][d] for d in ds], mode="lines+markers", name=r["method"]))
    fig.update_layout(title="Acceptance per depth (overall)", template="plotly_white", xaxis_title="depth",
                      yaxis=dict(title="accepted / tried", range=[0, 1]), height=380)
    figs.append(fig)
    curves = latency_curves(meta)
    if curves:  # the same latency view as notebook 2, per execution path
        figs.append(views.latency_curve({name: LatencyCurve.from_json(c) for name, c in curves.items()},
                                        title="Latency of one verify forward vs tokens in it, per execution path"))
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

"""Several runs side by side: aligned outputs, the latency curve, the benchmark summary."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import metrics
from .. import stream
from ..trace import REJECTED
from .stream import _span_hover
from .style import METHOD_COLORS, PROVENANCE_COLORS, STATUS_COLORS, steps_of


# ---- side by side ----------------------------------------------------------------------------------

def compare_outputs(runs: Mapping[str, Any], *, partial: bool = False) -> dict:
    """{"identical": bool, "reference": first label, "first_divergence": {label: position or None},
    "compared": positions compared}: the first output position where each run's tokens differ from the first
    run's (None = identical; `labkit.check.first_divergence`). `partial=True` (runs still streaming or stopped):
    only the positions both sides have produced are compared."""
    from ..check import first_divergence

    toks = {k: [t for s in steps_of(v) for t in s.tokens] for k, v in runs.items()}
    labels = list(toks)
    if not labels:
        return {"identical": True, "reference": None, "first_divergence": {}, "compared": 0, "partial": partial}
    ref = toks[labels[0]]
    div = {k: first_divergence(toks[k], ref, partial=partial) for k in labels}
    compared = min(len(t) for t in toks.values()) if partial else max(len(t) for t in toks.values())
    return {"identical": all(v is None for v in div.values()), "reference": labels[0], "first_divergence": div,
            "compared": compared, "partial": partial}


def side_by_side(runs: Mapping[str, Any], *, partial: bool = False, curve: Any = None) -> go.Figure:
    """2-4 methods on the same prompt in lockstep, aligned by output position: each one's token stream
    (coloured by provenance), the wall time at which each output position was committed (lower = faster), the
    target forward passes each needed (counted, not timed: what speculation saves, the same on every run) with
    the mean acceptance length, and whether the outputs are identical. With `curve` (a
    `labkit.latency.LatencyCurve`, e.g. `Session.latency_curve()`), each bar also says the speedup that curve
    predicts for the rounds the method ran (`latency.expected_text`: with its drafting time where drafting
    took a real share of the rounds). tokens/s is one wall-clock sample and
    says so. `partial=True` while the runs are still streaming (or after a stop): only positions every run has
    produced are compared."""
    from ..methods import own_tokens_only

    own = {k: own_tokens_only((getattr(v, "config", None) or {}).get("method") or k) for k, v in runs.items()}
    runs = {k: steps_of(v) for k, v in runs.items()}
    labels = list(runs)
    verdict = compare_outputs(runs, partial=partial)
    strip_px, time_px, bar_px = 50 + 34 * len(labels), 260, 170
    total_px = strip_px + time_px + bar_px
    fig = make_subplots(rows=3, cols=1, row_heights=[strip_px / total_px, time_px / total_px, bar_px / total_px],
                        vertical_spacing=0.09,
                        subplot_titles=("tokens by output position (colour = provenance, ✕ = differs from "
                                        f"{labels[0] if labels else ''})",
                                        "wall time (s) when each output position was committed: lower = faster",
                                        "target forward passes (counted: lower = fewer passes for the same text)"))
    mets = {k: metrics.compute(v) for k, v in runs.items()}
    ylabels = {k: f"{k}" for k in labels}
    ref_tokens = [t for s in runs[labels[0]] for t in s.tokens] if labels else []
    for j, k in enumerate(labels):
        spans = stream.spans(runs[k], autoregressive=own[k])
        color = METHOD_COLORS[j % len(METHOD_COLORS)]
        fig.add_trace(go.Scatter(
            x=list(range(len(spans))), y=[ylabels[k]] * len(spans), mode="markers",
            marker=dict(symbol="square", size=11, color=[PROVENANCE_COLORS.get(sp.provenance) for sp in spans],
                        line=dict(color="#888888", width=0.5)),
            hovertext=[f"{k} · position {i}<br>{_span_hover(sp)}" for i, sp in enumerate(spans)], hoverinfo="text",
            name=k, showlegend=False, customdata=[sp.token for sp in spans]), row=1, col=1)
        bad = [i for i, sp in enumerate(spans) if (i >= len(ref_tokens) and not partial)
               or (i < len(ref_tokens) and sp.token != ref_tokens[i])]
        if bad:
            fig.add_trace(go.Scatter(x=bad, y=[ylabels[k]] * len(bad), mode="markers", hoverinfo="skip",
                                     marker=dict(symbol="x-thin", size=11, line=dict(color=STATUS_COLORS[REJECTED], width=2)),
                                     name=f"{k} differs", showlegend=False), row=1, col=1)
        # time at which every output position was committed
        xs, ys, clock, pos = [], [], 0.0, 0
        for s in runs[k]:
            clock += s.timing.total
            for _ in s.tokens:
                xs.append(pos)
                ys.append(clock)
                pos += 1
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=2, shape="hv"), name=k,
                                 hovertemplate=f"{k}: position %{{x}} at %{{y:.2f}} s<extra></extra>"), row=2, col=1)
    from ..latency import expected_text

    def bar_label(k: str) -> str:
        bound = expected_text(runs[k], curve) if curve is not None else None
        # one short fact per line: a bar is narrow, and one long line would be shrunk until it is unreadable
        return (f"{mets[k].target_forwards} passes<br>{mets[k].mean_accept_len:.2f} tokens/pass"
                + (f"<br>curve predicts {bound.replace(' (', '<br>(')}" if bound is not None else "")
                + f"<br>{mets[k].tokens_per_s:.1f} tok/s (one wall-clock run)")

    fig.add_trace(go.Bar(x=labels, y=[mets[k].target_forwards for k in labels],
                         marker_color=[METHOD_COLORS[j % len(METHOD_COLORS)] for j in range(len(labels))],
                         text=[bar_label(k) for k in labels], textposition="auto", showlegend=False,
                         name="forward passes", hovertemplate="%{x}: %{y} target forward passes<extra></extra>"),
                  row=3, col=1)
    if verdict["identical"] and partial:
        head = f"identical so far ({verdict['compared']} positions every method has produced)"
    elif verdict["identical"]:
        head = f"identical outputs ({len(ref_tokens)} tokens, {len(labels)} methods)"
    else:
        bad = [f"{k} at position {p}" for k, p in verdict["first_divergence"].items() if p is not None]
        head = f"outputs differ from {labels[0]}: " + ", ".join(bad)
    fig.update_xaxes(matches="x2", row=1, col=1)
    fig.update_xaxes(title_text="output position", title_standoff=4, row=2, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=2, col=1)
    fig.update_layout(title=dict(text=("✓ " if verdict["identical"] else "✗ ") + head, font=dict(size=14)),
                      template="plotly_white", height=total_px + 170, hovermode="closest",
                      legend=dict(orientation="h", yanchor="bottom", y=1.04, x=0),
                      margin=dict(l=130, r=20, t=100, b=30),
                      meta={"view": "side_by_side", **verdict,
                            "metrics": {k: mets[k].as_dict() for k in labels}})
    return fig


# ---- latency curve ---------------------------------------------------------------------------------

def latency_curve(points: Any, *, title: str | None = None) -> go.Figure:
    """Seconds for one target forward over n tokens: `points` is a `labkit.latency.LatencyCurve` (the line is its
    latency model, the fastest repeat per n; dots are every timed forward), a list of (n_tokens, seconds) pairs
    (repeats allowed: the line is the median per n), or a dict {label: either} for several curves (e.g. the
    stock and the fast execution path). Flat means extra draft tokens are nearly free on this device; the knee
    says where they stop being free."""
    curves = dict(points) if isinstance(points, Mapping) else {"forward": points}
    fig = go.Figure()
    meta = {}
    for j, (label, pts) in enumerate(curves.items()):
        color = METHOD_COLORS[j % len(METHOD_COLORS)]
        model = None
        if hasattr(pts, "tokens") and hasattr(pts, "seconds"):  # a LatencyCurve
            model = list(zip(pts.tokens, pts.seconds))
            pts = pts.points()
        pts = [(int(n), float(s)) for n, s in pts]
        by_n: dict[int, list[float]] = {}
        for n, s in pts:
            by_n.setdefault(n, []).append(s)
        ns = sorted(by_n)
        med = [sorted(by_n[n])[len(by_n[n]) // 2] for n in ns]
        if model is not None:
            ns, med = [int(n) for n, _ in model], [float(s) for _, s in model]
        base = med[0] if med else 0.0
        if any(len(v) > 1 for v in by_n.values()):
            fig.add_trace(go.Scatter(x=[n for n, _ in pts], y=[s * 1000 for _, s in pts], mode="markers",
                                     marker=dict(color=color, size=5, opacity=0.35), showlegend=False,
                                     name=f"{label} (each run)", hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=ns, y=[s * 1000 for s in med], mode="lines+markers", line=dict(color=color, width=2), name=label,
            customdata=[(s / base if base > 0 else 0.0) for s in med],
            hovertemplate=f"{label}: %{{x}} tokens in %{{y:.1f}} ms (×%{{customdata:.2f}} the cost of {ns[0] if ns else 1})"
                          "<extra></extra>"))
        meta[label] = list(zip(ns, med))
    fig.update_layout(title=dict(text=title or "Latency of one target forward vs tokens verified in it",
                                 font=dict(size=14)),
                      template="plotly_white", height=420,
                      xaxis=dict(title="tokens in one forward pass", type="log", dtick=math.log10(2)),
                      yaxis=dict(title="ms per forward", rangemode="tozero"),
                      meta={"view": "latency_curve", "median": meta})
    return fig

# ---- benchmark summary -----------------------------------------------------------------------------

def bench_summary(rows: Sequence[Mapping], *, clock: str = "cpu", title: str | None = None) -> go.Figure:
    """`labkit.bench.table` rows: per Spec-Bench category (and overall), each method's speedup over the
    autoregressive baseline measured in the same process -- process CPU time (`clock="cpu"`, fair with one
    torch thread on a shared machine) or wall time (`clock="wall"`) -- and its mean acceptance length.
    `model.generate` ("generate", on the stock model) does the same work as the baseline on the stock path: its
    bars show what the fast execution path gains (and how noisy the ratios are)."""
    if clock not in ("cpu", "wall"):
        raise ValueError("clock must be 'cpu' or 'wall'")
    rows = [r for r in rows if not str(r["method"]).endswith("+trace")]
    cats = list(dict.fromkeys(r["category"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "autoregressive"))
    key = "cpu" if clock == "cpu" else "tokens_per_s"

    def get(method, cat, what):
        r = next((r for r in rows if r["method"] == method and r["category"] == cat), None)
        if r is None:
            return None
        return (r.get("speedup") or {}).get(key) if what == "speedup" else r.get("mean_accept_len")

    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.14, shared_xaxes=False,
                        subplot_titles=(f"speedup over the autoregressive baseline ({'CPU' if clock == 'cpu' else 'wall'}"
                                        " time, same process)", "mean acceptance length (tokens per target forward)"))
    speed: dict[str, list] = {}
    mal: dict[str, list] = {}
    for j, m in enumerate(methods):
        # slot 0 is the baseline's (not drawn): a method keeps the colour its Compare lane has
        color = "#bbbbbb" if m == "generate" else METHOD_COLORS[(j + 1) % len(METHOD_COLORS)]
        speed[m] = [get(m, c, "speedup") for c in cats]
        fig.add_trace(go.Bar(x=cats, y=speed[m], name=m, marker_color=color, legendgroup=m,
                             text=[None if v is None else f"{v:.2f}×" for v in speed[m]], textposition="outside",
                             cliponaxis=False, hovertemplate=f"{m} · %{{x}}: %{{y:.2f}}×<extra></extra>"), row=1, col=1)
        if m != "generate":
            mal[m] = [get(m, c, "mal") for c in cats]
            fig.add_trace(go.Bar(x=cats, y=mal[m], name=m, marker_color=color, legendgroup=m, showlegend=False,
                                 hovertemplate=f"{m} · %{{x}}: %{{y:.2f}} tokens/forward<extra></extra>"),
                          row=2, col=1)
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray", row=1, col=1)
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray", row=2, col=1)
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(barmode="group", template="plotly_white", height=620, legend=dict(orientation="h", y=-0.12),
                      title=dict(text=title or "Which method wins on which task?", font=dict(size=14)),
                      meta={"view": "bench_summary", "clock": clock, "categories": cats, "speedup": speed,
                            "mean_accept_len": mal})
    return fig

"""Views of sparsity frames: plotly figures (`go.Figure`) from SparsityFrames (any iterable of trace events
works: everything that is not a frame is skipped).

    views.layer_map(frame)               # layer x position: attention (mean over heads) or kept share
    views.head_map(frame, layer=3)       # head x position for one layer
    views.top_positions(frame, layer=3)  # the positions a layer attended to most: [(position, attention), ...]
    views.residency_timeline(frames)     # decode step x position: kept / evicted / never seen
    views.fidelity(frames)               # recall, KL and top-1 agreement vs dense over steps, KV kept share
    views.kv_by_layer(frame)             # KV entries read per layer vs dense
    views.policy_summary({"h2o": events, "streaming_llm": other})   # several runs: mean fidelity and KV share

Long contexts are downsampled to at most `max_positions` columns: attention is summed per bin (so a bin
shows the mass it holds), kept sets are averaged (the share of the bin kept). Rows stored as top-k show only
their top-k weights (the rest of the row was not stored).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .frames import AttnRow, SparsityFrame, from_ranges, frames_of, residency

KEPT_COLOR, EVICTED_COLOR, UNSEEN_COLOR = "#009E73", "#D55E00", "#e8e8e8"  # Okabe-Ito, as labkit.views
RESIDENCY_SCALE = [[0.0, EVICTED_COLOR], [1.0, KEPT_COLOR]]
ATTN_SCALE = "Viridis"


def row_vector(row: AttnRow, length: int) -> list[float]:
    """An attention row as a dense vector over positions 0..length-1 (zeros where a top-k row stored nothing)."""
    out = [0.0] * length
    if row.full:
        for p, v in enumerate(row.full[:length]):
            out[p] = v
    else:
        for p, v in zip(row.top, row.weights):
            if p < length:
                out[p] = v
    return out


def bin_edges(length: int, max_positions: int) -> list[int]:
    """Start positions of at most max_positions equal bins covering 0..length-1."""
    if length <= max_positions:
        return list(range(length))
    width = math.ceil(length / max_positions)
    return list(range(0, length, width))


def downsample(values: Sequence[float], max_positions: int, how: str = "sum") -> tuple[list[int], list[float]]:
    """(bin starts, per-bin sum or mean); NaN entries are ignored, an all-NaN bin stays NaN."""
    starts = bin_edges(len(values), max_positions)
    out = []
    for i, a in enumerate(starts):
        b = starts[i + 1] if i + 1 < len(starts) else len(values)
        chunk = [v for v in values[a:b] if not math.isnan(v)]
        if not chunk:
            out.append(float("nan"))
        else:
            out.append(sum(chunk) if how == "sum" else sum(chunk) / len(chunk))
    return starts, out


def _row_index(frame: SparsityFrame, row: int) -> int:
    n = len(frame.queries)
    if not -n <= row < n:
        raise IndexError(f"frame {frame.step} recorded {n} query row(s); row {row} does not exist")
    return row % n


def _head_values(frame: SparsityFrame, hf, what: str, row: int, width: int) -> list[float]:
    if what == "attention":
        return row_vector(hf.rows[row], width)
    if what == "kept":
        kept = from_ranges(hf.kept, frame.kv_len).float().tolist()
        return kept + [1.0] * (width - frame.kv_len)  # the round's own tokens are always read
    raise ValueError(f"what must be 'attention' or 'kept', got {what!r}")


def _width(frame: SparsityFrame, row: int) -> int:
    return frame.queries[row] + 1


def layer_map(frame: SparsityFrame, *, what: str = "attention", head: int | None = None, row: int = -1,
              max_positions: int = 512, log: bool = False) -> go.Figure:
    """Layer x position heatmap for one frame: the attention of query row `row` (mean over the recorded heads,
    or one head), or the share of heads that kept each position. `log=True` colours log10(attention): a linear
    scale is all dark but for the largest weights, a log scale shows the sink and the long tail too."""
    r = _row_index(frame, row)
    width = _width(frame, r)
    z, ys, xs = [], [], []
    for lf in frame.layers:
        heads = [hf for hf in lf.heads if head is None or hf.head == head]
        if not heads:
            continue
        vecs = [_head_values(frame, hf, what, r, width) for hf in heads]
        mean = [sum(col) / len(col) for col in zip(*vecs)]
        xs, vals = downsample(mean, max_positions, "sum" if what == "attention" else "mean")
        z.append(vals)
        ys.append(lf.layer)
    who = "mean over heads" if head is None else f"head {head}"
    if log and what == "attention":
        floor = 1e-5  # below this a weight is not worth a colour
        shown = [[math.log10(max(v, floor)) if not math.isnan(v) else v for v in row_] for row_ in z]
        heat = go.Heatmap(z=shown, x=xs, y=ys, customdata=z, colorscale=ATTN_SCALE, zmin=math.log10(floor), zmax=0,
                          colorbar=dict(title="attention", tickvals=[-5, -4, -3, -2, -1, 0],
                                        ticktext=["≤1e-5", "1e-4", "0.001", "0.01", "0.1", "1"]),
                          hovertemplate="layer %{y}<br>position %{x}<br>%{customdata:.5f}<extra></extra>")
    else:
        heat = go.Heatmap(z=z, x=xs, y=ys, colorscale=ATTN_SCALE if what == "attention" else RESIDENCY_SCALE,
                          zmin=0, zmax=None if what == "attention" else 1,
                          colorbar=dict(title="attention" if what == "attention" else "kept share"),
                          hovertemplate="layer %{y}<br>position %{x}<br>%{z:.4f}<extra></extra>")
    fig = go.Figure(heat)
    fig.update_layout(title=f"{frame.policy} · step {frame.step} · query at position {frame.queries[r]} · "
                            f"{what} ({who})", xaxis_title=_x_title(width, max_positions), yaxis_title="layer",
                      shapes=_context_edge(frame, len(xs), width, max_positions))
    return fig


def mass_by_region(frame: SparsityFrame, *, sinks: int = 4, recent: int = 32, row: int = -1) -> go.Figure:
    """Per layer, where query row `row`'s attention mass went (mean over the recorded heads), in three stacked
    bars: the first `sinks` positions (attention sinks), the last `recent` positions (the local window, the
    round's own tokens included) and everything between (the middle: what a sinks + window cache drops). A frame
    that stored only a row's largest weights leaves the rest of its mass unplaced: a grey fourth segment."""
    r = _row_index(frame, row)
    width = _width(frame, r)
    layers, parts = [], {"sinks": [], "middle": [], "recent": []}
    for lf in frame.layers:
        if not lf.heads:
            continue
        vecs = [_head_values(frame, hf, "attention", r, width) for hf in lf.heads]
        mean = [sum(col) / len(col) for col in zip(*vecs)]
        lo, hi = min(sinks, width), max(min(sinks, width), width - recent)
        layers.append(lf.layer)
        parts["sinks"].append(sum(mean[:lo]))
        parts["middle"].append(sum(mean[lo:hi]))
        parts["recent"].append(sum(mean[hi:]))
    parts["unplaced"] = [max(0.0, 1.0 - a - b - c) for a, b, c in zip(parts["sinks"], parts["middle"], parts["recent"])]
    fig = go.Figure()
    for (name, ys), color in zip(parts.items(), ("#0072B2", "#E69F00", "#009E73", "#d9d9d9")):
        label = {"sinks": f"first {sinks} (sinks)", "middle": "middle", "recent": f"last {recent} (recent)",
                 "unplaced": "not stored (below the frame's top-k weights)"}[name]
        fig.add_trace(go.Bar(x=layers, y=ys, name=label, marker_color=color,
                             hovertemplate=f"layer %{{x}}: %{{y:.2f}} of the mass on the {name}<extra></extra>"))
    fig.update_layout(barmode="stack", title=f"where attention mass goes, per layer · step {frame.step} · query at "
                                             f"position {frame.queries[r]} of {width}",
                      xaxis_title="layer", yaxis=dict(title="share of attention mass", range=[0, 1.02]),
                      legend=dict(orientation="h", y=-0.2), template="plotly_white",
                      meta={"view": "mass_by_region", "layers": layers, **parts})
    return fig


def recall_vs_kl(runs, *, title: str | None = None) -> go.Figure:
    """One point per decode step of each run ({label: events}): attention-mass recall (x) against the next-token
    KL(dense || policy) (y). Does keeping more of the attention mass keep the output distribution?"""
    fig = go.Figure()
    symbols = ("circle", "square", "diamond", "triangle-up", "x")
    colors = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00")
    for j, (label, events) in enumerate(runs.items()):
        frames = [f for f in frames_of(events) if f.kind == "decode" and f.recall is not None and f.kl is not None]
        fig.add_trace(go.Scatter(x=[f.recall for f in frames], y=[f.kl for f in frames], mode="markers", name=label,
                                 marker=dict(symbol=symbols[j % len(symbols)], color=colors[j % len(colors)], size=8),
                                 customdata=[f.step for f in frames],
                                 hovertemplate=f"{label} · step %{{customdata}}<br>recall %{{x:.3f}}, KL %{{y:.4f}}"
                                               f"<extra></extra>"))
    fig.update_layout(title=title or "attention recall vs next-token KL, one point per decode step",
                      xaxis_title="attention-mass recall (share of dense attention on kept entries)",
                      yaxis_title="KL(dense ‖ policy), nats", template="plotly_white",
                      legend=dict(orientation="h", y=-0.2), meta={"view": "recall_vs_kl"})
    return fig


def top_positions(frame: SparsityFrame, layer: int, *, k: int = 5, head: int | None = None, row: int = -1
                  ) -> list[tuple[int, float]]:
    """The k positions that query row `row` attended to most in one recorded layer (attention averaged over the
    recorded heads, or one head), as (position, attention) pairs, largest first. Rows stored as top-k only know
    their stored positions."""
    r = _row_index(frame, row)
    width = _width(frame, r)
    lf = next((lf for lf in frame.layers if lf.layer == layer), None)
    if lf is None:
        raise ValueError(f"layer {layer} was not recorded in frame {frame.step}")
    vecs = [_head_values(frame, hf, "attention", r, width) for hf in lf.heads if head is None or hf.head == head]
    if not vecs:
        raise ValueError(f"head {head} was not recorded in layer {layer} of frame {frame.step}")
    mean = [sum(col) / len(col) for col in zip(*vecs)]
    order = sorted(range(width), key=lambda i: (-mean[i], i))[:k]
    return [(i, mean[i]) for i in order]


def head_map(frame: SparsityFrame, layer: int, *, what: str = "attention", row: int = -1,
             max_positions: int = 512) -> go.Figure:
    """Head x position heatmap for one layer of one frame (attention of query row `row`, or kept positions)."""
    r = _row_index(frame, row)
    width = _width(frame, r)
    lf = next((lf for lf in frame.layers if lf.layer == layer), None)
    if lf is None:
        raise ValueError(f"layer {layer} was not recorded in frame {frame.step}")
    z, ys, xs = [], [], []
    for hf in lf.heads:
        xs, vals = downsample(_head_values(frame, hf, what, r, width), max_positions,
                              "sum" if what == "attention" else "mean")
        z.append(vals)
        ys.append(hf.head)
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, colorscale=ATTN_SCALE if what == "attention" else RESIDENCY_SCALE,
                               zmin=0, zmax=None if what == "attention" else 1,
                               colorbar=dict(title="attention" if what == "attention" else "kept"),
                               hovertemplate="head %{y}<br>position %{x}<br>%{z:.4f}<extra></extra>"))
    fig.update_layout(title=f"{frame.policy} · step {frame.step} · layer {layer} · {what}",
                      xaxis_title=_x_title(width, max_positions), yaxis_title="head",
                      shapes=_context_edge(frame, len(xs), width, max_positions))
    return fig


def residency_timeline(events: Iterable, *, layer: int | None = None, head: int | None = None,
                       max_positions: int = 512, max_steps: int = 400) -> go.Figure:
    """Decode step x position: green kept, red evicted (aggregated: the share of heads keeping it), grey never
    seen (not in the cache yet). Steps beyond max_steps are thinned evenly."""
    frames = [f for f in frames_of(events) if f.kind == "decode"]
    if len(frames) > max_steps:
        stride = math.ceil(len(frames) / max_steps)
        frames = frames[::stride]
    res = residency(frames, layer=layer, head=head)
    z, xs = [], []
    for cells in res.cells:
        vals = [float("nan") if c < 0 else c for c in cells]
        xs, binned = downsample(vals, max_positions, "mean")
        z.append(binned)
    who = ("all recorded heads" if layer is None and head is None else
           f"layer {layer}" if head is None else f"head {head}" if layer is None else f"layer {layer} head {head}")
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=list(res.steps), colorscale=RESIDENCY_SCALE, zmin=0, zmax=1,
                               colorbar=dict(title="kept share"),
                               hovertemplate="step %{y}<br>position %{x}<br>kept %{z:.2f}<extra></extra>"))
    policy = frames[0].policy if frames else ""
    fig.update_layout(title=f"cache residency · {policy} · {who} (grey: never seen)", plot_bgcolor=UNSEEN_COLOR,
                      xaxis_title=_x_title(res.width, max_positions), yaxis_title="decode step",
                      yaxis=dict(autorange="reversed"))
    return fig


def fidelity(events: Iterable, *, title: str | None = None) -> go.Figure:
    """Per decode step: attention-mass recall, KL(dense || policy), top-1 agreement and the KV share read."""
    frames = [f for f in frames_of(events) if f.kind == "decode"]
    steps = [f.step for f in frames]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("recall · top-1 agreement · KV kept share",
                                        "next-token KL(dense ‖ policy)"))
    series = {"recall": [f.recall for f in frames], "top-1 agreement": [f.top1 for f in frames],
              "KV kept / dense": [f.kv_ratio for f in frames]}
    for name, ys in series.items():
        fig.add_trace(go.Scatter(x=steps, y=[_nan(v) for v in ys], mode="lines+markers", name=name), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[_nan(f.kl) for f in frames], mode="lines+markers", name="KL (nats)"),
                  row=2, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_xaxes(title_text="decode step", row=2, col=1)
    fig.update_layout(title=title or (f"fidelity vs dense · {frames[0].policy}" if frames else "fidelity vs dense"))
    return fig


def kv_by_layer(frame: SparsityFrame) -> go.Figure:
    """KV entries read per layer (summed over heads) against dense."""
    layers = list(range(len(frame.kv_kept)))
    kept = [sum(r) for r in frame.kv_kept]
    dense = [frame.kv_len * len(r) for r in frame.kv_kept]
    fig = go.Figure([go.Bar(x=layers, y=dense, name="dense", marker_color=UNSEEN_COLOR),
                     go.Bar(x=layers, y=kept, name="kept", marker_color=KEPT_COLOR)])
    fig.update_layout(barmode="overlay", title=f"{frame.policy} · step {frame.step} · KV entries read per layer",
                      xaxis_title="layer", yaxis_title="KV entries (summed over heads)")
    return fig


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def policy_summary(runs, *, title: str | None = None) -> go.Figure:
    """Several runs side by side, {label: events} (e.g. one per policy at the same budget): the mean over their
    decode frames of the attention-mass recall, the top-1 agreement with dense decoding, the KV share read
    (left, all in [0, 1]) and the next-token KL(dense || policy) (right). Means skip unmeasured steps (a dense
    run has no KL / top-1: its logits are the dense ones)."""
    labels = list(runs)
    frames = {k: [f for f in frames_of(v) if f.kind == "decode"] for k, v in runs.items()}
    stats = {k: {"recall": _mean(f.recall for f in fs), "top1": _mean(f.top1 for f in fs),
                 "kv_ratio": _mean(f.kv_ratio for f in fs), "kl": _mean(f.kl for f in fs), "steps": len(fs)}
             for k, fs in frames.items()}
    names = {"recall": "attention recall", "top1": "top-1 agreement", "kv_ratio": "KV share read"}
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35], horizontal_spacing=0.1,
                        subplot_titles=("mean per decode step (higher recall / agreement with less KV is better)",
                                        "mean next-token KL(dense ‖ policy), nats"))
    colors = ("#1f77b4", "#2ca02c", "#bbbbbb")
    for c, (key, name) in zip(colors, names.items()):
        ys = [_nan(stats[k][key]) for k in labels]
        fig.add_trace(go.Bar(x=labels, y=ys, name=name, marker_color=c,
                             text=[None if math.isnan(y) else f"{y:.2f}" for y in ys], textposition="outside"),
                      row=1, col=1)
    kl = [_nan(stats[k]["kl"]) for k in labels]
    fig.add_trace(go.Bar(x=labels, y=kl, name="KL", marker_color="#d62728", showlegend=False,
                         text=[None if math.isnan(y) else f"{y:.3f}" for y in kl], textposition="outside"),
                  row=1, col=2)
    fig.update_yaxes(range=[0, 1.12], row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_layout(barmode="group", title=title or "policies side by side", legend=dict(orientation="h", y=-0.15),
                      meta={"view": "policy_summary", "labels": labels,
                            **{key: [stats[k][key] for k in labels] for key in ("recall", "top1", "kv_ratio", "kl",
                                                                                  "steps")}})
    return fig


def _nan(v):
    return float("nan") if v is None else v


def _x_title(width: int, max_positions: int) -> str:
    if width <= max_positions:
        return "position"
    return f"position (bins of {math.ceil(width / max_positions)})"


def _context_edge(frame: SparsityFrame, n_bins: int, width: int, max_positions: int) -> list[dict]:
    """A dashed line where the committed context ends and the round's own tokens begin."""
    if frame.kind != "decode" or not frame.kv_len:
        return []
    x = frame.kv_len - 0.5 if width <= max_positions else frame.kv_len - math.ceil(width / max_positions) / 2
    return [dict(type="line", x0=x, x1=x, yref="paper", y0=0, y1=1, line=dict(dash="dash", color="#888"))]

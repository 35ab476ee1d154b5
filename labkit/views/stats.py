"""A run over its rounds: acceptance statistics, a Step.state entry over time, a session's warm-up."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import metrics
from ..trace import ACCEPTED
from .style import METHOD_COLORS, PHASES, STATUS_COLORS, steps_of


# ---- acceptance statistics -------------------------------------------------------------------------

def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def acceptance_stats(steps: Iterable[Any], *, window: int = 8) -> go.Figure:
    """Four panels: acceptance per depth, accepted draft tokens per round (histogram), tokens per forward over
    the rounds with a rolling mean (run boundaries dashed: does a learned draft source warm up?), and where
    the wall time went (draft / verify / accept / commit / other). Values are `metrics.compute` of the steps."""
    steps = steps_of(steps)
    m = metrics.compute(steps)
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.2, horizontal_spacing=0.1,
                        subplot_titles=("acceptance per depth (rounds reaching depth d)",
                                        "accepted draft tokens per round",
                                        f"tokens per forward (line: mean of {window})",
                                        "where the time went (s)"))
    fig.add_trace(go.Bar(x=[d for d, _, _ in m.per_depth], y=[r for _, r, _ in m.per_depth],
                         text=[f"{r:.0%} of {n}" for _, r, n in m.per_depth], textposition="outside",
                         customdata=[n for _, _, n in m.per_depth], marker_color=STATUS_COLORS[ACCEPTED],
                         hovertemplate="depth %{x}: %{y:.1%} of %{customdata} rounds<extra></extra>",
                         name="per depth", showlegend=False), row=1, col=1)
    fig.add_trace(go.Bar(x=list(range(len(m.accept_hist))), y=list(m.accept_hist), marker_color="#7f7f7f",
                         hovertemplate="%{y} rounds accepted %{x} draft tokens<extra></extra>",
                         name="histogram", showlegend=False), row=1, col=2)
    rounds_x, per_fwd, boundaries, gi = [], [], [], 0
    for s in steps:
        if s.kind == "prefill":
            if gi > 0:
                boundaries.append(gi + 0.5)
            continue
        gi += 1
        rounds_x.append(gi)
        per_fwd.append(len(s.tokens) / max(1, s.target_forwards))
    fig.add_trace(go.Scatter(x=rounds_x, y=per_fwd, mode="markers", marker=dict(color="#9ecae1", size=6),
                             name="this round", showlegend=False,
                             hovertemplate="round %{x}: %{y:.0f} tokens/forward<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Scatter(x=rounds_x, y=rolling_mean(per_fwd, window), mode="lines",
                             line=dict(color="#08519c", width=2), name="rolling mean", showlegend=False,
                             hovertemplate="round %{x}: mean %{y:.2f}<extra></extra>"), row=2, col=1)
    for b in boundaries:
        fig.add_vline(x=b, line=dict(color="#999999", dash="dash", width=1), row=2, col=1)
    phase = dict(m.phase)
    other = max(0.0, m.wall - sum(phase.values()))
    names = list(PHASES) + ["other"]
    secs = [phase[k] for k in PHASES] + [other]
    fig.add_trace(go.Bar(x=names, y=secs, marker_color=["#fdae6b", "#6baed6", "#74c476", "#9e9ac8", "#cccccc"],
                         text=[f"{v / m.wall:.0%}" if m.wall > 0 else "" for v in secs], textposition="outside",
                         cliponaxis=False,
                         hovertemplate="%{x}: %{y:.3f} s<extra></extra>", name="phases", showlegend=False),
                  row=2, col=2)
    fig.update_yaxes(range=[0, 1.15], tickformat=".0%", row=1, col=1)
    fig.update_xaxes(title_text="depth", dtick=1, row=1, col=1)
    fig.update_xaxes(title_text="accepted draft tokens", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="rounds", row=1, col=2)
    fig.update_xaxes(title_text="decode round", row=2, col=1)
    fig.update_yaxes(title_text="tokens / forward", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(range=[0, 1.2 * max(secs + [1e-9])], row=2, col=2)  # room for the share above the bar
    fig.update_layout(
        title=dict(text=(f"mean acceptance length {m.mean_accept_len:.2f} (bonus included) · draft acceptance "
                         f"{m.accepted}/{m.drafted} = {m.draft_acceptance_rate:.0%} · {m.new_tokens} tokens "
                         f"in {m.wall:.2f} s = {m.tokens_per_s:.1f} tok/s"), font=dict(size=13)),
        template="plotly_white", height=620, margin=dict(l=50, r=20, t=90, b=50),
        meta={"view": "acceptance_stats", **m.as_dict()})
    return fig

# ---- a method's state over the rounds --------------------------------------------------------------

def _state_value(state: Mapping, key: str) -> Any:
    v: Any = state
    for part in key.split("."):
        if not isinstance(v, Mapping) or part not in v:
            return None
        v = v[part]
    return v


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def state_timeline(steps: Iterable[Any], keys: str | Sequence[str], *, title: str | None = None) -> go.Figure:
    """Numeric `Step.state` entries over the decode rounds, one line each: a number (e.g. SWIFT's
    `skip_acceptance`, early exit's `exit`), or every numeric entry of a dict (e.g. early exit's per-layer
    acceptance estimates `alpha`: one line per layer). Nested entries with dots: `"search.candidate_match"`.
    Rounds where an entry is missing are gaps."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    decode = [s for s in steps_of(steps) if s.kind == "decode"]
    series: dict[str, list[float | None]] = {}
    for i, s in enumerate(decode):
        for key in keys:
            v = _state_value(s.state or {}, key)
            items = ([(key, v)] if _number(v) or v is None else
                     [(f"{key}[{k}]", x) for k, x in v.items()] if isinstance(v, Mapping) else [])
            for name, x in items:
                if _number(x):
                    series.setdefault(name, [None] * len(decode))[i] = float(x)
    fig = go.Figure()
    xs = [s.index for s in decode]
    for j, (name, ys) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, connectgaps=False,
                                 line=dict(color=METHOD_COLORS[j % len(METHOD_COLORS)]),
                                 hovertemplate=f"{name}<br>step %{{x}}: %{{y:.3g}}<extra></extra>"))
    fig.update_layout(title=dict(text=title or f"Step.state over the rounds: {', '.join(keys)}", font=dict(size=14)),
                      template="plotly_white", height=380, xaxis_title="step", yaxis_title="value",
                      legend=dict(orientation="h", y=-0.25),
                      meta={"view": "state_timeline", "keys": keys, "steps": xs, "series": series})
    return fig

# ---- session warm-up -------------------------------------------------------------------------------

def session_warmup(runs: Sequence[Any], *, labels: Sequence[str] | None = None) -> go.Figure:
    """Runs of one session in order (e.g. several prompts with Token Recycling, state kept): mean acceptance
    length per run, and how much of the method's state is known after each (Step.state["matrix_rows_known"]
    when the method reports it)."""
    runs = list(runs)
    labels = list(labels) if labels is not None else [f"run {i + 1}" for i in range(len(runs))]
    mal, known = [], []
    for r in runs:
        st = steps_of(r)
        mal.append(metrics.compute(st).mean_accept_len)
        k = None
        for s in reversed(st):
            if "matrix_rows_known" in (s.state or {}):
                k = s.state["matrix_rows_known"]
                break
        known.append(k)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=labels, y=mal, name="mean acceptance length", marker_color="#6baed6",
                         text=[f"{v:.2f}" for v in mal], textposition="outside"), secondary_y=False)
    if any(k is not None for k in known):
        fig.add_trace(go.Scatter(x=labels, y=known, name="matrix rows known after the run", mode="lines+markers",
                                 line=dict(color="#e6550d", width=2)), secondary_y=True)
    fig.update_yaxes(title_text="tokens / forward", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="rows known", rangemode="tozero", secondary_y=True, showgrid=False)
    fig.update_layout(title=dict(text="Does the draft source warm up over a session?", font=dict(size=14)),
                      template="plotly_white", height=400, legend=dict(orientation="h", y=-0.2),
                      meta={"view": "session_warmup", "mean_accept_len": mal, "rows_known": known})
    return fig


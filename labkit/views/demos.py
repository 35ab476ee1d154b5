"""Teaching figures over toy distributions: the rejection rule and k candidates per position (the
simulations are computation: labkit.teaching)."""
from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..trace import ACCEPTED, REJECTED
from ..teaching import (SIBLING_SHORT, TOY_P, TOY_Q, TOY_TOKENS, chi_square, simulate_rejection,
                        simulate_siblings)
from .style import STATUS_COLORS


# ---- the rejection rule made visible ---------------------------------------------------------------

def rejection_demo(p: Sequence[float] = TOY_P, q: Sequence[float] = TOY_Q, n: int = 20000, *, seed: int = 0,
                   tokens: Sequence[str] = TOY_TOKENS) -> go.Figure:
    """The distribution test made visible: the target p, the draft q, and how often each token comes out of
    n draft-and-verify rounds with the real rule (matches p) and with a buggy rule (drifts toward q), with
    chi-square p-values against p."""
    ok = simulate_rejection(p, q, n, seed=seed)
    bug = simulate_rejection(p, q, n, seed=seed, rule="resample_p")
    s_ok, pv_ok = chi_square(ok, p)
    s_bug, pv_bug = chi_square(bug, p)
    sp, sq = sum(p), sum(q)
    labels = list(tokens)[: len(p)] + [f"t{i}" for i in range(len(tokens), len(p))]
    fig = go.Figure([
        go.Bar(x=labels, y=[v / sp for v in p], name="p: target", marker_color="#222222"),
        go.Bar(x=labels, y=[v / sq for v in q], name="q: draft", marker_color="#bbbbbb"),
        go.Bar(x=labels, y=[c / n for c in ok], name=f"emitted, labkit's rule (χ² p-value {pv_ok:.2f})",
               marker_color=STATUS_COLORS[ACCEPTED]),
        go.Bar(x=labels, y=[c / n for c in bug], name=f"emitted, buggy rule (χ² p-value {pv_bug:.1e})",
               marker_color=STATUS_COLORS[REJECTED]),
    ])
    fig.update_layout(barmode="group", template="plotly_white", height=420,
                      title=dict(text=(f"{n} rounds: draft x ~ q, accept with min(1, p/q), else resample "
                                       f"from norm(max(0, p − q))"), font=dict(size=14)),
                      yaxis=dict(title="probability / frequency"), legend=dict(orientation="h", y=-0.15),
                      meta={"view": "rejection_demo", "counts_correct": ok, "counts_buggy": bug,
                            "chi2_correct": [s_ok, pv_ok], "chi2_buggy": [s_bug, pv_bug]})
    return fig


# ---- several candidates per position: i.i.d., without replacement, K-SEQ ------------------------------

def siblings_demo(p: Sequence[float] = TOY_P, q: Sequence[float] = TOY_Q, ks: Sequence[int] = (1, 2, 3, 4),
                  n: int = 3000, *, k_shown: int = 3, seed: int = 0, tokens: Sequence[str] = TOY_TOKENS
                  ) -> go.Figure:
    """What k candidates for one position buy, and whether the output is still p. Left: the share of rounds
    that accept a candidate, per k, for i.i.d. siblings (SpecInfer), siblings without replacement (RSD) and
    K-SEQ (SpecTr), with standard speculative sampling's sum(min(p, q)) at k = 1 and SpecTr's exact
    1 - (1 - beta(rho*))^k. Right: at k = k_shown, the emitted frequencies of each rule against p, with
    chi-square p-values, including a buggy rule (without replacement, q not updated)."""
    import torch

    from .. import accept

    ks = sorted({int(k) for k in ks} | {int(k_shown)})
    pt = torch.tensor(list(p), dtype=torch.float64)
    qt = torch.tensor(list(q), dtype=torch.float64)
    pt, qt = pt / pt.sum(), qt / qt.sum()
    fair = ("iid", "without_replacement", "kseq")
    sims = {r: {k: simulate_siblings(p, q, k, n, rule=r, seed=seed + k) for k in ks} for r in fair}
    bug = simulate_siblings(p, q, k_shown, n, rule="no_q_update", seed=seed + k_shown)
    theory = [accept.kseq_accept_prob(pt, qt, k) for k in ks]
    shown = {**{r: sims[r][k_shown]["counts"] for r in fair}, "no_q_update": bug["counts"]}
    chi2 = {r: list(chi_square(c, p)) for r, c in shown.items()}
    labels = list(tokens)[: len(p)] + [f"t{i}" for i in range(len(tokens), len(p))]
    colors = {"iid": "#ff7f0e", "without_replacement": STATUS_COLORS[ACCEPTED], "kseq": "#9467bd",
              "no_q_update": STATUS_COLORS[REJECTED]}
    fig = make_subplots(rows=1, cols=2, column_widths=[0.42, 0.58], horizontal_spacing=0.1,
                        subplot_titles=("rounds that accept a candidate", f"emitted tokens with k = {k_shown}"))
    for r in fair:
        fig.add_trace(go.Scatter(x=ks, y=[sims[r][k]["accepted"] for k in ks], mode="lines+markers",
                                 name=f"accepted, {SIBLING_SHORT[r]}", line=dict(color=colors[r], width=2),
                                 legendgroup=r,
                                 customdata=[sims[r][k]["distinct"] for k in ks],
                                 hovertemplate="k=%{x}: %{y:.3f} accepted<br>distinct candidates "
                                               "%{customdata:.2f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=ks, y=theory, mode="lines", line=dict(color="#9467bd", dash="dot"),
                             name="K-SEQ exact: 1 − (1 − β(ρ*))^k"), row=1, col=1)
    fig.add_trace(go.Scatter(x=[1], y=[float(torch.minimum(pt, qt).sum())], mode="markers",
                             marker=dict(symbol="star", size=14, color="#222222"),
                             name="one draft: Σ min(p, q)"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=pt.tolist(), name="p: target", marker_color="#222222"), row=1, col=2)
    fig.add_trace(go.Bar(x=labels, y=qt.tolist(), name="q: draft", marker_color="#bbbbbb"), row=1, col=2)
    for r, c in shown.items():
        fig.add_trace(go.Bar(x=labels, y=[v / n for v in c], marker_color=colors[r], legendgroup=r,
                             name=f"emitted, {SIBLING_SHORT[r]} · χ² p-value {chi2[r][1]:.2g}"), row=1, col=2)
    fig.update_xaxes(title_text="candidates per position k", dtick=1, row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title_text="probability / frequency", row=1, col=2)
    fig.update_layout(barmode="group", template="plotly_white", height=520, legend=dict(orientation="h", y=-0.18),
                      title=dict(text=f"{n} rounds per point: k candidates for one position", font=dict(size=14)),
                      meta={"view": "siblings_demo", "ks": ks, "k_shown": k_shown,
                            "accepted": {r: [sims[r][k]["accepted"] for k in ks] for r in fair},
                            "distinct": {r: [sims[r][k]["distinct"] for k in ks] for r in fair},
                            "kseq_exact": theory, "single_draft": float(torch.minimum(pt, qt).sum()),
                            "counts": shown, "chi2": chi2, "accepted_no_q_update": bug["accepted"]})
    return fig

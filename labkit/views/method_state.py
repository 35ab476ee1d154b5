"""What a method's own state did in one round: one registered renderer per method, a generic fallback."""
from __future__ import annotations

import json
from typing import Any, Callable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..trace import ACCEPTED, NOT_REACHED, REJECTED, Step
from .style import STATUS_COLORS, STATUS_LABELS, _category_scale, _esc, show_token


# ---- method state ----------------------------------------------------------------------------------

STATE_VIEWS: dict[str, Callable[..., go.Figure]] = {}


def _state_keys(name: str) -> frozenset[str]:
    """The keys method `name` declares for its Step.state (`Method.state_keys`, next to the method)."""
    from ..methods import REGISTRY

    cls = REGISTRY.get(name)
    return frozenset(cls.state_keys) if cls is not None else frozenset()


def register_state_view(name: str, fn: Callable[..., go.Figure]) -> None:
    """Register `fn(step, token_text=None) -> Figure` as the renderer of method `name`'s Step.state (the keys it
    reads are the ones the method declares in `state_keys`)."""
    STATE_VIEWS[name] = fn


def _as_token_text(token_text: Any) -> Callable[[int], str] | None:
    """A token-id -> text function from a function, an LM (`token_texts`) or a Session (its `lm`)."""
    if token_text is None or callable(token_text):
        return token_text
    lm = getattr(token_text, "lm", token_text)
    if hasattr(lm, "token_texts"):
        return lambda t: lm.token_texts([t])[0]
    raise TypeError("token_text must be a function of a token id, an LM or a Session")


def _token_labeler(step: Step, token_text: Any) -> Callable[[int], str]:
    token_text = _as_token_text(token_text)
    known = {step.root: step.root_text, step.bonus: step.bonus_text}
    known.update({n.token: n.text for n in step.nodes if n.text})
    known = {k: v for k, v in known.items() if v}

    def label(tok: int) -> str:
        if tok < 0:
            return ""
        if tok in known:
            return known[tok]
        if token_text is not None:
            try:
                return token_text(tok)
            except Exception:  # noqa: BLE001 - a label is never worth failing a view
                pass
        return f"#{tok}"

    return label


def token_recycling_state(step: Step, token_text: Callable[[int], str] | None = None) -> go.Figure:
    """Token Recycling: the adjacency rows the draft tree was read from this round (row = a token, column
    = rank of a stored successor), each cell coloured by what the target did with the drafted successor."""
    st = step.state or {}
    rows = st.get("rows_read", {}) or {}
    label = _token_labeler(step, token_text)
    # which drafted node sits at (parent token, successor token), and its decision
    status_at = _drafted_status(step)
    bonus_row = step.nodes[step.accepted[-1]].token if step.accepted else step.root
    code = {"unknown": 0, "stored": 1, NOT_REACHED: 2, REJECTED: 3, ACCEPTED: 4, "bonus": 5}
    colors = ["#ffffff", "#f0f0f0", STATUS_COLORS[NOT_REACHED], "#f4a6a6", "#a6dba0", "#9ecae1"]
    keys = sorted(rows, key=lambda t: (int(t) != step.root, int(t)))
    z, text, hover = [], [], []
    for t in keys:
        src = int(t)
        zr, tr, hr = [], [], []
        for r, succ in enumerate(rows[t]):
            succ = int(succ)
            if succ < 0:
                c = "unknown"
            elif (src, succ) in status_at:
                c = status_at[(src, succ)]
            elif src == bonus_row and succ == step.bonus:
                c = "bonus"
            else:
                c = "stored"
            if c == "stored" and src == bonus_row and succ == step.bonus:
                c = "bonus"
            zr.append(code[c])
            tr.append(_esc(show_token(label(succ))) if succ >= 0 else "")
            hr.append(f"M[{_esc(repr(label(src)))}, rank {r}] = {_esc(repr(label(succ))) if succ >= 0 else 'unknown'}"
                      f"<br>{c if c not in STATUS_LABELS else 'drafted, ' + STATUS_LABELS[c]}")
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    n = len(colors) - 1
    k = max((len(v) for v in rows.values()), default=0)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(k)), y=[_esc(f"{show_token(label(int(t)))} ({t})") for t in keys],
                               text=text, texttemplate="%{text}", textfont=dict(size=11), hovertext=hover,
                               hoverinfo="text", zmin=-0.5, zmax=n + 0.5, colorscale=_category_scale(colors),
                               showscale=False, xgap=2, ygap=2, name="rows read"))
    fig.update_layout(
        title=dict(text=(f"Token Recycling, step {step.index}: {len(keys)} adjacency rows read for a "
                         f"{st.get('template_nodes', len(step.nodes))}-node template "
                         f"({'sized to the device' if 'sizing' in st else 'fixed'}) "
                         f"(green accepted, red rejected, grey not reached, blue = the bonus); after verify "
                         f"{st.get('rows_updated', 0)} rows updated, {st.get('rows_changed', 0)} changed, "
                         f"{st.get('matrix_rows_known', 0)} rows known"), font=dict(size=12)),
        template="plotly_white", height=int(min(1200, max(240, 140 + 28 * len(keys)))),
        xaxis=dict(title="rank of the stored successor", dtick=1, side="top"),
        yaxis=dict(title="token (row of M)", autorange="reversed"),
        margin=dict(l=140, r=20, t=110, b=30),
        meta={"view": "method_state", "method": "token_recycling", "rows": [int(t) for t in keys]})
    return fig


register_state_view("token_recycling", token_recycling_state)

_MARK = {ACCEPTED: "✓", REJECTED: "✗", NOT_REACHED: "·"}


def _node_labels(step: Step, label: Callable[[int], str]) -> list[str]:
    """One axis label per drafted node: its index, what the target did (✓ accepted, ✗ rejected, · not reached)
    and its token."""
    return [f"{i} {_MARK.get(nd.status, '')} {_esc(show_token(label(nd.token)))}" for i, nd in enumerate(step.nodes)]


def _drafted_status(step: Step) -> dict[tuple[int, int], str]:
    """(parent token, token) -> what the target did with a drafted node there (accepted wins over others)."""
    out: dict[tuple[int, int], str] = {}
    for nd in step.nodes:
        ptok = step.root if nd.parent < 0 else step.nodes[nd.parent].token
        if out.get((ptok, nd.token)) != ACCEPTED:
            out[(ptok, nd.token)] = nd.status
    return out


def aded_state(step: Step, token_text: Callable[[int], str] | None = None) -> go.Figure:
    """ADED: the tri-gram (or bigram) rows its tree was read from (row = context, columns = the row's most
    probable next tokens with their matrix probability, coloured by what the target did with the drafted one),
    and per drafted node the PUCT terms that chose it: P (matrix probability), Q (acceptance this transition
    achieved before) and the exploration bonus U."""
    st = step.state or {}
    rows = st.get("rows", {}) or {}
    branches = st.get("branches", []) or []
    label = _token_labeler(step, token_text)
    status_at = _drafted_status(step)
    code = {"stored": 0, NOT_REACHED: 1, REJECTED: 2, ACCEPTED: 3}
    colors = ["#f0f0f0", STATUS_COLORS[NOT_REACHED], "#f4a6a6", "#a6dba0"]
    width = max((len(v) - 1 for v in rows.values()), default=0)
    z, text, hover, ylab, kinds = [], [], [], [], []
    for key, (kind, *entries) in rows.items():
        a, b = (int(x) for x in key.split(","))
        ctx = _esc(f"{show_token(label(a))} {show_token(label(b))}".strip())
        kinds.append(kind)
        ylab.append(f"{ctx} ({'unknown' if kind == 'none' else kind})")
        zr, tr, hr = [None] * width, [""] * width, [""] * width
        for r, (c, pr) in enumerate(entries):
            what = status_at.get((b, int(c)), "stored")
            zr[r] = code[what]
            tr[r] = f"{_esc(show_token(label(int(c))))}<br>{pr:.2f}"
            hr[r] = (f"M[{ctx}] rank {r}: {_esc(repr(label(int(c))))}, P={pr:.3f}<br>"
                     + ("not drafted" if what == "stored" else "drafted, " + STATUS_LABELS[what]))
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.12, row_heights=[0.6, 0.4],
                        subplot_titles=["matrix rows read: context → its most probable next tokens by rank, with P",
                                        "why each node was drafted: its search statistics (MCTS, 150 iterations)"
                                        if st.get("mode") == "reference" else
                                        "why each node was drafted: PUCT score = Q + U (before this round's visits)"])
    fig.add_trace(go.Heatmap(z=z, x=list(range(width)), y=ylab, text=text, texttemplate="%{text}",
                             textfont=dict(size=10), hovertext=hover, hoverinfo="text", zmin=-0.5,
                             zmax=len(colors) - 0.5, colorscale=_category_scale(colors), showscale=False,
                             xgap=2, ygap=2, name="rows read"), row=1, col=1)
    xs = _node_labels(step, label)
    reference = st.get("mode") == "reference"  # the reference's MCTS: Q = mean rollout value, N = visits
    terms = ((("p", "#9ecae1", "P: table probability"), ("q", "#2ca02c", "Q: mean rollout value"),
              ("u", "#ff7f0e", "N: visits")) if reference else
             (("p", "#9ecae1", "P: matrix probability"), ("q", "#2ca02c", "Q: observed acceptance"),
              ("u", "#ff7f0e", "U: exploration bonus")))
    for term, color, what in terms:
        ys = [b.get(term) for b in branches[:len(xs)]]
        fig.add_trace(go.Bar(x=xs[:len(ys)], y=ys, name=what, marker_color=color,
                             hovertemplate=f"node %{{x}}<br>{what} = %{{y:.3f}}<extra></extra>"), row=2, col=1)
    fig.update_xaxes(dtick=1, row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="drafted node (✓ accepted, ✗ rejected, · not reached)", row=2, col=1)
    fig.update_layout(
        title=dict(text=(f"ADED, step {step.index}: {len(rows)} rows read ({kinds.count('tri')} tri-gram, "
                         f"{kinds.count('bi')} bigram) in {st.get('simulations', 0)} simulations for "
                         f"{len(step.nodes)} nodes; after verify {st.get('rows_updated', 0)} rows updated, "
                         f"{st.get('accepted_transitions', 0)}/{st.get('tested', 0)} tested transitions "
                         f"accepted<br>cells: green accepted, red rejected, grey drafted but not reached, light "
                         f"not drafted"), font=dict(size=12)),
        template="plotly_white", barmode="group", legend=dict(orientation="h", y=-0.12),
        height=int(min(1300, 420 + 30 * max(1, len(rows)))), margin=dict(l=140, r=20, t=110, b=60),
        meta={"view": "method_state", "method": "aded", "contexts": list(rows)})
    return fig


register_state_view("aded", aded_state)


def lookahead_state(step: Step, token_text: Callable[[int], str] | None = None) -> go.Figure:
    """Lookahead: the Jacobi window this round (level x column, each cell the token it guesses, coloured by what
    the target did with it) and the pool n-grams verified beside it (how many of their tokens were accepted)."""
    st = step.state or {}
    window = st.get("window", []) or []
    cells = st.get("window_nodes", []) or []  # the tree node each window cell was verified as
    cands = st.get("candidates", []) or []
    label = _token_labeler(step, token_text)
    levels, width = len(window), max((len(r) for r in window), default=0)
    code = {NOT_REACHED: 0, REJECTED: 1, ACCEPTED: 2}
    colors = [STATUS_COLORS[NOT_REACHED], "#f4a6a6", "#a6dba0"]
    z, text = [], []
    for lev, row in enumerate(window):
        zr, tr = [], []
        for j, tok in enumerate(row):
            i = cells[lev][j] if lev < len(cells) and j < len(cells[lev]) else -1
            zr.append(code.get(step.nodes[i].status) if 0 <= i < len(step.nodes) else None)  # None: cut off
            tr.append(_esc(show_token(label(int(tok)))))
        z.append(zr)
        text.append(tr)
    path = [step.nodes[i].token for i in step.accepted]
    hits = [next((k for k, (a, b) in enumerate(zip(c, path)) if a != b), min(len(c), len(path))) for c in cands]
    fig = make_subplots(rows=2, cols=1, vertical_spacing=0.14, row_heights=[0.55, 0.45],
                        specs=[[{"type": "heatmap"}], [{"type": "table"}]],
                        subplot_titles=["Jacobi window (cell = the token it guesses; level 0 is verified as a chain)",
                                        "pool n-grams verified this round"])
    fig.add_trace(go.Heatmap(z=z, text=text, texttemplate="%{text}", textfont=dict(size=11),
                             x=[f"+{j + 1}" for j in range(width)], y=[f"level {lev}" for lev in range(levels)],
                             hovertemplate="%{y}, column %{x}: %{text}<extra></extra>", zmin=-0.5,
                             zmax=len(colors) - 0.5, colorscale=_category_scale(colors), showscale=False,
                             xgap=2, ygap=2, name="window"), row=1, col=1)
    fig.add_trace(go.Table(header=dict(values=["n-gram", "tokens accepted"], fill_color="#eeeeee", align="left"),
                           cells=dict(values=[[_esc("".join(show_token(label(int(t))) for t in c)) for c in cands]
                                              or ["(no n-gram in the pool starts with the last token)"],
                                              [f"{h} / {len(c)}" for h, c in zip(hits, cands)] or [""]],
                                      align="left"), columnwidth=[4, 1]), row=2, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_layout(
        title=dict(text=(f"Lookahead, step {step.index}: window {width} x {levels} levels, pool of "
                         f"{st.get('pool_size', 0)} n-grams, {len(cands)} verified; won: {st.get('won') or 'none'}; "
                         f"{st.get('harvested', 0)} n-grams harvested (green accepted, red rejected, grey not "
                         f"reached)"), font=dict(size=12)),
        template="plotly_white", height=int(300 + 40 * levels + 26 * max(1, len(cands))),
        margin=dict(l=70, r=20, t=100, b=20),
        meta={"view": "method_state", "method": "lookahead", "hits": hits})
    return fig


register_state_view("lookahead", lookahead_state)


def swift_state(step: Step, token_text: Callable[[int], str] | None = None) -> go.Figure:
    """SWIFT: which layers the draft skips (and, during the search, the candidate skip set it was scored
    against, by how well each predicts the tokens already committed)."""
    st = step.state or {}
    sub = st.get("granularity") == "sublayer"
    n = int(st.get("units") or st.get("layers") or (max(st.get("skip", []) or [-1]) + 1))
    sets = [("draft uses", st.get("skip", []) or [])]
    search = st.get("search")
    if search:
        sets.append((f"candidate ({'adopted' if search.get('adopted') else 'rejected'})", search.get("candidate", [])))
    z = [[1 if i in set(skip) else 0 for i in range(n)] for _, skip in sets]  # per unit, as the state counts
    if sub:  # one row per sub-layer kind, the layers along x: every layer labelled, attention above its MLP
        rows = [row[kind::2] for row in z for kind in (0, 1)]
        names = [f"{name}: {kind}" for name, _ in sets for kind in ("attention", "MLP")]
    else:
        rows, names = z, [name for name, _ in sets]
    fig = go.Figure(go.Heatmap(z=rows, x=list(range(len(rows[0]))), y=names, zmin=0, zmax=1,
                               colorscale=[[0, "#4c78a8"], [0.5, "#4c78a8"], [0.5, "#eeeeee"], [1, "#eeeeee"]],
                               showscale=False, xgap=2, ygap=4,
                               hovertemplate="layer %{x}, %{y}: %{z}<extra>1 = skipped</extra>"))
    match = (f"; candidate match {search.get('candidate_match')} vs current {search.get('current_match')}"
             if search else "")
    fig.update_layout(
        title=dict(text=(f"SWIFT, step {step.index} ({st.get('phase', '?')}): the draft skips "
                         f"{len(sets[0][1])} of {n} {'sub-layers' if sub else 'layers'} (grey = skipped, blue = run)"
                         f"{match}; acceptance so far "
                         f"{st.get('skip_acceptance')}"), font=dict(size=12)),
        template="plotly_white", height=160 + 60 * len(names),
        xaxis=dict(title="layer", dtick=1),
        yaxis=dict(autorange="reversed"),
        margin=dict(l=230 if sub else 150, r=20, t=80, b=50),
        meta={"view": "method_state", "method": "swift", "skip": z})
    return fig


register_state_view("swift", swift_state)


def suffix_state(step: Step, token_text: Callable[[int], str] | None = None) -> go.Figure:
    """SuffixDecoding: where the draft came from (this request's text or earlier outputs), how long the matched
    suffix was, and each drafted node's path probability in the suffix trie, coloured by what the target did."""
    st = step.state or {}
    xs = _node_labels(step, _token_labeler(step, token_text))
    probs = list(st.get("probs", []) or [])[:len(xs)]
    colors = [STATUS_COLORS.get(nd.status, "#cccccc") for nd in step.nodes[:len(probs)]]
    fig = go.Figure(go.Bar(x=xs[:len(probs)], y=probs, marker_color=colors, name="path probability",
                           hovertemplate="node %{x}<br>path probability %{y:.3f}<extra></extra>"))
    scores = st.get("scores", {}) or {}
    other = ", ".join(f"{k} {v}" for k, v in scores.items())
    fig.update_layout(
        title=dict(text=(f"SuffixDecoding, step {step.index}: drafted from {st.get('source') or 'nothing'} "
                         f"(matched suffix {st.get('match_len', 0)} tokens), expected accepted tokens "
                         f"{st.get('score', 0)}{' (scores: ' + other + ')' if other else ''}"), font=dict(size=12)),
        template="plotly_white", height=360, yaxis=dict(title="path probability in the trie", range=[0, 1]),
        xaxis=dict(title="drafted node (✓ accepted, ✗ rejected, · not reached)"),
        margin=dict(l=60, r=20, t=70, b=80), meta={"view": "method_state", "method": "suffix", "probs": probs})
    return fig


register_state_view("suffix", suffix_state)


def sparse_self_spec_state(step: Step, token_text: Callable[[int], str] | None = None) -> go.Figure:
    """Sparse self-speculation: what the draft attended to, per layer (the share of committed KV entries its heads
    read, and the share of dense attention mass those held), beside what the target accepted of its draft."""
    st = step.state or {}
    view = st.get("draft_view", {}) or {}
    kept, recall = view.get("kept", []) or [], view.get("recall", []) or []
    layers = list(range(max(len(kept), len(recall))))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=layers[:len(kept)], y=kept, name="KV entries read (share)", marker_color="#9ecae1",
                         hovertemplate="layer %{x}: read %{y:.0%} of the committed KV entries<extra></extra>"))
    fig.add_trace(go.Scatter(x=layers[:len(recall)], y=recall, name="dense attention mass kept (recall)",
                             mode="lines+markers", marker_color="#d62728",
                             hovertemplate="layer %{x}: recall %{y:.2f}<extra></extra>"))
    n = len(step.nodes)
    fig.update_layout(
        title=dict(text=(f"Sparse self-speculation, step {step.index}: the draft read {view.get('policy', '?')} of "
                         f"{view.get('kv_len', 0)} committed entries (mean recall {view.get('mean_recall')}); the "
                         f"target accepted {len(step.accepted)} of its {n} draft tokens"), font=dict(size=12)),
        template="plotly_white", height=360, yaxis=dict(range=[0, 1.05], tickformat=".0%"),
        xaxis=dict(title="layer", dtick=max(1, len(layers) // 15)), legend=dict(orientation="h", y=-0.25),
        margin=dict(l=60, r=20, t=70, b=80),
        meta={"view": "method_state", "method": "sparse_self_spec", "kept": kept, "recall": recall})
    return fig


register_state_view("sparse_self_spec", sparse_self_spec_state)


def _is_matrix(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0 and all(isinstance(r, list) and r for r in v)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for r in v for x in r))


def generic_state(step: Step, token_text: Callable[[int], str] | None = None, *, title: str | None = None
                  ) -> go.Figure:
    """Any method's Step.state: a table of its values, and a heatmap of each numeric matrix (up to two)."""
    st = step.state or {}
    mats = [(k, v) for k, v in st.items() if _is_matrix(v)][:2]
    others = [(k, v) for k, v in st.items() if not any(k == mk for mk, _ in mats)]
    specs = [[{"type": "table"}]] + [[{"type": "heatmap"}] for _ in mats]
    fig = make_subplots(rows=1 + len(mats), cols=1, specs=specs, vertical_spacing=0.08,
                        subplot_titles=["Step.state"] + [f"{k} ({len(v)}×{len(v[0])})" for k, v in mats])

    def short(v):
        s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
        return s if len(s) <= 160 else s[:157] + "..."

    fig.add_trace(go.Table(header=dict(values=["key", "value"], fill_color="#eeeeee", align="left"),
                           cells=dict(values=[[k for k, _ in others] or ["(empty)"],
                                              [_esc(short(v)) for _, v in others] or [""]], align="left"),
                           columnwidth=[1, 4]), row=1, col=1)
    for i, (k, v) in enumerate(mats):
        fig.add_trace(go.Heatmap(z=v, colorscale="Viridis", name=k, showscale=False,
                                 hovertemplate=f"{k}[%{{y}}, %{{x}}] = %{{z}}<extra></extra>"), row=2 + i, col=1)
    fig.update_layout(title=dict(text=title or f"Step {step.index}: method state", font=dict(size=13)),
                      template="plotly_white", height=220 + 28 * len(others) + 300 * len(mats),
                      margin=dict(l=30, r=20, t=60, b=30),
                      meta={"view": "method_state", "method": None, "keys": list(st)})
    return fig


def detect_method(step: Step) -> str | None:
    """The registered method whose declared state keys the step's state carries (for method=None)."""
    keys = set(step.state or {})
    for name in STATE_VIEWS:
        want = _state_keys(name)
        if want and want <= keys:
            return name
    return None


def method_state(step: Step, method: str | None = None, *, token_text: Any = None) -> go.Figure:
    """What the method's own state did this round, by the method's registered renderer (`STATE_VIEWS`), or a
    generic table / heatmap of Step.state. `method=None` guesses from the state's keys. `token_text` (a
    Session, an LM, or a function of a token id) labels token ids the step itself has no text for."""
    if not isinstance(step, Step):
        raise TypeError(f"method_state takes a Step, got {type(step).__name__}")
    name = method or detect_method(step)
    fn = STATE_VIEWS.get(name) if name else None
    # a round without the method's declared state (the prefill) gets the generic table
    if fn is not None and _state_keys(name) <= set(step.state or {}):
        return fn(step, token_text=_as_token_text(token_text))
    return generic_state(step, token_text, title=f"Step {step.index}: {name or 'method'} state")

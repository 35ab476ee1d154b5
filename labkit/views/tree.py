"""One round's draft tree: the tree itself, its decisions as a table, the verify pass's tree attention mask and
the KV cache around the commit."""
from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import tree
from ..trace import ACCEPTED, NOT_REACHED, REJECTED, Step
from .style import STATUS_COLORS, STATUS_LABELS, STATUS_SYMBOLS, WHITESPACE_KEY, _esc, show_token


# ---- draft tree ------------------------------------------------------------------------------------

def _node_hover(step: Step, i: int) -> str:
    n = step.nodes[i]
    lines = [f"<b>{_esc(repr(n.text))}</b> (id {n.token}): <b>{STATUS_LABELS.get(n.status, n.status)}</b>",
             f"node {i}, depth {n.depth}, verify position {i + 1}"]
    if n.draft_prob is not None:
        lines.append(f"q (draft prob) = {n.draft_prob:.4f}")
    else:
        lines.append("q: point mass (the draft source has no distribution)")
    if n.target_prob is not None:
        lines.append(f"p (target prob) = {n.target_prob:.4f}")
    if n.accept_prob is not None:
        lines.append(f"acceptance prob min(1, p/q) = {n.accept_prob:.4f}")
    if n.draw is not None:
        lines.append(f"random draw u = {n.draw:.4f}")
    if n.reason:
        lines.append(f"reason: {_esc(n.reason)}")
    return "<br>".join(lines)


def _bonus_hover(step: Step) -> str:
    return (f"<b>{_esc(repr(step.bonus_text))}</b> (id {step.bonus}): <b>bonus</b><br>"
            f"the target's own token after the accepted path ({_esc(step.bonus_how)})<br>"
            f"this round committed {len(step.tokens)} token(s) for {step.target_forwards} target forward(s)")


def _root_hover(step: Step) -> str:
    return (f"<b>{_esc(repr(step.root_text))}</b> (id {step.root}): <b>root</b><br>"
            f"the last committed token; verify position 0"
            + ("" if step.kind != "prefill" else "<br>prefill: the prompt's last token"))


def tree_layout(step: Step) -> dict:
    """Positions of the tree's items: keys "root", node indices 0..n-1, and "bonus" -> (x=depth, y=row).

    Children are ordered accepted-path first, so the accepted path (and the bonus after it) runs along the top
    row; every other child opens a new row below."""
    n = len(step.nodes)
    kids: dict[Any, list[Any]] = {"root": []}
    for i in range(n):
        kids[i] = []
    for i, node in enumerate(step.nodes):
        kids["root" if node.parent < 0 else node.parent].append(i)
    bonus_parent = step.accepted[-1] if step.accepted else "root"
    on_path = set(step.accepted)
    for key, ch in kids.items():
        ch.sort(key=lambda c: (c not in on_path, c))
    kids[bonus_parent].insert(0, "bonus")
    pos: dict[Any, tuple[float, float]] = {}
    row = [0]

    def place(key, depth):
        ch = kids.get(key, [])
        if not ch:
            pos[key] = (depth, -row[0])
            row[0] += 1
            return
        first = True
        for c in ch:
            place(c, depth + 1)
            if first:
                pos[key] = (depth, pos[c][1])
                first = False

    # iterative-safe for deep trees: recursion depth = tree depth (small)
    place("root", 0)
    return pos


def _tree_traces(step: Step, *, index_labels: bool = False) -> list[go.Scatter]:
    """The tree's traces in a fixed order (live views update them in place): edges, accepted-path edges,
    root, accepted, rejected, not reached, bonus."""
    pos = tree_layout(step)
    n = len(step.nodes)
    bonus_parent = step.accepted[-1] if step.accepted else "root"

    def parent_key(i):
        return "root" if step.nodes[i].parent < 0 else step.nodes[i].parent

    edges_x: list = []
    edges_y: list = []
    for i in range(n):
        (x0, y0), (x1, y1) = pos[parent_key(i)], pos[i]
        edges_x += [x0, x1, None]
        edges_y += [y0, y1, None]
    path_keys = ["root"] + list(step.accepted) + ["bonus"]
    path_x = [pos[k][0] for k in path_keys]
    path_y = [pos[k][1] for k in path_keys]
    traces = [
        go.Scatter(x=edges_x, y=edges_y, mode="lines", line=dict(color="#c8c8c8", width=1), hoverinfo="skip",
                   showlegend=False, name="edges"),
        go.Scatter(x=path_x, y=path_y, mode="lines", line=dict(color="#222222", width=4), hoverinfo="skip",
                   name="accepted path", showlegend=True),
    ]

    def label(key):
        if key == "root":
            return (("0 " if index_labels else "") + show_token(step.root_text or str(step.root)))
        if key == "bonus":
            return show_token(step.bonus_text or str(step.bonus))
        node = step.nodes[key]
        return (f"{key + 1} " if index_labels else "") + show_token(node.text or str(node.token))

    def marker_trace(keys, kind, hovers, size=14):
        # labels on the accepted path sit above it (the bold path line would cross them)
        on_top = kind in ("root", ACCEPTED, "bonus")
        return go.Scatter(
            x=[pos[k][0] for k in keys], y=[pos[k][1] for k in keys], mode="markers+text",
            text=[label(k) for k in keys], textposition="top center" if on_top else "middle right",
            textfont=dict(size=12), cliponaxis=False,  # a label near the edge is drawn whole, not cut
            marker=dict(color=STATUS_COLORS[kind], size=size, symbol=STATUS_SYMBOLS[kind],
                        line=dict(color=STATUS_COLORS[kind] if kind in (REJECTED, NOT_REACHED) else "white",
                                  width=2 if kind in (REJECTED, NOT_REACHED) else 1)),
            hovertext=hovers, hoverinfo="text", name=STATUS_LABELS[kind],
            customdata=[(-1 if k == "root" else (n if k == "bonus" else k)) for k in keys])

    traces.append(marker_trace(["root"], "root", [_root_hover(step)], size=15))
    for status in (ACCEPTED, REJECTED, NOT_REACHED):
        keys = [i for i in range(n) if step.nodes[i].status == status]
        traces.append(marker_trace(keys, status, [_node_hover(step, i) for i in keys]))
    traces.append(marker_trace(["bonus"], "bonus", [_bonus_hover(step)], size=18))
    _ = bonus_parent
    return traces


def _tree_title(step: Step) -> str:
    if step.kind == "prefill":
        return f"Step {step.index} (prefill): the prompt is read, the first token is the target's own"
    head = f"Step {step.index}: {len(step.nodes)} drafted, {step.n_accepted} accepted + bonus"
    if len(step.tokens) < step.n_accepted + 1:  # cut at an end-of-sequence token or the token budget
        why = "end of sequence" if step.finished == "eos" else "token budget"
        return f"{head}: {len(step.tokens)} token(s) committed, cut at the {why}"
    return f"{head} = {len(step.tokens)} token(s) for one target forward"


def showcase_step(steps: Sequence[Step], *, rejection: bool = False) -> Step | None:
    """The round whose tree shows the most: the most draft tokens accepted, then the bigger tree, then the later
    round (None if no round drafted anything). The app ends a Live run on it and the explorer opens there.
    `rejection=True` prefers rounds where the target both accepted and rejected draft tokens (a figure that
    teaches an acceptance rule needs both)."""
    drafted = [s for s in steps if s.nodes]

    def score(s: Step):
        both = any(n.status == REJECTED for n in s.nodes) and s.n_accepted > 0
        return (both if rejection else True, s.n_accepted, len(s.nodes), s.index)

    return max(drafted, key=score) if drafted else None


DECISION_HEADERS = ("node", "token", "parent", "depth", "status", "q (draft)", "p (target)", "min(1, p/q)", "u",
                    "reason")


def decisions(step: Step) -> list[list]:
    """One row per draft node of a round (DECISION_HEADERS): the numbers behind the tree's colours, for a table
    beside the figure (the app's explorer and the notebooks show them without hovering)."""
    def num(x):
        return "" if x is None else f"{x:.3g}"

    return [[j, show_token(n.text or str(n.token)), n.parent, n.depth, n.status, num(n.draft_prob),
             num(n.target_prob), num(n.accept_prob), num(n.draw), n.reason] for j, n in enumerate(step.nodes)]


def decisions_table(step: Step):
    """`decisions(step)` as a pandas DataFrame (a table in a notebook)."""
    from ..extras import require

    pd = require("pandas", "notebook", "views.decisions_table")

    return pd.DataFrame(decisions(step), columns=list(DECISION_HEADERS)).set_index("node")


def draft_tree(step: Step, *, title: str | None = None) -> go.Figure:
    """One round's draft tree, laid out by depth: colour = the target's decision; the accepted path is bold and
    ends in the bonus token (a star). Hover a node for its text, q, p, acceptance probability, draw and reason."""
    if not isinstance(step, Step):
        raise TypeError(f"draft_tree takes a Step, got {type(step).__name__}")
    fig = go.Figure(_tree_traces(step))
    pos = tree_layout(step)
    rows = 1 + max(-y for _, y in pos.values())
    depth = max(x for x, _ in pos.values())
    fig.update_layout(
        title=dict(text=title or _tree_title(step), font=dict(size=14)),
        # a chain (one row) still gets room for its labels above the path and the legend above the title
        height=int(min(1400, max(250, 150 + 28 * rows))), template="plotly_white", hovermode="closest",
        xaxis=dict(title=f"depth (0 = root){WHITESPACE_KEY}", tickmode="linear", dtick=1,
                   range=[-0.3, depth + 0.9], showgrid=False, zeroline=False),
        yaxis=dict(visible=False, range=[-rows + 0.4, 1.0]),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        margin=dict(l=20, r=20, t=80, b=40), meta={"step": step.index, "view": "draft_tree"})
    return fig

# ---- tree attention mask ---------------------------------------------------------------------------

def verify_start(step: Step) -> int:
    """The KV length before the step's verify pass (the root's position id)."""
    if step.kind == "prefill":
        return step.kv_len - 1
    return step.kv_len - 1 - len(step.accepted)


def tree_mask(step: Step) -> go.Figure:
    """The verify pass's tree attention mask as a matrix (row = query, column = key, filled = may attend),
    labelled with the actual tokens and their position ids, next to the tree (nodes numbered by verify
    position). Every query also attends the whole committed prefix in the KV cache (not drawn)."""
    if not isinstance(step, Step):
        raise TypeError(f"tree_mask takes a Step, got {type(step).__name__}")
    parents = [n.parent for n in step.nodes]
    mask = tree.ancestor_mask(parents).int().tolist()
    start = verify_start(step)
    pids = tree.position_ids(parents, start)
    toks = [step.root_text or str(step.root)] + [n.text or str(n.token) for n in step.nodes]
    statuses = ["root"] + [n.status for n in step.nodes]
    size = len(toks)
    ticktext = [f'<span style="color:{STATUS_COLORS[s]}">{j} {_esc(show_token(t))} @{p}</span>'
                for j, (t, s, p) in enumerate(zip(toks, statuses, pids))]
    hover = [[f"query {a} {_esc(repr(toks[a]))} (pos {pids[a]}) {'attends' if mask[a][b] else 'does not see'} "
              f"key {b} {_esc(repr(toks[b]))} (pos {pids[b]})" for b in range(size)] for a in range(size)]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.46, 0.54], horizontal_spacing=0.11,
                        subplot_titles=("draft tree (numbers = verify positions)",
                                        f"tree attention mask: {size} queries × {size} keys (+ {start} cached)"))
    for tr in _tree_traces(step, index_labels=True):
        fig.add_trace(tr, row=1, col=1)
    fig.add_trace(go.Heatmap(z=mask, x=list(range(size)), y=list(range(size)), zmin=0, zmax=1,
                             colorscale=[[0, "#f4f4f4"], [1, "#3b6fb6"]], showscale=False, xgap=1, ygap=1,
                             text=hover, hoverinfo="text", name="mask"), row=1, col=2)
    pos = tree_layout(step)
    rows = 1 + max(-y for _, y in pos.values())
    depth = max(x for x, _ in pos.values())
    height = int(min(1600, max(420, 160 + 20 * max(rows, size))))
    fig.update_xaxes(title_text="depth", tickmode="linear", dtick=1, range=[-0.6, depth + 1.2], showgrid=False,
                     zeroline=False, row=1, col=1)
    fig.update_yaxes(visible=False, range=[-rows + 0.4, 0.9], row=1, col=1)
    small = dict(size=10 if size <= 40 else 8)
    fig.update_xaxes(title_text="key (verify position, token @ position id)", tickmode="array",
                     tickvals=list(range(size)), ticktext=ticktext, tickangle=-90, tickfont=small, side="bottom",
                     row=1, col=2)
    fig.update_yaxes(title_text="query", tickmode="array", tickvals=list(range(size)), ticktext=ticktext,
                     autorange="reversed", tickfont=small, row=1, col=2)
    fig.update_layout(title=dict(text=f"Step {step.index}: one forward verifies {len(step.nodes)} drafted tokens "
                                      f"+ the root; position id = KV length {start} + depth", font=dict(size=14)),
                      template="plotly_white", height=height + 120, hovermode="closest",  # width: the page's
                      legend=dict(orientation="h", yanchor="bottom", y=1.06, x=0, font=dict(size=11)),
                      margin=dict(l=20, r=20, t=110, b=170),
                      meta={"view": "tree_mask", "step": step.index, "position_ids": pids, "kv_start": start})
    return fig


def kv_compaction(step: Step) -> go.Figure:
    """The KV cache around one commit: after verify it holds the prefix + root + every drafted node; the commit
    keeps the root and the accepted path (gathered into place when the path is not a prefix of the input),
    and crops the rest."""
    if not isinstance(step, Step):
        raise TypeError(f"kv_compaction takes a Step, got {type(step).__name__}")
    start = verify_start(step)
    n = len(step.nodes)
    before = [("root", step.root_text)] + [(nd.status, nd.text) for nd in step.nodes]
    keep = [0] + [i + 1 for i in step.accepted]
    fig = go.Figure()
    for row, (label, slots) in enumerate([("after verify", list(range(n + 1))), ("after commit", keep)]):
        y = 1 - row
        xs = list(range(len(slots)))
        kinds = [before[s][0] for s in slots]
        fig.add_trace(go.Scatter(
            x=xs, y=[y] * len(xs), mode="markers+text", marker=dict(symbol="square", size=26,
                                                                    color=[STATUS_COLORS[k] for k in kinds]),
            text=[show_token(before[s][1]) for s in slots], textposition="top center", textfont=dict(size=10),
            hovertext=[f"KV slot {start + x}: verify position {s} {_esc(repr(before[s][1]))} ({kinds[x]})"
                       for x, s in zip(xs, slots)], hoverinfo="text", name=label, showlegend=False,
            customdata=slots))
    lx, ly = [], []
    for dst, src in enumerate(keep):
        lx += [src, dst, None]
        ly += [1, 0, None]
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line=dict(color="#222222", width=2), hoverinfo="skip",
                             name="kept (gathered)", showlegend=False))
    moved = keep != list(range(len(keep)))
    fig.update_layout(
        title=dict(text=(f"Step {step.index}: KV slots {start}..{start + n} after verify; the commit keeps "
                         f"{len(keep)} ({'gather, then crop' if moved else 'a prefix: crop only'}), "
                         f"drops {n + 1 - len(keep)}"), font=dict(size=14)),
        template="plotly_white", height=300, hovermode="closest",
        xaxis=dict(title=f"KV slot − {start} (the committed prefix before it is untouched)", range=[-1, n + 1]),
        yaxis=dict(tickmode="array", tickvals=[1, 0], ticktext=["after verify", "after commit"], range=[-0.6, 1.8]),
        margin=dict(l=90, r=20, t=60, b=50),
        meta={"view": "kv_compaction", "kept": keep, "gathered": moved, "kv_start": start})
    return fig

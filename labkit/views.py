"""Views: one function per view, each taking Steps (or a trace / Run) and returning a plotly Figure.

    from labkit import views
    views.draft_tree(step)                 # one round's tree: accepted / rejected / not reached / bonus
    views.token_stream(run.steps)          # the text, every token coloured by where it came from
    views.tree_mask(step)                  # the verify pass's tree attention mask next to the tree
    views.kv_compaction(step)              # which KV-cache slots survive the commit
    views.acceptance_stats(run.steps)      # per depth, histogram, over time, where the time goes
    views.method_state(step, "token_recycling")   # what the method's own state did this round
    views.side_by_side(lab.compare([...], prompt))  # 2-4 methods aligned by output position
    views.latency_curve(lab.latency_curve())        # cost of one forward over n tokens on this device
    views.rejection_demo()                 # the rejection rule's output distribution vs p (and a wrong rule)
    views.siblings_demo()                  # k candidates per position: i.i.d. / without replacement / K-SEQ
    views.state_timeline(run, "alpha")     # a numeric Step.state entry (or dict of them) over the rounds
    views.bench_summary(bench.table(records))       # per Spec-Bench category: speedup and acceptance length

Everything renders offline: `init_notebook()` picks renderers that never load plotly.js from a CDN, and
`to_html(fig)` inlines plotly.js. Every function skips events that are not Steps (e.g. sparsity frames), so
a whole trace's events can be passed as they are.
"""
from __future__ import annotations

import html
import json
import math
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import metrics as M
from . import stream as ST
from . import tree as T
from .trace import ACCEPTED, NOT_REACHED, REJECTED, Step

# ---- colours and small helpers ---------------------------------------------------------------------

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), and a second cue by shape
STATUS_COLORS = {ACCEPTED: "#009E73", REJECTED: "#D55E00", NOT_REACHED: "#999999", "bonus": "#0072B2",
                 "root": "#444444"}
STATUS_SYMBOLS = {ACCEPTED: "circle", REJECTED: "x", NOT_REACHED: "circle-open", "bonus": "star", "root": "square"}
STATUS_LABELS = {ACCEPTED: "accepted", REJECTED: "rejected", NOT_REACHED: "not reached",
                 "bonus": "bonus (the target's own token)", "root": "root (last committed token)"}
# token-stream backgrounds by provenance
PROVENANCE_COLORS = {ST.DRAFT: "#b7e4a8", ST.BONUS: "#bcd7f5", ST.AUTOREGRESSIVE: "#e6e6e6",
                     ST.PREFILL: "#e0d4f0"}
PROVENANCE_LABELS = {ST.DRAFT: "accepted draft token", ST.BONUS: "bonus token (target's own)",
                     ST.AUTOREGRESSIVE: "autoregressive token", ST.PREFILL: "first token (prefill)"}
METHOD_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")  # Okabe-Ito
PHASES = ("draft", "verify", "accept", "commit")
MAL_NOTE = M.MAL_NOTE


def show_token(text: str) -> str:
    """A token's text with its whitespace made visible (␣ space, ↵ newline, ⇥ tab); ∅ for empty."""
    if text == "":
        return "∅"
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


# the key to show_token's marks, for figures that print tokens (empty-looking labels are spaces and newlines)
WHITESPACE_KEY = " · ␣ = a space, ↵ = a newline"


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def steps_of(events: Any) -> list[Step]:
    """Steps from a list of events / Steps, a Trace, a Run, or a list of Runs (concatenated); non-Step events
    (e.g. sparsity frames) are skipped."""
    if isinstance(events, Step):
        return [events]
    if hasattr(events, "steps"):
        return list(events.steps)
    out: list[Step] = []
    for e in events:
        if isinstance(e, Step):
            out.append(e)
        elif hasattr(e, "steps") and not isinstance(e, (str, bytes)):
            out.extend(e.steps)
    return out


_CDN_SCRIPT = re.compile(r"""<script[^>]*\bsrc=["']?https?://[^>]*>\s*</script>""")


def _offline_renderer():
    """plotly's "notebook" renderer (plotly.js inlined once per notebook, no CDN) minus the MathJax script it
    always loads from a CDN (labkit's figures use no LaTeX)."""
    from plotly.io._base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        def to_mimebundle(self, fig_dict):
            bundle = super().to_mimebundle(fig_dict)
            if "text/html" in bundle:
                bundle["text/html"] = _CDN_SCRIPT.sub("", bundle["text/html"])
            return bundle

    return OfflineNotebookRenderer(connected=False)


def init_notebook() -> None:
    """Offline figures in Jupyter: the plotly mimetype (drawn by JupyterLab's / VS Code's own plotly renderer)
    plus HTML with plotly.js inlined once per notebook (classic frontends, HTML export). Nothing loads from a
    CDN."""
    import plotly.io as pio

    if "labkit_notebook" not in pio.renderers:
        pio.renderers["labkit_notebook"] = _offline_renderer()
    pio.renderers.default = "plotly_mimetype+labkit_notebook"


def to_html(fig: go.Figure, path: str | None = None) -> str:
    """Self-contained HTML (plotly.js inlined, no CDN); also written to `path` if given."""
    out = fig.to_html(include_plotlyjs=True, full_html=True)
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(out)
    return out


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
    import pandas as pd

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


# ---- token stream ----------------------------------------------------------------------------------

def _span_hover(sp: ST.Span) -> str:
    return (f"<b>{_esc(repr(sp.text))}</b> (id {sp.token})<br>{PROVENANCE_LABELS.get(sp.provenance, sp.provenance)}"
            f"<br>from step {sp.step}")


def _stream_title(steps: list[Step], autoregressive: bool) -> str:
    m = M.compute(steps)
    if not steps:
        return "Token stream (no steps yet)"
    return (f"{m.new_tokens} tokens, {m.target_forwards} target forwards: "
            f"mean acceptance length {m.mean_accept_len:.2f}")


def token_stream(steps: Iterable[Any], *, autoregressive: bool = False, width_chars: int = 96) -> go.Figure:
    """The generated text, every token on a background coloured by provenance (accepted draft, bonus, plain
    autoregressive, prefill); hover a token for its step. `autoregressive=True` labels target tokens as plain
    autoregressive tokens (for the baseline)."""
    steps = steps_of(steps)
    spans = ST.spans(steps, autoregressive=autoregressive)
    # lay the text out in lines of `width_chars` monospace columns; newlines start a new line
    pieces: list[tuple[int, int, int, str, ST.Span]] = []  # (line, start col, width, text, span)
    line, col = 0, 0
    for sp in spans:
        segments = (sp.text if sp.text != "" else "∅").split("\n")
        for k, seg in enumerate(segments):
            if k > 0:  # a newline inside the token: show ↵ at the end of the line, continue below
                pieces.append((line, col, 1, "↵", sp))
                line, col = line + 1, 0
            if seg == "":
                continue
            if col + len(seg) > width_chars and col > 0:
                line, col = line + 1, 0
            pieces.append((line, col, len(seg), seg, sp))
            col += len(seg)
    lines = line + 1
    traces = []
    for prov in (ST.DRAFT, ST.BONUS, ST.AUTOREGRESSIVE, ST.PREFILL):
        ps = [p for p in pieces if p[4].provenance == prov]
        traces.append(go.Bar(
            orientation="h", base=[p[1] for p in ps], x=[p[2] for p in ps], y=[p[0] for p in ps], width=0.86,
            marker=dict(color=PROVENANCE_COLORS[prov], line=dict(color="white", width=1)),
            name=PROVENANCE_LABELS[prov], hovertext=[_span_hover(p[4]) for p in ps], hoverinfo="text",
            customdata=[[p[4].step, p[4].token] for p in ps], showlegend=True))
    # the text itself (leading spaces shift the text instead of being drawn)
    tx, ty, tt = [], [], []
    for line_i, start, _w, seg, _sp in pieces:
        stripped = seg.lstrip(" ")
        if stripped:
            tx.append(start + (len(seg) - len(stripped)))
            ty.append(line_i)
            tt.append(_esc(stripped))
    traces.append(go.Scatter(x=tx, y=ty, text=tt, mode="text", textposition="middle right",
                             textfont=dict(family="DejaVu Sans Mono, Menlo, Consolas, monospace", size=14,
                                           color="#111111"),
                             hoverinfo="skip", showlegend=False, name="text"))
    char_px = 8.45
    fig = go.Figure(traces)
    m = M.compute(steps)
    fig.update_layout(
        title=dict(text=_stream_title(steps, autoregressive), font=dict(size=14)),
        barmode="overlay", template="plotly_white", bargap=0, autosize=False,
        width=int(width_chars * char_px + 60), height=int(150 + 26 * lines), hovermode="closest",
        xaxis=dict(visible=False, range=[-0.5, width_chars + 0.5], fixedrange=True),
        yaxis=dict(visible=False, autorange=False, range=[lines - 0.5, -0.5], fixedrange=True),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, font=dict(size=11)),
        margin=dict(l=30, r=30, t=80, b=50),
        annotations=[dict(text=MAL_NOTE, xref="paper", yref="paper", x=0, y=0, yanchor="top", yshift=-8,
                          showarrow=False, font=dict(size=10, color="#666666"), xanchor="left")],
        meta={"view": "token_stream", "mean_accept_len": m.mean_accept_len, "tokens": m.new_tokens})
    return fig


def plain_text(steps: Iterable[Any]) -> str:
    """The generated text without the end-of-sequence token's own text (e.g. `<|im_end|>`), as a reader wants it."""
    steps = steps_of(steps)
    text = "".join(s.text for s in steps)
    spans = ST.spans(steps)
    if steps and steps[-1].finished == "eos" and spans and spans[-1].text and text.endswith(spans[-1].text) \
            and (len(steps[-1].tokens) == 1 or spans[-1].text != steps[-1].text):
        text = text[: -len(spans[-1].text)]
    return text


def token_stream_html(steps: Iterable[Any], *, autoregressive: bool = False, note: bool = True) -> str:
    """The token stream as self-contained HTML: one <span> per token with a background colour by provenance
    and a title attribute (the hover), a legend, and (`note`) how mean acceptance length is counted; streams
    shown side by side leave the note to their page, which says it once."""
    steps = steps_of(steps)
    spans = ST.spans(steps, autoregressive=autoregressive)
    out = ['<div class="labkit-stream" style="font-family:DejaVu Sans Mono,Menlo,Consolas,monospace;'
           'white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.7;font-size:14px">']
    ended = bool(steps) and steps[-1].finished == "eos"
    for j, sp in enumerate(spans):
        title = html.escape(f"{PROVENANCE_LABELS.get(sp.provenance, sp.provenance)} · step {sp.step} · "
                            f"{sp.text!r} (id {sp.token})", quote=True)
        text = html.escape(sp.text if sp.text != "" else "∅", quote=False)
        if ended and j == len(spans) - 1:  # the end-of-sequence token: a marker, not its text (e.g. <|im_end|>)
            title = html.escape(f"end of sequence: {sp.text!r} (id {sp.token})", quote=True)
            text = "[end]"
        # accepted draft tokens are also underlined: provenance does not rest on hue alone
        cue = f"border-bottom:2px solid {STATUS_COLORS[ACCEPTED]};" if sp.provenance == ST.DRAFT else ""
        out.append(f'<span class="lk-{sp.provenance}" data-step="{sp.step}" title="{title}" style="background:'
                   f'{PROVENANCE_COLORS.get(sp.provenance, "#eeeeee")};border-right:1px solid #ffffff;{cue}'
                   f'border-radius:2px;color:#111111">{text}</span>')
    out.append("</div>")
    m = M.compute(steps)
    present = [p for p in (ST.DRAFT, ST.BONUS, ST.AUTOREGRESSIVE, ST.PREFILL) if any(s.provenance == p for s in spans)]
    # chips: dark text on their pastel background; the note follows the page's text colour (light or dark theme)
    legend = " ".join(f'<span style="background:{PROVENANCE_COLORS[p]};color:#111111;padding:0 4px;border-radius:2px;'
                      f'{"border-bottom:2px solid " + STATUS_COLORS[ACCEPTED] if p == ST.DRAFT else ""}">'
                      f'{html.escape(PROVENANCE_LABELS[p])}</span>' for p in present)
    tail = (f'<br>{m.new_tokens} tokens, {m.target_forwards} target forwards; mean acceptance length '
            f'<b>{m.mean_accept_len:.2f}</b>: {html.escape(MAL_NOTE)}') if note else ""
    out.append(f'<div class="labkit-legend" style="font-family:sans-serif;font-size:12px;opacity:0.8;'
               f'margin-top:6px">{legend}{tail}</div>')
    return "".join(out)


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
    mask = T.ancestor_mask(parents).int().tolist()
    start = verify_start(step)
    pids = T.position_ids(parents, start)
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
    m = M.compute(steps)
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


# ---- method state ----------------------------------------------------------------------------------

STATE_VIEWS: dict[str, Callable[..., go.Figure]] = {}
STATE_KEYS: dict[str, frozenset[str]] = {}  # keys that identify a method's Step.state (for method=None)


def register_state_view(name: str, fn: Callable[..., go.Figure], keys: Iterable[str] = ()) -> None:
    """Register `fn(step, token_text=None) -> Figure` as the renderer of method `name`'s Step.state. `keys`
    (optional) identify that method's state when `method_state` is called without a method name."""
    STATE_VIEWS[name] = fn
    if keys:
        STATE_KEYS[name] = frozenset(keys)


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


register_state_view("token_recycling", token_recycling_state, keys=("rows_read", "matrix_rows_known"))


def _category_scale(colors: Sequence[str]) -> list:
    """A stepped colorscale: integer code i of a heatmap (zmin=-0.5, zmax=len-0.5) gets colors[i]."""
    n = len(colors)
    return [[f, c] for i, c in enumerate(colors) for f in (i / n, (i + 1) / n)]


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
                                        "why each node was drafted: PUCT score = Q + U (before this round's visits)"])
    fig.add_trace(go.Heatmap(z=z, x=list(range(width)), y=ylab, text=text, texttemplate="%{text}",
                             textfont=dict(size=10), hovertext=hover, hoverinfo="text", zmin=-0.5,
                             zmax=len(colors) - 0.5, colorscale=_category_scale(colors), showscale=False,
                             xgap=2, ygap=2, name="rows read"), row=1, col=1)
    mark = {ACCEPTED: "✓", REJECTED: "✗", NOT_REACHED: "·"}
    xs = [f"{i} {mark.get(nd.status, '')} {_esc(show_token(label(nd.token)))}" for i, nd in enumerate(step.nodes)]
    for term, color, what in (("p", "#9ecae1", "P: matrix probability"),
                              ("q", "#2ca02c", "Q: observed acceptance"),
                              ("u", "#ff7f0e", "U: exploration bonus")):
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


register_state_view("aded", aded_state, keys=("rows", "branches", "simulations"))


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


register_state_view("lookahead", lookahead_state, keys=("window", "pool_size", "candidates"))


def swift_state(step: Step, token_text: Callable[[int], str] | None = None) -> go.Figure:
    """SWIFT: which layers the draft skips (and, during the search, the candidate skip set it was scored
    against, by how well each predicts the tokens already committed)."""
    st = step.state or {}
    n = int(st.get("layers") or (max(st.get("skip", []) or [-1]) + 1))
    sets = [("draft uses", st.get("skip", []) or [])]
    search = st.get("search")
    if search:
        sets.append((f"candidate ({'adopted' if search.get('adopted') else 'rejected'})", search.get("candidate", [])))
    z = [[1 if i in set(skip) else 0 for i in range(n)] for _, skip in sets]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(n)), y=[name for name, _ in sets], zmin=0, zmax=1,
                               colorscale=[[0, "#4c78a8"], [0.5, "#4c78a8"], [0.5, "#eeeeee"], [1, "#eeeeee"]],
                               showscale=False, xgap=2, ygap=4,
                               hovertemplate="layer %{x}: %{z}<extra>1 = skipped</extra>"))
    match = (f"; candidate match {search.get('candidate_match')} vs current {search.get('current_match')}"
             if search else "")
    fig.update_layout(
        title=dict(text=(f"SWIFT, step {step.index} ({st.get('phase', '?')}): the draft skips "
                         f"{len(sets[0][1])} of {n} layers (grey = skipped, blue = run){match}; acceptance so far "
                         f"{st.get('skip_acceptance')}"), font=dict(size=12)),
        template="plotly_white", height=160 + 60 * len(sets), xaxis=dict(title="layer", dtick=1),
        yaxis=dict(autorange="reversed"),
        margin=dict(l=150, r=20, t=80, b=50), meta={"view": "method_state", "method": "swift", "skip": z})
    return fig


register_state_view("swift", swift_state, keys=("skip", "skipped", "phase"))


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
    keys = set(step.state or {})
    for name, want in STATE_KEYS.items():
        if want <= keys:
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
    if fn is not None:
        return fn(step, token_text=_as_token_text(token_text))
    return generic_state(step, token_text, title=f"Step {step.index}: {name or 'method'} state")


# ---- side by side ----------------------------------------------------------------------------------

def compare_outputs(runs: Mapping[str, Any], *, partial: bool = False) -> dict:
    """{"identical": bool, "reference": first label, "first_divergence": {label: position or None},
    "compared": positions compared}: the first output position where each run's tokens differ from the first
    run's (None = identical; `labkit.check.first_divergence`). `partial=True` (runs still streaming or stopped):
    only the positions both sides have produced are compared."""
    from .check import first_divergence

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
    `labkit.sizing.LatencyCurve`, e.g. `Session.latency_curve()`), each bar also says the speedup that curve
    predicts for the rounds the method ran (`sizing.expected_speedup`). tokens/s is one wall-clock sample and
    says so. `partial=True` while the runs are still streaming (or after a stop): only positions every run has
    produced are compared."""
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
    mets = {k: M.compute(v) for k, v in runs.items()}
    ylabels = {k: f"{k}" for k in labels}
    ref_tokens = [t for s in runs[labels[0]] for t in s.tokens] if labels else []
    for j, k in enumerate(labels):
        spans = ST.spans(runs[k], autoregressive=(mets[k].drafted == 0))
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
    from .sizing import expected_speedup

    def bar_label(k: str) -> str:
        bound = expected_speedup(runs[k], curve) if curve is not None else None
        # one short fact per line: a bar is narrow, and one long line would be shrunk until it is unreadable
        return (f"{mets[k].target_forwards} passes<br>{mets[k].mean_accept_len:.2f} tokens/pass"
                + (f"<br>curve predicts ×{bound:.2f}" if bound is not None else "")
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
    """Seconds for one target forward over n tokens: `points` is a `labkit.sizing.LatencyCurve` (the line is its
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


# ---- the rejection rule made visible ---------------------------------------------------------------

def simulate_rejection(p: Sequence[float], q: Sequence[float], n: int = 20000, *, seed: int = 0,
                       rule: str = "correct") -> list[int]:
    """Counts of the token emitted by one round of draft-and-verify over a toy vocabulary: draw x ~ q, run the
    acceptance rule, emit x or the replacement token. `rule="correct"` is labkit's own
    `accept.rejection_tree` (accept with min(1, p/q), else sample norm(max(0, p - q))); `rule="resample_p"`
    is a plausible-looking bug (on rejection sample from p itself)."""
    import torch

    from . import accept as A

    pt = torch.tensor(list(p), dtype=torch.float64)
    qt = torch.tensor(list(q), dtype=torch.float64)
    pt, qt = pt / pt.sum(), qt / qt.sum()
    g = torch.Generator().manual_seed(seed)
    counts = [0] * len(pt)
    P = torch.stack([pt, pt])  # verify rows: root (decides the child), node
    Q = qt[None]
    drafts = torch.multinomial(qt.expand(n, -1), 1, replacement=True, generator=g)[:, 0].tolist()
    for x in drafts:
        if rule == "correct":
            out = A.rejection_tree([-1], [x], P, Q, g)
            tok = x if out.path else out.bonus
        elif rule == "resample_p":
            u = float(torch.rand((), generator=g, dtype=torch.float64))
            tok = x if u < float(pt[x] / qt[x]) else int(torch.multinomial(pt, 1, generator=g))
        else:
            raise ValueError(f"unknown rule {rule!r}: use 'correct' or 'resample_p'")
        counts[tok] += 1
    return counts


def chi_square(counts: Sequence[int], p: Sequence[float]) -> tuple[float, float]:
    """Pearson's chi-square statistic of `counts` against probabilities `p`, and its p-value."""
    import torch

    total = sum(counts)
    s = sum(p)
    cells = [(c, total * pi / s) for c, pi in zip(counts, p) if pi > 0]
    stat = sum((c - e) ** 2 / e for c, e in cells)
    dof = max(1, len(cells) - 1)
    pval = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, pval


TOY_TOKENS = ("the", "a", "cat", "dog", "sat", "ran")
TOY_P = (0.35, 0.05, 0.25, 0.05, 0.2, 0.1)
TOY_Q = (0.1, 0.3, 0.1, 0.3, 0.1, 0.1)


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

SIBLING_RULES = {"iid": "k i.i.d. siblings, recursive rejection (SpecInfer)",
                 "without_replacement": "k siblings without replacement, q updated (RSD)",
                 "kseq": "k i.i.d. drafts, K-SEQ (SpecTr)",
                 "no_q_update": "without replacement, q NOT updated (bug)"}
SIBLING_SHORT = {"iid": "i.i.d. (SpecInfer)", "without_replacement": "without replacement (RSD)",
                 "kseq": "K-SEQ (SpecTr)", "no_q_update": "bug: q not updated"}


def simulate_siblings(p: Sequence[float], q: Sequence[float], k: int, n: int = 4000, *,
                      rule: str = "without_replacement", seed: int = 0) -> dict:
    """One position with k draft candidates over a toy vocabulary, n times: draw the candidates from q, run the
    rule, emit the accepted candidate or the replacement token. Rules (labkit's own functions):
    `"iid"`: k draws with replacement, `accept.rejection_tree` (SpecInfer's recursive rejection, q fixed);
    `"without_replacement"`: `drafter.draw_children` (Gumbel-top-k), `rejection_tree(without_replacement=True)`
    (RSD: after each rejection q loses the rejected token); `"kseq"`: k draws with replacement, `accept.kseq`
    (SpecTr); `"no_q_update"`: a plausible bug (drawn without replacement, verified as if i.i.d.).
    Returns {"counts": emitted tokens, "accepted": share of rounds that accepted a candidate,
    "distinct": mean number of distinct candidates per round}."""
    import torch

    from . import accept as A
    from .drafter import draw_children

    if rule not in SIBLING_RULES:
        raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(SIBLING_RULES)}")
    if k < 1:
        raise ValueError("k must be at least 1")
    pt = torch.tensor(list(p), dtype=torch.float64)
    qt = torch.tensor(list(q), dtype=torch.float64)
    pt, qt = pt / pt.sum(), qt / qt.sum()
    g = torch.Generator().manual_seed(seed)
    rho = A.kseq_rho(pt, qt, k) if rule == "kseq" else 1.0
    P, Q = pt.expand(k + 1, -1), qt.expand(k, -1)
    counts, accepted, distinct = [0] * len(pt), 0, 0
    for _ in range(n):
        if rule in ("iid", "kseq"):
            draws = torch.multinomial(qt, k, replacement=True, generator=g).tolist()
        else:
            draws = draw_children(qt, k, False, g)
        distinct += len(set(draws))
        if rule == "kseq":
            hit, _, res = A.kseq(pt, qt, draws, g, rho=rho)
            tok = draws[hit] if hit is not None else int(torch.multinomial(res, 1, generator=g))
            accepted += hit is not None
        else:
            m = len(draws)
            out = A.rejection_tree([-1] * m, draws, P[: m + 1], Q[:m], g,
                                   without_replacement=(rule == "without_replacement"))
            tok = draws[out.path[0]] if out.path else out.bonus
            accepted += bool(out.path)
        counts[tok] += 1
    return {"counts": counts, "accepted": accepted / n, "distinct": distinct / n}


def siblings_demo(p: Sequence[float] = TOY_P, q: Sequence[float] = TOY_Q, ks: Sequence[int] = (1, 2, 3, 4),
                  n: int = 3000, *, k_shown: int = 3, seed: int = 0, tokens: Sequence[str] = TOY_TOKENS
                  ) -> go.Figure:
    """What k candidates for one position buy, and whether the output is still p. Left: the share of rounds
    that accept a candidate, per k, for i.i.d. siblings (SpecInfer), siblings without replacement (RSD) and
    K-SEQ (SpecTr), with standard speculative sampling's sum(min(p, q)) at k = 1 and SpecTr's exact
    1 - (1 - beta(rho*))^k. Right: at k = k_shown, the emitted frequencies of each rule against p, with
    chi-square p-values, including a buggy rule (without replacement, q not updated)."""
    import torch

    from . import accept as A

    ks = sorted({int(k) for k in ks} | {int(k_shown)})
    pt = torch.tensor(list(p), dtype=torch.float64)
    qt = torch.tensor(list(q), dtype=torch.float64)
    pt, qt = pt / pt.sum(), qt / qt.sum()
    fair = ("iid", "without_replacement", "kseq")
    sims = {r: {k: simulate_siblings(p, q, k, n, rule=r, seed=seed + k) for k in ks} for r in fair}
    bug = simulate_siblings(p, q, k_shown, n, rule="no_q_update", seed=seed + k_shown)
    theory = [A.kseq_accept_prob(pt, qt, k) for k in ks]
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



def prediction_strip(pred: Mapping, *, title: str | None = None) -> go.Figure:
    """`inside.layer_predictions` as a strip (ecco-style): one row per layer, one column per position; each cell
    shows that layer's top-1 next token and is coloured by the probability it gives the full model's choice
    (the last row). Where the colour turns bright is the layer from which an early exit would be right."""
    layers, top, prob = pred["layers"], pred["top"], pred["prob_final"]
    cols = [f"{j}: {_esc(show_token(t))}" for j, t in enumerate(pred["inputs"])]
    text = [[_esc(show_token(t)) for t in row] for row in top]
    hover = [[f"after layer {layer}, position {cols[j]}: top-1 {_esc(repr(top[i][j]))}, p(full model's "
              f"{_esc(repr(pred['final'][j]))}) = {prob[i][j]:.3f}" for j in range(len(cols))]
             for i, layer in enumerate(layers)]
    fig = go.Figure(go.Heatmap(z=prob, x=cols, y=layers, text=text, texttemplate="%{text}", textfont=dict(size=10),
                               hovertext=hover, hoverinfo="text", zmin=0, zmax=1, colorscale="Viridis",
                               colorbar=dict(title="p(final<br>choice)")))
    fig.update_layout(title=dict(text=title or "What each layer would predict next (final norm + LM head on its "
                                              "hidden state)", font=dict(size=13)),
                      xaxis=dict(title=f"input position: token (the model predicts the next one){WHITESPACE_KEY}",
                                 side="bottom"),
                      yaxis=dict(title="after layer", dtick=2), template="plotly_white",
                      height=int(160 + 22 * len(layers)), margin=dict(l=60, r=20, t=60, b=60),
                      meta={"view": "prediction_strip", "layers": list(layers)})
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
        mal.append(M.compute(st).mean_accept_len)
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


__all__ = ["draft_tree", "token_stream", "token_stream_html", "tree_mask", "kv_compaction", "acceptance_stats",
           "method_state", "STATE_VIEWS", "register_state_view", "generic_state", "token_recycling_state",
           "side_by_side", "compare_outputs", "showcase_step", "latency_curve", "rejection_demo", "simulate_rejection", "chi_square",
           "session_warmup", "siblings_demo", "simulate_siblings", "SIBLING_RULES", "state_timeline",
           "bench_summary", "init_notebook", "to_html", "steps_of", "show_token", "tree_layout", "verify_start"]

"""The token stream: every committed token coloured by where it came from (provenance)."""
from __future__ import annotations

import html
from typing import Any, Iterable

import plotly.graph_objects as go

from .. import metrics
from .. import stream
from ..trace import ACCEPTED, Step
from .style import MAL_NOTE, PROVENANCE_COLORS, PROVENANCE_LABELS, STATUS_COLORS, _esc, steps_of


# ---- token stream ----------------------------------------------------------------------------------

def _span_hover(sp: stream.Span) -> str:
    return (f"<b>{_esc(repr(sp.text))}</b> (id {sp.token})<br>{PROVENANCE_LABELS.get(sp.provenance, sp.provenance)}"
            f"<br>from step {sp.step}")


def _stream_title(steps: list[Step], autoregressive: bool) -> str:
    m = metrics.compute(steps)
    if not steps:
        return "Token stream (no steps yet)"
    return (f"{m.new_tokens} tokens, {m.target_forwards} target forwards: "
            f"mean acceptance length {m.mean_accept_len:.2f}")


def _own(steps: Any, autoregressive: bool | None) -> bool:
    """The provenance rule (`methods.own_tokens_only`) for a Run or trace that names its method; explicit wins."""
    if autoregressive is not None:
        return autoregressive
    from ..methods import own_tokens_only

    return own_tokens_only((getattr(steps, "config", None) or {}).get("method"))


def token_stream(steps: Iterable[Any], *, autoregressive: bool | None = None, width_chars: int = 96) -> go.Figure:
    """The generated text, every token on a background coloured by provenance (accepted draft, bonus, plain
    autoregressive, prefill); hover a token for its step. `autoregressive=True` labels target tokens as plain
    autoregressive tokens (default: decided from a Run's or trace's method by `methods.own_tokens_only`)."""
    autoregressive = _own(steps, autoregressive)
    steps = steps_of(steps)
    spans = stream.spans(steps, autoregressive=autoregressive)
    # lay the text out in lines of `width_chars` monospace columns; newlines start a new line
    pieces: list[tuple[int, int, int, str, stream.Span]] = []  # (line, start col, width, text, span)
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
    for prov in (stream.DRAFT, stream.BONUS, stream.AUTOREGRESSIVE, stream.PREFILL):
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
    m = metrics.compute(steps)
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
    spans = stream.spans(steps)
    if steps and steps[-1].finished == "eos" and spans and spans[-1].text and text.endswith(spans[-1].text) \
            and (len(steps[-1].tokens) == 1 or spans[-1].text != steps[-1].text):
        text = text[: -len(spans[-1].text)]
    return text


def token_stream_html(steps: Iterable[Any], *, autoregressive: bool | None = None, note: bool = True) -> str:
    """The token stream as self-contained HTML: one <span> per token with a background colour by provenance
    and a title attribute (the hover), a legend, and (`note`) how mean acceptance length is counted; streams
    shown side by side leave the note to their page, which says it once."""
    autoregressive = _own(steps, autoregressive)
    steps = steps_of(steps)
    spans = stream.spans(steps, autoregressive=autoregressive)
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
        cue = f"border-bottom:2px solid {STATUS_COLORS[ACCEPTED]};" if sp.provenance == stream.DRAFT else ""
        out.append(f'<span class="lk-{sp.provenance}" data-step="{sp.step}" title="{title}" style="background:'
                   f'{PROVENANCE_COLORS.get(sp.provenance, "#eeeeee")};border-right:1px solid #ffffff;{cue}'
                   f'border-radius:2px;color:#111111">{text}</span>')
    out.append("</div>")
    m = metrics.compute(steps)
    present = [p for p in (stream.DRAFT, stream.BONUS, stream.AUTOREGRESSIVE, stream.PREFILL) if any(s.provenance == p for s in spans)]
    # chips: dark text on their pastel background; the note follows the page's text colour (light or dark theme)
    legend = " ".join(f'<span style="background:{PROVENANCE_COLORS[p]};color:#111111;padding:0 4px;border-radius:2px;'
                      f'{"border-bottom:2px solid " + STATUS_COLORS[ACCEPTED] if p == stream.DRAFT else ""}">'
                      f'{html.escape(PROVENANCE_LABELS[p])}</span>' for p in present)
    tail = (f'<br>{m.new_tokens} tokens, {m.target_forwards} target forwards; mean acceptance length '
            f'<b>{m.mean_accept_len:.2f}</b>: {html.escape(MAL_NOTE)}') if note else ""
    out.append(f'<div class="labkit-legend" style="font-family:sans-serif;font-size:12px;opacity:0.8;'
               f'margin-top:6px">{legend}{tail}</div>')
    return "".join(out)

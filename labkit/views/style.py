"""Colours, labels, token display and offline rendering: what every view shares."""
from __future__ import annotations

import html
import re
from typing import Any, Sequence

import plotly.graph_objects as go

from .. import metrics
from .. import stream
from ..trace import ACCEPTED, NOT_REACHED, REJECTED, Step


# ---- colours and small helpers ---------------------------------------------------------------------

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), and a second cue by shape
STATUS_COLORS = {ACCEPTED: "#009E73", REJECTED: "#D55E00", NOT_REACHED: "#999999", "bonus": "#0072B2",
                 "root": "#444444"}
STATUS_SYMBOLS = {ACCEPTED: "circle", REJECTED: "x", NOT_REACHED: "circle-open", "bonus": "star", "root": "square"}
STATUS_LABELS = {ACCEPTED: "accepted", REJECTED: "rejected", NOT_REACHED: "not reached",
                 "bonus": "bonus (the target's own token)", "root": "root (last committed token)"}
# token-stream backgrounds by provenance
PROVENANCE_COLORS = {stream.DRAFT: "#b7e4a8", stream.BONUS: "#bcd7f5", stream.AUTOREGRESSIVE: "#e6e6e6",
                     stream.PREFILL: "#e0d4f0"}
PROVENANCE_LABELS = {stream.DRAFT: "accepted draft token", stream.BONUS: "bonus token (target's own)",
                     stream.AUTOREGRESSIVE: "autoregressive token", stream.PREFILL: "first token (prefill)"}
METHOD_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")  # Okabe-Ito
PHASES = ("draft", "verify", "accept", "commit")
MAL_NOTE = metrics.MAL_NOTE


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

def _category_scale(colors: Sequence[str]) -> list:
    """A stepped colorscale: integer code i of a heatmap (zmin=-0.5, zmax=len-0.5) gets colors[i]."""
    n = len(colors)
    return [[f, c] for i, c in enumerate(colors) for f in (i / n, (i + 1) / n)]

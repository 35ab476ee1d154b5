"""The model from the inside: what each layer would predict next (labkit.inside.layer_predictions)."""
from __future__ import annotations

from typing import Mapping

import plotly.graph_objects as go

from .style import WHITESPACE_KEY, _esc, show_token


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

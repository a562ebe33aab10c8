"""Plotly figure of a parameter-randomisation sanity check (:func:`camwidgets.sanity.parameter_randomisation`)."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..sanity import MEASURES, SanityResult

__all__ = ["cascade_figure"]

_TITLES = {"spearman_abs": "Spearman rank correlation (abs)", "ssim": "SSIM", "spearman": "Spearman rank correlation"}


def cascade_figure(result: SanityResult, measures: Sequence[str] = ("spearman_abs", "ssim"),
                   title: str | None = None, height: int = 420) -> go.Figure:
    """Similarity to the trained model's map after each randomisation step: one subplot per measure.

    x: the steps, ``original`` (nothing randomised, similarity 1) then the layer re-initialised at
    each step, from the top (logits) down; y: the similarity; one line per method (the same colour
    in every subplot). A map that explains the model falls quickly towards 0 as layers are
    randomised. ``spearman`` (without abs) is left out by default: it equals ``spearman_abs`` for
    camwidgets maps, which are non-negative.
    """
    measures = list(measures)
    unknown = [m for m in measures if m not in MEASURES]
    if not measures or unknown:
        raise ValueError(f"measures must be some of {MEASURES}, got {measures}.")
    fig = make_subplots(rows=1, cols=len(measures), shared_yaxes=True,
                        subplot_titles=[_TITLES[m] for m in measures], horizontal_spacing=0.04)
    steps = list(result.steps)
    x = list(range(len(steps)))
    colours = qualitative.Plotly
    for j, method in enumerate(result.methods):
        for col, measure in enumerate(measures, start=1):
            y = result.similarity[method][measure]
            fig.add_trace(go.Scatter(
                x=x, y=y.tolist(), mode="lines+markers", name=method, legendgroup=method, showlegend=col == 1,
                line={"color": colours[j % len(colours)]}, marker={"size": 4}, customdata=steps,
                hovertemplate=f"{method}<br>%{{customdata}}<br>{measure} = %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
    label = "layer randomised, from the top" if result.mode == "cascading" else "layer randomised alone"
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=steps, tickangle=-60, title_text=label)
    fig.update_yaxes(range=[-1.05, 1.05], zeroline=True)
    fig.update_yaxes(title_text="similarity to the original map", row=1, col=1)
    if title is None:
        title = f"{result.mode.capitalize()} parameter randomisation (class {result.target})"
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      legend={"title": {"text": "method"}})
    return fig

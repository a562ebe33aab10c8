"""Plotly panes for CAM results, as build / update pairs.

Each ``*_figure`` function builds a :class:`plotly.graph_objects.Figure` once; the
matching ``update_*`` function writes new data into an existing figure (a plain
``Figure`` or a ``FigureWidget``) inside ``batch_update()``, so a widget sends one
message per update and never rebuilds its panes. All functions are pure: they read
result objects (or arrays) and touch nothing but the figure they are given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .figures import _png_uri, _thumbnail, _to_uint8_hwc

__all__ = [
    "COLORSCALES",
    "curves_figure",
    "fusion_figure",
    "layer_maps_figure",
    "layer_scores_figure",
    "map_figure",
    "metrics_figure",
    "perturbations_figure",
    "update_curves_figure",
    "update_fusion_figure",
    "update_layer_maps_figure",
    "update_layer_scores_figure",
    "update_map_figure",
    "update_metrics_figure",
    "update_perturbations_figure",
]

#: Colour scales offered for the heatmaps.
COLORSCALES: tuple[str, ...] = ("Jet", "Viridis", "Inferno", "Hot", "RdBu_r", "Greys")
_KEPT, _DROPPED = "#d62728", "#b0b0b0"
_HOVER = "x=%{x}, y=%{y}<br>value=%{z:.3f}<extra></extra>"
#: Side (pixels) of the per-layer map thumbnails: small multiples need no more.
_THUMB = 64


def _batch(fig: go.Figure) -> AbstractContextManager[Any]:
    return fig.batch_update() if hasattr(fig, "batch_update") else nullcontext()


def _arr(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _square_axes(fig: go.Figure, h: int, w: int) -> None:
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x", constrain="domain")


# -- one method's map over the image ------------------------------------------------------
def map_figure(image: Any, cam_map: Any | None = None, title: str = "", opacity: float = 0.5,
               colorscale: str = "Jet", size: int = 260, colorbar: bool = False) -> go.Figure:
    """The image ``(3, H, W)`` in [0, 1] with a CAM ``(H, W)`` in [0, 1] laid over it.

    Trace 0 is the image, trace 1 the heatmap (hover shows the map's value); ``colorbar``
    adds a thin colour bar (0 to 1) at the right.
    """
    rgb = _to_uint8_hwc(image)
    h, w = rgb.shape[:2]
    z = np.zeros((h, w), np.float32) if cam_map is None else _arr(cam_map)
    fig = go.Figure([
        go.Image(source=_png_uri(rgb), name="image", hoverinfo="skip"),
        go.Heatmap(z=z, zmin=0.0, zmax=1.0, opacity=opacity, colorscale=colorscale,
                   name="map", hovertemplate=_HOVER, visible=cam_map is not None, showscale=colorbar,
                   colorbar={"thickness": 8, "len": 0.9, "xpad": 2, "tickvals": [0, 0.5, 1],
                             "tickfont": {"size": 9}}),
    ])
    _square_axes(fig, h, w)
    # A vertical tool bar: on a pane this narrow the horizontal one covers the title.
    extra = 34 if colorbar else 0
    fig.update_layout(title={"text": title, "x": 0.05, "xanchor": "left", "font": {"size": 14}}, width=size + extra,
                      height=size + 30, margin={"l": 2, "r": 28 + extra, "t": 30, "b": 2},
                      modebar={"orientation": "v"})
    return fig


def update_map_figure(fig: go.Figure, cam_map: Any | None = None, *, image: Any | None = None,
                      title: str | None = None, opacity: float | None = None,
                      colorscale: str | None = None) -> None:
    """Write a new map (and optionally image, title, opacity, colour scale) into ``fig``."""
    with _batch(fig):
        if image is not None:
            rgb = _to_uint8_hwc(image)
            fig.data[0].source = _png_uri(rgb)
            _square_axes(fig, *rgb.shape[:2])
        if cam_map is not None:
            fig.data[1].z = _arr(cam_map)
            fig.data[1].visible = True
        if opacity is not None:
            fig.data[1].opacity = float(opacity)
        if colorscale is not None:
            fig.data[1].colorscale = colorscale
        if title is not None:
            fig.layout.title.text = title


# -- I-CAM: layer scores, selection and weights -------------------------------------------
def _short(name: str) -> str:
    return name if len(name) <= 14 else "…" + name[-13:]


def layer_scores_figure(result: Any | None = None, layers: Sequence[str] = ()) -> go.Figure:
    """I-CAM's layer scores ``S_l`` (as shares of their sum, bars; red = kept by T) and the
    weights ``W_l`` of the kept layers (diamonds). ``result`` is an ``ICAMResult``."""
    names = list(result.candidate_layers) if result is not None else list(layers)
    fig = go.Figure([
        go.Bar(x=[_short(n) for n in names], y=[0.0] * len(names), name="S_l / ΣS",
               marker={"color": [_DROPPED] * len(names)}, hovertemplate="%{x}: %{y:.3f}<extra>S_l share</extra>"),
        go.Scatter(x=[], y=[], mode="markers", name="W_l (kept)",
                   marker={"symbol": "diamond", "size": 11, "color": "black"},
                   hovertemplate="%{x}: W=%{y:.3f}<extra></extra>"),
    ])
    fig.update_layout(title={"text": "I-CAM layer scores", "font": {"size": 14}}, height=280, width=540,
                      margin={"l": 40, "r": 10, "t": 40, "b": 60}, yaxis={"range": [0, 1], "title": "share"},
                      legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}, bargap=0.25)
    if result is not None:
        update_layer_scores_figure(fig, result)
    return fig


def update_layer_scores_figure(fig: go.Figure, result: Any) -> None:
    """Write an ``ICAMResult``'s ``S_l``, kept layers and ``W_l`` into ``fig``."""
    names = list(result.candidate_layers)
    scores = _arr(result.layer_scores).astype(np.float64)
    total = float(scores.sum())
    share = scores / total if total > 0 else np.zeros_like(scores)
    kept = list(result.kept_layers)
    threshold = result.params.get("threshold", float("nan"))
    with _batch(fig):
        fig.data[0].x = [_short(n) for n in names]
        fig.data[0].y = share
        fig.data[0].marker.color = [_KEPT if n in kept else _DROPPED for n in names]
        fig.data[1].x = [_short(n) for n in kept]
        fig.data[1].y = _arr(result.layer_weights)
        top = max(0.05, float(share.max(initial=0.0)), float(_arr(result.layer_weights).max(initial=0.0)))
        fig.layout.yaxis.range = [0, min(1.0, top * 1.15)]
        fig.layout.title.text = f"I-CAM layer scores: T = {threshold:.2f} keeps {len(kept)} of {len(names)}"


def _grid(k: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, k))
    return max(1, math.ceil(k / cols)), cols


def _style_small_multiples(fig: go.Figure, title: str, *, height: int, width: int, top: int,
                           heatmaps: bool) -> None:
    """Hide the axes, size the figure and shrink the panel titles of a grid of small panels.

    Heatmap rows run top to bottom like image rows (``go.Image`` already does that itself).
    """
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed" if heatmaps else None)
    fig.update_layout(height=height, width=width, margin={"l": 2, "r": 2, "t": top, "b": 2},
                      title={"text": title, "font": {"size": 14}})
    for ann in fig.layout.annotations:
        ann.font.size = 10


def layer_maps_figure(result: Any | None = None, layers: Sequence[str] = (), size: tuple[int, int] = (64, 64),
                      colorscale: str = "Jet", cols: int = 8) -> go.Figure:
    """One small heatmap per candidate layer: the per-layer map ``L_l`` of a kept layer, an
    empty panel for a dropped one. The grid has one slot per candidate layer, so moving T
    only changes data, never the layout."""
    names = list(result.candidate_layers) if result is not None else list(layers)
    if result is not None:
        any_map = next(iter(result.layer_maps.values()), None)
        if any_map is not None:
            h, w = np.shape(_thumbnail(any_map, _THUMB))
            size = (int(h), int(w))
    rows, ncols = _grid(len(names), cols)
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=[_short(n) for n in names],
                        horizontal_spacing=0.01, vertical_spacing=0.08)
    blank = np.zeros(size, np.float32)
    for i, _ in enumerate(names):
        fig.add_trace(go.Heatmap(z=blank, zmin=0, zmax=1, colorscale=colorscale, showscale=False,
                                 hovertemplate=_HOVER), row=i // ncols + 1, col=i % ncols + 1)
    _style_small_multiples(fig, "I-CAM per-layer maps (kept layers)", height=110 * rows + 40,
                           width=max(300, 92 * ncols), top=40, heatmaps=True)
    if result is not None:
        update_layer_maps_figure(fig, result)
    return fig


def update_layer_maps_figure(fig: go.Figure, result: Any) -> None:
    """Show the kept layers' maps of an ``ICAMResult``; blank the dropped ones."""
    names = list(result.candidate_layers)
    kept = set(result.kept_layers)
    with _batch(fig):
        for i, name in enumerate(names[: len(fig.data)]):
            trace = fig.data[i]
            if name in kept and name in result.layer_maps:
                trace.z = _thumbnail(result.layer_maps[name], _THUMB)
                trace.opacity = 1.0
            else:
                trace.z = np.zeros_like(_arr(trace.z)) if trace.z is not None else None
                trace.opacity = 0.15
            fig.layout.annotations[i].text = _short(name) if name in kept else f"<i>{_short(name)}</i> ✕"


# -- I-CAM: the α perturbations ------------------------------------------------------------
def perturbations_figure(result: Any | None = None, n: int = 8, thumb: int = 96) -> go.Figure:
    """The perturbed images ``I'_i`` of an ``ICAMResult`` with ``w_i``, SVIM and MDS under each."""
    k = int(result.perturbations.shape[0]) if result is not None else int(n)
    fig = make_subplots(rows=1, cols=max(1, k), subplot_titles=[" "] * max(1, k), horizontal_spacing=0.01)
    for i in range(max(1, k)):
        fig.add_trace(go.Image(source=_png_uri(np.zeros((8, 8, 3), np.uint8)), hoverinfo="skip"),
                      row=1, col=i + 1)
    _style_small_multiples(fig, "α perturbations", height=thumb + 112, width=max(300, (thumb + 6) * k), top=92,
                           heatmaps=False)
    if result is not None:
        update_perturbations_figure(fig, result, thumb)
    return fig


def update_perturbations_figure(fig: go.Figure, result: Any, thumb: int = 96) -> None:
    """Write the perturbations (as ``thumb``-pixel thumbnails) and their ``w_i`` / SVIM / MDS
    into ``fig`` (same ``n``)."""
    pert = result.perturbations
    alpha = result.params.get("alpha", float("nan"))
    with _batch(fig):
        for i in range(min(len(fig.data), int(pert.shape[0]))):
            fig.data[i].source = _png_uri(_thumbnail(pert[i], thumb))
            # One value per line: side by side they ran into the next thumbnail's ("MDS 0.97SVIM 0.16").
            fig.layout.annotations[i].text = (f"w={float(result.perturbation_weights[i]):.2f}<br>"
                                              f"SVIM {float(result.svim[i]):.2f}<br>MDS {float(result.mds[i]):.2f}")
        fig.layout.title.text = f"α = {alpha:.2f}: {int(pert.shape[0])} perturbations"


# -- Fusion-CAM / UnionCAM components --------------------------------------------------------
#: Side (pixels) of Fusion-CAM's component maps: five of them share one row.
_FUSION_THUMB = 96
_FUSION_PANES = ("denoised gradient L_g", "region L_r", "combined L_gr", "similarity", "Fusion-CAM")


def fusion_figure(result: Any | None = None, colorscale: str = "Jet", size: tuple[int, int] = (64, 64)) -> go.Figure:
    """Fusion-CAM's components side by side: ``L_g`` (denoised), ``L_r``, ``L_gr``, the
    similarity map and the fused map, with every β in the titles."""
    if result is not None:
        size = tuple(int(s) for s in np.shape(_thumbnail(result.map, _FUSION_THUMB)))  # type: ignore[assignment]
    fig = make_subplots(rows=1, cols=len(_FUSION_PANES), subplot_titles=list(_FUSION_PANES),
                        horizontal_spacing=0.01)
    for i in range(len(_FUSION_PANES)):
        fig.add_trace(go.Heatmap(z=np.zeros(size, np.float32), zmin=0, zmax=1, colorscale=colorscale,
                                 showscale=False, hovertemplate=_HOVER), row=1, col=i + 1)
    _style_small_multiples(fig, "Fusion-CAM components", height=230, width=900, top=70, heatmaps=True)
    if result is not None:
        update_fusion_figure(fig, result)
    return fig


def update_fusion_figure(fig: go.Figure, result: Any) -> None:
    """Write a ``FusionCAMResult``'s component maps and β weights into ``fig``."""
    b = result.betas
    maps = (result.gradient_map, result.region_map, result.combined_map, result.similarity, result.map)
    titles = (f"L_g (θ={result.params.get('theta', float('nan')):g})<br>β_g={b.get('gradient', 0):.2f}",
              f"L_r<br>β_r={b.get('region', 0):.2f}",
              f"L_gr<br>β_gr={b.get('combined', 0):.2f}",
              f"similarity<br>β_r'={b.get('region_final', 0):.2f}",
              "Fusion-CAM")
    with _batch(fig):
        for i, (m, t) in enumerate(zip(maps, titles, strict=True)):
            fig.data[i].z = _thumbnail(m, _FUSION_THUMB)
            fig.layout.annotations[i].text = t


# -- metrics ---------------------------------------------------------------------------------
def metrics_figure(columns: Sequence[str]) -> go.Figure:
    """An empty metrics table (one row per method, one column per name in ``columns``), filled by
    :func:`update_metrics_figure`."""
    fig = go.Figure(go.Table(header={"values": ["method", *columns], "align": "left"},
                             cells={"values": [[] for _ in range(len(columns) + 1)], "align": "left"}))
    fig.update_layout(height=230, width=max(560, 110 + 80 * len(columns)), margin={"l": 2, "r": 2, "t": 30, "b": 2},
                      title={"text": "Metrics", "font": {"size": 14}})
    return fig


def update_metrics_figure(fig: go.Figure, rows: Mapping[str, Mapping[str, float | None]],
                          title: str | None = None) -> None:
    """``rows``: method -> {column: value, None (shown as …, still computing) or NaN (shown as –,
    no value: a ground-truth metric on an image without one)}."""
    header = list(fig.data[0].header.values)
    cols = header[1:]
    methods = list(rows)

    def fmt(v: float | None) -> str:
        if v is None:
            return "…"
        return "–" if math.isnan(v) else f"{v:.3f}"

    values = [methods] + [[fmt(rows[m].get(c)) for m in methods] for c in cols]
    with _batch(fig):
        fig.data[0].cells.values = values
        if title is not None:
            fig.layout.title.text = title


def curves_figure() -> go.Figure:
    """Insertion (solid) and deletion (dashed) curves, one colour per method."""
    fig = go.Figure()
    fig.update_layout(height=260, width=460, margin={"l": 40, "r": 10, "t": 40, "b": 40},
                      title={"text": "Insertion / deletion", "font": {"size": 14}},
                      xaxis={"title": "fraction of pixels", "range": [0, 1]},
                      yaxis={"title": "p(class)", "range": [0, 1]})
    return fig


def update_curves_figure(fig: go.Figure, curves: Mapping[str, Mapping[str, Any]]) -> None:
    """``curves``: method -> {"insertion": (fractions, values), "deletion": (fractions, values)}.

    Traces are reused by name; missing ones are added (the number of methods changes only
    when the user toggles methods)."""
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
    wanted = [(m, kind) for m in curves for kind in ("insertion", "deletion") if kind in curves[m]]
    with _batch(fig):
        existing = {t.name: t for t in fig.data}
        for i, (m, kind) in enumerate(wanted):
            name = f"{m} {kind}"
            xs, ys = curves[m][kind]
            if name in existing:
                existing[name].x, existing[name].y, existing[name].visible = _arr(xs), _arr(ys), True
            else:
                fig.add_trace(go.Scatter(x=_arr(xs), y=_arr(ys), name=name, mode="lines",
                                         line={"color": palette[(i // 2) % len(palette)],
                                               "dash": "solid" if kind == "insertion" else "dash"}))
        keep = {f"{m} {k}" for m, k in wanted}
        for t in fig.data:
            if t.name not in keep:
                t.visible = False

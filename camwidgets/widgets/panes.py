"""The explorer's panes: one registry entry per pane, each drawn as a plain Plotly figure.

A pane is declared once, in :data:`PANES` (or, for the map of each method, by
:func:`map_pane`): its name, its title, where it goes (the maps row or a tab of details),
when it is shown, what it reads from the controller and how its figure is built (a pure
function, most of them from :mod:`camwidgets.viz.cam`). The view
(:class:`~camwidgets.widgets.CAMExplorer`) makes one :class:`PaneView` per shown pane and
redraws a pane only when what it reads has changed (compared by identity: results,
metric rows and curves are new objects when they change). Adding a pane touches this
file and its test.

A :class:`PaneView` is an ``ipywidgets.Output`` whose one output is the figure's Plotly
JSON (the ``application/vnd.plotly.v1+json`` mimetype, drawn by the Plotly extension that
ships with the ``plotly`` package in JupyterLab and Notebook 7). It is not a Plotly
``FigureWidget``: those carry their own copy of plotly.js (~5 MB) into the notebook each,
and one updated in place comes back after a page reload as it was first built. An Output's
state *is* the figure shown, set from the kernel, so a reloaded page, a second tab and a
saved notebook draw the current figure, with hover, at a few hundred kB per pane.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np

from ..viz import cam as vz
from ..viz.sanity import cascade_figure
from .controller import METHOD_LABELS, METRIC_COLUMNS

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .controller import ExplorerController

__all__ = ["MIMETYPE", "PANES", "PaneContext", "PaneSpec", "PaneView", "figure_bundle", "map_pane", "pane_specs"]

#: The mimetype of a Plotly figure's JSON in a notebook output.
MIMETYPE = "application/vnd.plotly.v1+json"
#: Plotly's config for every pane: no logo, no "edit in Chart Studio" link.
_CONFIG = {"displaylogo": False, "showLink": False}
#: Side (pixels) of a map pane's square plot area: four of them and their colour bars fit a
#: 1440x900 JupyterLab window beside its file browser.
MAP_SIZE = 210


@dataclass(frozen=True)
class PaneContext:
    """What a pane's figure is built from: the controller's state and the view's style."""

    controller: ExplorerController
    opacity: float = 0.5
    colorscale: str = "Jet"


@dataclass(frozen=True)
class PaneSpec:
    """One pane of the explorer.

    Attributes
    ----------
    name : str
        Key in ``CAMExplorer.panes`` and ``CAMExplorer.figures`` (a method's name for its map).
    title : str
        Shown as the tab's title (detail panes) or the figure's title (maps).
    tab : str or None
        The tab of details it goes in; None: the maps row, always in view.
    shown : callable(controller) -> bool
        Whether the pane is part of the explorer now (e.g. only while its method is shown).
    inputs : callable(PaneContext) -> tuple
        The objects the figure is built from; the pane is redrawn when one of them is not the
        object it was drawn from (scalars and numpy arrays: when their values differ).
    figure : callable(PaneContext) -> plotly Figure
        Builds the figure (pure).
    update : callable(figure, PaneContext, inputs before) -> bool, optional
        Writes the new data into the figure drawn last and returns True, or returns False when
        the figure has to be built anew (e.g. another number of layers). Building a figure
        validates every property (tens of ms for a grid of small maps); writing new arrays into
        one is a few ms, which is what a slider move pays. None: always :attr:`figure`.
    """

    name: str
    title: str
    tab: str | None
    shown: Callable[[ExplorerController], bool]
    inputs: Callable[[PaneContext], tuple[Any, ...]]
    figure: Callable[[PaneContext], go.Figure]
    update: Callable[[go.Figure, PaneContext, tuple[Any, ...]], bool] | None = None


def _result(ctx: PaneContext, method: str) -> Any:
    return ctx.controller.results.get(method)


def map_pane(method: str) -> PaneSpec:
    """The pane of one method's map over the image (hover shows the map's value)."""
    label = METHOD_LABELS.get(method, method)

    def figure(ctx: PaneContext) -> go.Figure:
        r = _result(ctx, method)
        return vz.map_figure(ctx.controller.image, None if r is None else r.map, label, ctx.opacity,
                             ctx.colorscale, size=MAP_SIZE, colorbar=True)

    def update(fig: go.Figure, ctx: PaneContext, before: tuple[Any, ...]) -> bool:
        r = _result(ctx, method)
        if r is None:
            return False
        image = ctx.controller.image
        vz.update_map_figure(fig, r.map, image=None if image is before[0] else image, opacity=ctx.opacity,
                             colorscale=ctx.colorscale)
        return True

    return PaneSpec(name=method, title=label, tab=None, shown=lambda c: method in c.methods,
                    inputs=lambda ctx: (ctx.controller.image, _result(ctx, method), ctx.opacity, ctx.colorscale),
                    figure=figure, update=update)


def _writer(method: str, write: Callable[[go.Figure, Any], None],
            fits: Callable[[tuple[Any, ...], Any, PaneContext], bool] = lambda before, new, ctx: True,
            ) -> Callable[[go.Figure, PaneContext, tuple[Any, ...]], bool]:
    """An ``update`` that writes ``method``'s new result into the figure when it ``fits`` the
    figure drawn from the inputs ``before`` (``before[0]``: the old result or one of its arrays)."""

    def update(fig: go.Figure, ctx: PaneContext, before: tuple[Any, ...]) -> bool:
        new = _result(ctx, method)
        if before[0] is None or new is None or not fits(before, new, ctx):
            return False
        write(fig, new)
        return True

    return update


def _same_layers(before: tuple[Any, ...], new: Any, ctx: PaneContext) -> bool:
    return tuple(before[0].candidate_layers) == tuple(new.candidate_layers)


def _perturbation_inputs(icam: Any) -> tuple[Any, ...]:
    if icam is None:
        return (None,)
    return (icam.perturbations, icam.perturbation_weights, icam.svim, icam.mds, icam.params.get("alpha"))


def _write_metrics(fig: go.Figure, ctx: PaneContext) -> bool:
    vz.update_metrics_figure(fig, {METHOD_LABELS.get(m, m): v for m, v in ctx.controller.metric_values.items()})
    return True


def _metrics_figure(ctx: PaneContext) -> go.Figure:
    fig = vz.metrics_figure(METRIC_COLUMNS)
    _write_metrics(fig, ctx)
    return fig


def _write_curves(fig: go.Figure, ctx: PaneContext) -> bool:
    vz.update_curves_figure(fig, {METHOD_LABELS.get(m, m): v for m, v in ctx.controller.curves.items()})
    return True


def _curves_figure(ctx: PaneContext) -> go.Figure:
    fig = vz.curves_figure()
    _write_curves(fig, ctx)
    return fig


#: The detail panes, in the order of their tabs (the map panes come from :func:`map_pane`).
PANES: tuple[PaneSpec, ...] = (
    PaneSpec("icam_scores", "I-CAM layers", "I-CAM layers", lambda c: "icam" in c.methods,
             lambda ctx: (_result(ctx, "icam"),), lambda ctx: vz.layer_scores_figure(_result(ctx, "icam")),
             _writer("icam", vz.update_layer_scores_figure, _same_layers)),
    PaneSpec("icam_maps", "I-CAM per-layer maps", "I-CAM layers", lambda c: "icam" in c.methods,
             lambda ctx: (_result(ctx, "icam"),), lambda ctx: vz.layer_maps_figure(_result(ctx, "icam")),
             _writer("icam", vz.update_layer_maps_figure, _same_layers)),
    # Redrawn when α, n or the seed change the perturbations, not on every T or bias step.
    PaneSpec("perturbations", "I-CAM perturbations", "I-CAM perturbations", lambda c: "icam" in c.methods,
             lambda ctx: _perturbation_inputs(_result(ctx, "icam")),
             lambda ctx: vz.perturbations_figure(_result(ctx, "icam")),
             _writer("icam", vz.update_perturbations_figure,
                     lambda before, new, ctx: before[0].shape == new.perturbations.shape)),
    PaneSpec("fusion", "Fusion-CAM components", "Fusion-CAM", lambda c: "fusioncam" in c.methods,
             lambda ctx: (_result(ctx, "fusioncam"), ctx.colorscale),
             lambda ctx: vz.fusion_figure(_result(ctx, "fusioncam"), colorscale=ctx.colorscale),
             _writer("fusioncam", vz.update_fusion_figure, lambda before, new, ctx: before[1] == ctx.colorscale)),
    PaneSpec("metrics", "Metrics", "Metrics", lambda c: c.compute_metrics,
             lambda ctx: (ctx.controller.metric_values,), _metrics_figure,
             lambda fig, ctx, _: _write_metrics(fig, ctx)),
    PaneSpec("curves", "Insertion / deletion", "Metrics", lambda c: c.compute_metrics and c.compute_curves,
             lambda ctx: (ctx.controller.curves,), _curves_figure, lambda fig, ctx, _: _write_curves(fig, ctx)),
    # Shown once the user ran the test (a button in the display tab): seconds of model passes.
    PaneSpec("sanity", "Sanity check", "Sanity check", lambda c: c.sanity is not None,
             lambda ctx: (ctx.controller.sanity,), lambda ctx: cascade_figure(ctx.controller.sanity)),
)


def pane_specs(controller: ExplorerController) -> list[PaneSpec]:
    """Every pane shown now: the shown methods' maps (registry order), then :data:`PANES`."""
    maps = [map_pane(m) for m in METHOD_LABELS if m in controller.methods]
    return maps + [p for p in PANES if p.shown(controller)]


def figure_bundle(fig: go.Figure) -> dict[str, Any]:
    """A notebook output (``display_data``) that draws ``fig``: its Plotly JSON (numpy arrays as
    base64 typed arrays) and a plain-text line for front ends without the Plotly extension."""
    spec = json.loads(fig.to_json())
    spec["config"] = dict(_CONFIG)
    title = fig.layout.title.text or "figure"
    return {"output_type": "display_data", "metadata": {},
            "data": {MIMETYPE: spec, "text/plain": f"<Plotly figure: {title}>"}}


def _same_input(x: Any, y: Any) -> bool:
    if x is y:
        return True
    if isinstance(x, (int, float, str)):
        return bool(x == y)
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):  # (e.g. a new result viewing the same stage)
        return x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(x, y))
    return False


def _same(a: tuple[Any, ...] | None, b: tuple[Any, ...]) -> bool:
    if a is None or len(a) != len(b):
        return False
    return all(_same_input(x, y) for x, y in zip(a, b, strict=True))


@dataclass
class _Drawn:
    inputs: tuple[Any, ...] | None = None
    figure: Any = None
    draws: int = 0


class PaneView(widgets.Output):
    """One pane: an ``Output`` showing its figure (see the module docstring).

    Attributes
    ----------
    spec : PaneSpec
    figure : plotly Figure or None
        The figure shown now (None before the first draw).
    draws : int
        Times the pane was drawn (a redraw with unchanged inputs does not count: nothing is sent).
    """

    def __init__(self, spec: PaneSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self._drawn = _Drawn()

    @property
    def figure(self) -> Any:
        return self._drawn.figure

    @property
    def draws(self) -> int:
        return self._drawn.draws

    def draw(self, ctx: PaneContext, force: bool = False) -> bool:
        """Build and show the figure if what it reads changed (or ``force``); returns whether it drew."""
        inputs = self.spec.inputs(ctx)
        before = self._drawn.inputs
        if not force and _same(before, inputs):
            return False
        fig = self._drawn.figure
        if force or fig is None or before is None or self.spec.update is None or not self.spec.update(fig, ctx, before):
            fig = self.spec.figure(ctx)
        self.outputs = (figure_bundle(fig),)
        self._drawn = _Drawn(inputs, fig, self._drawn.draws + 1)
        return True

    def forget(self) -> None:
        """Drop the figure and what it was built from (a closed explorer keeps no results)."""
        self._drawn = _Drawn(draws=self._drawn.draws)

    def close(self) -> None:
        """Close the widget and drop its figure and the results it was drawn from; again is fine."""
        self.forget()
        layout = self.layout
        super().close()
        layout.close()

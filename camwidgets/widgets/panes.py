"""Display panes: each wraps Plotly ``FigureWidget``s built once and updated in place.

A pane renders results; it computes nothing. :class:`~camwidgets.widgets.CAMExplorer`
composes them, and each also works on its own::

    pane = MapPane("gradcam", image); pane.update(explainer.gradcam()); display(pane)

A pane's :meth:`close` closes every widget it holds (its FigureWidgets, their layouts),
not only its own box: a closed widget leaves ipywidgets' registry of live widgets, and
a widget left there stays alive (with what its callbacks reference) for the whole session.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from ..core.methods import methods
from ..viz import cam as vz

__all__ = ["METHOD_LABELS", "FusionPanel", "LayerPanel", "MapPane", "MetricsPanel"]

#: Display names of the methods, from the method registry (registry order).
METHOD_LABELS: dict[str, str] = {m.name: m.label for m in methods()}


def _held_widgets(value: Any, depth: int = 3) -> Iterator[widgets.Widget]:
    """Widgets in ``value`` or in its dicts, lists and tuples (``depth`` levels down)."""
    if isinstance(value, widgets.Widget):
        yield value
    elif depth > 0 and isinstance(value, (dict, list, tuple)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _held_widgets(item, depth - 1)


def _ours(obj: object) -> bool:
    return any(c.__module__.startswith("camwidgets.") for c in type(obj).__mro__)


def widgets_under(root: widgets.Widget) -> list[widgets.Widget]:
    """``root`` and every widget it holds: its widget-valued traits (children, layout, style),
    recursively, and, for camwidgets' own widgets, the widgets held as attributes (also in
    dicts, lists and tuples), which need not be in the children tree."""
    found: dict[int, widgets.Widget] = {}
    stack: list[widgets.Widget] = [root]
    while stack:
        w = stack.pop()
        if id(w) in found:
            continue
        found[id(w)] = w
        for name in w.keys:
            try:
                value = getattr(w, name)
            except Exception:  # a trait that cannot be read holds no widget of ours
                continue
            stack.extend(_held_widgets(value, 1))
        if _ours(w):
            stack.extend(_held_widgets(list(vars(w).values())))
    return list(found.values())


def close_widgets(root: widgets.Widget, owner: object | None = None) -> None:
    """Close ``root`` and every widget it holds (see :func:`widgets_under`).

    Each one leaves ipywidgets' registry and closes its comm (the kernel's comm registry drops
    it). Buttons forget their click callbacks, and observers that are methods of ``owner``
    are removed, so that a closed widget someone still holds keeps nothing of ``owner`` alive;
    panes drop the result they showed. Closing again is fine.
    """
    for w in widgets_under(root):
        if owner is not None:
            for name, by_type in list(w._trait_notifiers.items()):
                for kind, handlers in list(by_type.items()):
                    for handler in list(handlers):
                        if getattr(handler, "__self__", None) is owner:
                            w.unobserve(handler, names=name, type=kind)
        if isinstance(w, widgets.Button):
            for callback in list(w._click_handlers.callbacks):
                w.on_click(callback, remove=True)
        if isinstance(w, _Pane):
            w.result = None  # the core's result (maps, per-layer maps, perturbations)
        widgets.Widget.close(w)  # the base close: the panes' own close() walks the tree again


class _Pane(widgets.VBox):
    result: Any = None

    def close(self) -> None:
        """Close the pane and every widget in it (its figures included); closing again is fine."""
        close_widgets(self)


class MapPane(_Pane):
    """One method's map over the image, with hover values.

    Attributes
    ----------
    figure : plotly.graph_objects.FigureWidget
        Built once; :meth:`update` writes into it.
    result : object or None
        The result object shown (a core ``CAMResult``).
    """

    def __init__(self, method: str, image: Any, opacity: float = 0.5, colorscale: str = "Jet",
                 size: int = 260) -> None:
        self.method = method
        self.result: Any = None
        self.figure = go.FigureWidget(vz.map_figure(image, None, METHOD_LABELS.get(method, method),
                                                    opacity, colorscale, size))
        super().__init__([self.figure])

    def update(self, result: Any, *, image: Any | None = None) -> bool:
        """Show ``result``; returns False (and sends nothing) if it is the result already shown."""
        if result is self.result and image is None:
            return False
        self.result = result
        vz.update_map_figure(self.figure, result.map, image=image)
        return True

    def set_image(self, image: Any) -> None:
        """Show a new image (the map stays until the next :meth:`update`)."""
        vz.update_map_figure(self.figure, image=image)

    def style(self, opacity: float | None = None, colorscale: str | None = None) -> None:
        """Change the overlay's opacity or colour scale (no recomputation)."""
        vz.update_map_figure(self.figure, opacity=opacity, colorscale=colorscale)


class LayerPanel(_Pane):
    """I-CAM's internals: layer scores with T's selection, per-layer maps, perturbations."""

    def __init__(self, result: Any | None = None) -> None:
        self.result: Any = None
        self.scores = go.FigureWidget(vz.layer_scores_figure(result))
        self.maps = go.FigureWidget(vz.layer_maps_figure(result))
        self.perturbations = go.FigureWidget(vz.perturbations_figure(result))
        self._layers = tuple(result.candidate_layers) if result is not None else ()
        self._n = int(result.perturbations.shape[0]) if result is not None else 0
        self.result = result
        super().__init__([self.scores, self.maps, self.perturbations])

    def update(self, result: Any) -> bool:
        """Show an ``ICAMResult``; only the figures whose inputs changed are written."""
        if result is self.result:
            return False
        old = self.result
        replaced: list[widgets.Widget] = []
        layers = tuple(result.candidate_layers)
        if layers != self._layers:  # a new model: the grid's slots change, once
            self._layers = layers
            replaced += [self.maps, self.scores]
            self.maps = go.FigureWidget(vz.layer_maps_figure(result))
            self.scores = go.FigureWidget(vz.layer_scores_figure(result))
        n = int(result.perturbations.shape[0])
        if n != self._n:  # the number of perturbations changed: new slots
            self._n = n
            replaced.append(self.perturbations)
            self.perturbations = go.FigureWidget(vz.perturbations_figure(result))
        self.children = (self.scores, self.maps, self.perturbations)
        for fig in replaced:  # shown nowhere now: closed, or they stay registered for the session
            close_widgets(fig)
        vz.update_layer_scores_figure(self.scores, result)
        vz.update_layer_maps_figure(self.maps, result)
        if old is None or old.perturbations is not result.perturbations:
            vz.update_perturbations_figure(self.perturbations, result)
        self.result = result
        return True


class FusionPanel(_Pane):
    """Fusion-CAM's components (denoised gradient map, region map, combination, similarity) and β."""

    def __init__(self, result: Any | None = None) -> None:
        self.result: Any = None
        self.figure = go.FigureWidget(vz.fusion_figure(result))
        self.result = result
        super().__init__([self.figure])

    def update(self, result: Any) -> bool:
        if result is self.result:
            return False
        vz.update_fusion_figure(self.figure, result)
        self.result = result
        return True


class MetricsPanel(_Pane):
    """A metrics table (one row per method) and the insertion / deletion curves."""

    def __init__(self) -> None:
        self.table = go.FigureWidget(vz.metrics_figure())
        self.curves = go.FigureWidget(vz.curves_figure())
        self.rows: dict[str, dict[str, float | None]] = {}
        super().__init__([widgets.HBox([self.table, self.curves])])

    def update_rows(self, rows: Mapping[str, Mapping[str, float | None]], title: str | None = None) -> None:
        self.rows = {m: dict(v) for m, v in rows.items()}
        vz.update_metrics_figure(self.table, {METHOD_LABELS.get(m, m): v for m, v in rows.items()}, title)

    def update_curves(self, curves: Mapping[str, Mapping[str, Any]]) -> None:
        vz.update_curves_figure(self.curves, {METHOD_LABELS.get(m, m): v for m, v in curves.items()})

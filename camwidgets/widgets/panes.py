"""Display panes: each wraps Plotly ``FigureWidget``s built once and updated in place.

A pane renders results; it computes nothing. :class:`~camwidgets.widgets.CAMExplorer`
composes them, and each also works on its own::

    pane = MapPane("gradcam", image); pane.update(explainer.gradcam()); display(pane)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from ..viz import cam as vz

__all__ = ["METHOD_LABELS", "FusionPanel", "LayerPanel", "MapPane", "MetricsPanel"]

#: Display names of the methods, in the order the explorer offers them.
METHOD_LABELS: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "layercam": "LayerCAM",
    "icam": "I-CAM",
    "fusioncam": "Fusion-CAM",
    "gradcampp": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "scorecam": "Score-CAM",
    "unioncam": "UnionCAM",
}


class MapPane(widgets.VBox):
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


class LayerPanel(widgets.VBox):
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
        layers = tuple(result.candidate_layers)
        if layers != self._layers:  # a new model: the grid's slots change, once
            self._layers = layers
            self.maps = go.FigureWidget(vz.layer_maps_figure(result))
            self.scores = go.FigureWidget(vz.layer_scores_figure(result))
        n = int(result.perturbations.shape[0])
        if n != self._n:  # the number of perturbations changed: new slots
            self._n = n
            self.perturbations = go.FigureWidget(vz.perturbations_figure(result))
        self.children = (self.scores, self.maps, self.perturbations)
        vz.update_layer_scores_figure(self.scores, result)
        vz.update_layer_maps_figure(self.maps, result)
        if old is None or old.perturbations is not result.perturbations:
            vz.update_perturbations_figure(self.perturbations, result)
        self.result = result
        return True


class FusionPanel(widgets.VBox):
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


class MetricsPanel(widgets.VBox):
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

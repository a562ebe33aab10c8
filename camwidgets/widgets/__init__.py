"""ipywidgets classes: the CAMExplorer and the panes it is made of."""

from .explorer import DEFAULT_METHODS, CAMExplorer
from .panes import METHOD_LABELS, FusionPanel, LayerPanel, MapPane, MetricsPanel

__all__ = ["DEFAULT_METHODS", "METHOD_LABELS", "CAMExplorer", "FusionPanel", "LayerPanel", "MapPane", "MetricsPanel"]

"""ipywidgets classes: the CAMExplorer (a thin view), its controller and its pane registry."""

from .controller import DEFAULT_METHODS, METHOD_LABELS, ExplorerController
from .explorer import CAMExplorer
from .panes import PANES, PaneSpec, PaneView, map_pane

__all__ = ["DEFAULT_METHODS", "METHOD_LABELS", "PANES", "CAMExplorer", "ExplorerController", "PaneSpec", "PaneView",
           "map_pane"]

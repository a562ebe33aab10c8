"""Plotly figures built from camwidgets results (pure functions, no widgets)."""

from .figures import image_figure, topk_figure
from .sanity import cascade_figure

__all__ = ["cascade_figure", "image_figure", "topk_figure"]

"""Plotly figures built from camwidgets results (pure functions, no widgets)."""

from .figures import image_figure, topk_figure

__all__ = ["image_figure", "topk_figure"]

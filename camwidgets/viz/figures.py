"""Plotly figures built from images, masks and CAM results (pure functions)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

__all__ = ["image_figure", "topk_figure"]


def _to_uint8_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    return (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)


def _png_uri(rgb: np.ndarray) -> str:
    """A ``data:image/png;base64`` URI of a uint8 ``(H, W, 3)`` image.

    Plotly validates a ``go.Image``'s ``z`` element by element (a 224x224 RGB image is
    150,000 numbers, tens of milliseconds each time); a PNG ``source`` is one short
    string and a fraction of the bytes on the wire.
    """
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnail(image: torch.Tensor | np.ndarray, side: int) -> np.ndarray:
    """Antialiased downscale so that the longer side is at most ``side`` pixels.

    Accepts an image ``(3, H, W)`` / ``(H, W, 3)`` in [0, 1] (returns uint8 ``(h, w, 3)``) or a
    map ``(H, W)`` (returns float32 ``(h, w)``)."""
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", torch.float32)
    else:
        t = torch.from_numpy(np.array(image, dtype=np.float32))  # a copy: results are read-only
    is_map = t.dim() == 2
    if not is_map and t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    h, w = t.shape[-2:]
    if max(h, w) > side:
        size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
        t = torch.nn.functional.interpolate(t.reshape(1, -1, h, w), size=size, mode="bilinear",
                                            align_corners=False, antialias=True)[0]
    if is_map:
        return t.reshape(t.shape[-2:]).numpy()
    return _to_uint8_hwc(t.reshape(3, *t.shape[-2:]))


def image_figure(image: torch.Tensor | np.ndarray, mask: np.ndarray | None = None,
                 box: Sequence[int] | None = None, title: str | None = None) -> go.Figure:
    """An image ``(3, H, W)`` or ``(H, W, 3)`` in [0, 1], with an optional ground-truth
    mask outline (bool ``(H, W)``) and box ``(x0, y0, x1, y1)`` (inclusive pixels)."""
    rgb = _to_uint8_hwc(image)
    h, w = rgb.shape[:2]
    fig = go.Figure(go.Image(source=_png_uri(rgb), name="image", hoverinfo="x+y"))
    if mask is not None:
        m = np.asarray(mask, dtype=float)
        if m.shape != (h, w):
            raise ValueError(f"mask has shape {m.shape}, the image is {h}x{w}.")
        fig.add_trace(go.Contour(z=m, showscale=False, contours={"start": 0.5, "end": 0.5,
                                 "coloring": "none"}, line={"color": "white", "width": 2},
                                 name="ground truth", hoverinfo="skip"))
    if box is not None:
        x0, y0, x1, y1 = box
        fig.add_shape(type="rect", x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 + 0.5, y1=y1 + 0.5,
                      line={"color": "yellow", "width": 2, "dash": "dot"})
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x")
    fig.update_layout(title=title, margin={"l": 0, "r": 0, "t": 40 if title else 0, "b": 0},
                      width=360, height=360 + (40 if title else 0), showlegend=False)
    return fig


def topk_figure(probabilities: torch.Tensor | np.ndarray, class_names: Sequence[str], k: int = 5,
                title: str | None = "Top-5 prediction") -> go.Figure:
    """Horizontal bar chart of the ``k`` most probable classes of a ``(C,)`` probability vector."""
    p = probabilities.detach().cpu().numpy() if isinstance(probabilities, torch.Tensor) else probabilities
    p = np.asarray(p, dtype=float).ravel()
    if len(p) != len(class_names):
        raise ValueError(f"{len(p)} probabilities but {len(class_names)} class names.")
    order = np.argsort(-p)[: min(k, len(p))]
    fig = go.Figure(go.Bar(x=p[order][::-1], y=[class_names[i] for i in order][::-1], orientation="h",
                           text=[f"{v:.1%}" for v in p[order][::-1]], textposition="auto"))
    fig.update_layout(title=title, xaxis={"range": [0, 1], "tickformat": ".0%"}, width=420,
                      height=60 + 36 * len(order), margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig

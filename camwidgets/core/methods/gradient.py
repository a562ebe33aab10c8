"""Gradient-family methods: channel weights (or pixel weights) from ``g = dS_c/dA`` of one layer.

Each function takes an :class:`~camwidgets.core.explainer.Explainer` (whose capture holds
``A`` and ``g`` of the layer) and the method's validated parameters, and returns a
:class:`~camwidgets.core.results.CAMResult`. None of them runs the model: the capture is
the explainer's (one forward and backward pass for every candidate layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .. import gradient as _g
from ..results import CAMResult

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["gradcam", "gradcampp", "layercam", "weighted_result", "xgradcam"]


def weighted_result(exp: Explainer, method: str, layer: str,
                    weights_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> CAMResult:
    """``ReLU(sum_k w_k A_k)`` with ``w = weights_fn(A, g)``, finished to an ``(H, W)`` map."""
    a, g = exp.activation(layer), exp.gradient(layer)
    weights = weights_fn(a, g)
    raw = torch.relu(_g.weighted_map(a, weights))
    return CAMResult(method=method, layer=layer, target=exp.target, params={"layer": layer},
                     map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=weights)


def gradcam(exp: Explainer, *, layer: str) -> CAMResult:
    """Grad-CAM: ``w_k = mean_ij g_k``, ``L = ReLU(sum_k w_k A_k)``."""
    return weighted_result(exp, "gradcam", layer, _g.gradcam_weights)


def gradcampp(exp: Explainer, *, layer: str) -> CAMResult:
    """Grad-CAM++ in pytorch-grad-cam's closed form (the ``1e-6`` kept)."""
    return weighted_result(exp, "gradcampp", layer, _g.gradcampp_weights)


def xgradcam(exp: Explainer, *, layer: str) -> CAMResult:
    """XGrad-CAM: ``w_k = sum_ij (A g) / (sum_ij A + 1e-7)``."""
    return weighted_result(exp, "xgradcam", layer, _g.xgradcam_weights)


def layercam(exp: Explainer, *, layer: str) -> CAMResult:
    """LayerCAM: ``L = ReLU(sum_k ReLU(g_k) ⊙ A_k)``; no channel weights."""
    a, g = exp.activation(layer), exp.gradient(layer)
    raw = torch.relu(_g.layercam_map(a, g))
    return CAMResult(method="layercam", layer=layer, target=exp.target, params={"layer": layer},
                     map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=None)

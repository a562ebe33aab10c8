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
from ._params import LAYER, PGC
from ._spec import Method
from .activation import principal_projection

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["eigengradcam", "gradcam", "gradcampp", "hirescam", "layercam", "weighted_result", "xgradcam"]


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


def hirescam(exp: Explainer, *, layer: str) -> CAMResult:
    """HiResCAM: ``L = ReLU(sum_k g_k ⊙ A_k)``, the gradient kept at every position (no averaging)."""
    a, g = exp.activation(layer), exp.gradient(layer)
    raw = torch.relu((g * a).sum(dim=-3))
    return CAMResult(method="hirescam", layer=layer, target=exp.target, params={"layer": layer},
                     map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=None)


def eigengradcam(exp: Explainer, *, layer: str) -> CAMResult:
    """EigenGradCAM: ``ReLU`` of the projection of ``g ⊙ A`` on its first principal component."""
    proj, v = exp.stage(("eigengradcam-projection", layer),
                        lambda: principal_projection(exp.gradient(layer) * exp.activation(layer)))
    raw = torch.relu(proj)
    return CAMResult(method="eigengradcam", layer=layer, target=exp.target, params={"layer": layer},
                     map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=v)


#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="gradcam", label="Grad-CAM", family="gradient", params=(LAYER,), compute=gradcam,
        summary="channel weights are the spatial mean of the class score's gradient.",
        formula="w_k = mean_ij dS_c/dA_k;  L = ReLU(sum_k w_k A_k)",
        reference="Selvaraju et al., 'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
                  "Localization', ICCV 2017, arXiv:1610.02391, eq. 1-2.",
        implementation=f"{PGC} GradCAM; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction).",
        in_explorer=True, in_evaluate=True),
    Method(        name="gradcampp", label="Grad-CAM++", family="gradient", params=(LAYER,), compute=gradcampp,
        summary="pixel-weighted positive gradients, in the closed form of the exponential-score derivation.",
        formula="α = g² / (2 g² + sum_ij A g³ + 1e-6) (0 where g = 0);  w_k = sum_ij α ReLU(g);  "
                "L = ReLU(sum_k w_k A_k)",
        reference="Chattopadhay et al., 'Grad-CAM++: Improved Visual Explanations for Deep Convolutional "
                  "Networks', WACV 2018, arXiv:1710.11063, eq. 19.",
        implementation=f"{PGC} GradCAMPlusPlus; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction).",
        notes="The 1e-6 in the denominator is pytorch-grad-cam's and is kept: gradients are often ~1e-4, so it "
              "is not negligible. torchcam's GradCAMpp reduces to α = g² and differs.",
        in_evaluate=True),
    Method(        name="xgradcam", label="XGrad-CAM", family="gradient", params=(LAYER,), compute=xgradcam,
        summary="gradient weights normalised by the activation's sum (axiom-based).",
        formula="w_k = sum_ij (A_k g_k) / (sum_ij A_k + 1e-7);  L = ReLU(sum_k w_k A_k)",
        reference="Fu et al., 'Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of "
                  "CNNs', BMVC 2020, arXiv:2008.02312, eq. 14.",
        implementation=f"{PGC} XGradCAM; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction)."),
    Method(        name="layercam", label="LayerCAM", family="gradient", params=(LAYER,), compute=layercam,
        summary="each position weighted by its own positive gradient.",
        formula="L = ReLU(sum_k ReLU(g_k) ⊙ A_k)",
        reference="Jiang et al., 'LayerCAM: Exploring Hierarchical Class Activation Maps for Localization', "
                  "IEEE TIP 2021, eq. 5-6.",
        implementation=f"{PGC} LayerCAM; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction).",
        in_explorer=True, in_evaluate=True),
    Method(        name="hirescam", label="HiResCAM", family="gradient", params=(LAYER,), compute=hirescam,
        summary="each position's activations weighted by the class score's gradient at that position (Grad-CAM "
                "without the gradient averaging).",
        formula="L = ReLU(sum_k g_k ⊙ A_k),  g = dS_c/dA",
        reference="Draelos & Carin, 'Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional "
                  "neural networks', 2020, arXiv:2011.08891 (the HiResCAM definition).",
        implementation=f"{PGC} HiResCAM (eigen_smooth=False); max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction).",
        notes="On a GAP + linear head the gradient is W[c] / (h w) at every position, so HiResCAM, Grad-CAM and "
              "CAM (relu=True) give the same map there."),
    Method(        name="eigengradcam", label="EigenGradCAM", family="gradient", params=(LAYER,),
        compute=eigengradcam,
        summary="EigenCAM applied to gradient × activation: the first principal component of g ⊙ A.",
        formula="X = g ⊙ A as (hw, K), centred per channel;  X = U S V^T;  L = ReLU(X v_1)  (sign: sum_k v_1k >= 0)",
        reference="pytorch-grad-cam's variant of Muhammad & Yeasin, 'Eigen-CAM: Class Activation Map using "
                  "Principal Components', IJCNN 2020, arXiv:2008.00299, on g ⊙ A instead of A (no paper of its own).",
        implementation=f"{PGC} EigenGradCAM (get_2d_projection); max abs difference <= 1e-4 after "
                       "normalisation, the reference's sign oriented as camwidgets orients it.",
        needs_gradients=True,
        stage="the explainer's capture (no model pass); one SVD of the (hw, K) centred g ⊙ A per layer, in float64 "
              "on the CPU.",
        notes="The SVD's sign is arbitrary (the reference keeps whatever LAPACK returns, so its map can come out "
              "inverted); camwidgets orients the component so that the projection correlates positively with "
              "sum_k g_k A_k (HiResCAM's signed map, the first-order class evidence): sum_k v_1k >= 0. The reference "
              "is compared after the same orientation. Centred before the SVD as the reference does. The SVD runs "
              "in float64 (the reference: float32 numpy); weights holds v_1, applied to the centred g ⊙ A."),
)

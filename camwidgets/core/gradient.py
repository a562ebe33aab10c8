r"""Gradient-based CAM methods as pure functions of activations and gradients (docs/methods.md).

Every function takes the activation ``A`` of one layer and the gradient
``g = ∂S_c/∂A`` of the target **logit** ``S_c`` with respect to it, both of shape
``(..., K, h, w)`` — ``(K, h, w)`` for one image or ``(N, K, h, w)`` for a batch (any
number of leading dimensions works) — and returns channel weights ``(..., K)`` or a raw
map ``(..., h, w)`` at feature resolution. Nothing here runs a model: capturing ``A`` and
``g``, normalising (:func:`camwidgets.core._ops.normalize`) and upsampling
(:func:`camwidgets.core._ops.upsample`) are the caller's.

The formulas are those of pytorch-grad-cam 1.5 (the numerical reference):

========================  ==================================================================
method                    weights / map
========================  ==================================================================
Grad-CAM                  :math:`w_k = \frac{1}{hw}\sum_{ij} g_{kij}`
Grad-CAM++                :math:`\alpha_{kij} = \frac{g^2}{2g^2 + (\sum_{ab} A_{kab})\,g^3 + 10^{-6}}`
                          (0 where :math:`g = 0`), :math:`w_k = \sum_{ij}\alpha_{kij}\,\mathrm{ReLU}(g_{kij})`
XGrad-CAM                 :math:`w_k = \sum_{ij} A_{kij} g_{kij} / (\sum_{ij} A_{kij} + 10^{-7})`
LayerCAM                  :math:`L = \mathrm{ReLU}(\sum_k \mathrm{ReLU}(g_k) \odot A_k)`
weighted map              :math:`L = \mathrm{ReLU}(\sum_k w_k A_k)`
========================  ==================================================================

Computations run in the inputs' dtype (float32 in practice); nothing here needs float64.
"""

from __future__ import annotations

import torch

__all__ = [
    "GRADCAMPP_EPS",
    "XGRADCAM_EPS",
    "gradcam_weights",
    "gradcampp_weights",
    "layercam_map",
    "weighted_map",
    "xgradcam_weights",
]

#: Additive constant in Grad-CAM++'s denominator (pytorch-grad-cam's ``eps = 0.000001``).
GRADCAMPP_EPS: float = 1e-6
#: Additive constant in XGrad-CAM's denominator (pytorch-grad-cam's ``eps = 1e-7``).
XGRADCAM_EPS: float = 1e-7


def _check_pair(activations: torch.Tensor, grads: torch.Tensor) -> None:
    if activations.dim() < 3:
        raise ValueError(f"activations must have shape (..., K, h, w), got {tuple(activations.shape)}.")
    if activations.shape != grads.shape:
        raise ValueError(
            f"activations {tuple(activations.shape)} and gradients {tuple(grads.shape)} "
            "must have the same shape."
        )


def gradcam_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM channel weights: the spatial mean of the gradient (Selvaraju et al. 2017, eq. 1).

    .. math:: w_k = \frac{1}{h w} \sum_{i,j} \frac{\partial S_c}{\partial A_{kij}}

    Parameters
    ----------
    activations : Tensor, shape ``(..., K, h, w)``
        Layer activation ``A`` (only its shape is checked; Grad-CAM's weights do not use it).
    grads : Tensor, shape ``(..., K, h, w)``
        ``g = ∂S_c/∂A`` of the target logit.

    Returns
    -------
    Tensor, shape ``(..., K)``
        Real-valued weights (may be negative).
    """
    _check_pair(activations, grads)
    return grads.mean(dim=(-2, -1))


def gradcampp_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    r"""Grad-CAM++ channel weights in pytorch-grad-cam's closed form (Chattopadhay et al. 2018, eq. 19).

    .. math::
        \alpha_{kij} = \frac{g_{kij}^2}{2 g_{kij}^2 + \big(\sum_{a,b} A_{kab}\big)\, g_{kij}^3 + 10^{-6}},
        \qquad \alpha_{kij} = 0 \text{ where } g_{kij} = 0,
        \qquad w_k = \sum_{i,j} \alpha_{kij}\, \mathrm{ReLU}(g_{kij}).

    This is the exponential-output closed form where higher derivatives are replaced by
    powers of the first one. The constant ``1e-6`` (:data:`GRADCAMPP_EPS`) is **kept**:
    gradients are often ~1e-4, so ``g² ≈ 1e-8`` is far below it and the constant changes
    the weights substantially; keeping it reproduces pytorch-grad-cam exactly.
    (torchcam's variant effectively reduces to ``α = g²``; it is not the reference.)

    Parameters
    ----------
    activations : Tensor, shape ``(..., K, h, w)``
        Layer activation ``A``.
    grads : Tensor, shape ``(..., K, h, w)``
        ``g = ∂S_c/∂A`` of the target logit.

    Returns
    -------
    Tensor, shape ``(..., K)``
        Non-negative for non-negative ``α`` (``α`` may be negative where ``A`` has a
        negative spatial sum, exactly as in the reference).
    """
    _check_pair(activations, grads)
    g2 = grads * grads
    g3 = g2 * grads
    sum_a = activations.sum(dim=(-2, -1), keepdim=True)
    denom = 2.0 * g2 + sum_a * g3 + GRADCAMPP_EPS
    alpha = torch.where(grads != 0, g2 / denom, torch.zeros_like(g2))
    return (alpha * torch.relu(grads)).sum(dim=(-2, -1))


def xgradcam_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    r"""XGrad-CAM channel weights (Fu et al. 2020, eq. 8), pytorch-grad-cam's form.

    .. math:: w_k = \frac{\sum_{i,j} A_{kij}\, g_{kij}}{\sum_{i,j} A_{kij} + 10^{-7}}

    The ``1e-7`` (:data:`XGRADCAM_EPS`) is the reference's; an all-zero channel gets
    weight 0.

    Parameters
    ----------
    activations : Tensor, shape ``(..., K, h, w)``
    grads : Tensor, shape ``(..., K, h, w)``

    Returns
    -------
    Tensor, shape ``(..., K)``
    """
    _check_pair(activations, grads)
    num = (activations * grads).sum(dim=(-2, -1))
    return num / (activations.sum(dim=(-2, -1)) + XGRADCAM_EPS)


def layercam_map(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    r"""LayerCAM raw map (Jiang et al. 2021, eq. 5-6).

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g_k) \odot A_k\Big)

    Parameters
    ----------
    activations : Tensor, shape ``(..., K, h, w)``
    grads : Tensor, shape ``(..., K, h, w)``

    Returns
    -------
    Tensor, shape ``(..., h, w)``, values ``>= 0``
        At feature resolution, not normalised (the ReLU is applied here; applying it again
        is harmless).
    """
    _check_pair(activations, grads)
    return torch.relu((torch.relu(grads) * activations).sum(dim=-3))


def weighted_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""Channel-weighted sum of activations with a ReLU: the CAM map for given weights.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    Parameters
    ----------
    activations : Tensor, shape ``(..., K, h, w)``
    weights : Tensor, shape ``(..., K)``
        E.g. from :func:`gradcam_weights`; broadcast over the spatial dimensions.

    Returns
    -------
    Tensor, shape ``(..., h, w)``, values ``>= 0``
        At feature resolution, not normalised.
    """
    if activations.dim() < 3:
        raise ValueError(f"activations must have shape (..., K, h, w), got {tuple(activations.shape)}.")
    if weights.shape[-1] != activations.shape[-3]:
        raise ValueError(
            f"weights {tuple(weights.shape)} must end in K = {activations.shape[-3]} (activations "
            f"{tuple(activations.shape)})."
        )
    w = weights.to(activations.dtype)
    return torch.relu((w[..., None, None] * activations).sum(dim=-3))

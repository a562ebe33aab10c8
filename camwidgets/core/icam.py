r"""Integrative CAM (I-CAM) as pure functions.

Reference: A. K. Singh, D. Chaudhuri, M. P. Singh, S. Chattopadhyay, "Integrative CAM:
Adaptive Layer Fusion for Comprehensive Interpretation of CNNs", 2024, arXiv:2412.01354.
Equation numbers below are that paper's.

Nothing here runs a model. The caller (:class:`~camwidgets.core.explainer.Explainer`)
captures, for the original image and for ``n`` perturbed copies, the activation ``A`` and
gradient ``g = ∂S_c/∂A`` of the target **logit** ``S_c`` at every candidate layer, the
input gradient ``∂S_c/∂x`` and the class probabilities, and calls:

1. :func:`perturb` — the ``n`` perturbed pixel images (eq. 4);
2. :func:`svim`, :func:`mds`, :func:`perturbation_weights` — ``w_i`` (eq. 5-10);
3. :func:`input_saliency`, :func:`layer_phi`, :func:`layer_scores` — ``S_l`` (eq. 3);
4. :func:`select_layers` — the kept layers and ``W_l`` (eq. 11-14);
5. :func:`icam_layer_map` (with :func:`icam_weights`, :func:`icam_bias`) — ``L_l`` (eq. 20, 25-31);
6. :func:`combine` — ``L_I-CAM = normalise(sum_l W_l L_l)`` (eq. 21).

The per-layer map and its bias
------------------------------
With a bias (``"channel"``, eq. 27, the default; or ``"spatial"``, eq. 28) the layer map
is eq. 20 as printed, ``L = sum_k w_k ⊙ A_k + sum_k b_k``, **without a ReLU**; with
``bias="none"`` it is ``ReLU(sum_k w_k ⊙ A_k)``, as in LayerCAM. The caller upsamples and
min-max normalises it. Why no ReLU with a bias: the channel bias sums to one constant
per layer, ``K·S_c − sum_k (sum_ij w_k)(sum_ij A_k)``, which is negative whenever the
target logit ``S_c`` is (any non-predicted class, usually), and then ``ReLU`` makes the
map of every layer all zeros; min-max normalisation removes a uniform constant anyway.
So ``"channel"`` is ``normalise(sum_k w_k A_k)``: it equals ``"none"`` unless
``sum_k w_k A_k < 0`` somewhere, which happens because ``w`` can be negative:
``tanh(α) < 0``, typically where ``f'' < 0``, i.e. for ``Y_c > 0.5``. ``"spatial"``
adds ``−sum_k w_k(i,j) sum_ab A_k(a,b)``, which varies per pixel, usually dominates and
tends to invert the map (see :func:`icam_bias` for measured figures).

Precision
---------
``α``, the weights ``w`` and the maps are computed in **float64**. The bias's uniform
part (``K·S_c``, e.g. ``2048 × 15 ≈ 3·10⁴``, minus a sum) would be a large offset on map
values that may be ``~10⁻⁶`` (``w`` carries the factor ``Y_c(1 − Y_c)``, tiny for an
unlikely class); it cancels in the normalisation, so :func:`icam_layer_map` does not add
it unless asked (``constant=True``). Normalise the raw map before casting to float32.
Pass ``Y_c`` computed in float64 (softmax of float64 logits): with float32 probabilities
a confident prediction rounds to ``Y_c = 1`` and ``f'(S_c) = Y(1 − Y) = 0`` makes every
weight 0. Everything else works in float32.

Derivatives of the smooth function: where the closed form is exact
------------------------------------------------------------------
``f`` is the softmax seen as a function of the target logit alone (eq. 29), **the other
logits held fixed**, as the paper's derivation treats it. Then
``∂ⁿY_c/∂A_{kij}ⁿ = f⁽ⁿ⁾(S_c) g_{kij}ⁿ`` (eq. 24) and the closed-form ``α`` (eq. 25, 30)
equals eq. 17 exactly whenever ``S_c`` is linear in ``A`` (e.g. the last block before a
GAP + linear head). With the full softmax the other logits move with ``A`` too (through
any multi-class head, a GAP + linear one included), the true derivatives pick up cross
terms, and eq. 24-25 are an **approximation**: on the demo model's ``layer4.1``
(``Shapes(4, seed=0)`` images, predicted and least likely class) ``f''(S_c) g²``
differs from the full softmax's ``∂²Y_c/∂A²`` by 48-75 % (relative L2 norm over all
``K·h·w`` entries), and single entries can differ in sign.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, overload

import numpy as np
import torch

from ._ops import normalize, upsample

__all__ = [
    "MDS_PROB_FLOOR",
    "Bias",
    "combine",
    "icam_alpha",
    "icam_bias",
    "icam_layer_map",
    "icam_weights",
    "input_saliency",
    "layer_phi",
    "layer_scores",
    "mds",
    "perturb",
    "perturbation_weights",
    "select_layers",
    "softmax_derivatives",
    "svim",
]

#: Bias of the per-layer map: eq. 27 (``"channel"``), eq. 28 (``"spatial"``) or none.
Bias = Literal["channel", "spatial", "none"]

#: Probabilities are clamped at this value before the logarithm of MDD (eq. 8).
MDS_PROB_FLOOR: float = 1e-12

_F64 = torch.float64


# ----------------------------------------------------------------------------- perturbations
def perturb(image: torch.Tensor, alpha: float, n: int = 8, seed: int = 0) -> torch.Tensor:
    r"""The ``n`` perturbed pixel images of eq. 4.

    .. math:: I'_i = \mathrm{clip}\big((I + \alpha N_i) \odot M_i,\ 0,\ 1\big),\qquad
              N_i \sim \mathcal N(0, 1),\quad M_i \sim \mathrm{Bernoulli}(1 - \alpha)

    ``N_i`` has one value per pixel and channel; the mask ``M_i`` has one value per pixel,
    shared by the three channels, and **keeps** a pixel with probability ``1 − α``. The
    clip to ``[0, 1]`` keeps the images valid pixel images (the paper's eq. 4 has none).

    Determinism: the draws come from a CPU :class:`torch.Generator` seeded with ``seed``,
    in the order ``N_1, M_1, N_2, M_2, …`` (mask as uniforms ``< 1 − α``), so the same
    ``(alpha, seed)`` always gives the same images, on any device, and the first ``i``
    images do not depend on ``n``. ``alpha = 0`` returns ``n`` copies of the image.

    Parameters
    ----------
    image : Tensor, shape ``(3, H, W)``, values in ``[0, 1]``
        The pixel image ``I`` (not normalised for the model).
    alpha : float in ``[0, 1]``
        Noise scale and drop probability.
    n : int >= 1
        Number of perturbations (default 8).
    seed : int
        Seed (default 0).

    Returns
    -------
    Tensor, shape ``(n, 3, H, W)``, values in ``[0, 1]``
        float32, on ``image``'s device.
    """
    if image.dim() != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(image.shape)}.")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n!r}.")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    img = image.detach().to("cpu", torch.float32)
    c, h, w = img.shape
    out = torch.empty(int(n), c, h, w)
    for i in range(int(n)):
        noise = torch.randn(c, h, w, generator=gen)
        keep = (torch.rand(1, h, w, generator=gen) < (1.0 - alpha)).to(torch.float32)
        out[i] = ((img + alpha * noise) * keep).clamp_(0.0, 1.0)
    return out.to(image.device)


def _to_gray(images: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` in [0, 1] -> float64 grey ``(..., H, W)`` with scikit-image's weights."""
    from skimage.color import rgb2gray

    arr = images.detach().to("cpu", _F64).numpy()
    if arr.shape[-3] == 1:
        return np.asarray(arr[..., 0, :, :])
    return np.asarray(rgb2gray(np.moveaxis(arr, -3, -1)))


def svim(image: torch.Tensor, perturbed: torch.Tensor, sigma: float = 0.25) -> torch.Tensor:
    r"""Structural Variability Index Metric (eq. 6) of each perturbation against the image.

    .. math:: \mathrm{SVIM}(I, I') = \exp\Big(-\frac{(\mathrm{SSIM}(I, I') - 0.5)^2}{2\sigma^2}\Big)

    SSIM (eq. 7) is :func:`skimage.metrics.structural_similarity` on the **grey-scale**
    pixel images (:func:`skimage.color.rgb2gray`: ``0.2125 R + 0.7154 G + 0.0721 B``) with
    ``data_range=1.0`` (both images are in ``[0, 1]``), scikit-image's default 7×7 uniform
    window (the largest odd size that fits for images smaller than 7 pixels) and its
    default constants ``K1 = 0.01, K2 = 0.03``. SVIM is largest (1) at SSIM = 0.5 — a
    perturbation that changes the image but keeps its structure — and equals
    ``exp(−0.125/σ²)`` for an identical image (SSIM = 1).

    Parameters
    ----------
    image : Tensor, shape ``(3, H, W)`` in ``[0, 1]``
    perturbed : Tensor, shape ``(n, 3, H, W)`` in ``[0, 1]``
    sigma : float > 0
        Width (default 0.25; the paper gives none).

    Returns
    -------
    Tensor, shape ``(n,)``, values in ``(0, 1]``
        float32, on ``image``'s device.
    """
    from skimage.metrics import structural_similarity

    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}.")
    if perturbed.dim() != 4 or perturbed.shape[1:] != image.shape:
        raise ValueError(
            f"perturbed must have shape (n, *image.shape) = (n, {tuple(image.shape)}), got "
            f"{tuple(perturbed.shape)}."
        )
    ref = _to_gray(image)
    pert = _to_gray(perturbed)
    side = min(ref.shape)
    win = 7 if side >= 7 else (side if side % 2 == 1 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(ref.shape)}; pass a larger "
                         "image, or a preprocess that resizes it to the model's input size.")
    ssim = np.array([structural_similarity(ref, p, data_range=1.0, win_size=win) for p in pert])
    values = np.exp(-((ssim - 0.5) ** 2) / (2.0 * sigma**2))
    return torch.as_tensor(values, dtype=torch.float32, device=image.device)


def mds(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Mean Difference Similarity (eq. 8-10) between a distribution and each row of ``q``.

    .. math:: \mathrm{MDD}(X, Y) = \sum_k \frac{X_k - Y_k}{2} \log\frac{X_k}{Y_k}
              = \frac{KL(X\|Y) + KL(Y\|X)}{2},\qquad
              \mathrm{MDS} = \mathrm{clip}(1 - \mathrm{MDD},\ 0,\ 1)

    Probabilities are clamped at :data:`MDS_PROB_FLOOR` (``1e-12``) before the logarithm
    (not renormalised). The clip to ``[0, 1]`` departs from the paper's eq. 9 (which can go
    negative, making ``w_i = sqrt(SVIM · MDS)`` imaginary). MDS is symmetric and
    equals 1 for identical distributions. Computed in float64.

    Parameters
    ----------
    p : Tensor, shape ``(C,)``
        Softmax probabilities of the original image ``O``.
    q : Tensor, shape ``(n, C)`` (or ``(C,)``)
        Softmax probabilities of the perturbed images ``O'_i``.

    Returns
    -------
    Tensor, shape ``(n,)`` (or ``()``), values in ``[0, 1]``
        float32 (float64 if both inputs are float64), on ``q``'s device.
    """
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"p {tuple(p.shape)} and q {tuple(q.shape)} must have the same number of classes.")
    out_dtype = _F64 if (p.dtype == _F64 and q.dtype == _F64) else torch.float32
    x = p.to(q.device, _F64).clamp_min(MDS_PROB_FLOOR)
    y = q.to(_F64).clamp_min(MDS_PROB_FLOOR)
    mdd = ((x - y) / 2.0 * (torch.log(x) - torch.log(y))).sum(dim=-1)
    return (1.0 - mdd).clamp(0.0, 1.0).to(out_dtype)


def perturbation_weights(svim_values: torch.Tensor, mds_values: torch.Tensor) -> torch.Tensor:
    r"""Perturbation weights ``w_i = sqrt(SVIM_i · MDS_i)`` (eq. 5), the geometric mean.

    Parameters
    ----------
    svim_values, mds_values : Tensor, shape ``(n,)``, values in ``[0, 1]``

    Returns
    -------
    Tensor, shape ``(n,)``, values in ``[0, 1]``
    """
    prod = svim_values * mds_values.to(svim_values.device, svim_values.dtype)
    return torch.sqrt(prod.clamp_min(0.0))


# ----------------------------------------------------------------------------- layer scores
def input_saliency(image: torch.Tensor, input_grad: torch.Tensor) -> torch.Tensor:
    r"""Input saliency ``s`` of eq. 3: the normalised channel norm of ``I ⊙ ∂S_c/∂x``.

    .. math:: s_{ij} = \Big\|\big(I \odot \tfrac{\partial S_c}{\partial x}\big)_{\cdot ij}\Big\|_2
              \quad\text{then min-max normalised}

    ``‖·‖`` is the Euclidean (Frobenius) norm over the channel dimension. ``I`` is the
    pixel image in ``[0, 1]`` and ``∂S_c/∂x`` the gradient of the target logit with
    respect to the model input ``x``.

    Parameters
    ----------
    image : Tensor, shape ``(3, H, W)``
    input_grad : Tensor, shape ``(3, H, W)`` or ``(1, 3, H, W)``

    Returns
    -------
    Tensor, shape ``(H, W)``, values in ``[0, 1]``
    """
    grad = input_grad[0] if input_grad.dim() == 4 and input_grad.shape[0] == 1 else input_grad
    if grad.shape != image.shape:
        raise ValueError(f"input_grad {tuple(input_grad.shape)} does not match image {tuple(image.shape)}.")
    prod = image.to(grad.device, grad.dtype) * grad
    return normalize(torch.linalg.vector_norm(prod, dim=-3))


def layer_phi(activations: torch.Tensor, grads: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    r"""``φ_{i,l}`` of eq. 3: channel norm of ``ReLU(A ⊙ ∂S_c/∂A)``, upsampled then normalised.

    .. math:: \varphi = \Big\|\mathrm{ReLU}\big(A \odot \tfrac{\partial S_c}{\partial A}\big)\Big\|_2
              \ \text{over channels, upsampled to } (H, W)\text{, min-max normalised}

    Parameters
    ----------
    activations, grads : Tensor, shape ``(n, K, h, w)`` (or ``(K, h, w)``)
        One layer's activation and target-logit gradient for the ``n`` perturbed images.
    size : (int, int)
        ``(H, W)`` of the input image.

    Returns
    -------
    Tensor, shape ``(n, H, W)`` (or ``(H, W)``), values in ``[0, 1]``
    """
    if activations.shape != grads.shape or activations.dim() < 3:
        raise ValueError(
            f"activations {tuple(activations.shape)} and grads {tuple(grads.shape)} "
            "must both be (n, K, h, w)."
        )
    phi = torch.linalg.vector_norm(torch.relu(activations * grads), dim=-3)
    return normalize(upsample(phi, size))


@overload
def layer_scores(saliency: torch.Tensor, phis: torch.Tensor, weights: torch.Tensor) -> torch.Tensor: ...


@overload
def layer_scores(
    saliency: torch.Tensor, phis: Mapping[str, torch.Tensor], weights: torch.Tensor
) -> dict[str, torch.Tensor]: ...


def layer_scores(
    saliency: torch.Tensor, phis: torch.Tensor | Mapping[str, torch.Tensor], weights: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor]:
    r"""Layer importance scores ``S_l`` (eq. 3).

    .. math:: S_l = \sum_{i=1}^n w_i \sqrt{\sum_{\text{pixels}} \big(s - \varphi_{i,l}\big)^2}

    with ``s`` from :func:`input_saliency` and ``φ_{i,l}`` from :func:`layer_phi` (both
    normalised ``(H, W)`` maps). ``S_l >= 0``; a *larger* score marks a layer whose
    gradient-weighted activation differs more from the input saliency — that is how the
    paper ranks layers (eq. 11-14 keep the largest).

    Parameters
    ----------
    saliency : Tensor, shape ``(H, W)``
    phis : Tensor ``(L, n, H, W)``, or mapping layer name -> Tensor ``(n, H, W)``
    weights : Tensor, shape ``(n,)``
        Perturbation weights ``w_i`` (eq. 5).

    Returns
    -------
    Tensor ``(L,)``, or dict layer name -> 0-d Tensor, with the input's kind
        float32 (float64 if ``phis`` is float64).
    """
    if isinstance(phis, Mapping):
        return {name: _layer_score(saliency, phi, weights) for name, phi in phis.items()}
    if phis.dim() != 4:
        raise ValueError(f"phis must have shape (L, n, H, W), got {tuple(phis.shape)}.")
    if len(phis) == 0:
        return phis.new_zeros(0)
    return torch.stack([_layer_score(saliency, phi, weights) for phi in phis])


def _layer_score(saliency: torch.Tensor, phi: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    if phi.dim() != 3 or phi.shape[-2:] != saliency.shape[-2:] or phi.shape[0] != weights.shape[0]:
        raise ValueError(
            f"phi {tuple(phi.shape)} must be (n, H, W) with (H, W) = {tuple(saliency.shape)} and "
            f"n = {weights.shape[0]}."
        )
    diff = saliency.to(phi.device, phi.dtype)[None] - phi
    dist = torch.sqrt((diff * diff).sum(dim=(-2, -1)))
    return (weights.to(phi.device, phi.dtype) * dist).sum()


@overload
def select_layers(scores: torch.Tensor, threshold: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def select_layers(
    scores: Mapping[str, torch.Tensor | float], threshold: float = 0.95
) -> tuple[list[str], torch.Tensor]: ...


def select_layers(
    scores: torch.Tensor | Mapping[str, torch.Tensor | float], threshold: float = 0.95
) -> tuple[torch.Tensor | list[str], torch.Tensor]:
    r"""Redundant-layer filtering and layer weights (eq. 11-14).

    Sort the scores in decreasing order, ``S'_1 >= S'_2 >= …``, take cumulative sums
    ``C_k = sum_{l<=k} S'_l`` (eq. 11) and keep the **smallest** ``k >= 1`` with
    ``C_k >= T · C_L`` (eq. 12-13, ``C_L`` the total); the kept layers get
    ``W_l = S_l / sum_{j kept} S_j`` (eq. 14), so ``sum W_l = 1``.

    Rules (all deterministic):

    * **Ties** are broken by position: equal scores keep their input order (candidate
      layers are in forward order, so the shallower layer ranks first). A stable sort.
    * ``T = 1`` keeps exactly the layers with a non-zero score (all of them when none is
      zero): ``C_k`` reaches the total at the last non-zero score; trailing zeros are not
      needed. ``T = 0`` keeps the single best layer.
    * At least one layer is always kept. If every score is 0 there is nothing to rank the
      layers by (in I-CAM this happens when every perturbation weight ``w_i`` is 0, i.e.
      every perturbation changed the prediction so much that MDS = 0): the **last** layer
      is kept with ``W = 1``. Candidate layers are in forward order, so that is the
      deepest block, the layer every single-layer CAM explains by default.
    * Sums are taken in float64, and the total is the last cumulative sum, so rounding
      cannot make ``T = 1`` miss the total.

    Parameters
    ----------
    scores : Tensor ``(L,)`` or mapping layer name -> score
        Non-negative ``S_l`` (eq. 3), ``L >= 1``.
    threshold : float in ``[0, 1]``
        ``T`` (default 0.95; the widget's slider spans 0.5-1).

    Returns
    -------
    kept : LongTensor ``(k,)`` of indices into ``scores`` (or list of names for a mapping),
        in decreasing score order.
    weights : Tensor ``(k,)``
        ``W_l`` in the same order (float32, or float64 for float64 input), summing to 1.
    """
    names: list[str] | None = None
    if isinstance(scores, Mapping):
        names = list(scores)
        s = torch.tensor([float(scores[k]) for k in names], dtype=_F64)
        out_dtype = torch.float32
        device = torch.device("cpu")
    else:
        s = scores.detach().to(_F64).flatten()
        out_dtype = _F64 if scores.dtype == _F64 else torch.float32
        device = scores.device
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold T must be in [0, 1], got {threshold!r}.")
    if s.numel() == 0:
        raise ValueError("select_layers needs at least one layer score.")
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"layer scores must be finite and non-negative, got {s.tolist()}.")
    if not bool((s > 0).any()):
        kept = torch.tensor([s.numel() - 1])
        weights = torch.ones(1, dtype=out_dtype, device=device)
        return ([names[-1]] if names is not None else kept.to(device)), weights
    order = torch.sort(s.cpu(), descending=True, stable=True).indices
    cum = torch.cumsum(s.cpu()[order], dim=0)
    target = t * float(cum[-1])
    k = int((cum >= target).nonzero()[0].item()) + 1
    kept = order[:k]
    kept_scores = s.cpu()[kept]
    total = float(kept_scores.sum())
    w = kept_scores / total if total > 0 else torch.full_like(kept_scores, 1.0 / k)
    weights = w.to(device, out_dtype)
    if names is not None:
        return [names[int(i)] for i in kept], weights
    return kept.to(device), weights


# ----------------------------------------------------------------------------- per-layer maps
def _f64_pair(activations: torch.Tensor, other: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors, detached, in float64, after checking they share a ``(..., K, h, w)`` shape."""
    if activations.shape != other.shape or activations.dim() < 3:
        raise ValueError(
            f"activations {tuple(activations.shape)} and {name} {tuple(other.shape)} "
            "must both be (..., K, h, w)."
        )
    return activations.detach().to(_F64), other.detach().to(_F64)


def softmax_derivatives(y: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""First three derivatives of the softmax ``Y_c = f(S_c)`` in its own logit (eq. 29).

    .. math::
        f' = Y(1 - Y),\qquad f'' = Y(1 - 3Y + 2Y^2),\qquad f''' = Y(1 - 7Y + 12Y^2 - 6Y^3)

    (the other logits held fixed).

    Parameters
    ----------
    y : float or Tensor of any shape, values in ``[0, 1]``
        ``Y_c = softmax(S)_c``.

    Returns
    -------
    (f1, f2, f3) : Tensors, ``y``'s shape, float64
    """
    yt = torch.as_tensor(y, dtype=_F64)
    f1 = yt * (1.0 - yt)
    f2 = yt * (1.0 - 3.0 * yt + 2.0 * yt**2)
    f3 = yt * (1.0 - 7.0 * yt + 12.0 * yt**2 - 6.0 * yt**3)
    return f1, f2, f3


def _per_item(value: float | torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """A scalar (or one per leading item of ``like`` ``(..., K, h, w)``) as float64 ``(..., 1, 1, 1)``."""
    t = torch.as_tensor(value, dtype=_F64).to(like.device)
    if t.dim() == 0:
        return t
    if t.shape != like.shape[:-3]:
        raise ValueError(
            f"{name} must be a scalar or have shape {tuple(like.shape[:-3])}, got {tuple(t.shape)}."
        )
    return t.reshape(*t.shape, 1, 1, 1)


def icam_alpha(activations: torch.Tensor, grads: torch.Tensor, y_c: float | torch.Tensor) -> torch.Tensor:
    r"""Generalised Grad-CAM++ ``α`` with softmax as the smooth function (eq. 25, 30).

    .. math::
        \alpha_{kij} = \frac{f''(S_c)\, g_{kij}^2}
                            {2 f''(S_c)\, g_{kij}^2 + \big(\sum_{a,b} A_{kab}\big) f'''(S_c)\, g_{kij}^3}

    As in Grad-CAM++ (and pytorch-grad-cam), ``sum_ij A`` is the channel's spatial sum
    multiplying the pixel's ``g³``. This equals eq. 17 — ``∂²Y_c/∂A²`` over
    ``2 ∂²Y_c/∂A² + ΣA ∂³Y_c/∂A³`` — exactly only with the other logits held fixed and
    ``S_c`` linear in ``A``; with the full softmax (the other logits move with ``A``) it
    is an approximation (see the module notes for how far off it is on the demo model).

    Evaluation: every term carries the factor ``Y(1 − Y)``; it is divided out
    (``f'' = Y(1−Y)(1−2Y)``, ``f''' = Y(1−Y)(1−6Y+6Y²)``) so that ``Y`` near 0 or 1 loses
    no precision — algebraically identical wherever ``Y(1 − Y) > 0``. **Guards**:
    ``α = 0`` where the denominator is 0 (this includes ``g = 0``) and where
    ``Y(1 − Y) = 0`` (the written formula is 0/0 there). float64.

    Parameters
    ----------
    activations, grads : Tensor, shape ``(..., K, h, w)``
        ``A`` and ``g = ∂S_c/∂A`` (target logit).
    y_c : float or Tensor (scalar or one per leading item)
        ``Y_c = softmax(S)_c`` in ``[0, 1]``, preferably float64.

    Returns
    -------
    Tensor, shape ``(..., K, h, w)``, float64
        May be negative or large where the denominator is small (``tanh`` bounds its use).
    """
    a, g = _f64_pair(activations, grads, "grads")
    y = _per_item(y_c, a, "y_c")
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError(f"y_c must be a probability in [0, 1], got {y_c!r}.")
    d2 = 1.0 - 2.0 * y  # f'' / (Y(1-Y))
    d3 = 1.0 - 6.0 * y + 6.0 * y * y  # f''' / (Y(1-Y))
    g2 = g * g
    num = d2 * g2
    den = 2.0 * num + a.sum(dim=(-2, -1), keepdim=True) * d3 * g2 * g
    ok = (den != 0) & (y * (1.0 - y) > 0)
    return torch.where(ok, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))


def icam_weights(activations: torch.Tensor, grads: torch.Tensor, y_c: float | torch.Tensor) -> torch.Tensor:
    r"""Pixel-wise I-CAM weights (eq. 26, 31).

    .. math:: w_{kij} = \tanh(\alpha_{kij}) \cdot \mathrm{ReLU}\big(Y(1 - Y)\, g_{kij}\big)

    with ``α`` from :func:`icam_alpha` and ``Y(1 − Y) g = ∂Y_c/∂A`` (eq. 23).

    Parameters
    ----------
    activations, grads : Tensor, shape ``(..., K, h, w)``
    y_c : float or Tensor
        ``Y_c`` in ``[0, 1]`` (see :func:`icam_alpha`).

    Returns
    -------
    Tensor, shape ``(..., K, h, w)``, float64
    """
    alpha = icam_alpha(activations, grads, y_c)
    y = _per_item(y_c, alpha, "y_c")
    return torch.tanh(alpha) * torch.relu(y * (1.0 - y) * grads.detach().to(_F64))


def _bias_parts(
    a: torch.Tensor, w: torch.Tensor, s_c: float | torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_k b_k`` split into its uniform part ``(..., 1, 1)`` and the part that varies per pixel.

    ``a`` and ``w`` are float64 ``(..., K, h, w)``. The varying part is ``(..., h, w)`` for
    ``"spatial"`` and zeros ``(..., 1, 1)`` otherwise.
    """
    if kind not in ("channel", "spatial", "none"):
        raise ValueError(f"bias must be 'channel', 'spatial' or 'none', got {kind!r}.")
    zero = torch.zeros((*a.shape[:-3], 1, 1), dtype=_F64, device=a.device)
    if kind == "none":
        return zero, zero
    s = _per_item(s_c, a, "s_c")
    s = s if s.dim() == 0 else s[..., 0]  # (..., 1, 1)
    k = a.shape[-3]
    sum_a = a.sum(dim=(-2, -1), keepdim=True)  # (..., K, 1, 1)
    if kind == "channel":
        return k * s - (w.sum(dim=(-2, -1), keepdim=True) * sum_a).sum(dim=-3), zero
    return k * s + zero, -(w * sum_a).sum(dim=-3)


def icam_bias(
    activations: torch.Tensor, weights: torch.Tensor, s_c: float | torch.Tensor, kind: Bias = "channel"
) -> torch.Tensor:
    r"""The I-CAM bias added to the weighted activations, summed over channels (eq. 27 / 28).

    The per-layer map is eq. 20, ``L = sum_k (w_k ⊙ A_k + b_k)`` (no ReLU: see
    :func:`icam_layer_map`), so the bias that enters is ``B = sum_k b_k``:

    * ``"channel"`` (eq. 27): ``b_k = S_c − (sum_ij w_kij)(sum_ij A_kij)``, one number per
      channel, so ``B = K·S_c − sum_k (sum_ij w_kij)(sum_ij A_kij)`` is **one constant for
      the whole layer**, cancelled by min-max normalisation. It is negative whenever
      ``S_c`` is (usually every non-predicted class), which is why the map has no ReLU:
      ``ReLU(sum_k w_k A_k + B)`` would be all zeros on every layer for those classes.
      What distinguishes ``"channel"`` from ``"none"`` is therefore the missing ReLU, not
      the constant: they differ wherever ``sum_k w_k A_k < 0``, which needs some
      ``w < 0`` (``tanh(α) < 0``: typically where ``f'' < 0``, i.e. ``Y_c > 0.5``; with
      ``A >= 0`` never for ``Y_c < (3 − √3)/6 ≈ 0.21``, where ``f''`` and ``f'''`` are
      both positive). On the demo model (``Shapes(4, seed=0)``, default parameters) the
      final maps of the four predicted classes differ by 0.08-0.20 (max abs); those of
      the 28 non-predicted classes (all ``Y_c < 0.03``) are identical.
    * ``"spatial"`` (eq. 28): ``b_k(i,j) = S_c − w_kij · sum_ab A_kab``, so
      ``B(i,j) = K·S_c − sum_k w_kij sum_ab A_kab``. Then
      ``sum_k w_k A_k + B = K·S_c + sum_k w_kij (A_kij − sum_ab A_kab)``; for non-negative
      ``A`` the bracket is ``<= 0`` and largest in magnitude where ``w`` is large, so this
      bias usually dominates and **inverts** the map (high weight -> low value). At the
      last block before a GAP + linear head ``g`` (hence ``w``) is constant over the
      pixels of each channel, so there the spatial bias is uniform too and the map equals
      ``"channel"``'s. On the demo model: correlation of the ``"spatial"`` layer map with
      the ``"channel"`` one (``Shapes(4, seed=0)``, every class, ``T = 1``) is −0.93 to
      −0.16 on every block before ``layer4.1`` and +1.00 at ``layer4.1``.
    * ``"none"``: ``B = 0``.

    Implemented as printed: eq. 20 has no ReLU, and none is added when there is a bias.

    Parameters
    ----------
    activations : Tensor, shape ``(..., K, h, w)``
    weights : Tensor, shape ``(..., K, h, w)``
        ``w`` from :func:`icam_weights`.
    s_c : float or Tensor (scalar or one per leading item)
        Target logit ``S_c``.
    kind : {"channel", "spatial", "none"}

    Returns
    -------
    Tensor, float64
        ``(..., 1, 1)`` for ``"channel"`` and ``"none"``, ``(..., h, w)`` for ``"spatial"``;
        broadcastable against the map.
    """
    a, w = _f64_pair(activations, weights, "weights")
    uniform, varying = _bias_parts(a, w, s_c, kind)
    return uniform + varying


def icam_layer_map(
    activations: torch.Tensor,
    grads: torch.Tensor,
    y_c: float | torch.Tensor,
    s_c: float | torch.Tensor,
    bias: Bias = "channel",
    *,
    constant: bool = False,
) -> torch.Tensor:
    r"""Raw I-CAM map of one layer (eq. 20, 26-31) at feature resolution.

    .. math::
        L = \sum_k w_k \odot A_k + \sum_k b_k \quad(\text{bias "channel" or "spatial"}),\qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k \odot A_k\Big) \quad(\text{bias "none"})

    with ``w`` from :func:`icam_weights` and ``b`` from :func:`icam_bias`. With a bias
    there is **no ReLU** (eq. 20 as printed): the channel bias is one constant per layer
    that is negative whenever ``S_c`` is, and a ReLU would then zero the map of every
    layer of (usually) every non-predicted class. Without a bias the map is LayerCAM's
    ``ReLU`` form.

    The bias's uniform part (``K·S_c`` for ``"spatial"``, the whole bias for
    ``"channel"``) cancels in the min-max normalisation every caller applies, and is a
    large offset next to map values that can be ``~10⁻⁶``, so it is **left out** unless
    ``constant=True``; ``normalise`` of both results is the same (up to the rounding the
    offset causes). Computed in float64. The caller upsamples and normalises.

    Parameters
    ----------
    activations, grads : Tensor, shape ``(..., K, h, w)``
        ``A`` and ``g = ∂S_c/∂A`` of the original image.
    y_c : float or Tensor
        ``Y_c = softmax(S)_c`` (float64 recommended).
    s_c : float or Tensor
        Target logit ``S_c`` (only enters the uniform part, so only with ``constant=True``).
    bias : {"channel", "spatial", "none"}
        Default ``"channel"`` (eq. 27; preferred by the paper's survey).
    constant : bool
        Add the bias's uniform part as well (eq. 20 verbatim). Default False.

    Returns
    -------
    Tensor, shape ``(..., h, w)``, float64
        Not normalised (``>= 0`` only for ``"none"``); normalise before casting to float32.
        A layer's map is constant (all zeros after normalisation) only when its evidence
        is: e.g. every ``w`` is 0, or for ``"none"`` ``sum_k w_k A_k <= 0`` everywhere.
    """
    if bias not in ("channel", "spatial", "none"):
        raise ValueError(f"bias must be 'channel', 'spatial' or 'none', got {bias!r}.")
    w = icam_weights(activations, grads, y_c)
    a = activations.detach().to(_F64)
    weighted = (w * a).sum(dim=-3)
    if bias == "none":
        return torch.relu(weighted)
    uniform, varying = _bias_parts(a, w, s_c, bias)
    out = weighted + varying
    return out + uniform if constant else out


def combine(layer_maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""The I-CAM map ``normalise(sum_l W_l L_l)`` (eq. 21).

    Parameters
    ----------
    layer_maps : Tensor, shape ``(L', H, W)``
        Normalised, upsampled per-layer maps of the kept layers.
    weights : Tensor, shape ``(L',)``
        ``W_l`` from :func:`select_layers`, same order.

    Returns
    -------
    Tensor, shape ``(H, W)``, values in ``[0, 1]``, ``layer_maps``' dtype
    """
    if layer_maps.dim() != 3 or weights.shape != layer_maps.shape[:1]:
        raise ValueError(
            f"layer_maps must be (L, H, W) and weights (L,), got {tuple(layer_maps.shape)} and "
            f"{tuple(weights.shape)}."
        )
    w = weights.to(layer_maps.device, layer_maps.dtype)
    return normalize((w[:, None, None] * layer_maps).sum(dim=0))

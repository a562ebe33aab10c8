r"""UnionCAM and Fusion-CAM as pure functions.

References: H. Hu, R. Wang, H. Lin, H. Yu, "UnionCAM: enhancing CNN interpretability
through denoising, weighted fusion, and selective high-quality class activation mapping",
Frontiers in Neurorobotics, 2024, doi:10.3389/fnbot.2024.1490198; H. Dekdegue,
M. Garouani, J. Mothe, J. Bernigaud, "Fusion-CAM: Integrating Gradient and Region-Based
Class Activation Maps for Robust Visual Explanations", 2026, arXiv:2603.05386. Equation
numbers below are UnionCAM's.

Nothing here runs a model: the contributions ``β`` need forward passes, which
the caller supplies as a function (:func:`contributions`, or ``beta_fn`` in
:func:`run_unioncam` / :func:`run_fusioncam`).

Contribution (UnionCAM eq. 4-5, 7)
    ``β(L) = Y_c(x ⊙ L) − Y_c(baseline)`` with ``Y = softmax(S)`` and ``L`` a normalised
    ``(H, W)`` map. The masking space and the baseline are the caller's choice
    (``"black"`` — the mask multiplies the pixel image and the baseline is a black image;
    ``"zeros"`` — the mask multiplies the model input ``x`` and the baseline is zeros in
    model-input space, which is what the official Fusion-CAM code does).

UnionCAM
    1. :func:`denoise_gradients` (eq. 1): per channel of ``W = g``, values below the
       channel's θ-th percentile become 0.
    2. :func:`unioncam_denoised_map` (eq. 2-3): ``L_D = sum_k α_k ∘ ReLU(W_k) ∘ A_k``.
    3. :func:`union_map` (eq. 6): ``L_DR = β_D' L_D + β_R' L_R`` with
       ``(β_D', β_R') =`` :func:`union_weights` ``(β_D, β_R)``: each raw ``β`` clamped at
       0, ``(½, ½)`` when both are ``<= 0`` (a guard, as Fusion-CAM's; see below).
    4. :func:`union_select` (eq. 8): ``L_DR`` if ``β_DR > β_R`` else ``L_R``, where
       ``β_DR = β(normalise(L_DR))`` (eq. 7).

Fusion-CAM (reference implementation: ``src/cams_methods/fusioncam.py`` of
github.com/codeforpaper64/Fusion-CAM)
    1. :func:`denoise_map`: ``L_g`` (normalised gradient map) below its θ-th percentile -> 0.
    2. ``L_r``: normalised region map (given).
    3. :func:`combine`: ``(β_g, β_r) = `` :func:`fusion_weights` ``(β_g^raw, β_r^raw)``
       (clamp at 0, scale to sum 1, ``(½, ½)`` when both are 0);
       ``L_gr = normalise(β_g L_g + β_r L_r)``.
    4. :func:`fuse`: ``(β_gr', β_r') = fusion_weights(β_gr^raw, β_r)`` where ``β_r`` is
       **step 3's rescaled** ``β_r`` (the official code overwrites ``β_region`` with its
       normalised value in step 3 and reuses it here; the paper writes the same symbol);
       ``L1 = β_gr' L_gr``, ``L2 = β_r' L_r``, ``sim = clip(1 − |L1 − L2|, 0, 1)``,
       ``F = normalise(sim · max(L1, L2) + (1 − sim) · (L1 + L2) / 2)``.

Forward passes and caching (what a θ change costs)
    Besides the component CAMs' own passes, the official ``FusionCAM.generate_cam`` runs
    five single-image forwards, one after the other: the input (for the predicted class),
    the zero baseline ``Ib``, ``x ⊙ L_g``, ``x ⊙ L_r``, and — after ``β_g`` and ``β_r`` are
    known and ``L_gr`` is built from them — ``x ⊙ L_gr``. ``L_gr`` depends on ``β_g`` (a
    model output), so ``β_gr`` **cannot** join the first batch: at least two dependent
    passes are needed. Only the first three contribution passes can run as one batch
    (baseline, ``L_g``, ``L_r``: one batch of three images);
    ``L_gr`` is necessarily a second pass. Only ``L_g`` depends on θ: the baseline
    probability, ``L_r`` and ``β_r^raw`` are cached across θ. **A θ change therefore
    costs exactly two single-image forwards**, one after the other (``β_g^raw`` of the
    new ``L_g``, then ``β_gr^raw`` of the new ``L_gr``); no scheme can do it in fewer (a
    new ``L_g`` needs its ``β_g``, and ``L_gr`` is only known after it). UnionCAM's θ
    change costs the same two (``β_D`` then ``β_DR``). :func:`run_fusioncam` and
    :func:`run_unioncam` accept the cached raw ``β_r`` to skip ``L_r``'s pass.

Departures from the papers and the official code
    * :func:`fusion_weights` clamps each ``β`` at 0 before rescaling and has no ``1e-8``;
      the official ``a / (a + b + 1e-8)`` does not clamp (a negative ``β`` yields a weight
      outside ``[0, 1]``) and differs by ``≤ 1e-8 / (a + b)`` relative otherwise.
    * UnionCAM's ``α_k`` has no ``+ 1e-8`` in its denominator (eq. 3 as written; the
      official code adds it); an all-non-positive channel gets ``α = 0``.
    * UnionCAM's union (eq. 6) clamps ``β_D`` and ``β_R`` at 0 before weighting (equal
      weights ``½`` when both are ``<= 0``), as Fusion-CAM's :func:`fusion_weights` does.
      Eq. 6 as printed uses the raw ``β``; when both are negative — a class the masked
      images make *less* likely than the baseline does, usual for a non-predicted class —
      ``L_DR`` is then a negative multiple of (roughly) the maps and normalises to their
      **inverse**, and eq. 8 often selects it. Measured on the demo model
      (``Shapes(4, seed=0)``, every non-predicted class): without the guard 23 of 28
      UnionCAM maps correlate at −0.96 to −1.00 with ``L_R``; with it all 28 correlate
      at +0.99 to +1.00.
    * UnionCAM's selection returns ``L_DR`` or ``L_R`` as eq. 8 writes them; the official
      code multiplies the selected map by its ``β`` before normalising (which inverts it
      when that ``β`` is negative).

All maps are ``(H, W)`` (or with leading batch dimensions where stated); the fusion
arithmetic runs in float64 and returns the input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from ._ops import normalize, zero_below_percentile

__all__ = [
    "FusionCAMSteps",
    "UnionCAMSteps",
    "combine",
    "contributions",
    "denoise_gradients",
    "denoise_map",
    "fuse",
    "fusion_weights",
    "run_fusioncam",
    "run_unioncam",
    "similarity",
    "union_map",
    "union_select",
    "union_weights",
    "unioncam_denoised_map",
]

_F64 = torch.float64

#: ``maps (m, H, W) -> raw contributions (m,)``: ``Y_c(x ⊙ L) − Y_c(baseline)``, one forward.
BetaFn = Callable[[torch.Tensor], torch.Tensor]


def _check_theta(theta: float) -> float:
    t = float(theta)
    if not 0.0 <= t <= 100.0:
        raise ValueError(f"theta must be a percentile in [0, 100], got {theta!r}.")
    return t


# ----------------------------------------------------------------------------- UnionCAM
def denoise_gradients(grads: torch.Tensor, theta: float = 10) -> torch.Tensor:
    r"""UnionCAM's activation-map denoising of the gradient (eq. 1).

    .. math:: \tilde W_{kij} = \begin{cases} W_{kij} & W_{kij} \ge p(W_k, \theta)\\
              0 & \text{otherwise}\end{cases}

    ``p(W_k, θ)`` is channel ``k``'s θ-th percentile over its ``h × w`` values (linear
    interpolation, as :func:`numpy.percentile`). Values equal to the percentile are kept.

    Note: eq. 2 uses ``ReLU(W̃)`` and eq. 3 sums only positive entries, so denoising
    changes the map only in channels whose θ-th percentile is positive; with the
    default θ = 10 it usually only zeroes negative gradients, which the ReLU drops anyway.

    Parameters
    ----------
    grads : Tensor, shape ``(..., K, h, w)``
        ``W = g = ∂S_c/∂A``.
    theta : float in ``[0, 100]``
        Percentile (default 10).

    Returns
    -------
    Tensor, same shape and dtype
    """
    if grads.dim() < 3:
        raise ValueError(f"grads must have shape (..., K, h, w), got {tuple(grads.shape)}.")
    return zero_below_percentile(grads, _check_theta(theta), dims=(-2, -1))


def unioncam_denoised_map(activations: torch.Tensor, grads: torch.Tensor, theta: float = 10) -> torch.Tensor:
    r"""UnionCAM's denoised gradient map ``L_Denoising`` (eq. 1-3) at feature resolution.

    .. math::
        L_D = \sum_k \alpha_k \circ \mathrm{ReLU}(\tilde W_k) \circ A_k,\qquad
        \alpha_{kij} = \begin{cases} 1 / \sum_{m,n} \tilde W_{kmn}\,\mathbb 1[\tilde W_{kmn} > 0]
                       & \tilde W_{kij} > 0\\ 0 & \text{otherwise}\end{cases}

    with ``W̃`` from :func:`denoise_gradients`. ``α`` is exactly eq. 3 (no ``+ 1e-8``): a
    channel without positive gradients contributes 0.

    Parameters
    ----------
    activations, grads : Tensor, shape ``(..., K, h, w)``
    theta : float in ``[0, 100]``

    Returns
    -------
    Tensor, shape ``(..., h, w)``
        Raw (not normalised, no extra ReLU), activations' dtype. The caller normalises and
        upsamples.
    """
    if activations.shape != grads.shape:
        raise ValueError(f"activations {tuple(activations.shape)} and grads {tuple(grads.shape)} differ.")
    w = denoise_gradients(grads, theta)
    pos = w > 0
    pos_sum = torch.where(pos, w, torch.zeros_like(w)).sum(dim=(-2, -1), keepdim=True)
    safe = torch.where(pos_sum > 0, pos_sum, torch.ones_like(pos_sum))
    alpha = torch.where(pos, 1.0 / safe, torch.zeros_like(w))
    return (alpha * torch.relu(w) * activations).sum(dim=-3)


def contributions(
    prob_fn: Callable[[torch.Tensor], torch.Tensor],
    maps: torch.Tensor,
    baseline_prob: float | torch.Tensor,
    *,
    image: torch.Tensor | None = None,
    target: int | None = None,
) -> torch.Tensor:
    r"""Raw contributions ``β(L) = Y_c(x ⊙ L) − Y_c(baseline)`` (UnionCAM eq. 4-5, 7).

    One call of ``prob_fn`` (one forward pass) for all ``m`` maps. Two ways to call it:

    * ``image=None`` (what the explainer does): ``prob_fn(maps)`` receives the maps
      ``(m, H, W)`` and returns ``Y_c`` of the masked inputs, ``(m,)``; the caller masks
      (pixel image or model input, per the ``baseline`` option).
    * ``image`` given: ``prob_fn`` receives the masked images ``image ⊙ L``,
      ``(m, 3, H, W)``, and returns probabilities ``(m, C)`` (then ``target`` picks the
      class) or ``(m,)``.

    Parameters
    ----------
    prob_fn : callable
        See above; ``Y`` is the softmax.
    maps : Tensor, shape ``(m, H, W)``
        Normalised, upsampled maps in ``[0, 1]``.
    baseline_prob : float or 0-d Tensor
        ``Y_c(baseline)``; independent of every map, so the caller computes it once and
        caches it.
    image : Tensor ``(3, H, W)``, optional
    target : int, optional
        Required when ``prob_fn`` returns ``(m, C)``.

    Returns
    -------
    Tensor, shape ``(m,)``
        In ``[−1, 1]``; may be negative.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (m, H, W), got {tuple(maps.shape)}.")
    if image is None:
        probs = prob_fn(maps)
    else:
        masked = image[None].to(maps.device, maps.dtype) * maps[:, None]
        probs = prob_fn(masked)
        if probs.dim() == 2:
            if target is None:
                raise ValueError("target is required when prob_fn returns (m, C) probabilities.")
            probs = probs[:, int(target)]
    if probs.shape != maps.shape[:1]:
        raise ValueError(
            f"prob_fn must return one probability per map ({maps.shape[0]}), got {tuple(probs.shape)}."
        )
    base = torch.as_tensor(baseline_prob, dtype=probs.dtype, device=probs.device)
    return probs - base


def union_weights(beta_d: float | torch.Tensor, beta_r: float | torch.Tensor) -> tuple[float, float]:
    r"""The weights of UnionCAM's union: each raw contribution clamped at 0.

    .. math:: (\beta_D', \beta_R') = (\max(\beta_D, 0), \max(\beta_R, 0)),\qquad
              (\beta_D', \beta_R') = (\tfrac12, \tfrac12) \text{ if both are} \le 0

    A guard on eq. 6, the clamp Fusion-CAM applies (:func:`fusion_weights`) without its
    rescaling to sum 1 (which changes no normalised map): a negative ``β`` would subtract
    its map, and two negative ones would invert the union.

    Parameters
    ----------
    beta_d, beta_r : float
        Raw contributions ``β_D``, ``β_R`` (eq. 4-5), possibly negative.

    Returns
    -------
    (float, float)
        Non-negative, not both 0.
    """
    d = max(float(beta_d), 0.0)
    r = max(float(beta_r), 0.0)
    if d + r > 0.0:
        return d, r
    return 0.5, 0.5


def union_map(
    l_d: torch.Tensor, l_r: torch.Tensor, beta_d: float | torch.Tensor, beta_r: float | torch.Tensor
) -> torch.Tensor:
    r"""UnionCAM's union (eq. 6) with the contributions clamped at 0.

    .. math:: L_{DR} = \beta_D' L_D + \beta_R' L_R,\qquad
              (\beta_D', \beta_R') = \mathrm{union\_weights}(\beta_D, \beta_R)

    Eq. 6 uses the raw ``β``; here each is clamped at 0 and both become ``½`` when both
    are ``<= 0`` (:func:`union_weights`). Without the clamp, a class whose contributions
    are negative (usually every non-predicted class) gets ``L_DR`` = a negative
    combination of the two maps, which normalises to their inverse. No rescaling, no
    normalisation: normalise the result before using it as a mask for ``β_DR`` (eq. 7).

    Parameters
    ----------
    l_d, l_r : Tensor, shape ``(..., H, W)``
        Normalised denoised and region maps.
    beta_d, beta_r : float
        **Raw** contributions (eq. 4-5); the clamp is applied here.

    Returns
    -------
    Tensor, shape ``(..., H, W)``, ``l_d``'s dtype
        Non-negative where ``l_d`` and ``l_r`` are.
    """
    wd, wr = union_weights(beta_d, beta_r)
    out = wd * l_d.to(_F64) + wr * l_r.to(l_d.device, _F64)
    return out.to(l_d.dtype)


def union_select(
    l_dr: torch.Tensor, l_r: torch.Tensor, beta_dr: float | torch.Tensor, beta_r: float | torch.Tensor
) -> tuple[torch.Tensor, Literal["union", "region"]]:
    r"""UnionCAM's selection (eq. 8).

    .. math:: L_{UnionCAM} = \begin{cases} L_{DR} & \beta_{DR} > \beta_R\\ L_R & \text{otherwise}\end{cases}

    A strict ``>``: a tie keeps the region map. The chosen map is returned as it is (the
    caller normalises; the official code's extra multiplication by ``β`` is not in eq. 8).

    Parameters
    ----------
    l_dr : Tensor ``(H, W)``
        ``L_DR`` from :func:`union_map`.
    l_r : Tensor ``(H, W)``
    beta_dr : float
        ``β(normalise(L_DR))`` (eq. 7).
    beta_r : float
        Raw ``β_R`` (eq. 5).

    Returns
    -------
    (map, choice) : (Tensor, ``"union"`` or ``"region"``)
    """
    if float(beta_dr) > float(beta_r):
        return l_dr, "union"
    return l_r, "region"


class UnionCAMSteps(NamedTuple):
    """Every intermediate of :func:`run_unioncam` (maps ``(H, W)``, raw ``β`` as floats)."""

    map: torch.Tensor  #: normalised final map
    union: torch.Tensor  #: ``L_DR`` (eq. 6), raw
    choice: Literal["union", "region"]
    beta_d: float
    beta_r: float
    beta_dr: float


def run_unioncam(
    l_d: torch.Tensor, l_r: torch.Tensor, beta_fn: BetaFn, beta_r: float | None = None
) -> UnionCAMSteps:
    """UnionCAM's union and selection (eq. 4-8) given its two maps and a contribution function.

    Calls ``beta_fn`` twice, one after the other: ``[L_D, L_R]`` (or only ``[L_D]`` when the
    cached ``beta_r`` is given), then ``[normalise(L_DR)]``.

    Parameters
    ----------
    l_d, l_r : Tensor ``(H, W)``
        Normalised, upsampled denoised map (eq. 2-3) and region map.
    beta_fn : callable ``(m, H, W) -> (m,)``
        Raw contributions (e.g. :func:`contributions` bound to a model).
    beta_r : float, optional
        Cached raw ``β_R`` (it does not depend on θ).

    Returns
    -------
    UnionCAMSteps
    """
    if beta_r is None:
        b = beta_fn(torch.stack([l_d, l_r.to(l_d.device, l_d.dtype)]))
        beta_d, beta_r = float(b[0]), float(b[1])
    else:
        beta_d = float(beta_fn(l_d[None])[0])
    l_dr = union_map(l_d, l_r, beta_d, beta_r)
    beta_dr = float(beta_fn(normalize(l_dr)[None])[0])
    chosen, choice = union_select(l_dr, l_r, beta_dr, beta_r)
    return UnionCAMSteps(normalize(chosen), l_dr, choice, beta_d, float(beta_r), beta_dr)


# ----------------------------------------------------------------------------- Fusion-CAM
def denoise_map(l_g: torch.Tensor, theta: float = 10) -> torch.Tensor:
    r"""Fusion-CAM's denoising of the normalised gradient map (step 1).

    Values of ``L_g`` strictly below its θ-th percentile (over the last two dims, linear
    interpolation as :func:`numpy.percentile`) become 0; the rest are unchanged. This is
    the official ``gradcam[gradcam < np.percentile(gradcam, theta)] = 0``. (The official
    code re-normalises afterwards, which is the identity on a normalised map: its minimum
    0 and maximum 1 survive.)

    Parameters
    ----------
    l_g : Tensor, shape ``(..., H, W)``, values in ``[0, 1]``
    theta : float in ``[0, 100]``
        Default 10 (the widget's slider spans 0-50).

    Returns
    -------
    Tensor, same shape and dtype
    """
    return zero_below_percentile(l_g, _check_theta(theta), dims=(-2, -1))


def fusion_weights(beta_a: float | torch.Tensor, beta_b: float | torch.Tensor) -> tuple[float, float]:
    r"""Clamp two contributions at 0 and rescale them to sum 1 (Fusion-CAM steps 3-4).

    .. math:: (a', b') = \frac{(\max(a, 0), \max(b, 0))}{\max(a, 0) + \max(b, 0)},\qquad
              (a', b') = (\tfrac12, \tfrac12) \text{ if both are} \le 0

    Parameters
    ----------
    beta_a, beta_b : float

    Returns
    -------
    (float, float)
        Non-negative, summing to 1.
    """
    a = max(float(beta_a), 0.0)
    b = max(float(beta_b), 0.0)
    total = a + b
    if total > 0.0:
        return a / total, b / total
    return 0.5, 0.5


def combine(
    l_g: torch.Tensor, l_r: torch.Tensor, beta_g: float | torch.Tensor, beta_r: float | torch.Tensor
) -> tuple[torch.Tensor, float, float]:
    r"""Fusion-CAM step 3: contribution-weighted combination.

    .. math:: (\beta_g', \beta_r') = \mathrm{fusion\_weights}(\beta_g, \beta_r),\qquad
              L_{gr} = \mathrm{normalise}(\beta_g' L_g + \beta_r' L_r)

    Parameters
    ----------
    l_g : Tensor ``(H, W)``
        Denoised, normalised gradient map (:func:`denoise_map`).
    l_r : Tensor ``(H, W)``
        Normalised region map.
    beta_g, beta_r : float
        **Raw** contributions ``β(L_g)``, ``β(L_r)``.

    Returns
    -------
    (l_gr, beta_g', beta_r') : (Tensor ``(H, W)`` in ``[0, 1]``, float, float)
        ``beta_r'`` is what :func:`fuse` takes as ``beta_r``.
    """
    wg, wr = fusion_weights(beta_g, beta_r)
    mixed = wg * l_g.to(_F64) + wr * l_r.to(l_g.device, _F64)
    return normalize(mixed).to(l_g.dtype), wg, wr


def similarity(l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    r"""Pixel-wise agreement ``sim = clip(1 − |L1 − L2|, 0, 1)`` (Fusion-CAM step 4)."""
    return (1.0 - (l1 - l2).abs()).clamp(0.0, 1.0)


def fuse(
    l_gr: torch.Tensor, l_r: torch.Tensor, beta_gr: float | torch.Tensor, beta_r: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    r"""Fusion-CAM step 4: similarity-aware pixel fusion.

    .. math::
        (\beta_{gr}', \beta_r'') = \mathrm{fusion\_weights}(\beta_{gr}, \beta_r'),\quad
        L_1 = \beta_{gr}' L_{gr},\quad L_2 = \beta_r'' L_r,\\
        \mathrm{sim} = \mathrm{clip}(1 - |L_1 - L_2|, 0, 1),\quad
        F = \mathrm{normalise}\Big(\mathrm{sim}\cdot\max(L_1, L_2)
            + (1 - \mathrm{sim})\,\frac{L_1 + L_2}{2}\Big)

    Parameters
    ----------
    l_gr : Tensor ``(H, W)``
        ``L_gr`` from :func:`combine`.
    l_r : Tensor ``(H, W)``
        Normalised region map.
    beta_gr : float
        **Raw** contribution ``β(L_gr)`` (the second forward pass).
    beta_r : float
        **Step 3's rescaled** ``β_r'`` (second output of :func:`combine`), not the raw
        ``β(L_r)``: the official code overwrites ``β_region`` with its step-3 value and
        rescales that together with the raw ``β_gr``.

    Returns
    -------
    (F, sim, beta_gr', beta_r'') : (Tensor ``(H, W)`` in ``[0, 1]``, Tensor ``(H, W)``, float, float)
    """
    wgr, wr = fusion_weights(beta_gr, beta_r)
    l1 = wgr * l_gr.to(_F64)
    l2 = wr * l_r.to(l_gr.device, _F64)
    sim = similarity(l1, l2)
    fused = sim * torch.maximum(l1, l2) + (1.0 - sim) * (l1 + l2) / 2.0
    return normalize(fused).to(l_gr.dtype), sim.to(l_gr.dtype), wgr, wr


class FusionCAMSteps(NamedTuple):
    """Every intermediate of :func:`run_fusioncam` (maps ``(H, W)``; ``β`` as floats)."""

    map: torch.Tensor  #: ``F``, normalised
    similarity: torch.Tensor  #: ``sim``
    gradient_map: torch.Tensor  #: denoised ``L_g``
    combined_map: torch.Tensor  #: ``L_gr``
    beta_g_raw: float
    beta_r_raw: float
    beta_gr_raw: float
    beta_g: float  #: step 3
    beta_r: float  #: step 3
    beta_gr: float  #: step 4
    beta_r_final: float  #: step 4


def run_fusioncam(
    l_g: torch.Tensor,
    l_r: torch.Tensor,
    beta_fn: BetaFn,
    theta: float = 10,
    beta_r_raw: float | None = None,
) -> FusionCAMSteps:
    """Fusion-CAM steps 1-4 given the two normalised maps and a contribution function.

    Calls ``beta_fn`` exactly twice, one after the other: ``[L_g, L_r]`` (or ``[L_g]`` when
    the cached, θ-independent ``beta_r_raw`` is given), then ``[L_gr]`` — ``L_gr`` needs
    ``β_g`` first (see the module notes).

    Parameters
    ----------
    l_g : Tensor ``(H, W)``
        Normalised gradient map **before** denoising.
    l_r : Tensor ``(H, W)``
        Normalised region map.
    beta_fn : callable ``(m, H, W) -> (m,)``
        Raw contributions ``Y_c(x ⊙ L) − Y_c(baseline)``.
    theta : float in ``[0, 100]``
        Denoising percentile (default 10).
    beta_r_raw : float, optional
        Cached ``β(L_r)``.

    Returns
    -------
    FusionCAMSteps
    """
    lg = denoise_map(l_g, theta)
    lr = l_r.to(lg.device, lg.dtype)
    if beta_r_raw is None:
        b = beta_fn(torch.stack([lg, lr]))
        bg_raw, br_raw = float(b[0]), float(b[1])
    else:
        bg_raw, br_raw = float(beta_fn(lg[None])[0]), float(beta_r_raw)
    l_gr, bg, br = combine(lg, lr, bg_raw, br_raw)
    bgr_raw = float(beta_fn(l_gr[None])[0])
    fused, sim, bgr, br_final = fuse(l_gr, lr, bgr_raw, br)
    return FusionCAMSteps(fused, sim, lg, l_gr, bg_raw, br_raw, bgr_raw, bg, br, bgr, br_final)

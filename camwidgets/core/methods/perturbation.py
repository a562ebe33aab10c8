"""Perturbation-family methods: model-agnostic LIME and KernelSHAP on superpixels.

Both methods treat the image as ``M`` superpixels (scikit-image's SLIC or quickshift on
the pixel image ``img``), switch random subsets of them off (a binary vector
``z ∈ {0, 1}^M``: superpixel ``j`` keeps its pixels where ``z_j = 1`` and shows the
baseline where ``z_j = 0``), score every masked image with the model, and fit a
weighted linear model ``Y_c(z) ≈ b + Σ_j φ_j z_j`` to the scores. The coefficient
``φ_j`` of a superpixel fills that superpixel in the map. They use the model only as a
black box (forward passes of images; no layer, no gradient), so they explain any image
classifier the :class:`~camwidgets.core.explainer.Explainer` accepts.

Conventions shared by both (the registry entries' ``notes`` list them per method):

* the score ``Y_c`` is the **softmax probability** of the target class (float64
  softmax of the logits), as the ``lime`` package explains ``predict_proba``;
* a switched-off superpixel shows the baseline pixel image: ``"black"`` (zeros in
  pixel space, then the model's normalisation), ``"blur"`` (a Gaussian blur of the
  image, σ = 5 % of its longer side) or ``"mean"`` (each superpixel filled with its
  own mean colour, the ``lime`` package's default ``hide_color=None``);
* the samples come from a CPU :class:`torch.Generator` seeded with ``seed`` at every
  call, so a seed gives the same samples on every device and for every batch size;
  quickshift (random tie-breaking) gets the same seed, SLIC is deterministic;
* the regression is solved in float64 on the CPU (closed form), with an unpenalised
  intercept: the data are centred with the sample-weighted means, as scikit-learn does;
* the map is ``normalise(ReLU(φ[segments]))`` (positive evidence for the class, min-max
  normalised like every camwidgets map); ``raw`` keeps the **signed** coefficient map
  at input resolution and ``weights`` the coefficients ``φ`` (one per superpixel).

The expensive stage (segmentation, samples and their scores) is cached by the explainer
per the parameters it depends on: the batch size never re-runs anything, LIME's kernel
width re-runs only the regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import _ops
from .._hooks import batch_logits, checkpoint
from ..results import CAMResult, freeze_array
from ._params import BATCH_SIZE
from ._spec import Method, Param

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["SuperpixelCAMResult", "baseline_image", "kernelshap", "kernelshap_samples", "lime", "lime_kernel",
           "lime_samples", "shapley_weights", "superpixels", "weighted_linear_fit"]

#: Weight of the empty and the full coalition in KernelSHAP's regression (their Shapley kernel is
#: infinite; a large finite weight makes the fit pass through both, as Captum's KernelShap does).
SHAP_ENDPOINT_WEIGHT: float = 1e6
#: LIME's ridge penalty (the ``lime`` package's ``Ridge(alpha=1)``).
LIME_ALPHA: float = 1.0
#: σ of the "blur" baseline as a fraction of the image's longer side.
BLUR_SIGMA: float = 0.05
_CAPTUM = "Captum 0.9 (PyPI captum)"


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class SuperpixelCAMResult(CAMResult):
    """LIME / KernelSHAP: a linear model of the class probability over superpixels.

    ``raw`` is the signed coefficient map ``φ[segments]`` at input resolution (before the
    ReLU), ``weights`` the coefficients ``φ`` ``(M,)``, ``map`` = ``normalise(ReLU(raw))``;
    ``layer`` is ``()`` (no layer: the methods use the model as a black box).

    Attributes
    ----------
    segments : ndarray (H, W) int64
        The superpixel of each pixel, ``0 .. M - 1``.
    samples : ndarray (n, M) bool
        The binary vectors ``z`` (True: the superpixel shows the image).
    scores : ndarray (n,) float64
        ``Y_c`` of each masked image.
    sample_weights : ndarray (n,) float64
        The regression weight of each sample (LIME's kernel, KernelSHAP's endpoint weights).
    intercept : float
        ``b`` of the linear model (KernelSHAP: ``≈ Y_c`` of the baseline image).
    evaluated : int
        Distinct masked images run through the model (duplicate samples run once).
    forward_passes : int
        Batched forward passes the scores took (``ceil(evaluated / batch_size)`` of the call that ran them).
    """

    segments: np.ndarray
    samples: np.ndarray
    scores: np.ndarray
    sample_weights: np.ndarray
    intercept: float
    evaluated: int
    forward_passes: int

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("segments", "samples", "scores", "sample_weights"):
            object.__setattr__(self, name, freeze_array(getattr(self, name), share=True))

    @property
    def n_superpixels(self) -> int:
        """``M``, the number of superpixels."""
        return int(self.samples.shape[1])


# ----------------------------------------------------------------------------------------
# Superpixels and baselines
# ----------------------------------------------------------------------------------------
def _segmentation_key(segmentation: str, n_segments: int, compactness: float, kernel_size: float,
                      max_dist: float, ratio: float, seed: int) -> tuple[Any, ...]:
    """The parameters the superpixels depend on (SLIC is deterministic: no seed)."""
    if segmentation == "slic":
        return ("slic", n_segments, compactness)
    return ("quickshift", kernel_size, max_dist, ratio, seed)


def superpixels(pixels: torch.Tensor, segmentation: str = "slic", *, n_segments: int = 50, compactness: float = 20.0,
                kernel_size: float = 4.0, max_dist: float = 200.0, ratio: float = 0.2, seed: int = 0) -> torch.Tensor:
    """Superpixels of a pixel image ``(3, H, W)`` in ``[0, 1]``: labels ``0 .. M − 1``, ``(H, W)`` int64 (CPU).

    ``"slic"`` is :func:`skimage.segmentation.slic` (``n_segments``, ``compactness``, CIELAB,
    connectivity enforced); ``"quickshift"`` is :func:`skimage.segmentation.quickshift`
    (``kernel_size``, ``max_dist``, ``ratio``, ``rng=seed``). Labels are renumbered to be
    contiguous in order of first appearance in sorted label order.
    """
    from skimage import segmentation as seg

    img = pixels.detach().float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    arr = img.permute(1, 2, 0).numpy().astype(np.float64)
    if segmentation == "slic":
        labels = seg.slic(arr, n_segments=int(n_segments), compactness=float(compactness), start_label=0,
                          channel_axis=-1)
    elif segmentation == "quickshift":
        labels = seg.quickshift(arr, ratio=float(ratio), kernel_size=float(kernel_size), max_dist=float(max_dist),
                                rng=int(seed), channel_axis=-1)
    else:
        raise ValueError(f"segmentation must be 'slic' or 'quickshift', got {segmentation!r}.")
    _, inverse = np.unique(labels, return_inverse=True)
    return torch.from_numpy(inverse.reshape(labels.shape).astype(np.int64))


def _gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(3, H, W)`` (kernel radius ``ceil(3σ)``, reflect padding)."""
    h, w = pixels.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1)) if min(h, w) > 1 else 0
    if radius == 0:
        return pixels.clone()
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(pixels)
    x = torch.nn.functional.pad(pixels[None], (radius, radius, radius, radius), mode="reflect")
    c = pixels.shape[0]
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[0]


def baseline_image(pixels: torch.Tensor, segments: torch.Tensor, baseline: str) -> torch.Tensor:
    """What a switched-off superpixel shows: a pixel image ``(3, H, W)`` on ``pixels``' device.

    ``"black"``: zeros. ``"blur"``: a Gaussian blur of ``pixels`` with σ = 5 % of the
    longer side (``BLUR_SIGMA``). ``"mean"``: every superpixel filled with its own mean
    colour.
    """
    if baseline == "black":
        return torch.zeros_like(pixels)
    if baseline == "blur":
        return _gaussian_blur(pixels, BLUR_SIGMA * max(pixels.shape[-2:]))
    if baseline == "mean":
        seg = segments.to(pixels.device).reshape(-1)
        m = int(seg.max()) + 1
        flat = pixels.reshape(pixels.shape[0], -1).double()
        sums = torch.zeros(pixels.shape[0], m, dtype=torch.float64, device=pixels.device).index_add_(1, seg, flat)
        counts = torch.bincount(seg, minlength=m).clamp_min(1).double()
        return (sums / counts)[:, seg].reshape(pixels.shape).to(pixels.dtype)
    raise ValueError(f"baseline must be 'black', 'blur' or 'mean', got {baseline!r}.")


# ----------------------------------------------------------------------------------------
# Samples, scores and the linear fit
# ----------------------------------------------------------------------------------------
def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def lime_samples(n_samples: int, m: int, seed: int) -> torch.Tensor:
    """LIME's samples ``(n, M)`` bool: the unperturbed image (all True) first, then independent fair coins.

    The ``lime`` package's image explainer draws the same distribution (uniform bits, row 0
    set to all ones).
    """
    z = torch.rand(n_samples - 1, m, generator=_generator(seed)) < 0.5
    return torch.cat([torch.ones(1, m, dtype=torch.bool), z])


def kernelshap_samples(n_samples: int, m: int, seed: int) -> torch.Tensor:
    """KernelSHAP's samples ``(n, M)`` bool: the full and the empty coalition, then Shapley-kernel draws.

    Each further row has ``k`` ones with ``P(k) ∝ (M − 1) / (k (M − k))``, ``k = 1 .. M − 1``,
    and its ``k`` superpixels uniformly at random: coalitions are drawn in proportion to the
    Shapley kernel ``(M − 1) / (C(M, k) k (M − k))``, so they enter the regression with equal
    weights (Captum's KernelShap sampling). With ``M = 1`` only the two endpoints exist.
    """
    ends = torch.stack([torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    if m < 2:
        return ends
    gen = _generator(seed)
    k = torch.arange(1, m, dtype=torch.float64)
    size_p = (m - 1) / (k * (m - k))
    sizes = torch.multinomial(size_p, n_samples - 2, replacement=True, generator=gen) + 1
    ranks = torch.rand(n_samples - 2, m, generator=gen).argsort(dim=1).argsort(dim=1)
    return torch.cat([ends, ranks < sizes[:, None]])


def lime_kernel(samples: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """LIME's weights ``π(z) = exp(−d² / (2 w²))``, ``d`` the cosine distance of ``z`` to the all-ones vector.

    ``d = 1 − sqrt(k / M)`` for ``k`` ones (1 for the empty sample), the distance the
    ``lime`` package measures in the interpretable space; its kernel ``sqrt(exp(−d²/w²))``
    is the same function. Float64, ``(n,)``.
    """
    m = samples.shape[1]
    d = 1.0 - torch.sqrt(samples.double().sum(dim=1) / m)
    return torch.exp(-(d**2) / (2.0 * kernel_width**2))


def shapley_weights(samples: torch.Tensor) -> torch.Tensor:
    """KernelSHAP's regression weights: 1, and ``SHAP_ENDPOINT_WEIGHT`` for the empty and the full coalition."""
    k = samples.sum(dim=1)
    ends = (k == 0) | (k == samples.shape[1])
    return torch.where(ends, SHAP_ENDPOINT_WEIGHT, 1.0).double()


def weighted_linear_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float = 0.0
                        ) -> tuple[torch.Tensor, float]:
    """``argmin_{b, φ} Σ_i w_i (y_i − b − z_i·φ)² + α ‖φ‖²``: ``(φ (M,), b)`` in float64 (CPU).

    The intercept is not penalised: ``z`` and ``y`` are centred with the ``w``-weighted
    means and the rows scaled by ``sqrt(w)`` (scikit-learn's ``Ridge`` / ``LinearRegression``
    with ``sample_weight``). ``α > 0`` solves the normal equations ``(ZᵀZ + αI) φ = Zᵀy``;
    ``α = 0`` takes the minimum-norm least-squares solution (an SVD), which also covers
    superpixels that never change across the samples.
    """
    zz = z.detach().double().cpu().numpy()
    yy = y.detach().double().cpu().numpy()
    ww = w.detach().double().cpu().numpy()
    total = ww.sum()
    z_mean = (ww[:, None] * zz).sum(axis=0) / total
    y_mean = float((ww * yy).sum() / total)
    root = np.sqrt(ww)
    zc = (zz - z_mean) * root[:, None]
    yc = (yy - y_mean) * root
    if alpha > 0:
        coef = np.linalg.solve(zc.T @ zc + alpha * np.eye(zz.shape[1]), zc.T @ yc)
    else:
        coef = np.linalg.lstsq(zc, yc, rcond=None)[0]
    return torch.from_numpy(coef), y_mean - float(z_mean @ coef)


def _scores(exp: Explainer, segments: torch.Tensor, base: torch.Tensor, samples: torch.Tensor,
            batch_size: int) -> tuple[torch.Tensor, int, int]:
    """``Y_c`` of every sample's masked image ``(n,)`` float64 (CPU), the distinct images run and the passes.

    Identical samples are run once; the distinct ones in batches of ``batch_size``.
    """
    img = exp.image_tensor
    seg = segments.to(img.device)
    distinct, inverse = torch.unique(samples.to(torch.uint8), dim=0, return_inverse=True)
    out = torch.empty(distinct.shape[0], dtype=torch.float64)
    passes = 0
    for start in range(0, distinct.shape[0], batch_size):
        checkpoint()
        z = distinct[start:start + batch_size].to(img.device).bool()
        keep = z[:, seg]                                    # (b, H, W): superpixel on
        masked = torch.where(keep[:, None], img[None], base[None])
        logits = batch_logits(exp.model, exp.normalize(masked))
        out[start:start + z.shape[0]] = torch.softmax(logits.double(), dim=1)[:, exp.target].cpu()
        passes += 1
    return out[inverse], int(distinct.shape[0]), passes


def _stage(exp: Explainer, method: str, sampler: Callable[[int, int, int], torch.Tensor], seg_key: tuple[Any, ...],
           seg_params: dict[str, Any], baseline: str, n_samples: int, seed: int, batch_size: int) -> dict[str, Any]:
    """The cached expensive stage: superpixels (per segmentation), samples and their scores."""
    segments = exp.stage(("superpixels", *seg_key), lambda: superpixels(exp.image_tensor, **seg_params))

    def compute() -> dict[str, Any]:
        m = int(segments.max()) + 1
        samples = sampler(n_samples, m, seed)
        base = baseline_image(exp.image_tensor, segments, baseline)
        scores, evaluated, passes = _scores(exp, segments, base, samples, batch_size)
        return {"samples": samples, "scores": scores, "evaluated": evaluated, "passes": passes}

    st = exp.stage((f"{method}-scores", *seg_key, baseline, n_samples, seed), compute)
    return {**st, "segments": segments}


def _result(exp: Explainer, method: str, params: dict[str, Any], st: dict[str, Any], weights: torch.Tensor,
            coef: torch.Tensor, intercept: float) -> SuperpixelCAMResult:
    segments = st["segments"].to(exp.device)
    raw = coef.to(device=exp.device, dtype=torch.float32)[segments]
    return SuperpixelCAMResult(
        method=method, layer=(), target=exp.target, params=params,
        map_tensor=_ops.normalize(torch.relu(raw)), raw_tensor=raw, weights_tensor=coef.float(),
        # The superpixels, samples and scores are the cached stage's (read-only views on the CPU, not copies).
        segments=freeze_array(st["segments"], share=True), samples=freeze_array(st["samples"], share=True),
        scores=freeze_array(st["scores"], share=True), sample_weights=freeze_array(weights, share=True),
        intercept=intercept, evaluated=st["evaluated"], forward_passes=st["passes"])


def _seg_params(segmentation: str, n_segments: int, compactness: float, kernel_size: float, max_dist: float,
                ratio: float, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    key = _segmentation_key(segmentation, n_segments, compactness, kernel_size, max_dist, ratio, seed)
    return key, {"segmentation": segmentation, "n_segments": n_segments, "compactness": compactness,
                 "kernel_size": kernel_size, "max_dist": max_dist, "ratio": ratio, "seed": seed}


# ----------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------
def lime(exp: Explainer, *, segmentation: str, n_segments: int, compactness: float, kernel_size: float,
         max_dist: float, ratio: float, n_samples: int, baseline: str, kernel_width: float, seed: int,
         batch_size: int) -> SuperpixelCAMResult:
    """LIME on superpixels: a ridge regression of ``Y_c`` on the samples, weighted by an exponential kernel."""
    seg_key, seg_kw = _seg_params(segmentation, n_segments, compactness, kernel_size, max_dist, ratio, seed)
    st = _stage(exp, "lime", lime_samples, seg_key, seg_kw, baseline, n_samples, seed, batch_size)
    weights = lime_kernel(st["samples"], kernel_width)
    coef, intercept = weighted_linear_fit(st["samples"], st["scores"], weights, LIME_ALPHA)
    params = {**seg_kw, "n_samples": n_samples, "baseline": baseline, "kernel_width": kernel_width,
              "batch_size": batch_size}
    return _result(exp, "lime", params, st, weights, coef, intercept)


def kernelshap(exp: Explainer, *, segmentation: str, n_segments: int, compactness: float, kernel_size: float,
               max_dist: float, ratio: float, n_samples: int, baseline: str, seed: int,
               batch_size: int) -> SuperpixelCAMResult:
    """KernelSHAP on superpixels: Shapley-kernel samples, a least-squares fit through both endpoints."""
    seg_key, seg_kw = _seg_params(segmentation, n_segments, compactness, kernel_size, max_dist, ratio, seed)
    st = _stage(exp, "kernelshap", kernelshap_samples, seg_key, seg_kw, baseline, n_samples, seed, batch_size)
    weights = shapley_weights(st["samples"])
    coef, intercept = weighted_linear_fit(st["samples"], st["scores"], weights, 0.0)
    params = {**seg_kw, "n_samples": n_samples, "baseline": baseline, "batch_size": batch_size}
    return _result(exp, "kernelshap", params, st, weights, coef, intercept)


# ----------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------
def _superpixel_params() -> tuple[Param, ...]:
    return (
        Param("segmentation", "choice", "slic", choices=("slic", "quickshift"),
              help="Superpixel algorithm (scikit-image): SLIC (n_segments, compactness) or quickshift "
                   "(kernel_size, max_dist, ratio)."),
        Param("n_segments", "int", 50, low=1, high=1000, step=1,
              help="SLIC: the approximate number of superpixels."),
        Param("compactness", "float", 20.0, low=0, high=100, step=0.5, exclusive_low=True,
              help="SLIC: space versus colour (CIELAB); higher gives more regular superpixels, closer to "
                   "n_segments of them."),
        Param("kernel_size", "float", 4.0, low=0, high=20, step=0.5, exclusive_low=True,
              help="quickshift: width of the Gaussian density kernel (larger: fewer superpixels)."),
        Param("max_dist", "float", 200.0, low=0, high=1000, step=1, exclusive_low=True,
              help="quickshift: cut-off of the data distances (higher: fewer superpixels)."),
        Param("ratio", "float", 0.2, low=0, high=1, step=0.05,
              help="quickshift: colour versus space, in [0, 1] (higher: more weight on colour)."),
    )


def _sampling_params(what: str) -> tuple[Param, ...]:
    return (
        Param("n_samples", "int", 500, low=10, high=10000, step=10,
              help=f"Samples (masked images) of the regression, {what} (at most one forward per distinct sample)."),
        Param("baseline", "choice", "black", choices=("black", "blur", "mean"),
              help="What a switched-off superpixel shows: black pixels, a Gaussian blur of the image (σ = 5 % of "
                   "its longer side), or the superpixel's mean colour."),
    )


_SEED = Param("seed", "int", 0, low=0, control=False,
              help="Seed of the samples (a CPU torch.Generator) and of quickshift: the same seed gives the same map "
                   "on any device and for any batch size.")

_SHARED_NOTES = (
    "The score is the softmax probability of the target (float64), as the lime package explains predict_proba; "
    "Captum uses whatever forward function it is given (the tests give it the same probability). The map is "
    "normalise(ReLU(φ)) on the superpixels (positive evidence for the class, min-max like every camwidgets map: "
    "all-zero when no coefficient is positive); raw is the signed coefficient map at input resolution and weights "
    "the coefficients. Superpixels are computed on the preprocessed pixel image (after resize and crop); SLIC's "
    "compactness defaults to 20, not scikit-image's 10, which gives about half the asked n_segments on the demo "
    "images and on natural 224 px images (20 gives 70-95 % of them). Distinct "
    "samples are run once (duplicates reuse the score)."
)

#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="lime", label="LIME", family="perturbation",
        params=(*_superpixel_params(), *_sampling_params("the unperturbed image first, then fair coins"),
                Param("kernel_width", "float", 0.25, low=0, high=5, step=0.05, exclusive_low=True,
                      help="w: width of the exponential kernel π(z) = exp(−d² / (2 w²)) on the cosine distance d "
                           "of z to the unperturbed sample."),
                _SEED, BATCH_SIZE),
        compute=lime,
        summary="superpixels switched on and off at random; a locally weighted ridge regression of the class "
                "probability on them gives each superpixel's weight.",
        formula="z ~ Bernoulli(1/2)^M;  π(z) = exp(−(1 − cos(z, 1))² / (2 w²));  "
                "φ = argmin Σ π(z) (Y_c(x_z) − b − z·φ)² + ‖φ‖²;  L = normalise(ReLU(φ[segments]))",
        reference="Ribeiro, Singh & Guestrin, \"'Why Should I Trust You?': Explaining the Predictions of Any "
                  "Classifier\", KDD 2016, arXiv:1602.04938 (Section 3, eq. 1-2, the sparse linear explanations "
                  "on superpixels); for images as described by Karthick & Karthick, 'From Tables to Pixels: "
                  "Bridging Explainability Across Tabular and Image-Based AI Models'.",
        implementation=f"{_CAPTUM} captum.attr.Lime with the same superpixels as feature_mask, the same baseline, "
                       "the same samples (a perturb_func replaying them), Captum's exponential kernel "
                       "(get_exp_kernel_similarity_function('cosine', w)) on the binary sample and its "
                       "SkLearnRidge(alpha=1) fitting Captum's data in float64: coefficients to 1e-4 of their "
                       "largest magnitude and the normalised maps to 1e-4 (measured <= 2e-6); Captum's stock "
                       "float32 fit agrees within its own float32 rounding.",
        needs_gradients=False,
        stage="superpixels per segmentation parameters; the samples and their scores per (superpixels, baseline, "
              "n_samples, seed): ceil(distinct samples / batch_size) forward passes; kernel_width re-runs only "
              "the regression, batch_size nothing.",
        notes="The lime package's conventions: cosine distance in the binary space to the all-ones sample, "
              "kernel sqrt(exp(−d²/w²)) = exp(−d²/(2w²)) (the paper writes exp(−D²/σ²), i.e. σ = w√2) with "
              "width 0.25, Ridge(alpha = 1) with an unpenalised intercept, the first sample the unperturbed "
              "image, all superpixels kept (no feature selection); Captum's Lime defaults differ (cosine distance "
              "between the model inputs, width 1, Lasso(alpha = 0.01)) and the test replaces them with these. "
              "Default n_samples = 500 (lime's is 1000): 10 samples per superpixel of the default 50. "
              + _SHARED_NOTES),
    Method(        name="kernelshap", label="KernelSHAP", family="perturbation",
        params=(*_superpixel_params(), *_sampling_params("both endpoints first, then Shapley-kernel draws"),
                _SEED, BATCH_SIZE),
        compute=kernelshap,
        summary="coalitions of superpixels drawn by the Shapley kernel; a least-squares fit of the class "
                "probability through the empty and the full coalition gives each superpixel's Shapley value.",
        formula="|z| = k with P(k) ∝ (M − 1) / (k (M − k)), z uniform given k;  "
                "φ = argmin Σ ω(z) (Y_c(x_z) − b − z·φ)², ω = 10⁶ at z = 0 and z = 1, else 1;  "
                "L = normalise(ReLU(φ[segments]))",
        reference="Lundberg & Lee, 'A Unified Approach to Interpreting Model Predictions', NeurIPS 2017, "
                  "arXiv:1705.07874 (Theorem 2, the Shapley kernel π_x'(z') = (M − 1) / (C(M, |z'|) |z'| "
                  "(M − |z'|))); for images as described by Karthick & Karthick, 'From Tables to Pixels: "
                  "Bridging Explainability Across Tabular and Image-Based AI Models'.",
        implementation=f"{_CAPTUM} captum.attr.KernelShap with the same superpixels as feature_mask, the same "
                       "baseline and the same samples (its perturbation generator replaced by one replaying "
                       "them), its own endpoint weights and its SkLearnLinearRegression fitting Captum's data in "
                       "float64: coefficients to 1e-4 of their largest magnitude and the normalised maps to 1e-4 "
                       "(measured <= 3e-6). Captum's stock float32 fit is off by up to ~2e-3 with the 10⁶ endpoint "
                       "weights (scikit-learn float32 against float64 on the same data), and agrees within that.",
        needs_gradients=False,
        stage="superpixels per segmentation parameters; the samples and their scores per (superpixels, baseline, "
              "n_samples, seed): ceil(distinct samples / batch_size) forward passes (Shapley-kernel draws "
              "repeat small and large coalitions often); batch_size re-runs nothing.",
        notes="Captum's KernelShap scheme: coalitions sampled in proportion to the Shapley kernel (with "
              "replacement) and weighted equally, the empty and the full coalition included once each with weight "
              "10⁶ (the kernel is infinite there), ordinary weighted least squares with an intercept (minimum-norm "
              "solution when a superpixel never changes). Efficiency (Σ φ = Y_c(x) − Y_c(baseline)) therefore holds "
              "up to the finite endpoint weight (about 1e-6 relative), not exactly as in the shap package's "
              "constrained solve, which also enumerates small coalitions and pairs samples. Default n_samples = "
              "500 (the shap package uses 2M + 2048, Captum 25): 10 per superpixel of the default 50. "
              + _SHARED_NOTES),
)

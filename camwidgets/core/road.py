r"""ROAD: RemOve And Debias, with noisy linear imputation, and ARCC (docs/evaluate.md, "ROAD and ARCC").

ROAD (Rong et al., 'A Consistent and Efficient Evaluation Strategy for Attribution Methods',
ICML 2022, arXiv:2202.00449) removes a share of the pixels in the map's order and fills
them by *noisy linear imputation*: every removed pixel becomes the weighted mean of its 8
neighbours (direct neighbours weight 1/6, diagonal ones 1/12; at the image border the
weights of the neighbours inside the image, renormalised), removed neighbours being
unknowns too. That is one sparse linear system over the removed pixels, solved once per
mask for the three channels (one LU factorisation, one right-hand side per channel),
after which Gaussian noise of standard deviation ``noise`` is added to the removed pixels.
The imputed pixels carry no information about the removed ones' values beyond their
surroundings, so the model cannot tell *where* pixels were removed from the shape of a
mask of black or blurred pixels -- the leak that RISE-style deletion suffers from.

- **MoRF** (most relevant first): the ``p`` % pixels with the largest ``E`` are removed; a
  faithful map makes the class probability fall fast (lower is better).
- **LeRF** (least relevant first): the ``p`` % with the smallest ``E`` are removed; the
  probability should stay (higher is better).
- **Combined**: ``(mean_p LeRF(p) − mean_p MoRF(p)) / 2``, in ``[-0.5, 0.5]``, higher is
  better -- pytorch-grad-cam's ``ROADCombined``, including its factor 1/2 and its sign.

Definitions, and where they depart from pytorch-grad-cam 1.5 (``pytorch_grad_cam.metrics.road``)
-------------------------------------------------------------------------------------------------
- **Score.** ``Y_c = softmax(S)_c`` of the imputed image (as every camwidgets metric). The
  peer returns ``target(output)``: pass ``ClassifierOutputSoftmaxTarget`` for the same
  quantity. Its default ``return_diff=True`` subtracts the unperturbed image's score
  ``y``; :class:`ROADResult` keeps the scores themselves and ``original`` (``y``), so the
  peer's value is ``scores − original``. The combined score does not depend on that
  choice (``y`` cancels in LeRF − MoRF).
- **Percentile.** Here ``p`` is the share of pixels *removed*, in MoRF and in LeRF, as in
  the paper. The peer's ``percentile`` is the share *kept*: its ``ROADMostRelevantFirst(p)``
  keeps the pixels with ``E < np.percentile(E, p)``, i.e. removes ``100 − p`` %, and its
  ``ROADLeastRelevantFirst(p)`` keeps the ``p`` % most relevant. Averaged over the
  symmetric default grid 10, 20, …, 90 the two conventions give the same means.
- **Counts and ties.** Here exactly ``round(p/100 · H·W)`` pixels are removed (halves up,
  at most ``H·W − 1``: one pixel is always kept), chosen by a stable sort: at equal
  ``E``, the pixel earlier in raster order goes first, in MoRF and in LeRF alike (a
  constant map gets the same masks in both orders, so combined = 0 exactly). The peer
  thresholds at the interpolated percentile, so it removes ``H·W − ceil((H·W − 1) · q/100)``
  pixels for its ``q`` (one more than here at some percentiles) and removes every pixel
  tied at the threshold (a constant map: all of them, a singular system).
- **Space and noise.** The imputation runs on the pixel image in ``[0, 1]`` (after
  ``preprocess.geometry``), then the image is normalised, as every camwidgets metric
  masks in pixel space; the peer imputes the normalised tensor. The noise-free
  imputation commutes with a per-channel affine normalisation (its weights sum to 1), so
  the two agree without noise; the noise is in pixel units here (``0.01`` of the pixel
  range), in model-input units there. The noise comes from a ``torch.Generator`` (a
  ``seed``, 0 by default), one ``(3, H, W)`` standard-normal field per image, drawn in
  image order and shared by all percentiles and both orders (so results do not depend on
  ``batch_size``, and MoRF and LeRF see the same noise where they remove the same pixel);
  the peer draws from torch's global generator per imputation.
- **Imputed values are not clipped** to ``[0, 1]`` (neither are the peer's); without
  noise they lie between the image's extremes anyway (a weighted mean).

ARCC (:func:`arcc`; 'How to Evaluate and Refine your CAM', 2026, arXiv:2605.14641, as
pytorch-grad-cam 1.5 implements it) is the harmonic mean of Coherency, 1 − Complexity and
``clip(2 · ROAD combined, 0, 1)`` (= ``clip(mean LeRF − mean MoRF, 0, 1)``). It is *not
comparable* with ADCC (:func:`camwidgets.core.metrics.adcc`): the third term is a
different quantity (a ROAD gap instead of 1 − Average Drop), so the same map gets
different values and neither bounds the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from . import metrics as M
from .metrics import ExplainFn, MapLike, TargetLike, Value
from .preprocess import PreprocessLike, as_preprocess

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["ARCCResult", "ROADCombinedResult", "ROADResult", "arcc", "arcc_formula", "noisy_linear_imputation",
           "road", "road_combined", "road_masks"]

Order = Literal["morf", "lerf"]

#: The paper's neighbour weights: ``(row offset, column offset, weight)``; they sum to 1.
NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)
#: The default percentiles (share of pixels removed, in percent), as the paper's and the peer's grid.
DEFAULT_PERCENTILES: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


# ----------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ROADResult:
    """Class probability after ROAD removal at each percentile, one order.

    Attributes
    ----------
    scores : ndarray (P,) or (N, P)
        ``Y_c = softmax(S)_c`` of the imputed image with ``percentiles[k]`` % of the pixels
        removed (most relevant first for ``order="morf"``, least relevant first for
        ``"lerf"``), float64.
    percentiles : ndarray (P,)
        Share of pixels removed, in percent.
    original : float or ndarray (N,)
        ``y``: ``Y_c`` of the unperturbed image (pytorch-grad-cam's ``return_diff=True``
        value is ``scores − original``).
    order : str
        ``"morf"`` or ``"lerf"``.
    target : int or ndarray (N,)
        The class ``c`` used for each image.
    """

    scores: np.ndarray
    percentiles: np.ndarray
    original: Value
    order: str
    target: int | np.ndarray

    @property
    def mean(self) -> Value:
        """The scores averaged over the percentiles (float, or ``(N,)``)."""
        return M._unbatch(np.mean(np.atleast_2d(self.scores), axis=1), np.ndim(self.scores) == 1)


@dataclass(frozen=True, eq=False)
class ROADCombinedResult:
    """MoRF and LeRF with their combined score.

    Attributes
    ----------
    combined : float or ndarray (N,)
        ``(lerf.mean − morf.mean) / 2`` in ``[-0.5, 0.5]``, higher is better
        (pytorch-grad-cam's ``ROADCombined``).
    morf, lerf : ROADResult
        The two orders, on the same imputation noise.
    """

    combined: Value
    morf: ROADResult
    lerf: ROADResult


@dataclass(frozen=True, eq=False)
class ARCCResult:
    """ARCC and its three terms (pytorch-grad-cam's ``ARCC``).

    Attributes
    ----------
    arcc : float or ndarray (N,)
        ``3 / (1/Coherency + 1/(1 − Complexity) + 1/clip(2·ROAD, 0, 1))`` in ``[0, 1]``
        (0 when any term is 0). Not comparable with ADCC.
    coherency, complexity : float or ndarray (N,)
        As in :func:`camwidgets.core.metrics.adcc`.
    road : float or ndarray (N,)
        The ROAD combined score, in ``[-0.5, 0.5]``.
    target : int or ndarray (N,)
    """

    arcc: Value
    coherency: Value
    complexity: Value
    road: Value
    target: int | np.ndarray


# ----------------------------------------------------------------------------------------
# Noisy linear imputation
# ----------------------------------------------------------------------------------------
def _imputation_system(removed: np.ndarray) -> tuple[np.ndarray, sparse.csc_matrix, sparse.csr_matrix]:
    """``(unknowns, A, K)``: ``A x = K v`` over the removed pixels ``unknowns`` (flat indices).

    Row ``i`` says ``(Σ_valid w) x_i − Σ_removed w x_j = Σ_kept w v_j`` over the neighbours ``j``
    of pixel ``i`` inside the image: ``x_i`` is the weighted mean of its neighbours. ``A`` is
    symmetric and diagonally dominant, and non-singular when at least one pixel is kept
    (the 8-neighbourhood connects the whole image).
    """
    from scipy import sparse  # imported when a metric runs, not with the registry (import time)

    h, w = removed.shape
    flat = removed.reshape(-1)
    unknowns = np.flatnonzero(flat)
    m = unknowns.size
    var = np.full(h * w, -1, dtype=np.int64)
    var[unknowns] = np.arange(m)
    r, c = np.divmod(unknowns, w)
    diag = np.zeros(m)
    a_rows, a_cols, a_vals = [], [], []
    k_rows, k_cols, k_vals = [], [], []
    for dr, dc, weight in NEIGHBOUR_WEIGHTS:
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        eq = np.flatnonzero(inside)
        nb = rr[inside] * w + cc[inside]
        diag[eq] += weight
        unknown = flat[nb]
        a_rows.append(eq[unknown])
        a_cols.append(var[nb[unknown]])
        a_vals.append(np.full(int(unknown.sum()), -weight))
        k_rows.append(eq[~unknown])
        k_cols.append(nb[~unknown])
        k_vals.append(np.full(int((~unknown).sum()), weight))
    a_rows.append(np.arange(m))
    a_cols.append(np.arange(m))
    a_vals.append(diag)
    a = sparse.csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
                          shape=(m, m))
    k = sparse.csr_matrix((np.concatenate(k_vals), (np.concatenate(k_rows), np.concatenate(k_cols))),
                          shape=(m, h * w))
    return unknowns, a, k


def _impute(image: torch.Tensor, removed: np.ndarray, noise: float, field: torch.Tensor | None) -> torch.Tensor:
    """``image (C, H, W)`` with the ``removed (H, W)`` pixels imputed; ``noise · field`` added there."""
    c, h, w = image.shape
    out = image.detach().cpu().clone()
    if not removed.any():
        return out
    if removed.all():
        raise ValueError("Noisy linear imputation needs at least one kept pixel; every pixel is removed.")
    from scipy.sparse.linalg import splu

    unknowns, a, k = _imputation_system(removed)
    values = out.reshape(c, h * w).double().numpy().T  # (H·W, C)
    solution = splu(a).solve(np.ascontiguousarray(k @ values))  # (M, C), float64
    filled = torch.from_numpy(solution.T).to(out.dtype)
    if noise and field is not None:
        filled = filled + noise * field.reshape(c, h * w)[:, torch.from_numpy(unknowns)].to(out.dtype)
    out.reshape(c, h * w)[:, torch.from_numpy(unknowns)] = filled
    return out


def _check_noise(noise: float) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite standard deviation >= 0 (pixel units), got {noise!r}.")
    return float(noise)


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got a {type(generator).__name__}.")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def noisy_linear_imputation(image: Any, removed: Any, *, noise: float = 0.01, seed: int | None = 0,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Fill the ``removed`` pixels of ``image`` by noisy linear imputation (Rong et al. 2022).

    Each removed pixel ``x_i`` solves ``x_i = Σ_j w_ij x_j / Σ_j w_ij`` over its neighbours
    ``j`` inside the image (weight 1/6 for the 4 direct, 1/12 for the 4 diagonal ones),
    where a removed neighbour is itself unknown and a kept one is the image's value: one
    sparse linear system per mask, solved in float64 for every channel with one LU
    factorisation (``scipy.sparse.linalg.splu``). Then ``noise · N(0, 1)`` is added to the
    removed pixels; the kept pixels are unchanged.

    Parameters
    ----------
    image : tensor or array (C, H, W)
        The image (any units: the noise-free imputation commutes with per-channel affine maps).
    removed : bool array or tensor (H, W)
        True where a pixel is removed; at least one pixel must be kept.
    noise : float, default 0.01
        Standard deviation of the Gaussian noise, in the image's units; 0 switches it off.
    seed : int or None, default 0
        Seed of the noise when ``generator`` is None (None: a fresh random seed).
    generator : torch.Generator, optional
        Draws the ``(C, H, W)`` standard-normal field the noise is taken from.

    Returns
    -------
    Tensor (C, H, W)
        A new float tensor (float32 unless ``image`` is float64), on the CPU.

    Examples
    --------
    >>> img = torch.arange(16.).reshape(1, 4, 4)  # a linear ramp is its own weighted mean
    >>> removed = np.zeros((4, 4), bool); removed[1:3, 1:3] = True
    >>> torch.allclose(noisy_linear_imputation(img, removed, noise=0), img)
    True
    """
    img = image.detach().cpu() if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image))
    if img.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(img.shape)}.")
    if img.dtype != torch.float64:
        img = img.float()
    mask = np.asarray(removed.cpu() if isinstance(removed, torch.Tensor) else removed).astype(bool)
    if mask.shape != tuple(img.shape[1:]):
        raise ValueError(f"removed has shape {mask.shape}; it must be the image's (H, W) = {tuple(img.shape[1:])}.")
    noise = _check_noise(noise)
    field = torch.randn(tuple(img.shape), generator=_generator(seed, generator), dtype=img.dtype) if noise else None
    return _impute(img, mask, noise, field)


# ----------------------------------------------------------------------------------------
# Removal masks
# ----------------------------------------------------------------------------------------
def _check_percentiles(percentiles: Any) -> np.ndarray:
    try:
        p = np.asarray(percentiles, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles must be numbers in [0, 100), got {percentiles!r}.") from None
    if p.size == 0 or not np.isfinite(p).all() or (p < 0).any() or (p >= 100).any():
        raise ValueError(
            f"percentiles must be a non-empty list of shares of pixels removed in [0, 100), got {percentiles!r}."
        )
    return p


def _check_order(order: str) -> str:
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}.")
    return order


def _removal_counts(n_pixels: int, percentiles: np.ndarray) -> np.ndarray:
    """``round(p/100 · n)`` (halves up), at most ``n − 1``."""
    counts = np.floor(percentiles / 100.0 * n_pixels + 0.5).astype(np.int64)
    return np.minimum(counts, n_pixels - 1)


def _order_ranks(maps: np.ndarray, order: str) -> np.ndarray:
    """Removal rank of each pixel ``(N, H·W)``: 0 goes first; ties in raster order in both orders."""
    flat = maps.reshape(maps.shape[0], -1)
    key = -flat if order == "morf" else flat
    idx = np.argsort(key, axis=1, kind="stable")
    ranks = np.empty_like(idx)
    np.put_along_axis(ranks, idx, np.arange(flat.shape[1])[None].repeat(flat.shape[0], 0), axis=1)
    return ranks


def road_masks(saliency_map: MapLike, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
               order: Order = "morf") -> np.ndarray:
    """The pixels ROAD removes: bool ``(P, H, W)`` for one map, ``(N, P, H, W)`` for a batch.

    At percentile ``p`` the ``round(p/100 · H·W)`` pixels with the largest (``"morf"``) or
    smallest (``"lerf"``) ``E`` are removed; equal values go in raster order.
    """
    maps = M._as_map_batch(saliency_map)
    single = not M._looks_batched(saliency_map)
    p = _check_percentiles(percentiles)
    ranks = _order_ranks(maps, _check_order(order))
    n, h, w = maps.shape
    counts = _removal_counts(h * w, p)
    out = (ranks[:, None, :] < counts[None, :, None]).reshape(n, p.size, h, w)
    return out[0] if single else out


# ----------------------------------------------------------------------------------------
# ROAD
# ----------------------------------------------------------------------------------------
def _road_scores(scorer: M._Scorer, pixels: torch.Tensor, maps: np.ndarray, targets: torch.Tensor,
                 percentiles: np.ndarray, orders: Sequence[str], noise: float,
                 generator: torch.Generator) -> dict[str, np.ndarray]:
    """``{order: Y_c (N, P)}``: every image × order × percentile imputed lazily, batched forward passes."""
    n, c, h, w = pixels.shape
    fields = [torch.randn((c, h, w), generator=generator) if noise else None for _ in range(n)]
    counts = _removal_counts(h * w, percentiles)
    ranks = {o: _order_ranks(maps, o) for o in orders}
    jobs = [(i, o, k) for i in range(n) for o in orders for k in range(percentiles.size)]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, len(jobs), scorer.batch_size):
            chunk = jobs[s:s + scorer.batch_size]
            images = [_impute(pixels[i], (ranks[o][i] < counts[k]).reshape(h, w), noise, fields[i])
                      for i, o, k in chunk]
            yield torch.stack(images), targets[[i for i, _, _ in chunk]]

    probs = scorer.probs(batches()).numpy().reshape(n, len(orders), percentiles.size)
    return {o: probs[:, j] for j, o in enumerate(orders)}


def _road_run(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike, preprocess: PreprocessLike,
              percentiles: Sequence[float], orders: Sequence[str], noise: float, seed: int | None,
              generator: torch.Generator | None, batch_size: int, logits: torch.Tensor | None
              ) -> tuple[dict[str, ROADResult], bool]:
    pre = as_preprocess(preprocess)
    p = _check_percentiles(percentiles)
    noise = _check_noise(noise)
    gen = _generator(seed, generator)
    pixels, maps, single = M._setup(model, image, saliency_map, pre, target)
    given = M._given_logits(logits, pixels.shape[0], "ROAD")
    scorer = M._Scorer(model, pre, batch_size)
    with M._eval_mode(model), torch.inference_mode():
        lg = scorer.logits(pixels) if given is None else given
        targets = M._resolve_targets(target, lg)
        y = torch.softmax(lg, dim=1).gather(1, targets.view(-1, 1)).squeeze(1).double().numpy()
        scores = _road_scores(scorer, pixels, maps, targets, p, orders, noise, gen)
    t = M._unbatch_target(targets, single)
    return {o: ROADResult(scores=s[0] if single else s, percentiles=p, original=M._unbatch(y, single),
                          order=o, target=t) for o, s in scores.items()}, single


def road(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
         preprocess: PreprocessLike = None, *, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
         order: Order = "morf", noise: float = 0.01, seed: int | None = 0,
         generator: torch.Generator | None = None, batch_size: int = 32,
         logits: torch.Tensor | None = None) -> ROADResult:
    r"""ROAD (Rong et al. 2022, arXiv:2202.00449): class probability after removing ``p`` % of the pixels.

    For each percentile ``p`` the ``round(p/100 · H·W)`` most (``order="morf"``) or least
    (``"lerf"``) relevant pixels of the pixel image (after ``preprocess.geometry``) are
    filled by :func:`noisy_linear_imputation`, the image is normalised and
    ``Y_c = softmax(S)_c`` recorded. MoRF: lower is better; LeRF: higher is better. See the
    module docstring for the departures from pytorch-grad-cam's ``ROADMostRelevantFirst``
    / ``ROADLeastRelevantFirst`` (its percentile is the share *kept*; its default
    ``return_diff=True`` value is ``scores − original``).

    Parameters
    ----------
    model, image, saliency_map, target, preprocess
        As in :func:`camwidgets.core.metrics.confidence_change`: one image ``(3, H, W)``
        and map ``(H, W)``, or a batch.
    percentiles : sequence of float, default (10, 20, …, 90)
        Shares of pixels removed, in percent, each in ``[0, 100)``.
    order : {"morf", "lerf"}, default "morf"
    noise : float, default 0.01
        Standard deviation of the imputation noise in pixel units (the image is in
        ``[0, 1]``); 0 switches it off.
    seed : int or None, default 0
        Seed of the noise when ``generator`` is None: the same call gives the same values.
    generator : torch.Generator, optional
        Draws one ``(3, H, W)`` standard-normal field per image, in image order.
    batch_size : int, default 32
        Imputed images per forward pass (images × percentiles are batched together).
    logits : Tensor (N, num_classes), optional
        The unperturbed images' logits if a pass already gave them.

    Returns
    -------
    ROADResult
        ``scores`` ``(P,)`` or ``(N, P)``, ``percentiles``, ``original``, ``order``, ``target``;
        ``.mean`` averages over the percentiles.
    """
    res, _ = _road_run(model, image, saliency_map, target, preprocess, percentiles, (_check_order(order),), noise,
                       seed, generator, batch_size, logits)
    return res[order]


def _combine(morf: Value, lerf: Value) -> Value:
    if np.ndim(morf) == 0:
        return (float(lerf) - float(morf)) / 2.0
    return (np.asarray(lerf, dtype=np.float64) - np.asarray(morf, dtype=np.float64)) / 2.0


def road_combined(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
                  preprocess: PreprocessLike = None, *, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                  noise: float = 0.01, seed: int | None = 0, generator: torch.Generator | None = None,
                  batch_size: int = 32, logits: torch.Tensor | None = None) -> ROADCombinedResult:
    r"""ROAD combined: ``(mean_p LeRF(p) − mean_p MoRF(p)) / 2``. Higher is better, in ``[-0.5, 0.5]``.

    pytorch-grad-cam's ``ROADCombined`` (its factor 1/2 and sign kept, so the values are
    the same). MoRF and LeRF run in the same batches, on the same noise field per image.
    Parameters as in :func:`road`.

    Returns
    -------
    ROADCombinedResult
        ``combined`` (float or ``(N,)``), ``morf`` and ``lerf`` (:class:`ROADResult`).
    """
    res, _ = _road_run(model, image, saliency_map, target, preprocess, percentiles, ("morf", "lerf"), noise,
                       seed, generator, batch_size, logits)
    return ROADCombinedResult(combined=_combine(res["morf"].mean, res["lerf"].mean), morf=res["morf"],
                              lerf=res["lerf"])


# ----------------------------------------------------------------------------------------
# ARCC
# ----------------------------------------------------------------------------------------
def arcc_formula(coherency: Any, complexity: Any, road_combined: Any) -> np.ndarray:
    r"""``3 / (1/Coherency + 1/(1 − Complexity) + 1/clip(2·ROAD, 0, 1))``, 0 when any term is 0.

    pytorch-grad-cam's ``ARCC`` adds ``1e-8`` to each denominator instead of the exact zero
    rule; the two agree to about 1e-8 whenever every term is positive.
    """
    road_term = np.clip(2.0 * np.asarray(road_combined, dtype=np.float64), 0.0, 1.0)
    parts = np.stack(np.broadcast_arrays(np.asarray(coherency, dtype=np.float64),
                                         1.0 - np.asarray(complexity, dtype=np.float64), road_term))
    with np.errstate(divide="ignore"):
        harmonic = 3.0 / np.sum(1.0 / np.where(parts > 0, parts, 1.0), axis=0)
    return np.asarray(np.where((parts > 0).all(axis=0), harmonic, 0.0), dtype=np.float64)


def arcc(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
         preprocess: PreprocessLike = None, *, explain_fn: ExplainFn | None = None,
         percentiles: Sequence[float] = DEFAULT_PERCENTILES, noise: float = 0.01, seed: int | None = 0,
         generator: torch.Generator | None = None, batch_size: int = 32) -> ARCCResult:
    r"""ARCC: harmonic mean of Coherency, 1 − Complexity and the ROAD gap (pytorch-grad-cam's ``ARCC``).

    .. math:: ARCC = 3\left(\frac{1}{\mathrm{Coherency}} + \frac{1}{1-\mathrm{Complexity}}
              + \frac{1}{\mathrm{clip}(2\,\mathrm{ROAD}, 0, 1)}\right)^{-1}

    with ROAD from :func:`road_combined` and Coherency / Complexity as in
    :func:`camwidgets.core.metrics.adcc`. Higher is better. **Not comparable with ADCC**:
    ADCC's third term is ``1 − AD/100`` (the probability kept by ``x ⊙ E``), ARCC's is
    the LeRF − MoRF gap of ROAD; the two scores rank maps differently and their values
    must not be set side by side. pytorch-grad-cam's ``ARCC`` defaults to
    ``road_percentiles=[20, 40, 60, 80]``; pass ``percentiles=(20, 40, 60, 80)`` for that
    grid (camwidgets uses ROAD's default grid, so that the ``road`` metric's passes are
    shared with ARCC in :func:`camwidgets.evaluate`).

    Parameters
    ----------
    model, image, saliency_map, target, preprocess, batch_size
        As in :func:`road`.
    explain_fn : callable, optional
        Recomputes the method's map on ``x ⊙ E``; see :func:`camwidgets.core.metrics.coherency`.
    percentiles, noise, seed, generator
        ROAD's settings, see :func:`road`.

    Returns
    -------
    ARCCResult
        ``arcc``, ``coherency``, ``complexity``, ``road`` and ``target``.
    """
    pre = as_preprocess(preprocess)
    p = _check_percentiles(percentiles)
    noise = _check_noise(noise)
    gen = _generator(seed, generator)
    pixels, maps, single = M._setup(model, image, saliency_map, pre, target)
    fn = M._resolve_explain_fn(explain_fn, saliency_map, model, pre, single)
    scorer = M._Scorer(model, pre, batch_size)
    with M._eval_mode(model):
        with torch.inference_mode():
            targets = M._resolve_targets(target, scorer.logits(pixels))
            scores = _road_scores(scorer, pixels, maps, targets, p, ("morf", "lerf"), noise, gen)
        coh = M._coherency_values(pixels, maps, targets, fn)
    road_value = (scores["lerf"].mean(axis=1) - scores["morf"].mean(axis=1)) / 2.0
    cx = maps.reshape(maps.shape[0], -1).mean(axis=1)
    return ARCCResult(
        arcc=M._unbatch(arcc_formula(coh, cx, road_value), single),
        coherency=M._unbatch(coh, single),
        complexity=M._unbatch(cx, single),
        road=M._unbatch(road_value, single),
        target=M._unbatch_target(targets, single),
    )

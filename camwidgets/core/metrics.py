r"""Faithfulness and localisation metrics for saliency maps (docs/methods.md, "Metrics").

Two families, one calling convention each.

**Model-based metrics** share the signature

``metric(model, image, saliency_map, target=None, preprocess=None, **params)``

- ``image``: a pixel image in ``[0, 1]`` -- anything :func:`camwidgets.core.image.load_image`
  accepts for one image -- or a batch: a 4-D tensor/array ``(N, 3, H, W)`` or a list of images.
- ``saliency_map``: the explanation ``E``, ``(H, W)`` for one image or ``(N, H, W)`` for a
  batch, numpy or torch, values in ``[0, 1]``; or a result object with a ``.map``
  attribute (any camwidgets result), or a list of those for a batch.
- ``target``: the class ``c``, an int (same class for every image), a list of ints (one
  per image) or None (the class the model predicts on the unmasked image).
- ``preprocess``: a :class:`camwidgets.core.preprocess.Preprocess`, or None for the
  identity (no resize, ``mean=0``, ``std=1``). It is applied as
  ``pixel image -> preprocess.geometry -> multiply by E in pixel space ->
  preprocess.normalize -> model``. The map must have the size the geometry produces.

They return one value per image: a Python ``float`` for one image, a float64 numpy
array ``(N,)`` for a batch (a batch of one gives an array of shape ``(1,)``). Curves come
back in :class:`CurveResult`. Dataset-level values are the means of the per-image ones.

All forward passes run under :func:`torch.inference_mode` with the model in eval mode,
in chunks of ``batch_size`` images; every module's train/eval flag is restored
afterwards, also when an error is raised. Scores are ``Y_c = softmax(S)_c`` (docs/methods.md's
notation: ``S`` logits, ``y = Y_c(x)``, ``o = Y_c(x ⊙ E)``).

**Map-only metrics** take ``(saliency_map, mask_or_box, **params)``: the ground truth
``G`` is a boolean mask with the map's shape or a box ``(x0, y0, x1, y1)`` of *inclusive*
pixel indices (the convention of :class:`camwidgets.datasets.Shapes` and
``torchvision.ops.masks_to_boxes``), or for a batch ``(N, H, W)`` masks / ``(N, 4)`` boxes.

Conventions compared with pytorch-grad-cam 1.5 (``pytorch_grad_cam.metrics``)
------------------------------------------------------------------------------
- ``DropInConfidence`` returns ``max(0, y - o)`` per image, *not* divided by ``y`` and not
  in percent; ``IncreaseInConfidence`` returns ``1[o > y]`` as 0/1. camwidgets follows the
  papers (Chattopadhay et al. 2018,
  arXiv:1710.11063; UnionCAM, Hu et al. 2024, §4.2): ``AD_i = 100 max(0, y - o) / y`` and
  ``IC_i = 100 · 1[o > y]``.
- Their score is whatever ``targets`` returns: logits with ``ClassifierOutputTarget``,
  softmax with ``ClassifierOutputSoftmaxTarget``. camwidgets always uses softmax.
- They multiply the *normalised* model input by the map (``input_tensor * cam``);
  camwidgets multiplies the pixel image and normalises afterwards, so a removed pixel is
  black rather than the dataset mean colour. The two agree when the normalisation is the
  identity (``preprocess=None``); the tests compare them under that convention.
- Their ``Complexity`` equals :func:`complexity`; their ``Coherency`` equals
  :func:`coherency` (Pearson with a ``1e-8`` guard there, an exact zero-variance rule here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._hooks import checkpoint, eval_mode, model_device
from .image import load_image
from .preprocess import Preprocess, PreprocessLike, as_preprocess

__all__ = [
    "ADCCResult",
    "ConfidenceChange",
    "CurveResult",
    "DiscriminationResult",
    "LocalisationResult",
    "adcc",
    "average_drop",
    "class_discrimination",
    "coherency",
    "complexity",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "increase_in_confidence",
    "insertion",
    "localisation",
    "over_all",
    "pointing_game",
    "saliency_score",
]

#: Anything accepted as a saliency map: array/tensor, an object with ``.map``, or a list of those.
MapLike = Any
#: ``int`` (one class for all images), a sequence of ints (one per image) or None (predicted class).
TargetLike = int | Sequence[int] | np.ndarray | torch.Tensor | None
#: Python float for one image, float64 array ``(N,)`` for a batch.
Value = float | np.ndarray
#: ``explain_fn(masked_pixel_image, target) -> map``: recomputes a method's map, see :func:`coherency`.
ExplainFn = Callable[[torch.Tensor, int], Any]
ExplainMany = Callable[[torch.Tensor, Sequence[int]], Sequence[Any]]

_RANGE_TOL = 1e-5


# ----------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ConfidenceChange:
    """Target-class probability before and after masking the image with its map.

    Attributes
    ----------
    original : float or ndarray (N,)
        ``y = softmax(S(x))_c`` on the unmasked image, in ``[0, 1]``.
    masked : float or ndarray (N,)
        ``o = softmax(S(x ⊙ E))_c`` with ``E`` multiplied in pixel space, in ``[0, 1]``.
    target : int or ndarray (N,)
        The class ``c`` used for each image.
    """

    original: Value
    masked: Value
    target: int | np.ndarray

    @property
    def average_drop(self) -> Value:
        """Per-image ``100 · max(0, y − o) / y`` (0 where ``y = 0``)."""
        return _unbatch(_ad(np.asarray(self.original), np.asarray(self.masked)), np.ndim(self.original) == 0)

    @property
    def increase_in_confidence(self) -> Value:
        """Per-image ``100 · 1[o > y]``."""
        return _unbatch(_ic(np.asarray(self.original), np.asarray(self.masked)), np.ndim(self.original) == 0)


@dataclass(frozen=True, eq=False)
class CurveResult:
    """A deletion or insertion curve (RISE) and its area under the curve.

    Attributes
    ----------
    auc : float or ndarray (N,)
        Trapezoid-rule area under ``curve`` over ``fractions`` (``[0, 1]``), in ``[0, 1]``.
    curve : ndarray (steps + 1,) or (N, steps + 1)
        ``Y_c`` after each step; entry 0 is the unperturbed (deletion) or fully
        baseline (insertion) image, the last entry the fully perturbed / revealed one.
    fractions : ndarray (steps + 1,)
        Fraction of pixels removed (deletion) or revealed (insertion) at each step:
        ``round(k · H·W / steps) / (H·W)`` for ``k = 0 … steps``, from 0 to 1.
    target : int or ndarray (N,)
        The class ``c`` used for each image.
    kind : str
        ``"deletion"`` or ``"insertion"``.
    """

    auc: Value
    curve: np.ndarray
    fractions: np.ndarray
    target: int | np.ndarray
    kind: str


@dataclass(frozen=True, eq=False)
class ADCCResult:
    """ADCC and its three components (Poppi et al. 2021, arXiv:2104.10252).

    Attributes
    ----------
    adcc : float or ndarray (N,)
        ``3 / (1/Coherency + 1/(1 − Complexity) + 1/(1 − AD/100))`` in ``[0, 1]``
        (0 when any component is 0).
    coherency : float or ndarray (N,)
        ``(Pearson(E, E') + 1) / 2`` in ``[0, 1]``.
    complexity : float or ndarray (N,)
        ``sum |E| / (H·W)`` in ``[0, 1]``.
    average_drop : float or ndarray (N,)
        Per-image Average Drop in percent, ``[0, 100]``.
    target : int or ndarray (N,)
        The class used.
    """

    adcc: Value
    coherency: Value
    complexity: Value
    average_drop: Value
    target: int | np.ndarray


@dataclass(frozen=True, eq=False)
class LocalisationResult:
    """Overlap of the thresholded map with the ground truth.

    As in Karthick & Karthick, 'From Tables to Pixels', §V; box IoU as in CAM (Zhou et al. 2016).

    Attributes
    ----------
    iou, precision, recall, f1 : float or ndarray (N,)
        Pixel-wise scores of ``P = E >= threshold`` against the mask ``G``, in ``[0, 1]``.
    box_iou : float or ndarray (N,)
        IoU between the bounding box of the largest connected component of ``P`` and the
        ground-truth box, in ``[0, 1]`` (0 when ``P`` is empty).
    predicted_box : tuple or list of tuples
        ``(x0, y0, x1, y1)`` inclusive box of that component, None when ``P`` is empty.
    """

    iou: Value
    precision: Value
    recall: Value
    f1: Value
    box_iou: Value
    predicted_box: Any


@dataclass(frozen=True)
class DiscriminationResult:
    """Where a map of class ``c`` puts its evidence when the image holds objects of other classes.

    Attributes
    ----------
    energy_target, energy_other : float or ndarray (N,)
        Share of the map's energy inside the explained class's object ``G_c`` and inside the
        other objects ``G_o`` (their union), in ``[0, 1]``; 0 for an all-zero map.
    pointing_target, pointing_other : float or ndarray (N,)
        1.0 when the map's maximum lies on ``G_c`` (``G_o``), else 0.0.
    discrimination : float or ndarray (N,)
        ``energy_target − energy_other``, in ``[−1, 1]``: 1 when all the energy is on the
        explained object, −1 when all of it is on the other class's object, 0 for a map that
        does not tell the two apart (or that has no energy).
    """

    energy_target: Value
    energy_other: Value
    pointing_target: Value
    pointing_other: Value
    discrimination: Value


# ----------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------
def _unbatch(values: np.ndarray, single: bool) -> Value:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.reshape(-1)[0]) if single else arr


def _unbatch_target(targets: torch.Tensor, single: bool) -> int | np.ndarray:
    arr = targets.cpu().numpy().astype(np.int64)
    return int(arr[0]) if single else arr


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _check_preprocess(preprocess: Any) -> Preprocess | None:
    """``preprocess`` as a :class:`Preprocess` (torchvision transforms converted); a clear error otherwise."""
    return as_preprocess(preprocess)


def _is_batch_image(image: Any) -> bool:
    if isinstance(image, (torch.Tensor, np.ndarray)):
        return image.ndim == 4
    return isinstance(image, (list, tuple))


def _prepare_images(image: Any, preprocess: Preprocess | None) -> tuple[torch.Tensor, bool]:
    """Pixel images after geometry, ``(N, 3, H, W)`` float32 in [0, 1], and whether one image was given."""
    preprocess = _check_preprocess(preprocess)
    single = not _is_batch_image(image)
    items = [image] if single else list(image)
    if not items:
        raise ValueError("The batch of images is empty; pass at least one image.")
    geom = preprocess.geometry if preprocess is not None else _identity
    out = []
    for k, item in enumerate(items):
        try:
            px = load_image(item)
        except ValueError as err:
            raise ValueError(f"Image {k} of the batch: {err}" if not single else str(err)) from None
        out.append(geom(px))
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) != 1:
        raise ValueError(
            f"The images of the batch have different sizes after preprocessing ({sorted(shapes)}); "
            "pass a Preprocess whose geometry gives one size, or evaluate them one by one."
        )
    return torch.stack(out).float(), single


def _map_array(m: Any, what: str) -> np.ndarray:
    if hasattr(m, "map") and not isinstance(m, (np.ndarray, torch.Tensor)):
        m = m.map
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().float().numpy()
    try:
        arr = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} is a {type(m).__name__}; pass a numpy array, a tensor or a result with a .map."
        ) from None
    return arr


def _prepare_maps(saliency_map: MapLike, n: int, hw: tuple[int, int] | None,
                  geometry_note: str = "") -> np.ndarray:
    """Validated maps ``(N, H, W)`` float64 in [0, 1]."""
    arr: np.ndarray
    if isinstance(saliency_map, (list, tuple)):
        parts = [_map_array(m, f"Saliency map {k}") for k, m in enumerate(saliency_map)]
        if len({p.shape for p in parts}) > 1:
            raise ValueError(
                f"The saliency maps of the batch have different shapes {sorted({p.shape for p in parts})}; "
                "pass one (H, W) map per image, all of the preprocessed image's size."
            )
        arr = np.stack(parts) if parts else np.zeros((0,))
    else:
        arr = _map_array(saliency_map, "The saliency map")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"The saliency map has shape {arr.shape}; expected (H, W) for one image or (N, H, W) for a batch."
        )
    if arr.shape[0] != n:
        raise ValueError(
            f"Got {arr.shape[0]} saliency map(s) for {n} image(s); pass one (H, W) map per image."
        )
    if hw is not None and (arr.shape[1], arr.shape[2]) != hw:
        raise ValueError(
            f"The saliency map is {arr.shape[1]}x{arr.shape[2]} but the image is {hw[0]}x{hw[1]}"
            f"{geometry_note}; compute the map on the same preprocessed image, "
            f"or resize it to {hw[0]}x{hw[1]}."
        )
    if not np.isfinite(arr).all():
        raise ValueError("The saliency map contains NaN or infinite values; normalise it to [0, 1] first.")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
        raise ValueError(
            f"The saliency map has values in [{lo:.4g}, {hi:.4g}]; metrics need a map in [0, 1]. "
            "Min-max normalise it first (camwidgets results already are)."
        )
    return np.clip(arr, 0.0, 1.0)


# Every module in eval mode for the block, each module's own flag restored after (the core's).
_eval_mode = eval_mode


def _check_batch_size(batch_size: int) -> int:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    return int(batch_size)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"The model returned {shape} for a batch of {x.shape[0]}; metrics need logits of shape "
            "(N, num_classes). Wrap the model so that it returns the classification logits."
        )
    return out.float()


class _Scorer:
    """Runs ``normalize -> model -> softmax`` on pixel batches, in chunks, on the model's device."""

    def __init__(self, model: nn.Module, preprocess: Preprocess | None, batch_size: int) -> None:
        self.model = model
        self.normalize = preprocess.normalize if preprocess is not None else _identity
        self.batch_size = _check_batch_size(batch_size)
        self.device = model_device(model)
        self.forward_passes = 0

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        outs = []
        for s in range(0, pixels.shape[0], self.batch_size):
            outs.append(self._run(pixels[s:s + self.batch_size]).cpu())
        return torch.cat(outs)

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        checkpoint()
        self.forward_passes += 1
        return _logits(self.model, self.normalize(pixels.to(self.device)))

    def probs(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``softmax(S)_c`` for each ``(pixels (B,3,H,W), targets (B,))`` batch, concatenated (float64)."""
        outs = []
        for pixels, targets in batches:
            p = torch.softmax(self._run(pixels), dim=1)
            outs.append(p.gather(1, targets.view(-1, 1).to(p.device)).squeeze(1).double().cpu())
        return torch.cat(outs) if outs else torch.zeros(0, dtype=torch.float64)

    def chunks(self, pixels: torch.Tensor, targets: torch.Tensor
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, pixels.shape[0], self.batch_size):
            yield pixels[s:s + self.batch_size], targets[s:s + self.batch_size]


def _target_indices(target: TargetLike, n: int) -> torch.Tensor | None:
    """``target`` as class indices ``(n,)`` (None for None), checked without the model: type, count, sign."""
    if target is None:
        return None
    fix = "pass an int class index, a list of one per image, or None for the predicted class."
    if isinstance(target, (bool, np.bool_)):
        raise ValueError(f"target must be an int class index, a list of them or None, got {target!r}; {fix}")
    if isinstance(target, (int, np.integer)):
        t = torch.full((n,), int(target), dtype=torch.long)
    else:
        try:
            arr = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"target must be an int, a list of ints or None, got {target!r}; {fix}") from None
        if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
            raise ValueError(f"target must hold integer class indices, got {target!r}; {fix}")
        if arr.size != n:
            raise ValueError(
                f"Got {arr.size} targets for {n} image(s); pass one class per image, or one int."
            )
        t = torch.as_tensor(arr.astype(np.int64))
    if bool((t < 0).any()):
        raise ValueError(
            f"target class {int(t[t < 0][0])} is out of range: class indices start at 0; "
            "pass a class index >= 0 (or None for the predicted class)."
        )
    return t


def _resolve_targets(target: TargetLike, logits: torch.Tensor) -> torch.Tensor:
    n, num_classes = logits.shape
    t = _target_indices(target, n)
    if t is None:
        return logits.argmax(dim=1)
    bad = t >= num_classes
    if bool(bad.any()):
        raise ValueError(
            f"target class {int(t[bad][0])} is out of range for a model with {num_classes} classes; "
            f"pass a class index in 0..{num_classes - 1} (or None for the predicted class)."
        )
    return t


def _setup(model: nn.Module, image: Any, saliency_map: MapLike, preprocess: Preprocess | None,
           target: TargetLike = None) -> tuple[torch.Tensor, np.ndarray, bool]:
    """Images, maps and the target checked before any model pass (the class range needs the logits)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got a {type(model).__name__}.")
    pixels, single = _prepare_images(image, preprocess)
    note = " after preprocess.geometry" if preprocess is not None else ""
    maps = _prepare_maps(saliency_map, pixels.shape[0], (pixels.shape[2], pixels.shape[3]), note)
    _target_indices(target, pixels.shape[0])
    return pixels, maps, single


def _given_logits(logits: Any, n: int, what: str) -> torch.Tensor | None:
    """``logits`` of the unmasked image(s) passed by a caller that already ran them, checked (None: not given)."""
    if logits is None:
        return None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor (N, num_classes) for the {n} image(s), got "
                         f"{shape}; pass None to let {what} run the unmasked images itself.")
    return logits.detach().float().cpu()


def _ad(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    o = np.asarray(o, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(y > 0, np.maximum(0.0, y - o) / np.where(y > 0, y, 1.0), 0.0)
    return 100.0 * out


def _ic(y: np.ndarray, o: np.ndarray) -> np.ndarray:
    return 100.0 * (np.asarray(o, dtype=np.float64) > np.asarray(y, dtype=np.float64)).astype(np.float64)


def _confidence(scorer: _Scorer, pixels: torch.Tensor, maps: np.ndarray, target: TargetLike,
                logits: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """``(y, o, targets)`` with ``o`` on ``pixels * E`` (pixel space); ``logits`` of ``pixels`` if known."""
    logits = scorer.logits(pixels) if logits is None else logits.detach().float().cpu()
    targets = _resolve_targets(target, logits)
    y = torch.softmax(logits, dim=1).gather(1, targets.view(-1, 1)).squeeze(1).double().numpy()
    masked = pixels * torch.from_numpy(maps).float().unsqueeze(1)
    o = scorer.probs(scorer.chunks(masked, targets)).numpy()
    return y, o, targets


# ----------------------------------------------------------------------------------------
# Average Drop / Increase in Confidence
# ----------------------------------------------------------------------------------------
def confidence_change(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
                      preprocess: PreprocessLike = None, *, batch_size: int = 32,
                      logits: torch.Tensor | None = None) -> ConfidenceChange:
    r"""Target probability on the image and on the image masked by its map.

    ``y = softmax(S(x))_c`` and ``o = softmax(S(x ⊙ E))_c`` where ``x ⊙ E`` multiplies the
    pixel image (after ``preprocess.geometry``) by ``E`` and then normalises. This is the
    quantity behind :func:`average_drop` and :func:`increase_in_confidence`.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits ``(N, C)``.
    image : image-like or batch
        ``(3, H, W)`` pixel image in ``[0, 1]`` (anything ``load_image`` accepts) or a batch
        ``(N, 3, H, W)`` / list of images.
    saliency_map : array ``(H, W)`` / ``(N, H, W)`` in ``[0, 1]``, or result(s) with ``.map``
        Must have the size of the preprocessed image.
    target : int, list of int or None
        Class ``c``; None uses the predicted class of the unmasked image.
    preprocess : Preprocess or None
        None is the identity (no resize, no normalisation).
    batch_size : int, default 32
        Images per forward pass.
    logits : Tensor (N, num_classes) or None
        The model's logits on the unmasked image(s), if a pass already gave them (e.g. an
        :class:`~camwidgets.core.explainer.Explainer`'s ``logits_tensor``): ``y`` is read from
        them and only the masked images run. They must come from the same model and
        preprocessing.

    Returns
    -------
    ConfidenceChange
        ``original`` (y), ``masked`` (o) and ``target``: floats for one image, arrays
        ``(N,)`` for a batch.

    Raises
    ------
    ValueError
        Map shape not matching the preprocessed image, map outside ``[0, 1]`` or NaN,
        class out of range, unreadable image.
    """
    preprocess = as_preprocess(preprocess)
    pixels, maps, single = _setup(model, image, saliency_map, preprocess, target)
    logits = _given_logits(logits, pixels.shape[0], "confidence_change")
    scorer = _Scorer(model, preprocess, batch_size)
    with _eval_mode(model), torch.inference_mode():
        y, o, targets = _confidence(scorer, pixels, maps, target, logits)
    return ConfidenceChange(_unbatch(y, single), _unbatch(o, single), _unbatch_target(targets, single))


def average_drop(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
                 preprocess: PreprocessLike = None, *, batch_size: int = 32) -> Value:
    r"""Average Drop (Chattopadhay et al. 2018, arXiv:1710.11063; UnionCAM §4.2), per image, in percent.

    .. math:: AD_i = 100 \cdot \frac{\max(0, y_i - o_i)}{y_i},\quad
              y = \mathrm{softmax}(S(x))_c,\ o = \mathrm{softmax}(S(x \odot E))_c

    The dataset's Average Drop is the mean of the per-image values (lower is better).
    ``x ⊙ E`` multiplies the *pixel* image (after geometry) by the map, then normalises.
    An image with ``y = 0`` scores 0 (nothing can drop).

    Parameters
    ----------
    model, image, saliency_map, target, preprocess, batch_size
        As in :func:`confidence_change`.

    Returns
    -------
    float or ndarray (N,)
        Values in ``[0, 100]``; a float for one image, an array for a batch.

    Notes
    -----
    pytorch-grad-cam's ``DropInConfidence`` returns ``max(0, y - o)`` (not divided by ``y``,
    not in percent), on the score its ``targets`` choose (logits unless
    ``ClassifierOutputSoftmaxTarget``), masking the *normalised* input. With
    ``ClassifierOutputSoftmaxTarget`` and an identity normalisation,
    ``DropInConfidence = AD_i · y / 100``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> average_drop(model, torch.rand(3, 4, 4), np.ones((4, 4)))  # the whole image kept
    0.0
    """
    res = confidence_change(model, image, saliency_map, target, preprocess, batch_size=batch_size)
    return res.average_drop


def increase_in_confidence(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
                           preprocess: PreprocessLike = None, *, batch_size: int = 32) -> Value:
    r"""Increase in Confidence (a.k.a. Average Increase; Chattopadhay et al. 2018), per image, in percent.

    .. math:: IC_i = 100 \cdot \mathbf{1}[o_i > y_i]

    with ``y``, ``o`` as in :func:`average_drop`; the dataset's IC is the mean (higher is
    better), i.e. the percentage of images whose confidence rises when only the map is shown.

    Parameters
    ----------
    model, image, saliency_map, target, preprocess, batch_size
        As in :func:`confidence_change`.

    Returns
    -------
    float or ndarray (N,)
        0 or 100 per image.

    Notes
    -----
    pytorch-grad-cam's ``IncreaseInConfidence`` returns 0/1 (not percent), masking the
    normalised input; with ``ClassifierOutputSoftmaxTarget`` and an identity
    normalisation it equals ``IC_i / 100``.
    """
    res = confidence_change(model, image, saliency_map, target, preprocess, batch_size=batch_size)
    return res.increase_in_confidence


# ----------------------------------------------------------------------------------------
# Deletion / insertion (RISE)
# ----------------------------------------------------------------------------------------
def _gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)``; radius ``int(3σ + 0.5)``, edges replicated.

    Equals ``scipy.ndimage.gaussian_filter(mode="nearest", truncate=3.0)`` per channel.
    """
    if sigma <= 0:
        return pixels.clone()
    radius = int(3.0 * sigma + 0.5)
    xs = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    k = (k / k.sum()).to(pixels.dtype)
    n, c, h, w = pixels.shape
    x = pixels.reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(n, c, h, w)


def _baseline_pixels(pixels: torch.Tensor, baseline: Any, sigma: float) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline == "black":
            return torch.zeros_like(pixels)
        if baseline == "blur":
            return _gaussian_blur(pixels, float(sigma))
        if baseline == "mean":
            return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels).clone()
        raise ValueError(
            f"baseline {baseline!r} is not known; use 'black', 'blur', 'mean', a float in [0, 1] "
            "or a pixel image (3, H, W) in [0, 1]."
        )
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        if not 0.0 <= float(baseline) <= 1.0:
            raise ValueError(f"A constant baseline must be a pixel value in [0, 1], got {baseline}.")
        return torch.full_like(pixels, float(baseline))
    if isinstance(baseline, (torch.Tensor, np.ndarray)):
        b = (torch.from_numpy(np.asarray(baseline, dtype=np.float32)) if isinstance(baseline, np.ndarray)
             else baseline.detach().cpu().float())
        if b.dim() == 3:
            b = b.unsqueeze(0)
        if b.dim() != 4 or b.shape[1:] != pixels.shape[1:] or b.shape[0] not in (1, pixels.shape[0]):
            raise ValueError(
                f"The baseline image has shape {tuple(b.shape)}; it must be (3, H, W) or (N, 3, H, W) with "
                f"the preprocessed image's size {tuple(pixels.shape[1:])}."
            )
        if not torch.isfinite(b).all() or float(b.min()) < 0 or float(b.max()) > 1:
            raise ValueError("The baseline image must be finite pixels in [0, 1].")
        return b.expand_as(pixels).clone()
    raise ValueError(f"baseline must be a string, a float or an image, got a {type(baseline).__name__}.")


def _step_counts(n_pixels: int, steps: int) -> np.ndarray:
    """``round(k · n / steps)`` for ``k = 0..steps`` (halves rounded up), exact integers."""
    k = np.arange(steps + 1, dtype=np.int64)
    return (2 * k * n_pixels + steps) // (2 * steps)


def _trapezoid(curve: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    return np.sum((curve[..., 1:] + curve[..., :-1]) * 0.5 * np.diff(fractions), axis=-1)


def _pixel_ranks(maps: np.ndarray) -> torch.Tensor:
    """Rank of each pixel (0 = most salient), ties in raster order. ``(N, H·W)`` long."""
    flat = torch.from_numpy(maps.reshape(maps.shape[0], -1))
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order).contiguous())
    return ranks


def _curves(scorer: _Scorer, pixels: torch.Tensor, maps: np.ndarray, targets: torch.Tensor,
            first: torch.Tensor, second: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Y_c of ``where(rank < count_k, first, second)`` for all images and steps, batched."""
    n, _, h, w = pixels.shape
    counts_np = _step_counts(h * w, steps)
    counts = torch.from_numpy(counts_np)
    ranks = _pixel_ranks(maps)
    total = n * (steps + 1)
    bs = scorer.batch_size

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for s in range(0, total, bs):
            idx = torch.arange(s, min(s + bs, total))
            ii, kk = idx // (steps + 1), idx % (steps + 1)
            sel = (ranks[ii] < counts[kk].unsqueeze(1)).view(-1, 1, h, w)
            yield torch.where(sel, first[ii], second[ii]), targets[ii]

    probs = scorer.probs(batches()).numpy().reshape(n, steps + 1)
    return probs, counts_np / float(h * w)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
        raise ValueError(
            f"steps must be a positive integer (50 live, 224 for evaluation), got {steps}."
        )
    return int(steps)


def _curve_metric(kind: str, model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike,
                  preprocess: Preprocess | None, steps: int, baseline: Any, sigma: float,
                  batch_size: int, logits: torch.Tensor | None = None) -> CurveResult:
    preprocess = as_preprocess(preprocess)
    steps = _check_steps(steps)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0 (pixels), got {sigma}.")
    pixels, maps, single = _setup(model, image, saliency_map, preprocess, target)
    logits = _given_logits(logits, pixels.shape[0], kind)
    base = _baseline_pixels(pixels, baseline, sigma)
    scorer = _Scorer(model, preprocess, batch_size)
    with _eval_mode(model), torch.inference_mode():
        targets = _resolve_targets(target, scorer.logits(pixels) if logits is None else logits)
        first, second = (base, pixels) if kind == "deletion" else (pixels, base)
        curve, fractions = _curves(scorer, pixels, maps, targets, first, second, steps)
    auc = _trapezoid(curve, fractions)
    return CurveResult(
        auc=_unbatch(auc, single),
        curve=curve[0] if single else curve,
        fractions=fractions,
        target=_unbatch_target(targets, single),
        kind=kind,
    )


def deletion(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
             preprocess: PreprocessLike = None, *, steps: int = 50, baseline: Any = "black",
             sigma: float = 5.0, batch_size: int = 32, logits: torch.Tensor | None = None) -> CurveResult:
    r"""Deletion curve and AUC (Petsiuk et al. 2018, RISE, arXiv:1806.07421; UnionCAM §4.2). Lower is better.

    Pixels are removed in order of decreasing ``E`` (most salient first; ties in raster
    order) and replaced by the baseline. After step ``k`` (``k = 0 … steps``) the
    ``round(k · H·W / steps)`` most salient pixels are removed, all three channels
    together, and ``Y_c = softmax(S)_c`` is recorded. The AUC is the trapezoid rule over
    the removed fraction on ``[0, 1]``:

    .. math:: AUC = \sum_k \tfrac{1}{2}(Y_k + Y_{k+1})(f_{k+1} - f_k)

    Parameters
    ----------
    model, image, saliency_map, target, preprocess
        As in :func:`confidence_change`; pixels are removed in pixel space, after
        ``preprocess.geometry`` and before ``preprocess.normalize``.
    steps : int, default 50
        Number of steps (50 live, 224 for evaluation); ``steps + 1`` forward passes
        per image.
    baseline : {"black", "blur", "mean"}, float or image, default "black"
        What a removed pixel becomes: pixel zeros, the Gaussian-blurred image (``sigma``),
        the image's per-channel mean colour, a constant grey level in ``[0, 1]`` or a
        given pixel image ``(3, H, W)``.
    sigma : float, default 5.0
        Gaussian standard deviation in pixels, used by ``baseline="blur"``.
    batch_size : int, default 32
        Perturbed images per forward pass; the steps of all images are batched together.
    logits : Tensor (N, num_classes) or None
        The unmasked image(s)' logits when a pass already gave them (as in
        :func:`confidence_change`): the class is then resolved and checked from them, and
        only the perturbed images run. Without them one more forward pass of the image(s)
        does that.

    Returns
    -------
    CurveResult
        ``auc`` (float or ``(N,)``), ``curve`` ``(steps + 1,)`` or ``(N, steps + 1)``, ``fractions``.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    >>> res = deletion(model, torch.rand(3, 4, 4), np.random.rand(4, 4), steps=4)
    >>> res.curve.shape, res.fractions.tolist()
    ((5,), [0.0, 0.25, 0.5, 0.75, 1.0])
    """
    return _curve_metric("deletion", model, image, saliency_map, target, preprocess, steps, baseline,
                         sigma, batch_size, logits)


def insertion(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
              preprocess: PreprocessLike = None, *, steps: int = 50, baseline: Any = "blur",
              sigma: float = 5.0, batch_size: int = 32, logits: torch.Tensor | None = None) -> CurveResult:
    r"""Insertion curve and AUC (Petsiuk et al. 2018, RISE, arXiv:1806.07421; UnionCAM §4.2). Higher is better.

    Starts from the baseline image -- by default a Gaussian-blurred copy of the image
    (``sigma`` pixels, as RISE does; a black start would make most classifiers' first
    steps meaningless) -- and reveals the original pixels in order of decreasing ``E``
    (ties in raster order): after step ``k`` the ``round(k · H·W / steps)`` most salient
    pixels are the original ones. ``Y_c`` per step; AUC by the trapezoid rule over the
    revealed fraction on ``[0, 1]``.

    The blur is separable Gaussian with standard deviation ``sigma`` pixels, kernel radius
    ``int(3 σ + 0.5)`` and replicated edges (``scipy.ndimage.gaussian_filter`` with
    ``mode="nearest", truncate=3``). RISE's reference code uses σ = 5 on a truncated
    11 × 11 kernel at 224 px.

    Parameters
    ----------
    model, image, saliency_map, target, preprocess
        As in :func:`confidence_change`.
    steps : int, default 50
        Number of steps; ``steps + 1`` forward passes per image.
    baseline : {"blur", "black", "mean"}, float or image, default "blur"
        The starting image, as in :func:`deletion`.
    sigma : float, default 5.0
        Blur standard deviation in pixels (``baseline="blur"``); 0 means no blur.
    batch_size : int, default 32
        Perturbed images per forward pass.
    logits : Tensor (N, num_classes) or None
        The unmasked image(s)' logits, if known (see :func:`deletion`).

    Returns
    -------
    CurveResult
        ``auc``, ``curve``, ``fractions`` as in :func:`deletion`.
    """
    return _curve_metric("insertion", model, image, saliency_map, target, preprocess, steps, baseline,
                         sigma, batch_size, logits)


def over_all(insertion_result: CurveResult | Value, deletion_result: CurveResult | Value) -> Value:
    r"""Over-all score ``AUC(insertion) − AUC(deletion)`` (UnionCAM, Hu et al. 2024, §4.2, Table 3). Higher is better.

    Parameters
    ----------
    insertion_result, deletion_result : CurveResult, float or ndarray (N,)
        Results of :func:`insertion` and :func:`deletion` (or their AUCs).

    Returns
    -------
    float or ndarray (N,)
        Values in ``[-1, 1]``.
    """
    ins = insertion_result.auc if isinstance(insertion_result, CurveResult) else insertion_result
    dele = deletion_result.auc if isinstance(deletion_result, CurveResult) else deletion_result
    if np.ndim(ins) == 0 and np.ndim(dele) == 0:
        return float(ins) - float(dele)
    a, b = np.asarray(ins, dtype=np.float64), np.asarray(dele, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"insertion has {a.shape} values and deletion {b.shape}; pass results of one batch.")
    return a - b


# ----------------------------------------------------------------------------------------
# ADCC: coherency, complexity
# ----------------------------------------------------------------------------------------
def complexity(saliency_map: MapLike) -> Value:
    r"""Complexity of a map: its L1 norm per pixel (Poppi et al. 2021; pytorch-grad-cam ``Complexity``).

    .. math:: \mathrm{Complexity}(E) = \frac{1}{HW} \sum_{ij} |E_{ij}|

    Parameters
    ----------
    saliency_map : array ``(H, W)`` or ``(N, H, W)`` in ``[0, 1]``, or result(s) with ``.map``

    Returns
    -------
    float or ndarray (N,)
        In ``[0, 1]``: 0 for an empty map, 1 for the all-ones map (lower is simpler).
    """
    arr = _as_map_batch(saliency_map)
    single = arr.shape[0] == 1 and not _looks_batched(saliency_map)
    return _unbatch(np.abs(arr).reshape(arr.shape[0], -1).mean(axis=1), single)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of ``(N, P)`` arrays; 0 where either row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    num = (a * b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.clip(r, -1.0, 1.0)


def _explain_fn_from_result(result: Any, model: nn.Module, preprocess: Preprocess | None) -> ExplainFn:
    """Build ``explain_fn`` that re-runs the method that produced ``result``.

    The result says which method made it (``.method``, e.g. ``"gradcam"``), with which
    parameters (``.params``) and on which layer(s) (``.layer``), as
    :class:`camwidgets.core.results.CAMResult` does. The masked image is already through
    the geometry, so the re-run uses a Preprocess with the same normalisation and no
    geometry.
    """
    method = getattr(result, "method", None)
    if not isinstance(method, str):
        raise ValueError(
            "coherency/ADCC needs the method's map recomputed on x ⊙ E: pass explain_fn="
            "lambda masked_image, target: <map of the same method>, or a camwidgets result "
            "(with .method) as saliency_map."
        )
    from .explainer import Explainer  # the engine; imported only when a result is re-run

    norm_only = Preprocess(mean=preprocess.mean, std=preprocess.std) if preprocess is not None else None
    params = dict(getattr(result, "params", None) or {})
    layer = getattr(result, "layer", None)
    candidates = getattr(result, "candidate_layers", None)
    layers: Any = "auto"
    if candidates:  # I-CAM: the same candidate list
        layers = list(candidates)
    elif isinstance(layer, str):
        layers = [layer]
    elif isinstance(layer, tuple) and layer:
        layers = list(layer)

    def via_explainer(masked: torch.Tensor, target: int) -> Any:
        ex = Explainer(model, masked, target=target, layers=layers, preprocess=norm_only)
        fn = getattr(ex, method, None)
        if not callable(fn):
            raise ValueError(
                f"The Explainer has no method {method!r} to recompute the map; pass explain_fn=."
            )
        return fn(**params)
    return via_explainer


def _coherency_values(pixels: torch.Tensor, maps: np.ndarray, targets: torch.Tensor,
                      explain_fn: ExplainFn | None, explain_many: ExplainMany | None = None) -> np.ndarray:
    """``(ρ(E, E') + 1) / 2`` per image; ``E'`` from ``explain_fn`` per image, or ``explain_many`` once for all."""
    h, w = maps.shape[1:]
    recomputed = []
    if explain_many is not None:
        masked_all = pixels * torch.from_numpy(maps).float().unsqueeze(1)
        with torch.inference_mode(False), torch.enable_grad():
            news = list(explain_many(masked_all, [int(t) for t in targets]))
        if len(news) != pixels.shape[0]:
            raise ValueError(f"explain_many returned {len(news)} maps for {pixels.shape[0]} masked images.")
    elif explain_fn is None:
        raise ValueError("coherency needs explain_fn (or explain_many) to re-run the method on x ⊙ E.")
    else:
        news = []
        for i in range(pixels.shape[0]):
            masked = (pixels[i] * torch.from_numpy(maps[i]).float()).clone()
            with torch.inference_mode(False), torch.enable_grad():
                news.append(explain_fn(masked, int(targets[i])))
    for new in news:
        arr = _map_array(new, "The map returned by explain_fn")
        if arr.shape != (h, w):
            raise ValueError(
                f"explain_fn returned a map of shape {arr.shape}; it must return the same method's "
                f"(H, W) = ({h}, {w}) map of the masked image it is given."
            )
        if not np.isfinite(arr).all():
            raise ValueError("explain_fn returned a map with NaN or infinite values.")
        recomputed.append(arr)
    rho = _pearson(maps.reshape(maps.shape[0], -1), np.stack(recomputed).reshape(maps.shape[0], -1))
    return (rho + 1.0) / 2.0


def _resolve_explain_fn(explain_fn: ExplainFn | None, saliency_map: MapLike, model: nn.Module,
                        preprocess: Preprocess | None, single: bool) -> ExplainFn:
    if explain_fn is not None:
        if not callable(explain_fn):
            raise ValueError("explain_fn must be a callable (masked_pixel_image, target) -> map.")
        return explain_fn
    src = saliency_map if single else (saliency_map[0] if isinstance(saliency_map, (list, tuple)) else None)
    if src is None or not hasattr(src, "map") or isinstance(src, (np.ndarray, torch.Tensor)):
        raise ValueError(
            "coherency/ADCC needs the method's map recomputed on x ⊙ E: pass explain_fn="
            "lambda masked_image, target: <map of the same method>, or camwidgets result object(s) "
            "as saliency_map."
        )
    return _explain_fn_from_result(src, model, preprocess)


def coherency(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
              preprocess: PreprocessLike = None, *, explain_fn: ExplainFn | None = None,
              batch_size: int = 32, logits: torch.Tensor | None = None,
              explain_many: ExplainMany | None = None) -> Value:
    r"""Coherency (Poppi et al. 2021): does the method explain ``x ⊙ E`` the way it explained ``x``?

    .. math:: \mathrm{Coherency} = \frac{\rho(E, E') + 1}{2}, \quad E' = \mathrm{method}(x \odot E, c)

    where ``ρ`` is the Pearson correlation over pixels (0 when either map is constant;
    pytorch-grad-cam's ``Coherency`` adds ``1e-8`` to the denominator, the same up to that
    guard) and ``x ⊙ E`` is the pixel image (after geometry) times ``E``.

    Parameters
    ----------
    model, image, saliency_map, target, preprocess, batch_size
        As in :func:`confidence_change` (the model is only run to find the predicted class
        when ``target`` is None).
    explain_fn : callable, optional
        ``explain_fn(masked_pixel_image, target) -> map``: the same method run on the
        masked pixel image ``(3, H, W)`` in ``[0, 1]`` (already through the geometry: pass
        it to the method with normalisation only) for class ``target`` (int); returns an
        ``(H, W)`` map (array, tensor or result with ``.map``). Gradients are enabled
        while it runs. If omitted, ``saliency_map`` must be camwidgets result object(s)
        (:class:`camwidgets.core.results.CAMResult`): ``Explainer(model, x ⊙ E,
        target=c, layers=[result.layer], preprocess=<normalisation only>)`` is built and
        ``getattr(explainer, result.method)(**result.params)`` re-run (I-CAM keeps its
        ``candidate_layers``). For a batch, the first result's method is used for all.
    logits : Tensor (N, num_classes) or None
        The unmasked image(s)' logits, if known: with ``target`` None the class is read
        from them (else one forward pass finds it), and a given class is range-checked
        against them.
    explain_many : callable, optional
        ``explain_many(masked_pixel_images (N, 3, H, W), targets) -> N maps``: the method
        re-run on every masked image at once (e.g. through :meth:`Explainer.batch`, one
        batched pass), used instead of ``explain_fn``.

    Returns
    -------
    float or ndarray (N,)
        In ``[0, 1]`` (higher is better).
    """
    preprocess = as_preprocess(preprocess)
    pixels, maps, single = _setup(model, image, saliency_map, preprocess, target)
    logits = _given_logits(logits, pixels.shape[0], "coherency")
    if explain_many is not None and not callable(explain_many):
        raise ValueError("explain_many must be a callable (masked_pixel_images, targets) -> maps.")
    fn = None if explain_many is not None else _resolve_explain_fn(explain_fn, saliency_map, model, preprocess,
                                                                    single)
    scorer = _Scorer(model, preprocess, batch_size)
    with _eval_mode(model):
        with torch.inference_mode():
            targets = _resolve_targets(target, scorer.logits(pixels) if logits is None else logits)
        values = _coherency_values(pixels, maps, targets, fn, explain_many)
    return _unbatch(values, single)


def _adcc_formula(coh: np.ndarray, cx: np.ndarray, ad: np.ndarray) -> np.ndarray:
    parts = np.stack([coh, 1.0 - cx, 1.0 - ad / 100.0])
    with np.errstate(divide="ignore"):
        harmonic = 3.0 / np.sum(1.0 / np.where(parts > 0, parts, 1.0), axis=0)
        out = np.where((parts > 0).all(axis=0), harmonic, 0.0)
    return np.asarray(out, dtype=np.float64)


def adcc(model: nn.Module, image: Any, saliency_map: MapLike, target: TargetLike = None,
         preprocess: PreprocessLike = None, *, explain_fn: ExplainFn | None = None,
         batch_size: int = 32) -> ADCCResult:
    r"""ADCC: harmonic mean of Average Drop, Coherency and Complexity (Poppi et al. 2021, arXiv:2104.10252).

    .. math:: ADCC = 3\left(\frac{1}{\mathrm{Coherency}} + \frac{1}{1-\mathrm{Complexity}}
              + \frac{1}{1-AD/100}\right)^{-1}

    per image, with AD from :func:`average_drop`, Coherency from :func:`coherency` and
    Complexity from :func:`complexity`; 0 when any of the three terms is 0 (the limit of
    the harmonic mean). Higher is better. Not comparable with pytorch-grad-cam's ``ARCC``,
    which uses ROAD in place of AD.

    Parameters
    ----------
    model, image, saliency_map, target, preprocess, batch_size
        As in :func:`confidence_change`.
    explain_fn : callable, optional
        Recomputes the method's map on ``x ⊙ E``; see :func:`coherency`.

    Returns
    -------
    ADCCResult
        ``adcc``, ``coherency``, ``complexity``, ``average_drop`` (float each, or ``(N,)``).
    """
    preprocess = as_preprocess(preprocess)
    pixels, maps, single = _setup(model, image, saliency_map, preprocess, target)
    fn = _resolve_explain_fn(explain_fn, saliency_map, model, preprocess, single)
    scorer = _Scorer(model, preprocess, batch_size)
    with _eval_mode(model):
        with torch.inference_mode():
            y, o, targets = _confidence(scorer, pixels, maps, target)
        coh = _coherency_values(pixels, maps, targets, fn)
    cx = maps.reshape(maps.shape[0], -1).mean(axis=1)
    ad = _ad(y, o)
    return ADCCResult(
        adcc=_unbatch(_adcc_formula(coh, cx, ad), single),
        coherency=_unbatch(coh, single),
        complexity=_unbatch(cx, single),
        average_drop=_unbatch(ad, single),
        target=_unbatch_target(targets, single),
    )


# ----------------------------------------------------------------------------------------
# Localisation (map-only)
# ----------------------------------------------------------------------------------------
def _looks_batched(saliency_map: MapLike) -> bool:
    if isinstance(saliency_map, (list, tuple)):
        return True
    if hasattr(saliency_map, "map") and not isinstance(saliency_map, (np.ndarray, torch.Tensor)):
        return False
    return bool(np.ndim(_map_array(saliency_map, "The saliency map")) == 3)


def _as_map_batch(saliency_map: MapLike) -> np.ndarray:
    if isinstance(saliency_map, (list, tuple)):
        n = len(saliency_map)
    else:
        arr = _map_array(saliency_map, "The saliency map")
        n = arr.shape[0] if arr.ndim == 3 else 1
    return _prepare_maps(saliency_map, n, None)


def _box_tuple(box: Any, h: int, w: int) -> tuple[int, int, int, int]:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise ValueError(f"A box must be (x0, y0, x1, y1) with inclusive pixel indices, got {box!r}.")
    x0, y0, x1, y1 = (round(float(v)) for v in b)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"The box {box!r} has x1 < x0 or y1 < y0; use (x0, y0, x1, y1), corners inclusive.")
    if x1 < 0 or y1 < 0 or x0 >= w or y0 >= h:
        raise ValueError(f"The box {box!r} lies outside the {h}x{w} map.")
    return max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)


def _box_mask(box: tuple[int, int, int, int], h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = box
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _ground_truth(mask_or_box: Any, n: int, h: int, w: int
                  ) -> tuple[np.ndarray, list[tuple[int, int, int, int]] | None]:
    """Masks ``(N, H, W)`` bool, and the boxes when boxes were given."""
    g = mask_or_box
    if isinstance(g, torch.Tensor):
        g = g.detach().cpu().numpy()
    if isinstance(g, (list, tuple)) and len(g) and not np.isscalar(g[0]):
        parts = [np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x) for x in g]
        if all(p.shape == (4,) for p in parts) and (h, w) != (len(parts), 4):
            g = np.stack(parts)
        else:
            g = np.stack(parts) if len({p.shape for p in parts}) == 1 else None
            if g is None:
                raise ValueError("The ground-truth masks of the batch have different shapes.")
    arr = np.asarray(g)
    if arr.shape == (h, w) and n == 1 and arr.dtype != object:
        masks = arr[None]
    elif arr.shape == (n, h, w):
        masks = arr
    elif arr.shape == (4,) and n == 1:
        box = _box_tuple(arr, h, w)
        return _box_mask(box, h, w)[None], [box]
    elif arr.shape == (n, 4):
        boxes = [_box_tuple(b, h, w) for b in arr]
        return np.stack([_box_mask(b, h, w) for b in boxes]), boxes
    else:
        raise ValueError(
            f"The ground truth has shape {arr.shape}; pass a mask with the map's shape "
            f"({'(' + str(n) + ', ' if n > 1 else '('}{h}, {w})) or a box (x0, y0, x1, y1)"
            f"{' per image, (N, 4)' if n > 1 else ''}."
        )
    if masks.dtype != bool:
        if not np.isfinite(masks.astype(np.float64)).all():
            raise ValueError("The ground-truth mask contains NaN values; pass a boolean mask.")
        masks = masks > 0.5
    empty = ~masks.reshape(n, -1).any(axis=1)
    if empty.any():
        raise ValueError(
            f"The ground-truth mask of image {int(np.flatnonzero(empty)[0])} is empty; "
            "localisation metrics need at least one object pixel."
        )
    return masks, None


def _map_and_truth(saliency_map: MapLike, mask_or_box: Any
                   ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int]] | None, bool]:
    maps = _as_map_batch(saliency_map)
    single = not _looks_batched(saliency_map)
    n, h, w = maps.shape
    masks, boxes = _ground_truth(mask_or_box, n, h, w)
    return maps, masks, boxes, single


def energy_pointing_game(saliency_map: MapLike, mask_or_box: Any) -> Value:
    r"""Energy-based pointing game (Score-CAM, Wang et al. 2020): the share of the map's energy inside ``G``.

    .. math:: \mathrm{Proportion} = \frac{\sum_{(i,j) \in G} E_{ij}}{\sum_{(i,j)} E_{ij}}

    Parameters
    ----------
    saliency_map : array ``(H, W)`` / ``(N, H, W)`` in ``[0, 1]``, or result(s) with ``.map``
    mask_or_box : bool mask ``(H, W)`` / ``(N, H, W)`` or box ``(x0, y0, x1, y1)`` / ``(N, 4)``
        Ground truth; box corners are inclusive pixel indices.

    Returns
    -------
    float or ndarray (N,)
        In ``[0, 1]``; 0 for an all-zero map (no energy to place). Higher is better.
    """
    maps, masks, _, single = _map_and_truth(saliency_map, mask_or_box)
    total = maps.reshape(maps.shape[0], -1).sum(axis=1)
    inside = (maps * masks).reshape(maps.shape[0], -1).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)
    return _unbatch(out, single)


def saliency_score(saliency_map: MapLike, mask_or_box: Any) -> Value:
    r"""Saliency score (Integrative CAM eq. 32; 'From Tables to Pixels' §V.5): ``sum(E ∘ G) / sum(E)``.

    The same quantity as :func:`energy_pointing_game` (Integrative CAM writes it with the box mask
    ``L_Bbox``, 'From Tables to Pixels' with the object mask); kept under its papers' name.

    Parameters
    ----------
    saliency_map, mask_or_box
        As in :func:`energy_pointing_game`.

    Returns
    -------
    float or ndarray (N,)
        In ``[0, 1]``.
    """
    return energy_pointing_game(saliency_map, mask_or_box)


def pointing_game(saliency_map: MapLike, mask_or_box: Any, *, tolerance: float = 0.0) -> Value:
    r"""Pointing game (Zhang et al. 2018): is the map's maximum on the object?

    ``hit = 1`` if the pixel ``argmax E`` (the first maximum in raster order) lies within
    ``tolerance`` pixels (Euclidean) of a pixel of ``G``, else 0. An all-zero map is a miss.
    The dataset's hit rate is the mean.

    Parameters
    ----------
    saliency_map, mask_or_box
        As in :func:`energy_pointing_game`.
    tolerance : float, default 0
        Distance in pixels (the original pointing game uses 15 at 224 px).

    Returns
    -------
    float or ndarray (N,)
        1.0 (hit) or 0.0 (miss) per image.
    """
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a distance in pixels >= 0, got {tolerance}.")
    maps, masks, _, single = _map_and_truth(saliency_map, mask_or_box)
    n, _, w = maps.shape
    out = np.zeros(n)
    for i in range(n):
        if maps[i].max() <= 0:
            continue
        py, px = divmod(int(np.argmax(maps[i])), w)
        if tolerance == 0:
            out[i] = float(masks[i, py, px])
        else:
            ys, xs = np.nonzero(masks[i])
            out[i] = float(np.any((ys - py) ** 2 + (xs - px) ** 2 <= tolerance ** 2))
    return _unbatch(out, single)


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0]) + 1
    iy = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(ix, 0) * max(iy, 0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / float(area_a + area_b - inter)


def _largest_component_box(pred: np.ndarray, connectivity: int) -> tuple[int, int, int, int] | None:
    # Imported here: skimage.measure loads scipy.ndimage, which nothing else on the explorer's path needs.
    from skimage.measure import label as _sk_label

    labels = cast(np.ndarray, _sk_label(pred, connectivity=connectivity))
    if labels.max() == 0:
        return None
    sizes = np.bincount(labels.reshape(-1))
    sizes[0] = 0
    return _mask_box(labels == int(np.argmax(sizes)))


def localisation(saliency_map: MapLike, mask_or_box: Any, box: Any = None, *, threshold: float = 0.5,
                 relative: bool = False, connectivity: int = 2) -> LocalisationResult:
    r"""IoU, precision, recall, F1 of the thresholded map, and the largest-component box IoU.

    With ``P = {E >= t}`` (``t = threshold``, or ``threshold · max E`` when ``relative``)
    and the ground-truth mask ``G`` ('From Tables to Pixels' §V, Integrative CAM §3.2):

    .. math:: IoU = \frac{|P \cap G|}{|P \cup G|},\ \mathrm{precision} = \frac{|P \cap G|}{|P|},\
              \mathrm{recall} = \frac{|P \cap G|}{|G|},\ F1 = \frac{2\,pr}{p + r}

    (precision is 0 for an empty ``P``, F1 is 0 when ``p + r = 0``). ``box_iou``
    (as in CAM's localisation, Zhou et al. 2016):
    ``P`` is split into connected components with :func:`skimage.measure.label`, the largest
    one (most pixels; ties to the lowest label) gives the estimated box, and its IoU with
    the ground-truth box is computed on inclusive pixel boxes (0 when ``P`` is empty).

    Parameters
    ----------
    saliency_map : array ``(H, W)`` / ``(N, H, W)`` in ``[0, 1]``, or result(s) with ``.map``
    mask_or_box : mask ``(H, W)`` / ``(N, H, W)`` or box ``(x0, y0, x1, y1)`` / ``(N, 4)``
        Ground truth. A box is rasterised (corners inclusive) for the pixel scores.
    box : box or ``(N, 4)`` boxes, optional
        Ground-truth box for ``box_iou``. Default: the given box, or the tight bounding box
        of the mask (for several objects, the box around all of them).
    threshold : float, default 0.5
        Binarisation threshold in ``[0, 1]``.
    relative : bool, default False
        Threshold at ``threshold · max(E)`` (the CAM papers' "threshold of the max value") instead of
        at ``threshold``; the same for maps whose maximum is 1, as normalised CAMs are.
    connectivity : {1, 2}, default 2
        Neighbourhood of :func:`skimage.measure.label`: 1 = 4-connected, 2 = 8-connected.

    Returns
    -------
    LocalisationResult
        ``iou``, ``precision``, ``recall``, ``f1``, ``box_iou`` (floats or ``(N,)``) and
        ``predicted_box``.
    """
    if not (isinstance(threshold, (int, float)) and 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}.")
    maps, masks, boxes, single = _map_and_truth(saliency_map, mask_or_box)
    n, h, w = maps.shape
    if box is not None:
        b = np.asarray(box, dtype=np.float64)
        if b.shape not in ((4,), (n, 4)) or (b.shape == (4,) and n != 1):
            raise ValueError(f"box has shape {b.shape}; pass (x0, y0, x1, y1) per image, (N, 4) for a batch.")
        boxes = [_box_tuple(r, h, w) for r in b.reshape(-1, 4)]
    gt_boxes = boxes if boxes is not None else [cast(tuple[int, int, int, int], _mask_box(m)) for m in masks]
    res: dict[str, list[float]] = {k: [] for k in ("iou", "precision", "recall", "f1", "box_iou")}
    pred_boxes: list[tuple[int, int, int, int] | None] = []
    for i in range(n):
        t = float(threshold) * float(maps[i].max()) if relative else float(threshold)
        pred = maps[i] >= t
        if relative and maps[i].max() <= 0:
            pred = np.zeros((h, w), dtype=bool)  # an all-zero map points nowhere
        g = masks[i]
        inter = float(np.logical_and(pred, g).sum())
        union = float(np.logical_or(pred, g).sum())
        npred, ngt = float(pred.sum()), float(g.sum())
        p = inter / npred if npred else 0.0
        r = inter / ngt
        res["iou"].append(inter / union)
        res["precision"].append(p)
        res["recall"].append(r)
        res["f1"].append(2 * p * r / (p + r) if p + r > 0 else 0.0)
        pb = _largest_component_box(pred, connectivity)
        pred_boxes.append(pb)
        res["box_iou"].append(_box_iou(pb, gt_boxes[i]) if pb is not None else 0.0)
    vals = {k: _unbatch(np.asarray(v), single) for k, v in res.items()}
    return LocalisationResult(predicted_box=pred_boxes[0] if single else pred_boxes, **vals)


def class_discrimination(saliency_map: MapLike, target_truth: Any, other_truth: Any) -> DiscriminationResult:
    r"""Class-discriminativeness of a map on an image with objects of several classes.

    A map explaining class ``c`` should put its evidence on the object of ``c`` and not on the
    objects of the other classes in the same image (Grad-CAM's "class-discriminative"
    property; Selvaraju et al., 'Grad-CAM', ICCV 2017, arXiv:1610.02391, §3). With ``G_c`` the
    explained class's mask and ``G_o`` the union of the other objects' masks:

    .. math:: e_c = \frac{\sum_{G_c} E}{\sum E},\quad e_o = \frac{\sum_{G_o} E}{\sum E},
              \quad \mathrm{discrimination} = e_c - e_o

    (each share is the energy pointing game against that mask), and the pointing game
    against each mask. Explaining each class of a two-object image in turn and averaging
    scores the method on both objects.

    Parameters
    ----------
    saliency_map : array ``(H, W)`` / ``(N, H, W)`` in ``[0, 1]``, or result(s) with ``.map``
    target_truth, other_truth : bool mask ``(H, W)`` / ``(N, H, W)`` or box ``(x0, y0, x1, y1)`` / ``(N, 4)``
        The explained class's object and the other objects.

    Returns
    -------
    DiscriminationResult
        ``energy_target``, ``energy_other``, ``pointing_target``, ``pointing_other`` and
        ``discrimination`` (floats for one map, ``(N,)`` arrays for a batch).
    """
    e_c = energy_pointing_game(saliency_map, target_truth)
    e_o = energy_pointing_game(saliency_map, other_truth)
    p_c = pointing_game(saliency_map, target_truth)
    p_o = pointing_game(saliency_map, other_truth)
    return DiscriminationResult(e_c, e_o, p_c, p_o, e_c - e_o)

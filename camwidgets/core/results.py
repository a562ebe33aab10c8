"""Frozen result objects returned by :class:`~camwidgets.core.explainer.Explainer`.

Every result holds numpy views for plotting (read-only arrays) and the same data as
torch tensors on the model's device (``*_tensor`` attributes). Results are immutable
and cached by the explainer: asking twice with the same parameters returns the very
same object (while the explainer keeps it, see :data:`camwidgets.core.explainer.STAGE_LIMITS`).

On the CPU the numpy arrays share memory with the tensors they show, and with the
explainer's cached stages (I-CAM's perturbed images and per-layer maps, Fusion-CAM's
region map): no copy per result. They are read-only, and numpy refuses to make them
writable again; the ``*_tensor`` attributes and cached stages are never modified in place
by camwidgets, and must not be by callers. On another device, or for another dtype, the
arrays are copies.

Conventions: ``map`` is the explanation ``(H, W)`` in ``[0, 1]`` at the resolution of
the model input; ``raw`` is the map before the final normalisation at the resolution
the method combines channels at: the feature map ``(h, w)`` of the layer for the
single-layer methods (after the ReLU; CAM with ``relu=False``: the signed map), the
input resolution ``(H, W)`` for I-CAM (``sum_l W_l L_l``) and UnionCAM (the selected
``L_De-Region`` or ``L_Region`` as eq. 8 writes it). For Fusion-CAM ``raw`` equals
``map`` (its last step is a normalisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

__all__ = ["CAMResult", "FusionCAMResult", "ICAMResult", "RegionCAMResult", "UnionCAMResult", "freeze_array"]


def freeze_array(value: torch.Tensor | np.ndarray, *, share: bool = False) -> np.ndarray:
    """A read-only numpy array of ``value`` (float tensors become float32 unless they are float64).

    By default a copy. With ``share=True`` no copy where the data can be shown as it is: a
    CPU tensor of the output dtype that spans its whole storage becomes a read-only view of
    it (``Tensor.numpy()``; numpy then refuses to make it writable again), and an array that
    is already read-only down to its memory's owner is returned as it is. Any other value (a
    tensor on another device, of another dtype, or a view into a larger storage, which
    would keep that storage alive; a writable array) is copied.
    """
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.float()
        if share and t.device.type == "cpu" and _spans_storage(t):
            try:
                arr = t.numpy()
            except (RuntimeError, TypeError):  # conjugate / negative-bit views, unsupported dtypes
                arr = t.cpu().numpy().copy()
        else:
            arr = t.cpu().numpy().copy()
    elif share and isinstance(value, np.ndarray) and _read_only(value):
        return value
    else:
        arr = np.array(value, copy=True)
    arr.setflags(write=False)
    return arr


def _spans_storage(t: torch.Tensor) -> bool:
    """Whether ``t`` covers its whole storage (a view of it keeps no more memory alive than ``t``)."""
    return t.untyped_storage().nbytes() <= t.numel() * t.element_size()


def _read_only(arr: np.ndarray) -> bool:
    """``arr`` and every array it views are read-only, down to an owner numpy can't re-open for writes."""
    a: Any = arr
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None or isinstance(a, torch.Tensor)


def _frozen_mapping(m: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(m))


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class CAMResult:
    """A class activation map and how it was made.

    Attributes
    ----------
    method : str
        The registry name of the method that made it (``camwidgets.methods()`` lists them).
    layer : str or tuple of str
        Dotted name of the explained layer (a tuple for multi-layer methods).
    target : int
        The explained class ``c``.
    params : Mapping
        Every parameter used (read-only).
    map_tensor : Tensor (H, W) float32 in [0, 1]
        The explanation at input resolution, on the model's device.
    raw_tensor : Tensor
        The map before the final normalisation (see the module docstring).
    weights_tensor : Tensor (K,) or None
        Channel weights ``w_k`` where the method has them.
    """

    method: str
    layer: str | tuple[str, ...]
    target: int
    params: Mapping[str, Any]
    map_tensor: torch.Tensor
    raw_tensor: torch.Tensor
    weights_tensor: torch.Tensor | None = None
    map: np.ndarray = field(init=False, repr=False)
    raw: np.ndarray = field(init=False, repr=False)
    weights: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _frozen_mapping(self.params))
        object.__setattr__(self, "map_tensor", self.map_tensor.detach())
        object.__setattr__(self, "raw_tensor", self.raw_tensor.detach())
        object.__setattr__(self, "map", freeze_array(self.map_tensor, share=True))
        object.__setattr__(self, "raw", freeze_array(self.raw_tensor, share=True))
        w = self.weights_tensor
        object.__setattr__(self, "weights", None if w is None else freeze_array(w, share=True))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "layer")
        return (f"{type(self).__name__}(method={self.method!r}, layer={self.layer!r}, target={self.target}, "
                f"shape={self.shape}, {params})")

    @property
    def device(self) -> torch.device:
        """The device of the tensors (the model's)."""
        return self.map_tensor.device

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of :attr:`map`."""
        h, w = self.map.shape
        return int(h), int(w)


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class RegionCAMResult(CAMResult):
    """Score-CAM / Ablation-CAM: channel weights from masked or ablated forward passes.

    Attributes
    ----------
    scores : ndarray (K,)
        Per-channel score: Score-CAM ``S_c(x ⊙ m_k)`` (variant ``"gradcam"``) or
        ``Y_c(x ⊙ m_k) − Y_c(baseline)`` (variant ``"paper"``); Ablation-CAM the logit
        ``y_k`` with channel ``k`` ablated.
    skipped : ndarray (K,) bool
        Channels whose forward pass was skipped because their activation is all zero
        (their score is filled in exactly, see :mod:`camwidgets.core.region`).
    forward_passes : int
        Batched forward passes this result needed.
    """

    scores: np.ndarray
    skipped: np.ndarray
    forward_passes: int

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scores", freeze_array(self.scores, share=True))
        object.__setattr__(self, "skipped", freeze_array(self.skipped, share=True))

    @property
    def fraction_skipped(self) -> float:
        """Fraction of channels whose forward pass was skipped."""
        return float(self.skipped.mean()) if self.skipped.size else 0.0


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class ICAMResult(CAMResult):
    """Integrative CAM (Singh et al. 2024, arXiv:2412.01354, eq. 3-31) with every intermediate the widget shows.

    Attributes
    ----------
    candidate_layers : tuple of str
        All layers scored (``L`` of them), in forward order.
    layer_scores : ndarray (L,)
        ``S_l`` (eq. 3), one per candidate layer.
    kept_layers : tuple of str
        Layers selected by the threshold ``T`` (eq. 11-14), by decreasing ``S_l``.
    layer_weights : ndarray (len(kept_layers),)
        ``W_l = S_l / sum over kept`` (eq. 14), in the order of ``kept_layers``.
    layer_maps : Mapping str -> ndarray (H, W)
        Normalised per-layer maps ``L_l`` (eq. 25-31) of the kept layers.
    perturbations : ndarray (n, 3, H, W)
        The perturbed pixel images ``I'_i`` (eq. 4) in ``[0, 1]``.
    svim, mds, perturbation_weights : ndarray (n,)
        SVIM (eq. 6), MDS (eq. 8-10) and ``w_i = sqrt(SVIM · MDS)`` (eq. 5).
    input_saliency : ndarray (H, W)
        ``s``, the normalised ``‖img ⊙ dS_c/dx‖`` of the original image (eq. 3).
    """

    candidate_layers: tuple[str, ...]
    layer_scores: np.ndarray
    kept_layers: tuple[str, ...]
    layer_weights: np.ndarray
    layer_maps: Mapping[str, np.ndarray]
    perturbations: np.ndarray
    svim: np.ndarray
    mds: np.ndarray
    perturbation_weights: np.ndarray
    input_saliency: np.ndarray

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("layer_scores", "layer_weights", "perturbations", "svim", "mds",
                     "perturbation_weights", "input_saliency"):
            object.__setattr__(self, name, freeze_array(getattr(self, name), share=True))
        object.__setattr__(self, "candidate_layers", tuple(self.candidate_layers))
        object.__setattr__(self, "kept_layers", tuple(self.kept_layers))
        object.__setattr__(self, "layer_maps",
                           _frozen_mapping({k: freeze_array(v, share=True) for k, v in self.layer_maps.items()}))


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class UnionCAMResult(CAMResult):
    """UnionCAM (Hu et al. 2024, eq. 1-8).

    Attributes
    ----------
    gradient_map : ndarray (H, W)
        ``L_Denoising`` (eq. 2-3), upsampled and normalised.
    region_map : ndarray (H, W)
        ``L_Region`` (Score-CAM), upsampled and normalised.
    union_map : ndarray (H, W)
        ``L_De-Region = β_D L_D + β_R L_R`` (eq. 6), as written (not renormalised).
    beta_gradient, beta_region, beta_union : float
        ``β_Denoising`` (eq. 4), ``β_Region`` (eq. 5), ``β_De-Region`` (eq. 7).
    baseline_probability : float
        ``Y_c`` of the baseline input.
    choice : str
        ``"union"`` if ``β_De-Region > β_Region`` (eq. 8), else ``"region"``.
    """

    gradient_map: np.ndarray
    region_map: np.ndarray
    union_map: np.ndarray
    beta_gradient: float
    beta_region: float
    beta_union: float
    baseline_probability: float
    choice: str

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gradient_map", "region_map", "union_map"):
            object.__setattr__(self, name, freeze_array(getattr(self, name), share=True))


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class FusionCAMResult(CAMResult):
    """Fusion-CAM (Dekdegue et al. 2026, arXiv:2603.05386; docs/methods.md).

    Attributes
    ----------
    gradient_map : ndarray (H, W)
        Denoised, normalised gradient map ``L_g`` (step 1).
    region_map : ndarray (H, W)
        Normalised region map ``L_r`` (step 2).
    combined_map : ndarray (H, W)
        ``L_gr = normalise(β_g L_g + β_r L_r)`` (step 3).
    similarity : ndarray (H, W)
        ``sim = clip(1 − |L1 − L2|, 0, 1)`` (step 4).
    betas : Mapping str -> float
        Every β: the raw contributions ``"gradient_raw"``, ``"region_raw"``,
        ``"combined_raw"`` (``Y_c(x ⊙ L) − Y_c(baseline)``), the clamped and rescaled
        ``"gradient"``, ``"region"`` (step 3) and ``"combined"``, ``"region_final"`` (step 4).
    baseline_probability : float
        ``Y_c`` of the baseline input.
    """

    gradient_map: np.ndarray
    region_map: np.ndarray
    combined_map: np.ndarray
    similarity: np.ndarray
    betas: Mapping[str, float]
    baseline_probability: float

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gradient_map", "region_map", "combined_map", "similarity"):
            object.__setattr__(self, name, freeze_array(getattr(self, name), share=True))
        object.__setattr__(self, "betas", _frozen_mapping({k: float(v) for k, v in self.betas.items()}))

"""The public entry point: one :class:`Explainer` per (model, image, class).

>>> exp = Explainer(model, image)                 # doctest: +SKIP
>>> exp.gradcam().map.shape                        # doctest: +SKIP
(128, 128)

Pipeline and cache
------------------
Construction runs **one forward and one backward pass** (a
:func:`~camwidgets.core._hooks.capture`) that records, for every candidate layer, the
activation ``A`` and the gradient ``g = dS_c/dA`` of the target logit, plus the input
gradient ``dS_c/dx`` and the class probabilities. Every gradient method (Grad-CAM,
Grad-CAM++, XGrad-CAM, LayerCAM, I-CAM's per-layer maps) then runs without the model.
A layer outside the candidate list costs one more capture, once.

Later stages are cached by the parameters they depend on, so interactive changes only
redo what they must (counted in model forward passes):

================================  ==============================================================
change                            model work
================================  ==============================================================
same parameters again             none: the cached result object itself is returned
I-CAM ``threshold``, ``bias``     none (selection and per-layer maps reuse the captured passes)
I-CAM ``sigma``                   none (SVIM only)
I-CAM ``alpha``, ``n``, ``seed``  one batched forward + backward of the ``n`` perturbations
UnionCAM / Fusion-CAM ``theta``   two single-image forwards, one after the other: the denoised
                                  gradient map's ``β`` first, then the combined map's ``β``,
                                  which depends on it (``L_gr = normalise(β_g L_g + β_r L_r)``);
                                  the region map, its ``β`` and the baseline stay cached
Score-CAM ``batch_size``          none (the scores are cached per layer and variant)
================================  ==============================================================

The first UnionCAM / Fusion-CAM call runs the region method's passes, one forward of
``[baseline, L_g, L_r]`` and one of ``L_gr``.

Batches
-------
An :class:`Explainer` explains **one image**. A batch ``(N, 3, H, W)`` with ``N > 1`` is
refused with a ``ValueError`` (never silently reduced to its first image); use
:func:`explain_batch`, which builds one explainer per image and explains each with its
own target.

Model hygiene
-------------
The model is run in eval mode and every module's ``training`` flag is restored; hooks
exist only during a pass and are removed also when it fails; parameters, their
``requires_grad`` flags and ``.grad`` are never touched. Gradients flow under
``torch.no_grad()`` / ``torch.inference_mode()`` and with frozen parameters. All tensors
stay on the model's device. The explainer holds no reference cycle, so dropping it frees
its tensors immediately.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from . import _ops
from . import fusion as _fusion
from . import gradient as _gradient
from . import icam as _icam
from ._hooks import Capture, batch_logits, capture, model_device, model_dtype
from .image import ImageLike, load_image
from .layers import LayerSpec, candidate_layers, default_layer, resolve_layer, resolve_layers
from .preprocess import Preprocess
from .region import ablationcam_weights, region_map, scorecam_weights
from .results import CAMResult, FusionCAMResult, ICAMResult, RegionCAMResult, UnionCAMResult, freeze_array

__all__ = ["GRADIENT_METHODS", "REGION_METHODS", "Explainer", "explain_batch"]

#: Perturbation stages (one per (alpha, n, seed)) an explainer keeps; older ones are recomputed.
_ICAM_STAGES_KEPT = 4
#: Gradient methods usable as Fusion-CAM's ``gradient`` map.
GRADIENT_METHODS: tuple[str, ...] = ("gradcam", "gradcampp", "xgradcam", "layercam")
#: Region methods usable as Fusion-CAM's ``region`` map.
REGION_METHODS: tuple[str, ...] = ("scorecam", "ablationcam")



def _is_batch(image: object) -> int:
    """Number of images in a 4-D array/tensor input (0 when not 4-D)."""
    shape = getattr(image, "shape", None)
    if isinstance(image, (torch.Tensor, np.ndarray)) and shape is not None and len(shape) == 4:
        return int(shape[0])
    return 0


def _check_target(target: object) -> int | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, numbers.Integral):
        if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
            target = int(target.item())
        else:
            raise ValueError(f"target must be a class index (int) or None, got {target!r}.")
    t = int(target)
    if t < 0:
        raise ValueError(f"Target class {t} is out of range: class indices start at 0. "
                         "Pass target=None for the predicted class.")
    return t


def _static_num_classes(model: nn.Module) -> int | None:
    """Number of classes known without running the model, for architectures whose head is known.

    For torchvision-style models (blocks recognised by :mod:`camwidgets.core.layers`, or a
    torchvision VGG) the last registered leaf module is the classifier's ``nn.Linear``;
    for any other model None (the target is then checked right after the forward pass).
    """
    from torchvision.models import VGG

    from .layers import _known_blocks

    if not (isinstance(model, VGG) or _known_blocks(model)):
        return None
    last = None
    for m in model.modules():
        if not list(m.children()):
            last = m
    return int(last.out_features) if isinstance(last, nn.Linear) else None


def _check_range(name: str, value: float, lo: float, hi: float) -> float:
    v = float(value)
    if not lo <= v <= hi or v != v:
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {value!r}.")
    return v


class Explainer:
    """Class activation maps of one image for one class of a PyTorch CNN.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits ``(N, num_classes)``. It is never modified.
    image : image-like
        Anything :func:`camwidgets.core.image.load_image` accepts: a path, bytes, a PIL
        image, an array or tensor ``(H, W)``, ``(H, W, C)``, ``(C, H, W)`` or
        ``(1, C, H, W)`` in ``[0, 1]`` (or integers 0-255). A batch of several images is
        refused; see :func:`explain_batch`.
    target : int or None
        The class ``c`` to explain; None explains the predicted class (argmax of the
        logits).
    layers : "auto" or sequence of str / Module
        Candidate layers: ``"auto"`` finds them at block granularity
        (:func:`camwidgets.core.layers.candidate_layers`, SPEC §5), or pass your own list
        of dotted names or submodules. They are I-CAM's candidates, and the default
        single layer of the other methods is the last of them.
    preprocess : Preprocess or None
        How the image becomes the model input: ``preprocess.geometry`` gives the pixel
        image ``img`` (resized and cropped, in ``[0, 1]``) on which maps, masks and
        perturbations live, ``preprocess.normalize`` gives ``x``. **None uses the image
        as it is** (no resize) with identity normalisation, ``x = img``: pass the
        model's :class:`~camwidgets.core.preprocess.Preprocess` (e.g. from
        ``load_demo_model()``) unless the model takes raw ``[0, 1]`` pixels.

    Attributes
    ----------
    target : int
        The explained class.
    probabilities : ndarray (num_classes,)
        ``Y = softmax(S(x))``.
    logits : ndarray (num_classes,)
        ``S(x)``.
    candidate_layers : tuple of str
        Candidate layers with a 4-D output, in forward order.
    default_layer : str
        The last candidate layer.
    image : Tensor (3, H, W)
        The pixel image ``img`` in ``[0, 1]`` (on the model's device).
    input : Tensor (1, 3, H, W)
        The normalised model input ``x``.

    Raises
    ------
    ValueError
        Before any model pass: a batch of several images, a model without 4-D feature
        layer, an unknown layer name, a negative target or one beyond the model's final
        ``nn.Linear``; right after the forward pass (before the backward): a target
        index not below the number of logits.
    """

    def __init__(self, model: nn.Module, image: ImageLike, target: int | None = None,
                 layers: str | Sequence[LayerSpec] = "auto", preprocess: Preprocess | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        n = _is_batch(image)
        if n > 1:
            raise ValueError(
                f"Explainer explains one image, but got a batch of {n}. Create one Explainer per image, "
                "or call camwidgets.core.explain_batch(model, images, method, targets=...) which does that "
                "and explains every image with its own target."
            )
        if preprocess is not None and not isinstance(preprocess, Preprocess):
            raise ValueError(
                f"preprocess must be a camwidgets Preprocess or None, got {type(preprocess).__name__}. "
                "Build one with Preprocess(size=..., mean=..., std=...)."
            )
        tgt = _check_target(target)
        n_static = _static_num_classes(model)
        if tgt is not None and n_static is not None and tgt >= n_static:
            raise ValueError(
                f"Target class {tgt} is out of range: the model has {n_static} classes "
                f"(valid indices 0..{n_static - 1}). Pass target=None for the predicted class."
            )
        if isinstance(layers, str):
            if layers != "auto":
                raise ValueError(f"layers must be 'auto' or a list of layer names/modules, got {layers!r}. "
                                 "For a single layer use layers=[name].")
            cands = candidate_layers(model)
        else:
            hints = candidate_layers(model) if _has_any_conv(model) else []
            cands = resolve_layers(model, list(layers), hints)
            if not cands:
                raise ValueError("layers is empty; pass 'auto' or at least one layer name.")

        self._model = model
        self._device = model_device(model)
        self._preprocess = preprocess
        img = load_image(image)
        pixels = preprocess.geometry(img) if preprocess is not None else img
        self._img = pixels.to(self._device, dtype=torch.float32)
        self._x = self._normalize(self._img)[None]
        self._generic = isinstance(layers, str) and _generic_candidates(model, cands)

        cap = capture(model, self._x, cands, tgt, input_grad=True)
        kept = [n for n in cands if self._usable(cap, n, strict=not self._generic)]
        if not isinstance(layers, str) and len(kept) < len(cands):
            bad = [n for n in cands if n not in kept]
            raise ValueError(
                f"Layer(s) {bad} do not output a 4-D feature map (N, K, h, w); pass convolutional layers "
                f"or blocks, e.g. {candidate_layers(model)[-2:] if _has_any_conv(model) else '...'}."
            )
        if not kept:
            raise ValueError(
                f"None of the layers {cands[:8]} gives a 4-D feature map (N, K, h, w) with a spatial extent. "
                "Pass layers=[...] naming convolutional layers or blocks of the model."
            )
        self._candidates: tuple[str, ...] = tuple(kept)
        self._target = int(cap.targets[0])
        self._logits = cap.logits[0]
        self._probs64 = torch.softmax(self._logits.double(), dim=0)
        self._probs = self._probs64.to(self._logits.dtype)
        self._acts: dict[str, torch.Tensor] = {n: cap.activations[n][0] for n in kept}
        self._grads: dict[str, torch.Tensor] = {n: cap.gradients[n][0] for n in kept}
        assert cap.input_grad is not None
        self._input_grad = cap.input_grad[0]
        self._cache: dict[Hashable, Any] = {}

    # ------------------------------------------------------------------ basics
    @staticmethod
    def _usable(cap: Capture, name: str, strict: bool) -> bool:
        a = cap.activations.get(name)
        if a is None or a.dim() != 4:
            return False
        return strict or a.shape[-1] * a.shape[-2] > 1

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._preprocess.normalize(pixels) if self._preprocess is not None else pixels

    @property
    def model(self) -> nn.Module:
        """The explained model (never modified)."""
        return self._model

    @property
    def target(self) -> int:
        """The explained class ``c``."""
        return self._target

    @property
    def probabilities(self) -> np.ndarray:
        """``Y = softmax(S(x))``, shape ``(num_classes,)``, read-only."""
        return freeze_array(self._probs)

    @property
    def probabilities_tensor(self) -> torch.Tensor:
        """:attr:`probabilities` as a tensor on the model's device."""
        return self._probs.clone()

    @property
    def logits(self) -> np.ndarray:
        """``S(x)``, shape ``(num_classes,)``, read-only."""
        return freeze_array(self._logits)

    @property
    def candidate_layers(self) -> tuple[str, ...]:
        """Candidate layers (dotted names, forward order)."""
        return self._candidates

    @property
    def default_layer(self) -> str:
        """The default single layer: the last candidate."""
        return default_layer(self._candidates)

    @property
    def image(self) -> torch.Tensor:
        """The pixel image ``img`` ``(3, H, W)`` in ``[0, 1]``."""
        return self._img.clone()

    @property
    def input(self) -> torch.Tensor:
        """The model input ``x`` ``(1, 3, H, W)``."""
        return self._x.clone()

    @property
    def device(self) -> torch.device:
        """The model's device, where every tensor lives."""
        return self._device

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the model input and of every map."""
        return int(self._x.shape[-2]), int(self._x.shape[-1])

    def __repr__(self) -> str:
        return (f"Explainer({type(self._model).__name__}, target={self._target}, size={self.size}, "
                f"{len(self._candidates)} candidate layers)")

    def _cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _layer(self, layer: LayerSpec | None) -> str:
        if layer is None:
            return self.default_layer
        name = resolve_layer(self._model, layer, self._candidates)
        if name not in self._acts:
            bad: dict[str, str] = self._cache.setdefault(("not-4d",), {})
            a = None
            if name not in bad:  # a layer found not 4-D is not run again to find out
                cap = capture(self._model, self._x, [name], self._target)
                a = cap.activations.get(name)
            if a is None or a.dim() != 4:
                if name not in bad:
                    bad[name] = "no tensor" if a is None else f"shape {tuple(a.shape)}"
                raise ValueError(
                    f"Layer {name!r} does not output a 4-D feature map (N, K, h, w) (got {bad[name]}); "
                    "choose a convolutional layer or block, e.g. one of "
                    f"{list(self._candidates[-4:])}."
                )
            self._acts[name] = a[0]
            self._grads[name] = cap.gradients[name][0]
        return name

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Feature-resolution raw map -> ``(H, W)`` map spanning [0, 1].

        Normalised at feature resolution, upsampled (bilinear, ``align_corners=False``),
        then normalised again so the map reaches exactly 0 and 1 — the order of
        pytorch-grad-cam's output (``scale_cam_image`` per layer, then once more after
        aggregation); the second step only rescales by ``1 / max``.
        """
        up = _ops.upsample(_ops.normalize(raw).float(), self.size)
        return _ops.normalize(up).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ gradient methods
    def _gradient_result(self, method: str, layer: LayerSpec | None) -> CAMResult:
        name = self._layer(layer)

        def compute() -> CAMResult:
            a, g = self._acts[name], self._grads[name]
            weights: torch.Tensor | None
            if method == "layercam":
                weights = None
                raw = torch.relu(_gradient.layercam_map(a, g))
            else:
                fn = {"gradcam": _gradient.gradcam_weights, "gradcampp": _gradient.gradcampp_weights,
                      "xgradcam": _gradient.xgradcam_weights}[method]
                weights = fn(a, g)
                raw = torch.relu(_gradient.weighted_map(a, weights))
            return CAMResult(method=method, layer=name, target=self._target, params={"layer": name},
                             map_tensor=self._finish(raw), raw_tensor=raw, weights_tensor=weights)

        return self._cached((method, name), compute)

    def gradcam(self, layer: LayerSpec | None = None) -> CAMResult:
        """Grad-CAM: ``w_k = mean_ij g_k``, ``L = ReLU(sum_k w_k A_k)`` (SPEC §1).

        Parameters
        ----------
        layer : str, Module or None
            Dotted name or submodule; None is :attr:`default_layer`.

        Returns
        -------
        CAMResult
            ``raw`` ``(h, w)`` at feature resolution (after the ReLU, not normalised);
            ``map`` ``(H, W)``: normalised, upsampled (bilinear, ``align_corners=False``)
            and normalised again so it spans exactly [0, 1]; ``weights`` ``(K,)``.
        """
        return self._gradient_result("gradcam", layer)

    def gradcampp(self, layer: LayerSpec | None = None) -> CAMResult:
        """Grad-CAM++ in pytorch-grad-cam's closed form (SPEC §1).

        ``alpha = g² / (2 g² + sum_ij A g³ + 1e-6)`` (0 where ``g = 0``),
        ``w_k = sum_ij alpha ReLU(g)``. The ``1e-6`` is kept: gradients are often
        ~1e-4, so it is not negligible, and it is what the reference does.
        """
        return self._gradient_result("gradcampp", layer)

    def xgradcam(self, layer: LayerSpec | None = None) -> CAMResult:
        """XGrad-CAM: ``w_k = sum_ij (A g) / (sum_ij A + 1e-7)`` (SPEC §1)."""
        return self._gradient_result("xgradcam", layer)

    def layercam(self, layer: LayerSpec | None = None) -> CAMResult:
        """LayerCAM: ``L = ReLU(sum_k ReLU(g_k) ⊙ A_k)`` (SPEC §1); ``weights`` is None."""
        return self._gradient_result("layercam", layer)

    # ------------------------------------------------------------------ region methods
    def _scorecam_stage(self, name: str, variant: str, baseline: str,
                        batch_size: int) -> Any:
        def compute() -> Any:
            base = self._baseline_prob(baseline) if variant == "paper" else 0.0
            return scorecam_weights(self._model, self._x, self._acts[name], self._target,
                                    batch_size=batch_size, variant=variant, baseline_probability=base)

        return self._cached(("scorecam-weights", name, variant, baseline if variant == "paper" else None),
                            compute)

    def scorecam(self, layer: LayerSpec | None = None, batch_size: int = 32,
                 variant: str = "gradcam", baseline: str = "zeros") -> RegionCAMResult:
        """Score-CAM (SPEC §2), masked inputs in batches of ``batch_size``.

        Parameters
        ----------
        layer : str, Module or None
        batch_size : int
            Masked inputs per forward pass (does not change the result).
        variant : {"gradcam", "paper"}
            ``"gradcam"`` (default) equals pytorch-grad-cam: ``w = softmax_k S_c(x ⊙ m_k)``.
            ``"paper"``: ``w_k = softmax(S(x ⊙ m_k))_c − softmax(S(baseline))_c``.
        baseline : {"zeros", "black"}
            The paper variant's baseline: zeros in model-input space (default: the input
            an all-zero mask gives) or a black image in pixel space.

        Channels with an all-zero activation are not run (exact; see
        :mod:`camwidgets.core.region`); ``result.skipped`` marks them.
        """
        name = self._layer(layer)
        if variant not in ("gradcam", "paper"):
            raise ValueError(f"variant must be 'gradcam' or 'paper', got {variant!r}.")
        self._check_baseline(baseline)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")

        def compute() -> RegionCAMResult:
            rw = self._scorecam_stage(name, variant, baseline, batch_size)
            raw = region_map(self._acts[name], rw.weights)
            return RegionCAMResult(
                method="scorecam", layer=name, target=self._target,
                params={"layer": name, "batch_size": batch_size, "variant": variant, "baseline": baseline},
                map_tensor=self._finish(raw), raw_tensor=raw, weights_tensor=rw.weights,
                scores=freeze_array(rw.scores), skipped=freeze_array(rw.skipped),
                forward_passes=rw.forward_passes)

        key = ("scorecam", name, batch_size, variant, baseline if variant == "paper" else None)
        return self._cached(key, compute)

    def ablationcam(self, layer: LayerSpec | None = None, batch_size: int = 32) -> RegionCAMResult:
        """Ablation-CAM (SPEC §1): ``w_k = (y − y_k) / y`` on the target logit, batched.

        Channel ``k`` is set to 0, or to ``min(A) − 1e7`` where the layer's minimum is
        not 0. See :mod:`camwidgets.core.region` for the one place it departs from
        pytorch-grad-cam (layers with negative activations).

        Parameters
        ----------
        layer : str, Module or None
            Dotted name or submodule; None is :attr:`default_layer`.
        batch_size : int
            Ablated channels per forward pass (does not change the result).

        Returns
        -------
        RegionCAMResult
            ``scores`` holds the ablated logits ``y_k``; ``map = ReLU(sum_k w_k A_k)``
            normalised and upsampled like the other single-layer methods. All-zero
            channels are skipped exactly (``w_k = 0``) when the ablation value is 0.
        """
        name = self._layer(layer)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")

        def stage() -> Any:
            y = float(self._logits[self._target])
            return ablationcam_weights(self._model, self._x, name, self._acts[name], self._target, y,
                                       batch_size=batch_size)

        def compute() -> RegionCAMResult:
            rw = self._cached(("ablationcam-weights", name), stage)
            raw = region_map(self._acts[name], rw.weights)
            return RegionCAMResult(
                method="ablationcam", layer=name, target=self._target,
                params={"layer": name, "batch_size": batch_size},
                map_tensor=self._finish(raw), raw_tensor=raw, weights_tensor=rw.weights,
                scores=freeze_array(rw.scores), skipped=freeze_array(rw.skipped),
                forward_passes=rw.forward_passes)

        return self._cached(("ablationcam", name, batch_size), compute)

    # ------------------------------------------------------------------ contributions
    @staticmethod
    def _check_baseline(baseline: str) -> None:
        if baseline not in ("black", "zeros"):
            raise ValueError(f"baseline must be 'black' (black image in pixel space) or 'zeros' "
                             f"(zeros in model-input space), got {baseline!r}.")

    def _masked_inputs(self, maps: torch.Tensor, baseline: str) -> torch.Tensor:
        """``x ⊙ L`` in the baseline's space: the pixel image for "black", the model input for "zeros".

        An all-zero map gives exactly the baseline input in both cases.
        """
        if baseline == "black":
            return self._normalize(self._img[None] * maps[:, None])
        return self._x * maps[:, None]

    def _probs_of(self, inputs: torch.Tensor) -> torch.Tensor:
        """``Y_c`` of a batch of model inputs ``(m, 3, H, W)``: one forward pass, ``(m,)``."""
        logits = batch_logits(self._model, inputs.to(dtype=model_dtype(self._model)))
        return torch.softmax(logits.double(), dim=1)[:, self._target].float()

    def _betas(self, maps: torch.Tensor, baseline: str) -> torch.Tensor:
        """Raw contributions ``β(L) = Y_c(x ⊙ L) − Y_c(baseline)`` of maps ``(m, H, W)``: one forward.

        The baseline's probability is computed in the same batch the first time (its input
        is the masked input of an all-zero map) and cached.
        """
        key = ("baseline", baseline)
        maps = maps.to(self._device, torch.float32)
        if key in self._cache:
            def prob_fn(m: torch.Tensor) -> torch.Tensor:
                return self._probs_of(self._masked_inputs(m, baseline))
        else:  # the all-zero map's masked input is the baseline: one batch [baseline, *maps]
            batch = torch.cat([torch.zeros_like(maps[:1]), maps])
            probs = self._probs_of(self._masked_inputs(batch, baseline))
            self._cache[key] = float(probs[0])

            def prob_fn(m: torch.Tensor) -> torch.Tensor:
                return probs[1:]
        return _fusion.contributions(prob_fn, maps, float(self._cache[key]))

    def _baseline_prob(self, baseline: str) -> float:
        key = ("baseline", baseline)
        if key not in self._cache:
            zero = torch.zeros((1, *self.size), device=self._device)
            self._cache[key] = float(self._probs_of(self._masked_inputs(zero, baseline))[0])
        return float(self._cache[key])

    def _region(self, region: str, name: str) -> CAMResult:
        if region == "scorecam":
            return self.scorecam(layer=name)
        return self.ablationcam(layer=name)

    def _pair_betas(self, l_g: torch.Tensor, l_r: torch.Tensor, region: str, name: str,
                    baseline: str) -> tuple[float, float]:
        """Raw ``β`` of a gradient map and of the (cached) region map in one forward pass.

        The first time ``[baseline, L_g, L_r]`` run as one batch; afterwards ``β_r`` and the
        baseline come from the cache and only ``L_g`` runs.
        """
        rkey = ("beta-region", region, name, baseline)
        if rkey in self._cache:
            return float(self._betas(l_g[None], baseline)[0]), float(self._cache[rkey])
        b = self._betas(torch.stack([l_g, l_r]), baseline)
        self._cache[rkey] = float(b[1])
        return float(b[0]), float(b[1])

    # ------------------------------------------------------------------ UnionCAM
    def unioncam(self, theta: float = 10, layer: LayerSpec | None = None,
                 baseline: str = "black") -> UnionCAMResult:
        """UnionCAM (003_*): denoise, union, select (eq. 1-8; SPEC §3).

        Parameters
        ----------
        theta : float in [0, 100]
            Per-channel percentile of the gradient ``W = g`` below which values are zeroed
            (eq. 1); default 10.
        layer : str, Module or None
        baseline : {"black", "zeros"}
            ``β(L) = Y_c(x ⊙ L) − Y_c(baseline)`` (eq. 4-5, 7) with ``Y = softmax(S)``: a black
            image in pixel space (default, the paper's ``I_b``; the mask multiplies the
            pixel image ``img``) or zeros in model-input space (the mask multiplies ``x``).

        Returns
        -------
        UnionCAMResult
            ``map``: ``L_De-Region`` (eq. 6) if ``β_De-Region > β_Region`` (eq. 8), else
            ``L_Region``, normalised; every β, both input maps and ``choice``.

        Notes
        -----
        ``L_Denoising`` (eq. 2-3) is computed at feature resolution, then normalised and
        upsampled; ``L_Region`` is Score-CAM (variant "gradcam") at the same layer. A θ
        change costs two single-image forwards (``β_Denoising``, then ``β_De-Region``).
        """
        theta = _check_range("theta", theta, 0, 100)
        self._check_baseline(baseline)
        name = self._layer(layer)

        def compute() -> UnionCAMResult:
            l_r = self._region("scorecam", name).map_tensor
            raw_d = _fusion.unioncam_denoised_map(self._acts[name], self._grads[name], theta)
            l_d = self._finish(raw_d)
            beta_d, beta_r = self._pair_betas(l_d, l_r, "scorecam", name, baseline)
            l_dr = _fusion.union_map(l_d, l_r, beta_d, beta_r)
            beta_dr = float(self._betas(_ops.normalize(l_dr)[None], baseline)[0])
            chosen, choice = _fusion.union_select(l_dr, l_r, beta_dr, beta_r)
            return UnionCAMResult(
                method="unioncam", layer=name, target=self._target,
                params={"theta": theta, "layer": name, "baseline": baseline},
                map_tensor=_ops.normalize(chosen), raw_tensor=chosen, weights_tensor=None,
                gradient_map=freeze_array(l_d), region_map=freeze_array(l_r), union_map=freeze_array(l_dr),
                beta_gradient=beta_d, beta_region=beta_r, beta_union=beta_dr,
                baseline_probability=self._baseline_prob(baseline), choice=choice)

        return self._cached(("unioncam", theta, name, baseline), compute)

    # ------------------------------------------------------------------ Fusion-CAM
    def fusioncam(self, theta: float = 10, gradient: str = "gradcam", region: str = "scorecam",
                  layer: LayerSpec | None = None, baseline: str = "zeros") -> FusionCAMResult:
        """Fusion-CAM (004_*; SPEC §4): denoise, contribution-weighted union, similarity fusion.

        Parameters
        ----------
        theta : float in [0, 100]
            Percentile of the normalised gradient map ``L_g`` below which it is set to 0
            (default 10; the widget's slider spans 0-50).
        gradient : {"gradcam", "gradcampp", "xgradcam", "layercam"}
            The gradient map ``L_g``.
        region : {"scorecam", "ablationcam"}
            The region map ``L_r``.
        layer : str, Module or None
        baseline : {"zeros", "black"}
            Contribution baseline: zeros in model-input space (default, what the official
            code does; the mask multiplies ``x``) or a black image in pixel space.

        Returns
        -------
        FusionCAMResult

        Notes
        -----
        1. ``L_g`` = normalised gradient map, values below its θ-th percentile set to 0.
        2. ``L_r`` = normalised region map.
        3. ``β_g, β_r`` = contributions ``Y_c(x ⊙ L) − Y_c(baseline)``, clamped at 0 and
           scaled to sum 1 (equal when both are 0); ``L_gr = normalise(β_g L_g + β_r L_r)``.
        4. ``β_gr`` = contribution of ``L_gr``; ``(β_gr, β_r)`` clamped and rescaled, with
           step 3's rescaled ``β_r`` (as the official code does; ``betas["region"]``);
           ``L1 = β_gr L_gr``, ``L2 = β_r L_r``, ``sim = clip(1 − |L1 − L2|, 0, 1)``,
           ``F = normalise(sim · max(L1, L2) + (1 − sim) · (L1 + L2) / 2)``.

        Passes: ``[baseline, L_g, L_r]`` run as one batch, then ``L_gr`` (it depends on
        ``β_g``), so a θ change costs exactly two single-image forwards.
        """
        theta = _check_range("theta", theta, 0, 100)
        if gradient not in GRADIENT_METHODS:
            raise ValueError(f"gradient must be one of {GRADIENT_METHODS}, got {gradient!r}.")
        if region not in REGION_METHODS:
            raise ValueError(f"region must be one of {REGION_METHODS}, got {region!r}.")
        self._check_baseline(baseline)
        name = self._layer(layer)

        def compute() -> FusionCAMResult:
            l_r = self._region(region, name).map_tensor
            l_g = _fusion.denoise_map(self._gradient_result(gradient, name).map_tensor, theta)
            beta_g_raw, beta_r_raw = self._pair_betas(l_g, l_r, region, name, baseline)
            l_gr, beta_g, beta_r = _fusion.combine(l_g, l_r, beta_g_raw, beta_r_raw)
            beta_gr_raw = float(self._betas(l_gr[None], baseline)[0])
            # Step 4 rescales (β_gr, β_r) with step 3's rescaled β_r, as the official code does.
            fused, sim, beta_gr, beta_r_final = _fusion.fuse(l_gr, l_r, beta_gr_raw, beta_r)
            betas = {"gradient_raw": beta_g_raw, "region_raw": beta_r_raw, "combined_raw": beta_gr_raw,
                     "gradient": beta_g, "region": beta_r, "combined": beta_gr, "region_final": beta_r_final}
            return FusionCAMResult(
                method="fusioncam", layer=name, target=self._target,
                params={"theta": theta, "gradient": gradient, "region": region, "layer": name,
                        "baseline": baseline},
                map_tensor=fused, raw_tensor=fused, weights_tensor=None,
                gradient_map=freeze_array(l_g), region_map=freeze_array(l_r), combined_map=freeze_array(l_gr),
                similarity=freeze_array(sim), betas=betas,
                baseline_probability=self._baseline_prob(baseline))

        key = ("fusioncam", theta, gradient, region, name, baseline)
        return self._cached(key, compute)

    # ------------------------------------------------------------------ I-CAM
    def _icam_perturbation_stage(self, alpha: float, n: int, seed: int) -> dict[str, Any]:
        """Perturbed images, their probabilities and φ_{i,l} for every candidate layer.

        One batched forward + backward of the ``n`` perturbed images (eq. 4) capturing
        ``A`` and ``dS_c/dA`` at every candidate layer; the activations are reduced to
        ``φ_{i,l}`` (``(L, n, H, W)``) and dropped.
        """
        def compute() -> dict[str, Any]:
            pert = _icam.perturb(self._img, alpha, n, seed).to(self._device)
            cap = capture(self._model, self._normalize(pert), list(self._candidates), self._target)
            phi = torch.stack([_icam.layer_phi(cap.activations[ln], cap.gradients[ln], self.size)
                               for ln in self._candidates])
            probs = torch.softmax(cap.logits.double(), dim=1).float()
            return {"perturbations": pert, "phi": phi, "probs": probs,
                    "mds": _icam.mds(self._probs.float(), probs)}

        key = ("icam-perturb", alpha, n, seed)
        if key not in self._cache:
            # φ is (L, n, H, W): keep the stages of the last few (alpha, n, seed) only.
            stages = [k for k in self._cache if isinstance(k, tuple) and k[0] == "icam-perturb"]
            for old in stages[: max(0, len(stages) - _ICAM_STAGES_KEPT + 1)]:
                del self._cache[old]
        return self._cached(key, compute)

    def _icam_layer_map(self, name: str, bias: str) -> torch.Tensor:
        def compute() -> torch.Tensor:
            y = float(self._probs64[self._target])
            s_c = float(self._logits[self._target])
            raw = _icam.icam_layer_map(self._acts[name], self._grads[name], y, s_c, cast(_icam.Bias, bias))
            # SPEC §5: upsampled, then normalised (in float64: the channel bias is a large offset).
            return _ops.normalize(_ops.upsample(raw, self.size)).float().clamp(0.0, 1.0)

        return self._cached(("icam-layer", name, bias), compute)

    def icam(self, alpha: float = 0.4, threshold: float = 0.95, n: int = 8, bias: str = "channel",
             seed: int = 0, sigma: float = 0.25) -> ICAMResult:
        """Integrative CAM (000_*; SPEC §5): score every candidate layer, keep the best, fuse.

        Parameters
        ----------
        alpha : float in [0, 1]
            Perturbation strength (eq. 4): ``I'_i = clip((img + α N_i) ⊙ M_i, 0, 1)``,
            ``N_i ~ N(0, 1)``, ``M_i ~ Bernoulli(1 − α)`` shared by the channels.
        threshold : float in [0.5, 1]
            ``T`` (eq. 11-14): keep the smallest prefix of layers sorted by ``S_l`` whose sum
            reaches ``T · sum_l S_l``.
        n : int >= 1
            Number of perturbations.
        bias : {"channel", "spatial", "none"}
            Bias of the per-layer map (eq. 27 / eq. 28 / none).
        seed : int
            Seed of the perturbations: the same ``(alpha, n, seed)`` gives the same images.
        sigma : float > 0
            Width of SVIM (eq. 6): ``exp(−(SSIM − 0.5)² / (2 σ²))``.

        Returns
        -------
        ICAMResult
            ``map = normalise(sum_{l kept} W_l L_l)`` (eq. 21) and every intermediate.

        Notes
        -----
        Costs: the perturbation stage (one batched forward + backward of the ``n`` images)
        is cached per ``(alpha, n, seed)`` (the last four such stages are kept: each holds
        ``φ`` of shape ``(L, n, H, W)``); ``threshold``, ``bias`` and ``sigma`` run no model
        pass. Per-layer maps use the original image's captured ``A``, ``g = dS_c/dA``,
        ``Y_c`` (float64) and ``S_c``; each raw map (float64, the channel bias is a large
        offset) is upsampled, then normalised (SPEC §5), then cast to float32.
        ``layer_phi`` is computed from the perturbed batch's ``A`` and ``dS_c/dA`` at every
        candidate layer, which are then dropped (only ``φ`` is kept).
        """
        alpha = _check_range("alpha", alpha, 0, 1)
        threshold = _check_range("threshold", threshold, 0, 1)
        sigma = float(sigma)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}.")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer (number of perturbations), got {n!r}.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        if bias not in ("channel", "spatial", "none"):
            raise ValueError(f"bias must be 'channel', 'spatial' or 'none', got {bias!r}.")
        n, seed = int(n), int(seed)

        def compute() -> ICAMResult:
            stage = self._icam_perturbation_stage(alpha, n, seed)

            def scores() -> dict[str, Any]:
                sv = _icam.svim(self._img, stage["perturbations"], sigma)
                w = _icam.perturbation_weights(sv, stage["mds"])
                s = self._cached(("icam-saliency",),
                                 lambda: _icam.input_saliency(self._img, self._input_grad))
                return {"svim": sv, "w": w, "s": s, "S": _icam.layer_scores(s, stage["phi"], w)}

            sc = self._cached(("icam-scores", alpha, n, seed, sigma), scores)
            kept_idx, weights = _icam.select_layers(sc["S"], threshold)
            kept = [self._candidates[int(i)] for i in kept_idx]
            maps = {ln: self._icam_layer_map(ln, bias) for ln in kept}
            stack = torch.stack([maps[ln] for ln in kept])
            raw = (weights.to(stack.dtype)[:, None, None] * stack).sum(0)
            final = _icam.combine(stack, weights)
            return ICAMResult(
                method="icam", layer=tuple(kept), target=self._target,
                params={"alpha": alpha, "threshold": threshold, "n": n, "bias": bias, "seed": seed,
                        "sigma": sigma},
                map_tensor=final, raw_tensor=raw, weights_tensor=None,
                candidate_layers=self._candidates, layer_scores=freeze_array(sc["S"]),
                kept_layers=tuple(kept), layer_weights=freeze_array(weights),
                layer_maps={ln: freeze_array(m) for ln, m in maps.items()},
                perturbations=freeze_array(stage["perturbations"]), svim=freeze_array(sc["svim"]),
                mds=freeze_array(stage["mds"]), perturbation_weights=freeze_array(sc["w"]),
                input_saliency=freeze_array(sc["s"]))

        key = ("icam", alpha, threshold, n, bias, seed, sigma)
        return self._cached(key, compute)


def _has_any_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _generic_candidates(model: nn.Module, cands: Sequence[str]) -> bool:
    """True when ``cands`` came from the structural fallback (so 1x1 outputs are dropped)."""
    from .layers import _known_blocks, _vgg_relus

    return not _known_blocks(model) and not _vgg_relus(model)


def explain_batch(model: nn.Module, images: Any, method: str = "gradcam",
                  targets: int | Sequence[int | None] | None = None, *,
                  layers: str | Sequence[LayerSpec] = "auto",
                  preprocess: Preprocess | None = None, **params: Any) -> list[CAMResult]:
    """Explain every image of a batch, each with its own target (one :class:`Explainer` each).

    Parameters
    ----------
    model : torch.nn.Module
    images : Tensor / ndarray (N, 3, H, W) or sequence of image-likes
    method : str
        An :class:`Explainer` method name, e.g. ``"gradcam"`` or ``"fusioncam"``.
    targets : None, int or sequence of N (int or None)
        None explains each image's predicted class; an int explains that class for all.
    layers, preprocess
        As for :class:`Explainer`.
    **params
        Passed to the method.

    Returns
    -------
    list of CAMResult
        One per image, in order.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        items: list[Any] = [images[i] for i in range(images.shape[0])]
    elif isinstance(images, (torch.Tensor, np.ndarray)):
        items = [images]
    else:
        items = list(images)
    tlist: list[int | None]
    if targets is None or isinstance(targets, numbers.Integral):
        tlist = [None if targets is None else int(targets)] * len(items)
    else:
        tlist = list(targets)  # type: ignore[arg-type]
        if len(tlist) != len(items):
            raise ValueError(f"Got {len(tlist)} targets for {len(items)} images; pass one per image, "
                             "a single int, or None.")
    if not hasattr(Explainer, method) or method.startswith("_") or not callable(getattr(Explainer, method)):
        known = ", ".join(GRADIENT_METHODS + REGION_METHODS)
        raise ValueError(f"Unknown method {method!r}; use one of {known}, "
                         "icam, unioncam or fusioncam.")
    out = []
    for item, t in zip(items, tlist, strict=True):
        exp = Explainer(model, item, target=t, layers=layers, preprocess=preprocess)
        out.append(getattr(exp, method)(**params))
    return out

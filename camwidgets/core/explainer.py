"""The public entry point: one :class:`Explainer` per (model, image, class).

>>> exp = Explainer(model, image)                 # doctest: +SKIP
>>> exp.gradcam().map.shape                        # doctest: +SKIP
(128, 128)

Pipeline and cache
------------------
Construction runs **one forward pass** (a :func:`~camwidgets.core._hooks.capture`) that
records every candidate layer's activation ``A`` and the class probabilities, and a
backward pass **only as deep as the default layer** (the last candidate): ``g = dS_c/dA``
there, with no parameter gradient. Every gradient method on that layer then runs without
the model, at about the cost of one forward + a partial backward (what the fastest peers
pay). The first request for another candidate layer's gradient, or for the input gradient
``dS_c/dx`` (I-CAM's saliency), runs one more forward + full backward that records all of
them at once. A layer outside the candidate list costs one more capture, once.

Later stages are cached by the parameters they depend on, so interactive changes only
redo what they must (counted in model forward passes):

================================  ==============================================================
change                            model work
================================  ==============================================================
same parameters again             none: the cached result object itself is returned (while it
                                  is among the method's last results kept, see below)
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

The cache is bounded: an LRU per stage kind (a key's first element; results per method),
sized by :data:`STAGE_LIMITS`. A hit moves the entry to the most recent end; inserting
past the limit drops the least recently used entry of that kind, which is recomputed,
equal, if asked again (a dropped result comes back as a new object with the same values).
The captured passes (the construction's activations and gradients, the all-layer gradient
capture and the input gradient) are not cache entries and are never dropped, so a
recomputed stage re-runs only its own passes. Weights below are for a 224x224 input, the
demo architecture (8 candidate layers) and I-CAM's default ``n = 8`` (``H W`` float32 is
0.2 MB):

=============================================  =====  ============================================================
stage kind                                     kept   one entry weighs
=============================================  =====  ============================================================
a method's results (each method its own LRU)    32    ~0.2 MB: ``map`` (``raw`` is at feature resolution; the
                                                      numpy arrays are views of the tensors); Fusion-CAM,
                                                      UnionCAM ~0.8 MB (``L_g``, ``L_gr``, the similarity; ``L_r``
                                                      is the region result's); LIME, KernelSHAP ~0.4 MB
I-CAM's results (``result:icam``)                4    ~0.4 MB (``map``, ``raw`` at ``H W``), and its ``n``
                                                      perturbed images (4.8 MB, ``n · 3 H W`` float32): shared
                                                      with its perturbation stage, they weigh only once that
                                                      stage is dropped
``icam-perturb`` (per α, n, seed)                4    ~18 MB: ``φ`` ``(L, n, H, W)`` (12.8 MB) + the ``n``
                                                      perturbed images (4.8 MB); grows with ``n`` (at ``n = 64``
                                                      ~140 MB)
``icam-scores`` (per α, n, seed, σ)             16    < 1 KB (``n`` + ``L`` numbers; the saliency is shared)
``icam-layer`` (per layer, bias)                32    0.2 MB (one ``H W`` map; at most 3 per candidate layer)
``icam-saliency``                                1    0.2 MB
``smoothgradcampp-passes``                       8    ~1 MB (the noisy passes' per-channel sums)
``superpixels``                                  8    0.4 MB (``H W`` int64 labels)
``lime-scores``, ``kernelshap-scores``           8    < 0.1 MB (the samples and their scores)
``groupcam-blur``                                1    0.6 MB (the blurred image ``3 H W``)
``baseline``, ``beta-region``                   32    a float (``Y_c`` of a baseline, a region map's ``β``)
any other kind (per-layer weights, scores,      16    < 0.1 MB (``K`` channel numbers or an ``h w`` feature map)
projections, heads)
=============================================  =====  ============================================================

Sliding α, T and θ in the explorer (I-CAM and Fusion-CAM) therefore holds at most about
125 MB of stages and results at 224 px (40 MB at the demo model's 128 px), however long
the session; ``benchmarks/bench_explorer_memory.py`` measures the process's RSS over 200
moves.
:meth:`Explainer.cache_info` reports the entries per kind.

Batches
-------
An :class:`Explainer` explains **one image**. A batch ``(N, 3, H, W)`` with ``N > 1`` is
refused with a ``ValueError`` (never silently reduced to its first image). Use
:meth:`Explainer.batch`, which builds one explainer per image from **one** batched forward
pass (and one backward pass down to the default layer) over all of them, or
:func:`explain_batch`, which does that and runs one method on each image with its own target.
On a 2-core CPU a forward + backward pass of 8 images as one batch cost 0.62 of 8 single
passes with the demo model (3.8 against 6.1 ms an image) and 0.86 with ResNet-50 at 224 px
(73 against 84 ms).

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
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from . import _ops
from . import fusion as _fusion
from ._hooks import ReshapeSpec, batch_logits, capture, model_device, model_dtype
from .image import ImageLike, load_image
from .layers import LayerSpec, _find_candidates, candidate_layers, default_layer, resolve_layer, resolve_layers
from .preprocess import PreprocessLike, as_preprocess
from .results import CAMResult, freeze_array
from .tokens import Layout, Reshape

__all__ = ["DEFAULT_STAGE_LIMIT", "STAGE_LIMITS", "Explainer", "explain_batch", "stage_kind", "stage_limit"]

#: Entries the explainer's cache keeps per stage kind (see "Pipeline and cache" in the module
#: docstring for what each weighs). ``"result"`` is the limit of each method's results (every
#: method its own LRU); ``"result:<method>"`` overrides it for one method.
STAGE_LIMITS: Mapping[str, int] = MappingProxyType({
    "result": 32,
    "result:icam": 4,
    "icam-perturb": 4,
    "icam-scores": 16,
    "icam-layer": 32,
    "icam-saliency": 1,
    "smoothgradcampp-passes": 8,
    "superpixels": 8,
    "lime-scores": 8,
    "kernelshap-scores": 8,
    "groupcam-blur": 1,
    "baseline": 32,
    "beta-region": 32,
})

#: Entries kept of a stage kind :data:`STAGE_LIMITS` does not name.
DEFAULT_STAGE_LIMIT = 16


def stage_kind(key: Hashable) -> str:
    """The LRU a cache key belongs to: its first element, ``"result:<method>"`` for a result."""
    if isinstance(key, tuple) and key:
        if key[0] == "result" and len(key) > 1:
            return f"result:{key[1]}"
        return str(key[0])
    return "other"


def stage_limit(kind: str) -> int:
    """Entries kept of ``kind`` (:data:`STAGE_LIMITS`, else :data:`DEFAULT_STAGE_LIMIT`)."""
    if kind in STAGE_LIMITS:
        return STAGE_LIMITS[kind]
    if kind.startswith("result:"):
        return STAGE_LIMITS["result"]
    return DEFAULT_STAGE_LIMIT


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
    from .layers import _known_blocks, _torchvision_loaded

    if _torchvision_loaded():  # else the model cannot be one of torchvision's (nothing imported here)
        from torchvision.models import VGG

        is_vgg = isinstance(model, VGG)
    else:
        is_vgg = False
    if not (is_vgg or _known_blocks(model)):
        return None
    last = None
    for m in model.modules():
        if not list(m.children()):
            last = m
    return int(last.out_features) if isinstance(last, nn.Linear) else None


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
        (:func:`camwidgets.core.layers.candidate_layers`), or pass your own list
        of dotted names or submodules. They are I-CAM's candidates, and the default
        single layer of the other methods is the last of them.
    preprocess : Preprocess or None
        How the image becomes the model input: ``preprocess.geometry`` gives the pixel
        image ``img`` (resized and cropped, in ``[0, 1]``) on which maps, masks and
        perturbations live, ``preprocess.normalize`` gives ``x``. **None uses the image
        as it is** (no resize) with identity normalisation, ``x = img``: pass the
        model's :class:`~camwidgets.core.preprocess.Preprocess` (e.g. from
        ``load_demo_model()``) unless the model takes raw ``[0, 1]`` pixels.
    reshape : callable or None
        How a layer's output becomes the feature map ``(N, K, h, w)`` CAMs work on.
        **None finds it** (:mod:`camwidgets.core.tokens`): a CNN's ``(N, K, h, w)`` is used
        as it is; a vision transformer's tokens ``(N, p + h·w, C)`` lose their ``p`` leading
        class / register tokens and are folded into the ``h x w`` patch grid (from the
        model's ``patch_size`` when it has one, else from the token count and the input's
        aspect ratio); a channels-last map ``(N, h, w, C)`` (Swin) is permuted. A callable
        replaces that for every layer: it receives a layer's output ``(N, ...)`` and returns
        ``(N, K, h, w)``, like pytorch-grad-cam's ``reshape_transform``, e.g.
        ``lambda t: t[:, 1:, :].reshape(t.shape[0], 7, 7, t.shape[-1]).permute(0, 3, 1, 2)``
        for ``vit_b_32`` at 224 px. It must only select, reshape and permute entries: the
        same function folds the layer's gradient. Ablation-CAM and Recipro-CAM, which
        replace a layer's output, need the automatic fold (``reshape=None``) on layers
        that are not already ``(N, K, h, w)``.

    Attributes
    ----------
    target : int
        The explained class.
    probabilities : ndarray (num_classes,)
        ``Y = softmax(S(x))``.
    logits : ndarray (num_classes,)
        ``S(x)``.
    candidate_layers : tuple of str
        Candidate layers with a 4-D feature map (after the fold, see ``reshape``), in forward order.
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
                 layers: str | Sequence[LayerSpec] = "auto", preprocess: PreprocessLike = None,
                 reshape: Reshape | None = None) -> None:
        self._setup(model, image, target, layers, preprocess, reshape)
        self._adopt(self._first_capture(self._x, [self._asked]), 0)

    @classmethod
    def batch(cls, model: nn.Module, images: Any, targets: int | Sequence[int | None] | None = None, *,
              layers: str | Sequence[LayerSpec] = "auto", preprocess: PreprocessLike = None,
              reshape: Reshape | None = None) -> list[Explainer]:
        """One explainer per image, built from **one batched pass**: ``Explainer.batch(model, images)``.

        Each explainer is the one ``Explainer(model, image, target, ...)`` gives (the same
        attributes, maps and cache; values equal up to floating-point summation order, as a
        batched convolution may add in another order), but the construction's forward pass and
        its backward pass down to the default layer run once for all the images: what
        :func:`explain_batch` and :func:`camwidgets.evaluate` use. Images whose model inputs
        differ in size run as one batch per size. Later stages (another layer's gradient,
        I-CAM's perturbations, Score-CAM's masked passes, ...) run per explainer, as always.

        Parameters
        ----------
        model : torch.nn.Module
        images : Tensor / ndarray (N, 3, H, W) or sequence of image-likes
        targets : None, int or sequence of N (int or None)
            None explains each image's predicted class; an int that class for every image.
        layers, preprocess, reshape
            As for :class:`Explainer`.

        Returns
        -------
        list of Explainer
            One per image, in order; each holds its own copy of its tensors (keeping one
            explainer does not keep the others' activations alive).

        Raises
        ------
        ValueError
            As :class:`Explainer`, before any model pass (every image is loaded and checked
            first); a target out of the model's range after the forward pass.
        """
        items = _batch_items(images)
        tlist = _batch_targets(targets, len(items))
        preprocess = as_preprocess(preprocess)
        made: list[Explainer] = []
        memo: dict[str, Any] = {}  # what depends on the model and layers only, found once for the batch
        for item, t in zip(items, tlist, strict=True):
            exp = cls.__new__(cls)
            exp._setup(model, item, t, layers, preprocess, reshape, memo)
            made.append(exp)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, exp in enumerate(made):
            groups.setdefault(tuple(exp._x.shape), []).append(i)
        for idx in groups.values():
            first = made[idx[0]]
            cap = first._first_capture(torch.cat([made[i]._x for i in idx]), [made[i]._asked for i in idx])
            for row, i in enumerate(idx):
                made[i]._adopt(cap, row, copy=len(idx) > 1)
        return made

    def _setup(self, model: nn.Module, image: ImageLike, target: int | None, layers: str | Sequence[LayerSpec],
               preprocess: PreprocessLike, reshape: Reshape | None, memo: dict[str, Any] | None = None) -> None:
        """Check every argument and load the image (no model pass).

        ``memo``: shared by the images of one batch (same model and ``layers``), so the
        candidate layers and the model's known number of classes are found once.
        """
        memo = {} if memo is None else memo
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        n = _is_batch(image)
        if n > 1:
            raise ValueError(
                f"Explainer explains one image, but got a batch of {n}. Create one Explainer per image, "
                "or call Explainer.batch(model, images, targets=...) (one explainer per image from one batched "
                "pass) or camwidgets.core.explain_batch(model, images, method, targets=...), which explain "
                "every image with its own target."
            )
        preprocess = as_preprocess(preprocess)  # a camwidgets Preprocess, a torchvision transform, or None
        if reshape is not None and not callable(reshape):
            raise ValueError(f"reshape must be None (found automatically) or a callable mapping a layer's output "
                             f"to (N, C, h, w), got {type(reshape).__name__}.")
        self._reshape: ReshapeSpec = reshape if reshape is not None else "auto"
        tgt = _check_target(target)
        if tgt is not None and "n_static" not in memo:
            memo["n_static"] = _static_num_classes(model)
        n_static = memo.get("n_static") if tgt is not None else None
        if tgt is not None and n_static is not None and tgt >= n_static:
            raise ValueError(
                f"Target class {tgt} is out of range: the model has {n_static} classes "
                f"(valid indices 0..{n_static - 1}). Pass target=None for the predicted class."
            )
        cands: list[str] | None = memo.get("cands")
        generic = bool(memo.get("generic"))  # candidates from the structural fallback (1x1 outputs dropped)
        if cands is not None:
            pass
        elif isinstance(layers, str):
            if layers != "auto":
                raise ValueError(f"layers must be 'auto' or a list of layer names/modules, got {layers!r}. "
                                 "For a single layer use layers=[name].")
            cands, generic = _find_candidates(model)
        else:
            try:
                cands = resolve_layers(model, list(layers))
            except ValueError:  # again, with the model's candidate layers as suggestions in the message
                resolve_layers(model, list(layers), candidate_layers(model) if _has_any_conv(model) else [])
                raise
            if not cands:
                raise ValueError("layers is empty; pass 'auto' or at least one layer name.")

        self._model = model
        self._device = model_device(model)
        self._preprocess = preprocess
        img = load_image(image)
        pixels = preprocess.geometry(img) if preprocess is not None else img
        self._img = pixels.to(self._device, dtype=torch.float32)
        self._x = self._normalize(self._img)[None]
        self._auto = isinstance(layers, str)
        memo["cands"], memo["generic"] = cands, generic
        self._generic = generic
        self._asked = tgt
        self._cand_list = cands

    def _first_capture(self, x: torch.Tensor, targets: Sequence[int | None]) -> Any:
        """The construction's pass over ``x`` (this explainer's input, or a batch of same-size inputs).

        One forward recording every candidate layer, and a backward pass only as deep as the
        default layer (the last usable candidate); other layers' gradients and the input
        gradient come from one more capture, if asked.
        """
        strict = not self._generic
        cands = self._cand_list

        def default_only(acts: Mapping[str, torch.Tensor]) -> list[str]:
            usable = [n for n in cands if self._usable(acts.get(n), strict)]
            return usable[-1:]

        # "auto" leaves out modules that run twice in one forward; a layer the user named must not.
        target: int | list[int | None] | None = targets[0] if len(targets) == 1 else list(targets)
        return capture(self._model, x, cands, target, gradients=default_only, drop_reused=self._auto,
                       reshape=self._reshape)

    def _adopt(self, cap: Any, row: int, copy: bool = False) -> None:
        """Take image ``row`` of the construction's capture (``copy``: its own tensors, not views of the batch)."""
        def own(t: torch.Tensor) -> torch.Tensor:
            return t[row].clone() if copy else t[row]

        cands, strict = self._cand_list, not self._generic
        kept = [n for n in cands if self._usable(cap.activations.get(n), strict)]
        if not self._auto and len(kept) < len(cands):
            bad = [n for n in cands if n not in kept]
            model = self._model
            raise ValueError(
                f"Layer(s) {bad} do not output a 4-D feature map (N, K, h, w) (nor a token sequence (N, T, C) with "
                "a recognisable patch grid, nor a channels-last map (N, h, w, C)); pass convolutional layers "
                f"or blocks, e.g. {candidate_layers(model)[-2:] if _has_any_conv(model) else '...'}, transformer "
                "blocks, or a reshape= callable that folds the layer's output into (N, C, h, w)."
            )
        if not kept:
            h, w = int(self._x.shape[-2]), int(self._x.shape[-1])
            raise ValueError(
                f"None of the layers {cands[:8]} gives a 4-D feature map (N, K, h, w) with a spatial extent "
                f"(larger than 1x1) for the {h}x{w} model input. Pass layers=[...] naming convolutional "
                "layers or blocks of the model; if the image is small, pass a preprocess that resizes it to "
                "the model's input size, or a larger image."
            )
        self._candidates: tuple[str, ...] = tuple(kept)
        self._target = int(cap.targets[row])
        self._logits = own(cap.logits)
        self._probs64 = torch.softmax(self._logits.double(), dim=0)
        self._probs = self._probs64.to(self._logits.dtype)
        self._acts: dict[str, torch.Tensor] = {n: own(cap.activations[n]) for n in kept}
        self._layouts: dict[str, Layout] = {n: cap.layouts[n] for n in kept if n in cap.layouts}
        self._grads: dict[str, torch.Tensor] = {n: own(g) for n, g in cap.gradients.items()}
        self._input_grad: torch.Tensor | None = None
        # The staged cache: one LRU per stage kind (stage_kind), bounded by stage_limit or a stage's keep=.
        self._cache: dict[str, OrderedDict[Hashable, Any]] = {}
        self._limits: dict[str, int] = {}
        self._cache_lock = threading.Lock()  # the bookkeeping only (the map and metrics workers share an explainer)
        self._not_4d: dict[str, str] = {}  # layers found not to give a 4-D output, and what they gave

    # ------------------------------------------------------------------ basics
    @staticmethod
    def _usable(a: torch.Tensor | None, strict: bool) -> bool:
        if a is None or a.dim() != 4:
            return False
        return strict or a.shape[-1] * a.shape[-2] > 1

    def _check_extent(self, method: str, layers: Sequence[str]) -> None:
        """Refuse ``method`` when the model input is one pixel or every layer of ``layers`` gives a 1x1 map.

        A 1x1 feature map makes the CAM one number spread over the image: a constant map,
        which normalises to all zeros (as does any map of a one-pixel input). That happens
        when the image is too small for the model (no preprocess resizing it), so the error
        names the sizes and the fixes.
        """
        big, bw = self.size
        how = "after the preprocess" if self._preprocess is not None else "used as it is: no preprocess"
        fix = ("Pass a preprocess that resizes the image to the model's input size (e.g. the preprocess "
               "load_demo_model() or load_torchvision() returns: Explainer(model, image, preprocess=preprocess)), "
               "or a larger image")
        if big * bw <= 1:
            raise ValueError(f"{method}: the model input is {big}x{bw} pixel ({how}): a map of one pixel is "
                             f"constant (all zeros once normalised). {fix}.")
        extents = {n: (int(self._acts[n].shape[-2]), int(self._acts[n].shape[-1])) for n in layers}
        if not extents or any(h * w > 1 for h, w in extents.values()):
            return
        name = layers[-1]
        h, w = extents[name]
        spatial = [n for n in self._candidates if self._acts[n].shape[-2] * self._acts[n].shape[-1] > 1]
        alt = ""
        if spatial:
            a = self._acts[spatial[-1]]
            alt = (f", or pick an earlier layer with a spatial map, e.g. layer={spatial[-1]!r} "
                   f"({a.shape[-2]}x{a.shape[-1]})")
        which = f"Layer {name!r} gives" if len(layers) == 1 else f"Every candidate layer (the last: {name!r}) gives"
        raise ValueError(
            f"{method}: {which} a {h}x{w} feature map for the {big}x{bw} model input ({how}): the image "
            "is too small for the model, and a CAM of a 1x1 map is constant (all zeros once normalised). "
            f"{fix}{alt}."
        )

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

    def _layer(self, layer: LayerSpec | None) -> str:
        if layer is None:
            return self.default_layer
        name = resolve_layer(self._model, layer, self._candidates)
        if name not in self._acts:
            bad = self._not_4d
            a = None
            if name not in bad:  # a layer found not 4-D is not run again to find out
                cap = capture(self._model, self._x, [name], self._target, reshape=self._reshape)
                a = cap.activations.get(name)
            if a is None or a.dim() != 4:
                if name not in bad:
                    bad[name] = "no tensor" if a is None else f"shape {tuple(a.shape)}"
                raise ValueError(
                    f"Layer {name!r} does not output a 4-D feature map (N, K, h, w) (got {bad[name]}), nor a "
                    "token sequence or channels-last map camwidgets can fold into one; choose a convolutional "
                    f"layer or block, e.g. one of {list(self._candidates[-4:])}, or pass reshape=... ."
                )
            self._acts[name] = a[0]
            self._grads[name] = cap.gradients[name][0]
            if name in cap.layouts:
                self._layouts[name] = cap.layouts[name]
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

    # ------------------------------------------------------------------ the stage API (for method implementations)
    def stage(self, key: Hashable, compute: Callable[[], Any], keep: int | None = None) -> Any:
        """The value of a cached stage: ``compute()`` the first time ``key`` is asked, then the same object.

        Method implementations (:mod:`camwidgets.core.methods`) keep every intermediate here,
        keyed by exactly the parameters it depends on, so a parameter change re-runs only
        the stages that depend on it. Each kind of stage (same ``key[0]``) is an LRU of
        :func:`stage_limit` entries (:data:`STAGE_LIMITS`); ``keep`` sets that limit for the
        kind instead. A hit makes the entry the most recent; a new entry drops the least
        recently used ones first (they are recomputed if asked again).
        """
        hit, value = self._lookup(key)
        if hit:
            return value
        self._make_room(key, keep)
        return self._store(key, compute())

    def _lookup(self, key: Hashable) -> tuple[bool, Any]:
        """``(True, value)`` for a cached key (now the most recent of its kind), else ``(False, None)``."""
        with self._cache_lock:
            entries = self._cache.get(stage_kind(key))
            if entries is None or key not in entries:
                return False, None
            entries.move_to_end(key)
            return True, entries[key]

    def _limit(self, kind: str) -> int:
        return self._limits.get(kind, stage_limit(kind))

    def _make_room(self, key: Hashable, keep: int | None = None) -> None:
        """Before computing ``key``: its kind's least recently used entries dropped to leave one free place."""
        kind = stage_kind(key)
        with self._cache_lock:
            if keep is not None:
                self._limits[kind] = max(1, int(keep))
            entries = self._cache.get(kind)
            while entries is not None and len(entries) >= self._limit(kind):
                entries.popitem(last=False)

    def _store(self, key: Hashable, value: Any) -> Any:
        """Cache ``value`` as the most recent entry of its kind and return what the cache holds for ``key``.

        When another thread stored ``key`` meanwhile, its value is kept and returned (one object per key).
        """
        kind = stage_kind(key)
        with self._cache_lock:
            entries = self._cache.setdefault(kind, OrderedDict())
            if key in entries:
                entries.move_to_end(key)
                return entries[key]
            entries[key] = value
            limit = self._limit(kind)
            while len(entries) > limit:
                entries.popitem(last=False)
            return value

    def cache_info(self) -> dict[str, tuple[int, int]]:
        """``{stage kind: (entries held, limit)}`` of the staged cache (see :data:`STAGE_LIMITS`)."""
        with self._cache_lock:
            return {kind: (len(entries), self._limit(kind)) for kind, entries in self._cache.items() if entries}

    def layer_name(self, layer: LayerSpec | None) -> str:
        """The dotted name of ``layer`` (None: :attr:`default_layer`), captured if it was not a candidate.

        Raises
        ------
        ValueError
            The layer does not exist or does not output a 4-D feature map ``(N, K, h, w)``.
        """
        return self._layer(layer)

    @property
    def reshape(self) -> ReshapeSpec:
        """What folds a layer's output into ``(N, K, h, w)``: ``"auto"`` or the user's callable.

        Pass it as ``reshape=`` to :func:`~camwidgets.core._hooks.capture` so that a method's
        own passes see the layers as the explainer does."""
        return self._reshape

    def layout(self, layer: str) -> Layout:
        """How the layer's output was folded into its feature map (:class:`~camwidgets.core.tokens.Layout`)."""
        name = self._layer(layer)
        found = self._layouts.get(name)
        if found is None:
            a = self._acts[name]
            found = Layout("nchw", tuple(int(s) for s in a.shape), (int(a.shape[-2]), int(a.shape[-1])))
        return found

    def activation(self, layer: str) -> torch.Tensor:
        """``A`` of a layer for the image: ``(K, h, w)`` (the layer must come from :meth:`layer_name`)."""
        return self._acts[self._layer(layer)]

    def gradient(self, layer: str) -> torch.Tensor:
        """``g = dS_c/dA`` of a layer for the image and the target: ``(K, h, w)``.

        Construction computes the default layer's only (the backward pass stops there); the
        first request for another candidate layer runs one forward + backward that records
        every candidate layer's gradient and the input gradient at once.
        """
        name = self._layer(layer)
        if name not in self._grads:
            self._capture_all_gradients()
        return self._grads[name]

    def input_gradient(self) -> torch.Tensor:
        """``dS_c/dx`` of the model input: ``(3, H, W)`` (computed on first request, see :meth:`gradient`)."""
        if self._input_grad is None:
            self._capture_all_gradients()
        assert self._input_grad is not None
        return self._input_grad

    def _capture_all_gradients(self) -> None:
        """One forward + full backward: every candidate layer's ``dS_c/dA`` and ``dS_c/dx``."""
        cap = capture(self._model, self._x, list(self._candidates), self._target, input_grad=True,
                      reshape=self._reshape)
        for n in self._candidates:
            self._grads.setdefault(n, cap.gradients[n][0])
        assert cap.input_grad is not None
        self._input_grad = cap.input_grad[0]

    def finish(self, raw: torch.Tensor) -> torch.Tensor:
        """Feature-resolution raw map ``(h, w)`` -> ``(H, W)`` map spanning [0, 1] (see :meth:`_finish`)."""
        return self._finish(raw)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel images in ``[0, 1]`` ``(..., 3, H, W)`` -> model inputs (the preprocess's normalisation)."""
        return self._normalize(pixels)

    @property
    def input_tensor(self) -> torch.Tensor:
        """The model input ``x`` ``(1, 3, H, W)`` itself (not a copy: never modify it)."""
        return self._x

    @property
    def image_tensor(self) -> torch.Tensor:
        """The pixel image ``img`` ``(3, H, W)`` itself (not a copy: never modify it)."""
        return self._img

    @property
    def logits_tensor(self) -> torch.Tensor:
        """``S(x)`` ``(num_classes,)`` itself (not a copy)."""
        return self._logits

    @property
    def probabilities_tensor64(self) -> torch.Tensor:
        """``softmax(S(x))`` in float64 ``(num_classes,)``."""
        return self._probs64

    # ------------------------------------------------------------------ running a method
    def explain(self, method: str, **params: Any) -> CAMResult:
        """Run any registered method: ``explain("gradcam", layer="layer4")``.

        Parameters
        ----------
        method : str
            A name from :func:`camwidgets.methods` (e.g. ``"gradcam"``, ``"fusioncam"``).
        **params
            The method's parameters (``camwidgets.methods()`` lists them with their
            ranges and defaults); missing ones take their defaults.

        Returns
        -------
        CAMResult
            The same object for the same method and parameters while it is cached (each
            method keeps its last :data:`STAGE_LIMITS` ``["result"]`` results); a result
            dropped from the cache is recomputed, with the same values, as a new object.

        Raises
        ------
        ValueError
            Before any work: an unknown method (the valid names are listed), an unknown
            parameter, a value out of its range, or a layer that is not a 4-D feature map;
            or an image too small for the model: a one-pixel input, or a 1x1 feature map at
            the method's layer (every candidate layer for I-CAM), whose map would be constant.
        """
        from .methods import get

        spec = get(method)
        values = spec.resolve(params)
        if "layer" in values:
            values["layer"] = self._layer(values["layer"])
        # The map's layers: too small an image for them gives a constant map, refused (see _check_extent).
        mapped: Sequence[str] = [] if spec.family != "multi-layer" else self._candidates
        self._check_extent(method, [values["layer"]] if "layer" in values else mapped)
        key = ("result", method, tuple(sorted(values.items())))
        return cast(CAMResult, self.stage(key, lambda: spec.compute(self, **values)))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # exp.gradcam(...), exp.fusioncam(theta=20), ... for every registered method.
        if name.startswith("_"):
            raise AttributeError(name)
        from .methods import REGISTRY

        spec = REGISTRY.get(name)
        if spec is None:
            raise AttributeError(f"'Explainer' object has no attribute {name!r}; the methods are "
                                 f"{', '.join(REGISTRY)}.")

        def run(*args: Any, **params: Any) -> CAMResult:
            if len(args) > len(spec.params):
                raise TypeError(f"{name}() takes at most {len(spec.params)} positional arguments "
                                f"({', '.join(spec.param_names)}), got {len(args)}.")
            for p, value in zip(spec.params, args, strict=False):
                if p.name in params:
                    raise TypeError(f"{name}() got multiple values for argument {p.name!r}.")
                params[p.name] = value
            return self.explain(name, **params)

        run.__name__ = run.__qualname__ = name
        run.__doc__ = spec.docstring()
        run.__signature__ = spec.signature()  # type: ignore[attr-defined]
        return run

    def __dir__(self) -> list[str]:
        from .methods import REGISTRY

        return sorted({*super().__dir__(), *REGISTRY})

    # ------------------------------------------------------------------ contributions
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

    def contributions(self, maps: torch.Tensor, baseline: str) -> torch.Tensor:
        """Raw contributions ``β(L) = Y_c(x ⊙ L) − Y_c(baseline)`` of maps ``(m, H, W)``: one forward.

        The baseline's probability is computed in the same batch the first time (its input
        is the masked input of an all-zero map) and cached.
        """
        key = ("baseline", baseline)
        maps = maps.to(self._device, torch.float32)
        hit, base = self._lookup(key)
        if hit:
            def prob_fn(m: torch.Tensor) -> torch.Tensor:
                return self._probs_of(self._masked_inputs(m, baseline))
        else:  # the all-zero map's masked input is the baseline: one batch [baseline, *maps]
            batch = torch.cat([torch.zeros_like(maps[:1]), maps])
            probs = self._probs_of(self._masked_inputs(batch, baseline))
            self._make_room(key)
            base = self._store(key, float(probs[0]))

            def prob_fn(m: torch.Tensor) -> torch.Tensor:
                return probs[1:]
        return _fusion.contributions(prob_fn, maps, float(base))

    def baseline_probability(self, baseline: str) -> float:
        """``Y_c(baseline)``: the target probability of the all-zero map's masked input (cached)."""
        def compute() -> float:
            zero = torch.zeros((1, *self.size), device=self._device)
            return float(self._probs_of(self._masked_inputs(zero, baseline))[0])

        return float(self.stage(("baseline", baseline), compute))

    def pair_contributions(self, l_g: torch.Tensor, l_r: torch.Tensor, region: str, name: str,
                           baseline: str) -> tuple[float, float]:
        """Raw ``β`` of a gradient map and of the (cached) region map in one forward pass.

        The first time ``[baseline, L_g, L_r]`` run as one batch; afterwards ``β_r`` and the
        baseline come from the cache and only ``L_g`` runs.
        """
        rkey = ("beta-region", region, name, baseline)
        hit, beta_r = self._lookup(rkey)
        if hit:
            return float(self.contributions(l_g[None], baseline)[0]), float(beta_r)
        b = self.contributions(torch.stack([l_g, l_r]), baseline)
        self._make_room(rkey)
        self._store(rkey, float(b[1]))
        return float(b[0]), float(b[1])


def _has_any_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def explain_batch(model: nn.Module, images: Any, method: str = "gradcam",
                  targets: int | Sequence[int | None] | None = None, *,
                  layers: str | Sequence[LayerSpec] = "auto",
                  preprocess: PreprocessLike = None, reshape: Reshape | None = None,
                  **params: Any) -> list[CAMResult]:
    """Explain every image of a batch, each with its own target (one :class:`Explainer` each,
    built from one batched pass by :meth:`Explainer.batch`).

    Parameters
    ----------
    model : torch.nn.Module
    images : Tensor / ndarray (N, 3, H, W) or sequence of image-likes
    method : str
        An :class:`Explainer` method name, e.g. ``"gradcam"`` or ``"fusioncam"``.
    targets : None, int or sequence of N (int or None)
        None explains each image's predicted class; an int explains that class for all.
    layers, preprocess, reshape
        As for :class:`Explainer`.
    **params
        Passed to the method.

    Returns
    -------
    list of CAMResult
        One per image, in order.
    """
    from .methods import get

    get(method).resolve(params)  # unknown method or parameter: an error before any image is explained
    explainers = Explainer.batch(model, images, targets, layers=layers, preprocess=preprocess, reshape=reshape)
    return [getattr(exp, method)(**params) for exp in explainers]


def _batch_items(images: Any) -> list[Any]:
    """The images of a batch argument: a 4-D tensor / array split along its first axis, else a list."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return [images[i] for i in range(images.shape[0])]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return [images]
    return list(images)


def _batch_targets(targets: Any, n: int) -> list[int | None]:
    """One target (int or None) per image of a batch of ``n``."""
    if targets is None or (isinstance(targets, numbers.Integral) and not isinstance(targets, bool)):
        return [None if targets is None else int(targets)] * n
    if isinstance(targets, torch.Tensor):
        targets = targets.reshape(-1).tolist()
    tlist = list(targets)
    if len(tlist) != n:
        raise ValueError(f"Got {len(tlist)} targets for {n} images; pass one per image, a single int, or None.")
    return tlist

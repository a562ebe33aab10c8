"""Preprocessing split into its two halves: geometry (pixel space) and normalisation.

CAMs live on the pixels the model actually saw, so camwidgets keeps the resized,
cropped image in ``[0, 1]`` (the pixel image ``img``) apart from the normalised model
input (``x``). Perturbations and masks are applied in pixel space and then
normalised.

A torchvision transform (``weights.transforms()``, or a ``Compose`` of Resize,
CenterCrop, ToTensor / ToImage / ToDtype / ConvertImageDtype and Normalize) is
converted into the same :class:`Preprocess` by :func:`as_preprocess` /
:meth:`Preprocess.from_torchvision`; docs/input.md lists what is accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["INTERPOLATIONS", "Preprocess", "PreprocessLike", "as_preprocess"]

#: What a ``preprocess=`` argument may be: a :class:`Preprocess`, a torchvision transform
#: (converted by :func:`as_preprocess`) or None.
PreprocessLike = Any

#: The resampling modes :class:`Preprocess` reproduces (torchvision's tensor ``resize``).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")

# PIL's integer constants, which torchvision also accepts as ``interpolation``.
_PIL_INTERPOLATIONS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _pair(v: int | Sequence[int] | None) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    vals = [int(x) for x in v]
    if len(vals) == 1:
        return (vals[0], vals[0])
    h, w = vals
    return (h, w)


def _resize_spec(v: int | Sequence[int] | None) -> int | tuple[int, int] | None:
    """``resize``: an int (shorter side; ``[n]`` too, as torchvision writes it) or ``(H, W)``."""
    if v is None or isinstance(v, int):
        return v
    vals = [int(x) for x in v]
    if len(vals) == 1:
        return vals[0]
    if len(vals) != 2:
        raise ValueError(f"Preprocess: resize must be an int (shorter side) or (H, W), got {v!r}.")
    return (vals[0], vals[1])


def _resized_hw(h: int, w: int, resize: int | tuple[int, int]) -> tuple[int, int]:
    """The size after resizing, with torchvision's arithmetic (the longer side is truncated)."""
    if not isinstance(resize, int):
        return resize
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return (new_h, new_w)


def _center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's ``center_crop``: zero-pad when the crop is larger, round the offsets."""
    th, tw = size
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if th > h or tw > w:
        left, top = max(0, (tw - w) // 2), max(0, (th - h) // 2)
        right, bottom = max(0, (tw - w + 1) // 2), max(0, (th - h + 1) // 2)
        x = F.pad(x, [left, right, top, bottom], value=0.0)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if (h, w) == (th, tw):
            return x
    top, left = round((h - th) / 2.0), round((w - tw) / 2.0)  # Python rounds halves to even, as torchvision
    return x[..., top:top + th, left:left + tw]


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre-crop and normalise an image for a model.

    Parameters
    ----------
    size : int or (H, W) or None
        The model's input size after cropping. None keeps the image's size.
    mean, std : three floats
        Per-channel normalisation, ``x = (img - mean) / std``.
    resize : int or (H, W) or None
        If an int, the shorter side is first resized to ``resize`` (aspect kept, the longer
        side truncated to an int as torchvision does); if ``(H, W)``, the image is resized
        to exactly that. Then the centre ``size`` crop is taken (zero-padded where the
        crop is larger than the image), as torchvision's ``Resize`` + ``CenterCrop`` and
        ``ImageClassification`` transform do. If None and ``size`` is given, the image is
        resized to ``size`` directly.
    interpolation : {"bilinear", "bicubic", "nearest", "nearest-exact"}
        The resampling, as in ``torch.nn.functional.interpolate`` (``align_corners=False``).
    antialias : bool
        Antialias when downscaling (bilinear and bicubic only; ignored for nearest).

    Resizing is the same arithmetic as torchvision's tensor ``resize``, so
    ``Preprocess.from_torchvision(t)(img)`` equals ``t(img)`` for a float image
    tensor ``img`` in ``[0, 1]`` (up to float rounding). One difference: the pixel
    image stays in ``[0, 1]``, so the overshoot of bicubic resampling at sharp edges
    is clipped (PIL clips it too, on 8-bit images; torchvision's float tensors keep it).

    Examples
    --------
    >>> p = Preprocess(size=224, resize=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> p(torch.rand(3, 300, 400)).shape
    torch.Size([3, 224, 224])
    """

    size: int | tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size))
        object.__setattr__(self, "resize", _resize_spec(self.resize))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "antialias", bool(self.antialias))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("Preprocess: mean and std need three values (one per RGB channel).")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocess: std must be positive, got {self.std}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Preprocess: interpolation must be one of {', '.join(INTERPOLATIONS)}; got {self.interpolation!r}."
            )
        for name in ("size", "resize"):
            v = _pair(getattr(self, name))
            if v is not None and min(v) <= 0:
                raise ValueError(f"Preprocess: {name} must be positive, got {getattr(self, name)}.")

    @classmethod
    def from_torchvision(cls, transform: Any) -> Preprocess:
        """The :class:`Preprocess` that computes what a torchvision transform computes.

        Accepts ``weights.transforms()`` (torchvision's ``ImageClassification`` preset) and a
        ``Compose`` (v1 or v2) or ``nn.Sequential`` of, in this order: at most one
        ``Resize`` (int: shorter side, or ``(H, W)``; no ``max_size``), at most one
        ``CenterCrop`` after it, at most one ``Normalize`` after both, and anywhere the
        conversions ``ToTensor``, ``PILToTensor``, ``ToImage``, ``ToPureTensor``, ``RGB``,
        ``ConvertImageDtype`` / ``ToDtype`` to a float dtype (``ToDtype`` with
        ``scale=True``). ``interpolation`` and ``antialias`` are copied, with
        torchvision's tensor semantics (``antialias=None`` is False on tensors).

        Raises
        ------
        ValueError
            Naming the transform that cannot be reproduced (random augmentations,
            colour changes, ``Lambda``, ``Resize(max_size=...)``, a ``CenterCrop`` without
            a ``Resize`` before it, ...) and what to pass instead.
        """
        return _from_torchvision(transform)

    def geometry(self, img: torch.Tensor) -> torch.Tensor:
        """Resize and crop ``(3, H, W)`` or ``(N, 3, H, W)`` pixels in [0, 1]; stays in [0, 1]."""
        batched = img.dim() == 4
        x = img if batched else img.unsqueeze(0)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = _pair(self.size)  # already a pair after __post_init__; this narrows the type
        if self.resize is not None:
            x = self._resample(x, _resized_hw(h, w, self.resize))
            if size is not None:
                x = _center_crop(x, size)
        elif size is not None:
            x = self._resample(x, size)
        x = x.clamp(0.0, 1.0)
        return x if batched else x.squeeze(0)

    def _resample(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == hw:
            return x
        smooth = self.interpolation in ("bilinear", "bicubic")
        return F.interpolate(x, size=hw, mode=self.interpolation, align_corners=False if smooth else None,
                             antialias=self.antialias and smooth)

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """``(img - mean) / std`` over the channel axis (-3)."""
        mean = torch.tensor(self.mean, dtype=img.dtype, device=img.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=img.dtype, device=img.device).view(3, 1, 1)
        return (img - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return x * std + mean

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Geometry then normalisation: the model's input."""
        return self.normalize(self.geometry(img))


_HOW = (
    "Pass camwidgets.Preprocess(size=..., resize=..., mean=..., std=...), or a torchvision transform made of "
    "Resize, CenterCrop, ToTensor/PILToTensor/ToImage, ToDtype/ConvertImageDtype and Normalize "
    "(e.g. weights.transforms())."
)


def as_preprocess(obj: Any) -> Preprocess | None:
    """``obj`` as a :class:`Preprocess`: None stays None, a Preprocess is returned as is, a
    torchvision transform is converted (:meth:`Preprocess.from_torchvision`).

    Raises
    ------
    ValueError
        For anything else, or a torchvision transform camwidgets cannot reproduce; the
        message names what was given and what to pass.
    """
    if obj is None or isinstance(obj, Preprocess):
        return obj
    if _tv_name(obj) is not None or isinstance(obj, torch.nn.Sequential):
        return _from_torchvision(obj)
    raise ValueError(f"preprocess must be a camwidgets Preprocess, a torchvision transform or None; "
                     f"got {_describe(obj)}. {_HOW}")


def _describe(obj: Any) -> str:
    text = repr(obj).replace("\n", " ")
    text = " ".join(text.split())
    if len(text) > 80:
        text = text[:77] + "..."
    return f"a {type(obj).__name__} ({text})"


def _tv_name(obj: Any) -> str | None:
    """The class name of a torchvision transform, None for anything else (no torchvision import)."""
    module = type(obj).__module__ or ""
    return type(obj).__name__ if module.startswith("torchvision.transforms") else None


def _interpolation(value: Any, where: str) -> str:
    raw = getattr(value, "value", value)
    name = _PIL_INTERPOLATIONS.get(raw, str(raw)) if isinstance(raw, int) else str(raw).lower()
    if name not in INTERPOLATIONS:
        raise ValueError(
            f"{where} uses interpolation {name!r}, which camwidgets cannot reproduce on tensors; "
            f"use one of {', '.join(INTERPOLATIONS)}."
        )
    return name


def _flatten(obj: Any) -> list[Any]:
    name = _tv_name(obj)
    if name == "Compose" or isinstance(obj, torch.nn.Sequential):
        steps = list(obj.transforms) if name == "Compose" else list(obj)
        return [s for step in steps for s in _flatten(step)]
    return [obj]


def _is_float_dtype(dtype: Any) -> bool:
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def _to_dtype_target(step: Any) -> Any:
    """The dtype ``v2.ToDtype`` gives an image (it may be a dict keyed by type)."""
    dtype = step.dtype
    if not isinstance(dtype, dict):
        return dtype
    for key, value in dtype.items():
        if getattr(key, "__name__", None) in ("Image", "Tensor"):
            return value
    return dtype.get("others")


def _from_torchvision(transform: Any) -> Preprocess:
    name = _tv_name(transform)
    if name == "ImageClassification":
        t = transform
        interp = _interpolation(t.interpolation, "The ImageClassification transform")
        return Preprocess(size=_pair(t.crop_size), resize=_resize_spec(t.resize_size), mean=tuple(t.mean),
                          std=tuple(t.std), interpolation=interp, antialias=bool(t.antialias))
    if name is None and not isinstance(transform, torch.nn.Sequential):
        raise ValueError(f"Cannot convert {_describe(transform)} into a camwidgets Preprocess. {_HOW}")

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    interp, antialias = "bilinear", True
    seen_resize = seen_normalize = False
    for step in _flatten(transform):
        kind = _tv_name(step)
        what = f"The {kind or type(step).__name__} step"
        if kind in ("ToTensor", "PILToTensor", "ToImage", "ToPureTensor", "RGB"):
            continue  # camwidgets' images already are RGB float tensors in [0, 1]
        if kind == "ConvertImageDtype" or kind == "ToDtype":
            dtype = _to_dtype_target(step) if kind == "ToDtype" else step.dtype
            if not _is_float_dtype(dtype):
                raise ValueError(f"{what} converts to {dtype}; camwidgets feeds the model float images, "
                                 "so only a conversion to a float dtype can be reproduced.")
            if kind == "ToDtype" and not step.scale:
                raise ValueError(
                    f"{what} has scale=False: an 8-bit image would reach the model as 0..255 floats, a float "
                    "image as 0..1, so camwidgets cannot tell which the model expects. Use "
                    "ToDtype(torch.float32, scale=True), or a Preprocess whose mean/std include the factor 255."
                )
            continue
        if seen_normalize and kind in ("Resize", "CenterCrop", "Normalize"):
            raise ValueError(f"{what} comes after Normalize; camwidgets resizes and crops pixels in [0, 1] "
                             "and normalises last. Put Normalize last.")
        if kind == "Resize":
            if seen_resize or crop is not None:
                raise ValueError(f"{what} follows another Resize or a CenterCrop; camwidgets reproduces one "
                                 "Resize followed by one CenterCrop.")
            if getattr(step, "max_size", None) is not None or step.size is None:
                raise ValueError(f"{what} has max_size={step.max_size}; camwidgets cannot reproduce the "
                                 "cap on the longer side. Use Resize(size) without max_size.")
            resize = _resize_spec(step.size)
            interp = _interpolation(step.interpolation, what)
            antialias = bool(step.antialias)  # None means False on tensors, as in torchvision
            seen_resize = True
        elif kind == "CenterCrop":
            if not seen_resize:
                raise ValueError(f"{what} has no Resize before it; camwidgets' Preprocess resizes before "
                                 "cropping. Add a Resize before the CenterCrop, or crop the images yourself.")
            if crop is not None:
                raise ValueError(f"{what} follows another CenterCrop; camwidgets reproduces one.")
            crop = _pair(step.size)
        elif kind == "Normalize":
            mean, std = tuple(float(m) for m in step.mean), tuple(float(s) for s in step.std)
            if len(mean) == 1:
                mean = mean * 3
            if len(std) == 1:
                std = std * 3
            if len(mean) != 3 or len(std) != 3:
                raise ValueError(f"{what} has {len(mean)} means and {len(std)} stds; RGB images need 3 (or 1).")
            seen_normalize = True
        else:
            raise ValueError(
                f"{what} ({_describe(step)}) cannot be reproduced by camwidgets' Preprocess: random "
                "augmentations, colour changes and custom functions are not supported. Explain with the "
                "deterministic evaluation transform (e.g. weights.transforms()). " + _HOW
            )
    mean3, std3 = (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
    if resize is not None and crop is None and not isinstance(resize, int):
        # Resize((H, W)) alone: the direct resize to ``size``.
        return Preprocess(size=resize, mean=mean3, std=std3, interpolation=interp, antialias=antialias)
    return Preprocess(size=crop, resize=resize, mean=mean3, std=std3, interpolation=interp, antialias=antialias)

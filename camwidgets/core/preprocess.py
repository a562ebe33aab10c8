"""Preprocessing split into its two halves: geometry (pixel space) and normalisation.

CAMs live on the pixels the model actually saw, so camwidgets keeps the resized,
cropped image in ``[0, 1]`` (``img`` in SPEC.md) apart from the normalised model
input (``x``). Perturbations and masks are applied in pixel space and then
normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Preprocess"]


def _pair(v: int | Sequence[int] | None) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    h, w = (int(x) for x in v)
    return (h, w)


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre-crop and normalise an image for a model.

    Parameters
    ----------
    size : int or (H, W) or None
        The model's input size after cropping. None keeps the image's size.
    mean, std : three floats
        Per-channel normalisation, ``x = (img - mean) / std``.
    resize : int or None
        If given, the shorter side is first resized to ``resize`` (aspect kept),
        then the centre ``size`` crop is taken, as torchvision's
        ``ImageClassification`` transform does. If None and ``size`` is given, the
        image is resized to ``size`` directly.

    Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``,
    ``antialias=True``), the same arithmetic as torchvision's tensor ``resize``.

    Examples
    --------
    >>> p = Preprocess(size=224, resize=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> p(torch.rand(3, 300, 400)).shape
    torch.Size([3, 224, 224])
    """

    size: int | tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _pair(self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("Preprocess: mean and std need three values (one per RGB channel).")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocess: std must be positive, got {self.std}.")

    def geometry(self, img: torch.Tensor) -> torch.Tensor:
        """Resize and crop ``(3, H, W)`` or ``(N, 3, H, W)`` pixels in [0, 1]; stays in [0, 1]."""
        batched = img.dim() == 4
        x = img if batched else img.unsqueeze(0)
        h, w = x.shape[-2:]
        size = _pair(self.size)  # already a pair after __post_init__; this narrows the type
        if self.resize is not None:
            short = min(h, w)
            nh, nw = round(h * self.resize / short), round(w * self.resize / short)
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            if size is not None:
                th, tw = size
                top, left = max(0, (nh - th) // 2), max(0, (nw - tw) // 2)
                x = x[..., top:top + th, left:left + tw]
        elif size is not None and (h, w) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
        return x if batched else x.squeeze(0)

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

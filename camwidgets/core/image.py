"""Load anything image-like into a float tensor ``(3, H, W)`` in ``[0, 1]``."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageLike", "load_image"]

ImageLike = Any  # str | os.PathLike | bytes | PIL.Image.Image | np.ndarray | torch.Tensor


def _max_pixels() -> int | None:
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else int(limit)


def _check_pixels(h: int, w: int, what: str) -> None:
    limit = _max_pixels()
    if limit is not None and h * w > limit:
        raise ValueError(
            f"{what} has {h}x{w} = {h * w} pixels, over PIL's decompression-bomb limit of {limit}. "
            "Downscale it first, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        )


def _from_pil(img: Image.Image) -> torch.Tensor:
    _check_pixels(img.height, img.width, "The image")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top, 0, 1).astype(np.float32)
        return torch.from_numpy(np.repeat(arr[None], 3, axis=0).copy())
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return _from_numpy(arr, "The image")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels over white, as a viewer shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def _from_numpy(arr: np.ndarray, what: str, channels_first: bool = False) -> torch.Tensor:
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape}); pass an image with at least one pixel.")
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} has dtype {arr.dtype}; pass a numeric array.")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(
            f"{what} has shape {arr.shape}; expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4."
        )
    # Tensors are read channels-first (torch's convention) when the first axis can be channels;
    # arrays are read channels-last (PIL / scikit-image's) unless only the first axis can be.
    first_ok, last_ok = arr.shape[0] in (1, 3, 4), arr.shape[-1] in (1, 3, 4)
    if first_ok and (channels_first or not last_ok):
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} has shape {arr.shape}; the channel axis must have 1, 3 or 4 entries.")
    _check_pixels(arr.shape[0], arr.shape[1], what)
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535.0 if arr.dtype.itemsize >= 2 and arr.max() > 255 else 255.0
        out = arr.astype(np.float32) / top
    else:
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{what} contains NaN or infinite values.")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            if lo >= 0.0 and hi <= 255.0:
                out = out / 255.0
            else:
                raise ValueError(
                    f"{what} has float values in [{lo:.3g}, {hi:.3g}]; expected [0, 1] (or [0, 255]). "
                    "If it is normalised for a model, undo the normalisation first."
                )
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    elif out.shape[-1] == 4:
        alpha = out[..., 3:4]
        out = out[..., :3] * alpha + (1.0 - alpha)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))


def _open(src: str | os.PathLike[str] | bytes) -> torch.Tensor:
    what = "The data given" if isinstance(src, bytes) else f"The file {str(src)!r}"
    if not isinstance(src, bytes):
        path = Path(src)
        if not path.exists():
            raise ValueError(f"{what} does not exist; check the path.")
        if path.is_dir():
            raise ValueError(f"{what} is a folder; pass the path of an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
                im.load()
                return _from_pil(im)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ValueError(
            f"{what} is over PIL's decompression-bomb limit ({err}). Downscale it first, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from None
    except UnidentifiedImageError:
        raise ValueError(
            f"{what} is not an image PIL can read; pass a PNG, JPEG, BMP, TIFF, GIF or WebP file."
        ) from None
    except OSError as err:
        raise ValueError(f"{what} could not be read as an image: {err}.") from None


def load_image(src: ImageLike, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Load an image as a float32 tensor ``(3, H, W)`` in ``[0, 1]``.

    Parameters
    ----------
    src : path, bytes, PIL image, numpy array or tensor
        Files and bytes are read with PIL. Arrays may be ``(H, W)``, ``(H, W, C)`` or
        ``(C, H, W)`` with 1, 3 or 4 channels (numpy arrays are read channels-last and
        tensors channels-first when the shape allows both); integer arrays are scaled by 255 (or
        65535 for 16-bit data), float arrays must lie in ``[0, 1]`` (``[0, 255]`` is
        accepted and scaled). Grey, palette, 16-bit and RGBA images become RGB;
        transparency is composited over white.
    size : int or (H, W), optional
        Resize (bilinear, antialiased) to a square of this side, or to ``(H, W)``.

    Raises
    ------
    ValueError
        For a file that is not an image (or does not exist), an empty array, an array
        of the wrong shape or range, or an image over PIL's decompression-bomb limit
        (``PIL.Image.MAX_IMAGE_PIXELS``). The message says what to do.

    Examples
    --------
    >>> load_image(np.zeros((4, 5), dtype=np.uint8)).shape
    torch.Size([3, 4, 5])
    """
    if isinstance(src, torch.Tensor):
        t = src.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        arr = t.float().numpy() if t.is_floating_point() else t.numpy()
        out = _from_numpy(arr, "The tensor", channels_first=t.dim() == 3)
    elif isinstance(src, np.ndarray):
        out = _from_numpy(src, "The array")
    elif isinstance(src, Image.Image):
        out = _from_pil(src)
    elif isinstance(src, (str, os.PathLike, bytes)):
        out = _open(src)
    else:
        raise ValueError(
            f"load_image cannot read a {type(src).__name__}; pass a file path, bytes, a PIL image, "
            "a numpy array or a torch tensor."
        )
    if size is not None:
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if hw[0] <= 0 or hw[1] <= 0:
            raise ValueError(f"load_image: size must be positive, got {size}.")
        if tuple(out.shape[-2:]) != hw:
            out = F.interpolate(out[None], size=hw, mode="bilinear", align_corners=False,
                                antialias=True)[0].clamp(0, 1)
    return out

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


# Formats whose PIL mode "I" images hold 16-bit samples in [0, 65535]: Pillow decodes
# 16-bit PGM/PPM (any maxval over 255) into mode "I" rescaled to that range, and older
# Pillow releases opened 16-bit grey PNGs as mode "I" too (newer ones use "I;16").
_SIXTEEN_BIT_I_FORMATS = ("PPM", "PNG")


def _from_pil(img: Image.Image) -> torch.Tensor:
    _check_pixels(img.height, img.width, "The image")
    if img.mode.startswith("I;16"):
        return _from_numpy(np.asarray(img), "The 16-bit image")
    if img.mode == "I":
        if img.format in _SIXTEEN_BIT_I_FORMATS:
            arr = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
            return _from_numpy(arr, f"The 16-bit {img.format} image")
        raise ValueError(
            "The image has PIL mode 'I' (32-bit integers), whose range camwidgets cannot know. "
            "Convert it yourself: to uint8 (np.uint8 values 0..255), to uint16 (0..65535) or to a "
            "float array in [0, 1]."
        )
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


# How far outside [0, 1] a float image may stray and still be clipped: resizing and colour
# conversions overshoot by a few 1e-4 at most; anything further is a different convention.
FLOAT_TOLERANCE = 1e-3


def _check_one(shape: tuple[int, ...], what: str) -> None:
    """A 4-D input must be a batch of one image: ``(1, C, H, W)`` (or ``(1, H, W, C)``)."""
    if len(shape) == 4 and shape[0] != 1:
        raise ValueError(
            f"{what} has shape {shape}: a batch of {shape[0]} images, but one image is expected. "
            "Pass one image (e.g. images[0]); to explain a batch, call camwidgets.core.explain_batch."
        )


def _to_unit_float(arr: np.ndarray, what: str, dtype_name: str) -> np.ndarray:
    """The pixel values as float32 in [0, 1], by the dtype's rule (see docs/input.md)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        return arr.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{what} has dtype {dtype_name} (values {int(arr.min())}..{int(arr.max())}), "
            "whose range camwidgets cannot know: "
            "only uint8 (scaled by 1/255) and uint16 (by 1/65535) are read as pixel values. "
            "Convert it: to uint8 if it holds 0..255 values (arr.astype(np.uint8), tensor.to(torch.uint8)), "
            "or to a float array in [0, 1]."
        )
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(
            f"{what} contains NaN or infinite values; replace them (e.g. np.nan_to_num(arr, nan=0.0, "
            "posinf=1.0, neginf=0.0)) or fix what produced them: pixels must be finite."
        )
    lo, hi = float(out.min()), float(out.max())
    # The bounds in float32, so that e.g. 1.001 written in the array is inside.
    if lo < float(np.float32(-FLOAT_TOLERANCE)) or hi > float(np.float32(1.0 + FLOAT_TOLERANCE)):
        raise ValueError(
            f"{what} has float values in [{lo:.6g}, {hi:.6g}]; float images must lie in [0, 1] "
            f"(up to {FLOAT_TOLERANCE:g} outside is clipped). If it holds 0..255 values, divide by 255 "
            "yourself, or pass uint8. If it is normalised for a model, undo the normalisation first."
        )
    if lo < 0.0 or hi > 1.0:
        out = np.clip(out, 0.0, 1.0)
    return out


def _from_numpy(arr: np.ndarray, what: str, channels_first: bool = False,
                dtype_name: str | None = None) -> torch.Tensor:
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape}); pass an image with at least one pixel.")
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} has dtype {dtype_name or arr.dtype}; pass a numeric array.")
    if arr.ndim == 4:
        _check_one(arr.shape, what)
        arr = arr[0]
        # A 4-D array is (1, C, H, W) like a model's input; (1, H, W, C) when only that fits.
        channels_first = True
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(
            f"{what} has shape {arr.shape} ({arr.ndim} dimensions); expected (H, W), (H, W, C), (C, H, W) "
            "or (1, C, H, W) with C in 1, 3, 4. Index or reshape it to one image of that shape."
        )
    # Tensors are read channels-first (torch's convention) when the first axis can be channels;
    # arrays are read channels-last (PIL / scikit-image's) unless only the first axis can be.
    first_ok, last_ok = arr.shape[0] in (1, 3, 4), arr.shape[-1] in (1, 3, 4)
    if first_ok and (channels_first or not last_ok):
        arr = np.moveaxis(arr, 0, -1)
    if arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{what} has shape {arr.shape}: {arr.shape[-1]} channels, but the channel axis must have 1 (grey), "
            "3 (RGB) or 4 (RGBA) entries. Pick the channels you mean, e.g. arr[..., :3] for the first three "
            "or arr[..., 0] for one."
        )
    _check_pixels(arr.shape[0], arr.shape[1], what)
    out = _to_unit_float(arr, what, dtype_name or str(arr.dtype))
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    elif out.shape[-1] == 4:
        alpha = out[..., 3:4]
        out = out[..., :3] * alpha + (1.0 - alpha)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))


_FORMATS = "pass a PNG, JPEG, BMP, TIFF, GIF or WebP file"


def _is_svg(src: str | os.PathLike[str] | bytes) -> bool:
    """An SVG file or SVG data: vector graphics, which PIL does not rasterise."""
    if not isinstance(src, bytes) and Path(src).suffix.lower() in (".svg", ".svgz"):
        return True
    if isinstance(src, bytes):
        head = src[:1024]
    else:
        with Path(src).open("rb") as f:
            head = f.read(1024)
    return b"<svg" in head.lower()


def _open(src: str | os.PathLike[str] | bytes) -> torch.Tensor:
    what = "The data given" if isinstance(src, bytes) else f"The file {str(src)!r}"
    if not isinstance(src, bytes):
        path = Path(src)
        if not path.exists():
            raise ValueError(f"{what} does not exist; check the path.")
        if path.is_dir():
            raise ValueError(f"{what} is a folder; pass the path of an image file.")
    if (len(src) if isinstance(src, bytes) else Path(src).stat().st_size) == 0:
        raise ValueError(f"{what} is empty (0 bytes); {_FORMATS} (a failed download or copy leaves one).")
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
        if _is_svg(src):
            raise ValueError(
                f"{what} is an SVG (vector graphics), which PIL cannot read; rasterise it first "
                "(e.g. cairosvg.svg2png, or export a PNG from your editor) and pass that."
            ) from None
        raise ValueError(f"{what} is not an image PIL can read; {_FORMATS}.") from None
    except OSError as err:
        if "truncated" in str(err):
            raise ValueError(
                f"{what} is cut short ({err}): the file ends before its pixel data does. Download or "
                "export it again; to read the part that is there, set PIL.ImageFile.LOAD_TRUNCATED_IMAGES "
                "= True (the missing rows come out black)."
            ) from None
        raise ValueError(f"{what} could not be read as an image ({err}); check that the file is a "
                         f"complete image, or {_FORMATS}.") from None


def load_image(src: ImageLike, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Load an image as a float32 tensor ``(3, H, W)`` in ``[0, 1]``.

    Parameters
    ----------
    src : path, bytes, PIL image, numpy array or tensor
        Files and bytes are read with PIL. Arrays may be ``(H, W)``, ``(H, W, C)``,
        ``(C, H, W)`` or a batch of one ``(1, C, H, W)``, with 1, 3 or 4 channels (3-D numpy
        arrays are read channels-last and tensors channels-first when the shape allows both).
        Pixel values follow the dtype: uint8 is divided by 255, uint16 (and 16-bit files) by
        65535, bool is 0/1, floats must already lie in ``[0, 1]`` (values at most ``1e-3``
        outside are clipped). Other integer dtypes (int8 ... int64, uint32, uint64, PIL mode
        ``"I"``) are refused, as their range is unknown. Grey, palette, 16-bit and RGBA
        images become RGB; transparency is composited over white. Of a file with several
        frames (an animated GIF, APNG or WebP, a multi-page TIFF) the first frame is read.
        docs/input.md has the whole contract.
    size : int or (H, W), optional
        Resize (bilinear, antialiased) to a square of this side, or to ``(H, W)``.

    Raises
    ------
    ValueError
        For a file that is not an image (or does not exist, is empty, is cut short, is an
        SVG), an empty array, a batch of
        several images, an array of the wrong shape, dtype or range (a float image outside
        ``[0, 1]``, NaN), or an image over PIL's decompression-bomb limit
        (``PIL.Image.MAX_IMAGE_PIXELS``). The message says what to do.

    Examples
    --------
    >>> load_image(np.zeros((4, 5), dtype=np.uint8)).shape
    torch.Size([3, 4, 5])
    """
    if isinstance(src, torch.Tensor):
        t = src.detach().cpu()
        _check_one(tuple(t.shape), "The tensor")
        if t.dim() == 4:
            t = t[0]
        arr = t.float().numpy() if t.is_floating_point() else t.numpy()
        out = _from_numpy(arr, "The tensor", channels_first=t.dim() == 3, dtype_name=str(t.dtype))
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

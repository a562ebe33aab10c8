"""Synthetic shapes with exact ground truth: the dataset the demo model learns.

Each item is a coloured shape (or 2-3 of the same class) drawn on a cluttered,
textured background. The clutter (soft blobs, thin lines, gratings and pixel
noise) belongs to no class, so a faithful explanation should light up the
object and not the clutter; the exact object mask and boxes make that
measurable (energy pointing game, IoU, ...).

Items are generated on access from ``SeedSequence([seed, index])``, so the same
``(seed, index)`` gives the same item on any machine, in any order, with no
files to download.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from skimage.draw import line_aa, polygon

__all__ = ["CLASSES", "Shapes"]

#: Class names, in label order.
CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "arrow",
)

# Vertices of the polygonal classes in a unit frame (object "radius" 1).
_STAR = [
    (math.cos(math.pi / 2 + k * math.pi / 5) * (1.0 if k % 2 == 0 else 0.42),
     math.sin(math.pi / 2 + k * math.pi / 5) * (1.0 if k % 2 == 0 else 0.42))
    for k in range(10)
]
_TRIANGLE = [(math.cos(math.pi / 2 + k * 2 * math.pi / 3), math.sin(math.pi / 2 + k * 2 * math.pi / 3))
             for k in range(3)]
_SQUARE = [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)]
_CROSS = [(-0.3, -1.0), (0.3, -1.0), (0.3, -0.3), (1.0, -0.3), (1.0, 0.3), (0.3, 0.3),
          (0.3, 1.0), (-0.3, 1.0), (-0.3, 0.3), (-1.0, 0.3), (-1.0, -0.3), (-0.3, -0.3)]
_ARROW = [(-1.0, -0.22), (0.15, -0.22), (0.15, -0.62), (1.0, 0.0), (0.15, 0.62), (0.15, 0.22),
          (-1.0, 0.22)]
_POLYGONS = {"square": _SQUARE, "triangle": _TRIANGLE, "star": _STAR, "cross": _CROSS,
             "arrow": _ARROW}


def _object_mask(name: str, cx: float, cy: float, r: float, angle: float,
                 size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Boolean (size, size) mask of one shape centred at (cx, cy) with radius r."""
    if name in _POLYGONS:
        pts = np.asarray(_POLYGONS[name], dtype=np.float64)
        c, s = math.cos(angle), math.sin(angle)
        x = cx + r * (pts[:, 0] * c - pts[:, 1] * s)
        y = cy + r * (pts[:, 0] * s + pts[:, 1] * c)
        mask = np.zeros((size, size), dtype=bool)
        rr, cc = polygon(y, x, shape=(size, size))
        mask[rr, cc] = True
        return mask
    dx, dy = (xx - cx) / r, (yy - cy) / r
    d2 = dx * dx + dy * dy
    if name == "circle":
        return d2 <= 1.0
    if name == "ring":
        return (d2 <= 1.0) & (d2 >= 0.55**2)
    if name == "crescent":
        ox, oy = 0.5 * math.cos(angle), 0.5 * math.sin(angle)
        return (d2 <= 1.0) & ((dx - ox) ** 2 + (dy - oy) ** 2 > 0.8**2)
    raise KeyError(name)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) with inclusive pixel indices, as torchvision's masks_to_boxes."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


class Shapes:
    """A deterministic synthetic dataset of shapes with ground-truth masks and boxes.

    Parameters
    ----------
    n : int
        Number of items.
    seed : int
        Seed of the whole dataset; item ``i`` depends on ``(seed, i)`` only.
    size : int, default 128
        Side of the square images in pixels (at least 32).
    multi_instance : bool, default False
        If True, each image holds 2 or 3 non-overlapping objects of the same class.

    Each item ``ds[i]`` is a dict with

    - ``image``: float32 tensor ``(3, size, size)`` in ``[0, 1]``;
    - ``label``: int, an index into :attr:`classes`;
    - ``mask``: bool numpy array ``(size, size)``, True on the object(s);
    - ``box``: ``(x0, y0, x1, y1)`` ints, inclusive pixel indices (the convention of
      ``torchvision.ops.masks_to_boxes``), the union box when there are several objects;
    - ``boxes``: list of per-object boxes in the same convention.

    Examples
    --------
    >>> ds = Shapes(10, seed=0)
    >>> item = ds[3]
    >>> item["image"].shape, ds.classes[item["label"]] in CLASSES
    (torch.Size([3, 128, 128]), True)
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(self, n: int, seed: int, size: int = 128, multi_instance: bool = False) -> None:
        if int(n) < 0:
            raise ValueError(f"Shapes: n must be >= 0, got {n}.")
        if int(size) < 32:
            raise ValueError(f"Shapes: size must be at least 32 pixels, got {size}.")
        self.n = int(n)
        self.seed = int(seed)
        self.size = int(size)
        self.multi_instance = bool(multi_instance)
        ax = np.arange(self.size, dtype=np.float32)
        self._yy, self._xx = np.meshgrid(ax, ax, indexing="ij")

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.n):
            yield self[i]

    def __repr__(self) -> str:
        return (f"Shapes(n={self.n}, seed={self.seed}, size={self.size}, "
                f"multi_instance={self.multi_instance})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"Shapes index {index} out of range for {self.n} items.")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        return self._generate(rng)

    def tensors(self, indices: range | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, 3, size, size)`` and labels ``(N,)`` of the given items (all by default)."""
        idx = range(self.n) if indices is None else indices
        items = [self[i] for i in idx]
        if not items:
            return torch.zeros(0, 3, self.size, self.size), torch.zeros(0, dtype=torch.long)
        return (torch.stack([it["image"] for it in items]),
                torch.tensor([it["label"] for it in items], dtype=torch.long))

    # -- generation -----------------------------------------------------------------
    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s, yy, xx = self.size, self._yy, self._xx
        base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
        img = np.broadcast_to(base[:, None, None], (3, s, s)).copy()
        # Texture: two oriented gratings with per-channel amplitude.
        for _ in range(2):
            theta = rng.uniform(0, math.pi)
            freq = rng.uniform(1.5, 8.0) * 2 * math.pi / s
            phase = rng.uniform(0, 2 * math.pi)
            wave = np.sin(freq * (xx * math.cos(theta) + yy * math.sin(theta)) + phase)
            amp = rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
            img += amp[:, None, None] * wave[None]
        # Soft blobs: clutter with no edges, in random colours.
        for _ in range(int(rng.integers(3, 7))):
            bx, by = rng.uniform(0, s, size=2)
            sig = rng.uniform(0.03, 0.1) * s
            col = rng.uniform(0, 1, size=3).astype(np.float32)
            a = rng.uniform(0.4, 0.9) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sig * sig))
            img = img * (1 - a[None]) + col[:, None, None] * a[None]
        # Thin straight lines.
        for _ in range(int(rng.integers(2, 5))):
            r0, c0, r1, c1 = rng.integers(0, s, size=4)
            rr, cc, val = line_aa(int(r0), int(c0), int(r1), int(c1))
            keep = (rr >= 0) & (rr < s) & (cc >= 0) & (cc < s)
            rr, cc, val = rr[keep], cc[keep], val[keep].astype(np.float32)
            col = rng.uniform(0, 1, size=3).astype(np.float32)
            img[:, rr, cc] = img[:, rr, cc] * (1 - val) + col[:, None] * val
        return img

    def _generate(self, rng: np.random.Generator) -> dict[str, Any]:
        s = self.size
        label = int(rng.integers(len(CLASSES)))
        name = CLASSES[label]
        img = self._background(rng)
        k = int(rng.integers(2, 4)) if self.multi_instance else 1
        lo, hi = (0.075, 0.12) if self.multi_instance else (0.11, 0.22)
        centres: list[tuple[float, float, float]] = []
        masks: list[np.ndarray] = []
        for _ in range(k):
            for _attempt in range(100):
                r = rng.uniform(lo, hi) * s
                cx, cy = rng.uniform(r + 2, s - r - 3, size=2)
                if all((cx - ox) ** 2 + (cy - oy) ** 2 > (r + orr + 3) ** 2 for ox, oy, orr in centres):
                    break
            centres.append((cx, cy, r))
            angle = rng.uniform(0, 2 * math.pi)
            m = _object_mask(name, cx, cy, r, angle, s, self._yy, self._xx)
            # A colour that stands out from the background under the object.
            under = img[:, m].mean(axis=1)
            col = _hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0))
            for _attempt in range(20):
                if np.abs(col - under).sum() > 0.6:
                    break
                col = _hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.3, 1.0))
            # Gentle shading across the object.
            g = ((self._xx - cx) * math.cos(angle) + (self._yy - cy) * math.sin(angle)) / r
            shade = 1.0 + 0.12 * g[m]
            img[:, m] = np.clip(col[:, None] * shade[None], 0, 1).astype(np.float32)
            masks.append(m)
        img += rng.normal(0.0, 0.03, size=img.shape).astype(np.float32)
        np.clip(img, 0.0, 1.0, out=img)
        mask = np.logical_or.reduce(masks)
        boxes = [_box(m) for m in masks]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "label": label,
            "mask": mask,
            "box": _box(mask),
            "boxes": boxes,
        }

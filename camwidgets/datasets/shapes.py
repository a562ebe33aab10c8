"""Synthetic shapes with exact ground truth: the dataset the demo model learns.

Three scenes, all on a cluttered, textured background:

- ``"single"`` (default): one coloured shape;
- ``"multi"``: 2-3 shapes of the same class (``multi_instance=True`` is the old spelling);
- ``"pair"``: two shapes of two *different* classes, disjoint, of different sizes, so that
  an explanation can be asked which object supports which class.

The clutter (soft blobs, thin lines, gratings and pixel noise) belongs to no class, so a
faithful explanation should light up the object and not the clutter; the exact object
masks and boxes make that measurable (energy pointing game, IoU, ...). Optionally
(``context > 0``) every background also carries one of eight texture families, and that
family agrees with the (larger) object's class in a fraction ``context`` of the images:
the background then carries evidence for the class, as grass does for cows in real photos.

Items are generated on access from ``SeedSequence([seed, index])`` (pairs and the context
texture use streams of their own), so the same ``(seed, index)`` gives the same item on
any machine, in any order, with no files to download.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from skimage.draw import line_aa, polygon

__all__ = ["CLASSES", "SCENES", "TEXTURES", "Shapes"]

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

#: Scene kinds of :class:`Shapes`.
SCENES: tuple[str, ...] = ("single", "multi", "pair")

#: Background texture families used when ``context > 0``; family ``k`` goes with class ``k``.
TEXTURES: tuple[str, ...] = ("dots", "checker", "bricks", "mosaic", "grid", "rings", "waves", "stripes")

# Third entry of the SeedSequence of the streams that are not the single scene's.
_PAIR_STREAM = 2
_CONTEXT_STREAM = 3
# Largest distance from the centre of any shape, in units of its radius (a square's corner).
_REACH = 1.11

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
        The old spelling of ``scene="multi"``.
    scene : {"single", "multi", "pair"}, default "single"
        ``"single"``: one object (items identical to the generator's first version);
        ``"multi"``: 2 or 3 disjoint objects of the same class; ``"pair"``: two disjoint
        objects of two different classes, the second drawn 0.6-0.95 times the first's
        radius, so that one is usually clearly larger.
    context : float in [0, 1], default 0.0
        ``0``: the background carries no class (no texture family is drawn; items are
        those of ``context=0`` of every earlier version). ``> 0``: every background also
        gets a texture of one of the :data:`TEXTURES` families, and in a fraction
        ``context`` of the images the family is the (larger) object's class, in the others
        a family of a class absent from the image. ``1/8`` is thus uncorrelated, below it
        the texture points away from the class, above it towards it (``0.8``: context as
        strong as in many real photo datasets). The item's ``texture`` key names the family.

    Each item ``ds[i]`` is a dict with

    - ``image``: float32 tensor ``(3, size, size)`` in ``[0, 1]``;
    - ``label``: int, an index into :attr:`classes` (pairs: the larger object's class,
      by mask area);
    - ``mask``: bool numpy array ``(size, size)``, True on the object(s) of ``label``;
    - ``box``: ``(x0, y0, x1, y1)`` ints, inclusive pixel indices (the convention of
      ``torchvision.ops.masks_to_boxes``) of ``mask``, the union box when there are
      several objects;
    - ``boxes``: single and multi scenes: list of per-object boxes in the same convention;
      pairs: dict ``{class index: box}``.

    Pair items also hold ``labels`` (the two class indices, larger object first) and
    ``masks`` (dict ``{class index: mask}``), so code written for single objects keeps
    working with ``label`` / ``mask`` / ``box`` and sees the larger object.

    Examples
    --------
    >>> ds = Shapes(10, seed=0)
    >>> item = ds[3]
    >>> item["image"].shape, ds.classes[item["label"]] in CLASSES
    (torch.Size([3, 128, 128]), True)
    >>> pair = Shapes(4, seed=0, scene="pair")[0]
    >>> len(set(pair["labels"])), pair["label"] == pair["labels"][0]
    (2, True)
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(self, n: int, seed: int, size: int = 128, multi_instance: bool = False,
                 scene: str | None = None, context: float = 0.0) -> None:
        if int(n) < 0:
            raise ValueError(f"Shapes: n must be >= 0, got {n}.")
        if int(size) < 32:
            raise ValueError(f"Shapes: size must be at least 32 pixels, got {size}.")
        if scene is None:
            scene = "multi" if multi_instance else "single"
        elif scene not in SCENES:
            raise ValueError(f"Shapes: scene must be one of {SCENES}, got {scene!r}.")
        elif multi_instance and scene != "multi":
            raise ValueError(f"Shapes: multi_instance=True contradicts scene={scene!r}.")
        if not 0.0 <= float(context) <= 1.0:
            raise ValueError(f"Shapes: context must lie in [0, 1], got {context}.")
        self.n = int(n)
        self.seed = int(seed)
        self.size = int(size)
        self.scene = scene
        self.multi_instance = scene == "multi"
        self.context = float(context)
        ax = np.arange(self.size, dtype=np.float32)
        self._yy, self._xx = np.meshgrid(ax, ax, indexing="ij")

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.n):
            yield self[i]

    def __repr__(self) -> str:
        extra = f", context={self.context}" if self.context else ""
        return f"Shapes(n={self.n}, seed={self.seed}, size={self.size}, scene={self.scene!r}{extra})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"Shapes index {index} out of range for {self.n} items.")
        ctx_rng = (np.random.default_rng(np.random.SeedSequence([self.seed, index, _CONTEXT_STREAM]))
                   if self.context > 0 else None)
        if self.scene == "pair":
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, index, _PAIR_STREAM]))
            return self._generate_pair(rng, ctx_rng)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        return self._generate(rng, ctx_rng)

    def tensors(self, indices: range | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, 3, size, size)`` and labels ``(N,)`` of the given items (all by default).

        For pairs the label is the larger object's class.
        """
        idx = range(self.n) if indices is None else indices
        items = [self[i] for i in idx]
        if not items:
            return torch.zeros(0, 3, self.size, self.size), torch.zeros(0, dtype=torch.long)
        return (torch.stack([it["image"] for it in items]),
                torch.tensor([it["label"] for it in items], dtype=torch.long))

    # -- generation -----------------------------------------------------------------
    def _background(self, rng: np.random.Generator,
                    texture: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
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
        if texture is not None:
            # The context texture (its own random stream): under the clutter, over the gratings.
            alpha, col = texture
            img = img * (1 - alpha[None]) + col[:, None, None] * alpha[None]
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

    def _context_family(self, ctx_rng: np.random.Generator, label: int, present: set[int]) -> int:
        """The texture family: ``label`` with probability ``context``, else an absent class's."""
        if ctx_rng.uniform() < self.context:
            return label
        others = [k for k in range(len(TEXTURES)) if k not in present]
        return int(others[int(ctx_rng.integers(len(others)))])

    def _texture(self, family: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Blend weights ``(size, size)`` and colour ``(3,)`` of one texture of ``family``.

        Every family is drawn at a random orientation, period and phase, so it is told
        apart by its structure (dots, checks, bricks, ...), not by a direction.
        """
        s, yy, xx = self.size, self._yy, self._xx
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(0.07, 0.14) * s
        off_u, off_v = rng.uniform(0, period, size=2)
        u = xx * math.cos(theta) + yy * math.sin(theta) + off_u
        v = -xx * math.sin(theta) + yy * math.cos(theta) + off_v
        line = max(1.0, 0.012 * s)
        name = TEXTURES[family]
        if name == "dots":
            du, dv = u % period - period / 2, v % period - period / 2
            pat = du * du + dv * dv <= (0.28 * period) ** 2
        elif name == "checker":
            pat = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
        elif name == "bricks":
            row_h = 0.6 * period
            shift = 0.5 * period * (np.floor(v / row_h) % 2)
            pat = (v % row_h < line) | ((u + shift) % period < line)
        elif name == "mosaic":
            cell = max(2, round(period / 3))
            tiles = rng.uniform(size=(s // cell + 1, s // cell + 1)) < 0.5
            pat = np.kron(tiles, np.ones((cell, cell), dtype=bool))[:s, :s]
        elif name == "grid":
            pat = (u % period < line) | (v % period < line)
        elif name == "rings":
            cx, cy = rng.uniform(0, s, size=2)
            pat = np.hypot(xx - cx, yy - cy) % period < period / 2
        elif name == "waves":
            pat = (u + 0.3 * period * np.sin(2 * math.pi * v / (1.7 * period))) % period < period / 2
        else:  # stripes
            pat = u % period < period / 2
        alpha = (rng.uniform(0.3, 0.5) * pat).astype(np.float32)
        col = rng.uniform(0, 1, size=3).astype(np.float32)
        return alpha, col

    def _paint(self, img: np.ndarray, m: np.ndarray, cx: float, cy: float, r: float, angle: float,
               rng: np.random.Generator) -> None:
        """Fill mask ``m`` of ``img`` in place with a colour that stands out, gently shaded."""
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

    def _generate(self, rng: np.random.Generator, ctx_rng: np.random.Generator | None) -> dict[str, Any]:
        s = self.size
        label = int(rng.integers(len(CLASSES)))
        name = CLASSES[label]
        family = None
        texture = None
        if ctx_rng is not None:
            family = self._context_family(ctx_rng, label, {label})
            texture = self._texture(family, ctx_rng)
        img = self._background(rng, texture)
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
            self._paint(img, m, cx, cy, r, angle, rng)
            masks.append(m)
        img += rng.normal(0.0, 0.03, size=img.shape).astype(np.float32)
        np.clip(img, 0.0, 1.0, out=img)
        mask = np.logical_or.reduce(masks)
        boxes = [_box(m) for m in masks]
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "label": label,
            "mask": mask,
            "box": _box(mask),
            "boxes": boxes,
        }
        if family is not None:
            item["texture"] = family
        return item

    def _generate_pair(self, rng: np.random.Generator, ctx_rng: np.random.Generator | None) -> dict[str, Any]:
        s, n_cls = self.size, len(CLASSES)
        a = int(rng.integers(n_cls))
        b = int((a + 1 + int(rng.integers(n_cls - 1))) % n_cls)
        # Geometry first: the larger object (by area) decides the context texture.
        r_a = rng.uniform(0.12, 0.2) * s
        r_b = r_a * rng.uniform(0.6, 0.95)
        while True:
            ea, eb = _REACH * r_a, _REACH * r_b
            for _attempt in range(100):
                ax, ay = rng.uniform(ea + 2, s - ea - 3, size=2)
                bx, by = rng.uniform(eb + 2, s - eb - 3, size=2)
                if (ax - bx) ** 2 + (ay - by) ** 2 > (ea + eb + 4) ** 2:
                    break
            else:  # no room for both: shrink them a little and draw again
                r_a, r_b = 0.92 * r_a, 0.92 * r_b
                continue
            break
        geo = {a: (ax, ay, r_a, rng.uniform(0, 2 * math.pi)), b: (bx, by, r_b, rng.uniform(0, 2 * math.pi))}
        masks = {c: _object_mask(CLASSES[c], x, y, r, ang, s, self._yy, self._xx)
                 for c, (x, y, r, ang) in geo.items()}
        big, small = (a, b) if int(masks[a].sum()) >= int(masks[b].sum()) else (b, a)
        family = None
        texture = None
        if ctx_rng is not None:
            family = self._context_family(ctx_rng, big, {a, b})
            texture = self._texture(family, ctx_rng)
        img = self._background(rng, texture)
        for c in (a, b):
            x, y, r, ang = geo[c]
            self._paint(img, masks[c], x, y, r, ang, rng)
        img += rng.normal(0.0, 0.03, size=img.shape).astype(np.float32)
        np.clip(img, 0.0, 1.0, out=img)
        boxes = {c: _box(m) for c, m in masks.items()}
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "label": big,
            "mask": masks[big],
            "box": boxes[big],
            "labels": (big, small),
            "masks": {big: masks[big], small: masks[small]},
            "boxes": {big: boxes[big], small: boxes[small]},
        }
        if family is not None:
            item["texture"] = family
        return item

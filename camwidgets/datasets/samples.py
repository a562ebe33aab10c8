"""Bundled sample images: synthetic Shapes with ground truth, and scikit-image's photos.

Synthetic samples (``"shapes-<class>"``, ``"shapes-multi"``) come from
:class:`~camwidgets.datasets.Shapes` with the reserved seed :data:`SAMPLES_SEED`;
they carry their mask and box, and suit the demo model. Pair samples
(``"pair-<larger>-<smaller>"``, e.g. ``"pair-circle-star"``) hold two objects of two
classes from the pair scene of the same seed, and also carry ``labels``, ``masks`` and
``boxes`` for both: explain one class, then the other, and the map should move from one
object to the other. The photos come with scikit-image (no download) and suit ImageNet
models.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..core.image import load_image
from .shapes import CLASSES, Shapes

__all__ = ["SAMPLES_SEED", "list_samples", "load_sample"]

#: Seed reserved for the bundled synthetic samples (never used for training or evaluation).
SAMPLES_SEED = 7

# name -> (scikit-image loader, one-line description, a fitting ImageNet class)
_PHOTOS: dict[str, tuple[str, str]] = {
    "chelsea": ("chelsea", "Chelsea the cat (scikit-image); ImageNet: tabby / tiger cat"),
    "coffee": ("coffee", "A cup of coffee (scikit-image); ImageNet: espresso / cup"),
    "astronaut": ("astronaut", "Astronaut Eileen Collins (scikit-image)"),
    "rocket": ("rocket", "A rocket on the launch pad (scikit-image); ImageNet: missile / space shuttle"),
}

# Pair samples (larger class, smaller class) -> index in the pair scene of SAMPLES_SEED: each is
# the first item with these classes in this order whose smaller object covers 35-80 % of the
# larger's area (both clearly visible, one clearly larger); together they use every class. The
# indices are stored (finding them means drawing 360 scenes, ~1.5 s, on every explorer start);
# tests/datasets/test_samples.py checks them against that search (_scan_pair_index).
_PAIRS: dict[tuple[str, str], int] = {
    ("circle", "star"): 188,
    ("square", "cross"): 20,
    ("ring", "arrow"): 4,
    ("crescent", "triangle"): 25,
    ("star", "crescent"): 57,
    ("triangle", "square"): 360,
}
_PAIR_SCAN = 400


@lru_cache(maxsize=1)
def _synthetic_index() -> dict[str, int]:
    ds = Shapes(200, SAMPLES_SEED)
    found: dict[str, int] = {}
    for i in range(len(ds)):
        name = CLASSES[ds[i]["label"]]
        found.setdefault(name, i)
        if len(found) == len(CLASSES):
            break
    return found


def _pair_index() -> dict[str, int]:
    return {f"pair-{a}-{b}": i for (a, b), i in _PAIRS.items()}


def _scan_pair_index() -> dict[str, int]:
    """The search that chose :data:`_PAIRS`'s indices (the test suite checks they still agree)."""
    ds = Shapes(_PAIR_SCAN, SAMPLES_SEED, scene="pair")
    wanted = {(CLASSES.index(a), CLASSES.index(b)): f"pair-{a}-{b}" for a, b in _PAIRS}
    found: dict[str, int] = {}
    for i in range(len(ds)):
        item = ds[i]
        name = wanted.get(item["labels"])
        if name is None or name in found:
            continue
        big, small = item["labels"]
        if 0.35 <= item["masks"][small].sum() / item["masks"][big].sum() <= 0.8:
            found[name] = i
            if len(found) == len(wanted):
                break
    return found


def list_samples(kind: str = "all") -> list[str]:
    """Names of the bundled samples: ``kind`` is ``"all"``, ``"synthetic"`` (single, multi
    and pair scenes), ``"pair"`` or ``"photo"``."""
    pairs = [f"pair-{a}-{b}" for a, b in _PAIRS]
    synthetic = [f"shapes-{c}" for c in CLASSES] + ["shapes-multi"] + pairs
    if kind == "synthetic":
        return synthetic
    if kind == "pair":
        return pairs
    if kind == "photo":
        return list(_PHOTOS)
    if kind == "all":
        return synthetic + list(_PHOTOS)
    raise ValueError(f"kind must be 'all', 'synthetic', 'pair' or 'photo', not {kind!r}.")


def load_sample(name: str) -> dict[str, Any]:
    """Load a bundled sample.

    Returns a dict with ``image`` (float32 tensor ``(3, H, W)`` in [0, 1]), ``label``
    (class name or None), ``mask`` (bool array ``(H, W)`` or None), ``box`` (``(x0, y0,
    x1, y1)`` inclusive, or None) and ``description``. Pair samples describe the larger
    object with ``label`` / ``mask`` / ``box`` and also hold ``labels`` (both class names,
    larger first), ``masks`` and ``boxes`` (dicts keyed by class name).
    """
    if name.startswith("pair-"):
        index = _pair_index().get(name)
        if index is None:
            raise ValueError(f"Unknown sample {name!r}; choose one of {list_samples()}.")
        item = Shapes(_PAIR_SCAN, SAMPLES_SEED, scene="pair")[index]
        big, small = (CLASSES[c] for c in item["labels"])
        return {"image": item["image"], "label": big, "mask": item["mask"], "box": item["box"],
                "labels": (big, small),
                "masks": {CLASSES[c]: m for c, m in item["masks"].items()},
                "boxes": {CLASSES[c]: b for c, b in item["boxes"].items()},
                "description": (f"Synthetic {big} (larger) and {small} on clutter "
                                f"(Shapes pair scene, seed {SAMPLES_SEED})")}
    if name.startswith("shapes-"):
        cls = name.removeprefix("shapes-")
        if cls == "multi":
            item = Shapes(1, SAMPLES_SEED + 1, multi_instance=True)[0]
        elif cls in CLASSES:
            item = Shapes(200, SAMPLES_SEED)[_synthetic_index()[cls]]
        else:
            raise ValueError(f"Unknown sample {name!r}; choose one of {list_samples()}.")
        label = CLASSES[item["label"]]
        return {"image": item["image"], "label": label, "mask": item["mask"], "box": item["box"],
                "description": f"Synthetic {label} on clutter (Shapes seed {SAMPLES_SEED})"}
    if name in _PHOTOS:
        from skimage import data

        loader, description = _PHOTOS[name]
        arr: np.ndarray = getattr(data, loader)()
        return {"image": load_image(arr), "label": None, "mask": None, "box": None,
                "description": description}
    raise ValueError(f"Unknown sample {name!r}; choose one of {list_samples()}.")

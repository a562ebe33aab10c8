import hashlib

import numpy as np
import pytest
import torch

from camwidgets.datasets import CLASSES, Shapes


def _digest(item):
    h = hashlib.sha256()
    h.update(item["image"].numpy().tobytes())
    h.update(item["mask"].tobytes())
    h.update(repr((item["label"], item["box"], item["boxes"])).encode())
    return h.hexdigest()


def test_item_contract():
    ds = Shapes(20, seed=3)
    assert len(ds) == 20 and ds.classes == CLASSES and len(CLASSES) >= 6
    for item in ds:
        img, mask = item["image"], item["mask"]
        assert img.dtype == torch.float32 and img.shape == (3, 128, 128)
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
        assert mask.dtype == np.bool_ and mask.shape == (128, 128) and mask.any()
        assert 0 <= item["label"] < len(CLASSES)
        assert len(item["boxes"]) == 1 and item["boxes"][0] == item["box"]
        x0, y0, x1, y1 = item["box"]
        rows, cols = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max(), rows.max())


def test_same_seed_same_items_any_order_and_other_seed_differs():
    a, b = Shapes(10, seed=4), Shapes(10, seed=4)
    forward = [_digest(a[i]) for i in range(10)]
    backward = [_digest(b[i]) for i in reversed(range(10))][::-1]
    assert forward == backward
    assert _digest(Shapes(10, seed=5)[0]) != forward[0]
    assert _digest(a[-1]) == forward[-1]


def test_golden_item_is_stable_across_machines():
    # Guards against silent changes to the generator (and so to every evaluation seed).
    item = Shapes(3, seed=2)[2]
    assert CLASSES[item["label"]] == GOLDEN_LABEL
    assert item["box"] == GOLDEN_BOX
    assert int(item["mask"].sum()) == GOLDEN_AREA
    assert float(item["image"].double().mean()) == pytest.approx(GOLDEN_MEAN, abs=1e-6)


def test_object_pixels_differ_from_clutter_and_classes_are_balanced():
    ds = Shapes(400, seed=6)
    labels = np.bincount([ds[i]["label"] for i in range(len(ds))], minlength=len(CLASSES))
    assert labels.min() >= 25  # every class well represented
    item = ds[0]
    img = item["image"].numpy()
    inside = img[:, item["mask"]].mean(axis=1)
    ring = np.zeros_like(item["mask"])
    x0, y0, x1, y1 = item["box"]
    ring[max(0, y0 - 4):y1 + 5, max(0, x0 - 4):x1 + 5] = True
    ring &= ~item["mask"]
    outside = img[:, ring].mean(axis=1)
    assert np.abs(inside - outside).sum() > 0.2


def test_multi_instance_has_two_or_three_disjoint_objects_of_one_class():
    ds = Shapes(30, seed=8, multi_instance=True)
    counts = set()
    for item in ds:
        boxes = item["boxes"]
        counts.add(len(boxes))
        assert 2 <= len(boxes) <= 3
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[2] for b in boxes)
        y1 = max(b[3] for b in boxes)
        assert item["box"] == (x0, y0, x1, y1)
        area = sum((b[2] - b[0] + 1) * (b[3] - b[1] + 1) for b in boxes)
        assert item["mask"].sum() <= area
    assert counts == {2, 3}


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        Shapes(3, seed=0, size=8)
    with pytest.raises(IndexError):
        Shapes(3, seed=0)[3]


def test_tensors_stacks_images_and_labels():
    x, y = Shapes(5, seed=9).tensors()
    assert x.shape == (5, 3, 128, 128) and y.dtype == torch.long and y.shape == (5,)


# Values of Shapes(3, seed=2)[2], recorded when the generator was written.
GOLDEN_LABEL = "cross"
GOLDEN_BOX = (38, 35, 93, 90)
GOLDEN_AREA = 1492
GOLDEN_MEAN = 0.5570180192513163

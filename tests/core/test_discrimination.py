"""Class-discriminativeness: the metric by hand, the per-class view, and evaluate on pair scenes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core import metrics as M
from camwidgets.core.evaluate import evaluate
from camwidgets.datasets import Shapes, each_class


def test_class_discrimination_by_hand() -> None:
    e = np.zeros((4, 4))
    e[0, 0], e[0, 1], e[3, 3], e[2, 2] = 1.0, 0.5, 0.25, 0.25  # total energy 2
    own = np.zeros((4, 4), bool)
    own[0, :2] = True  # holds 1.5 of it, and the maximum
    other = np.zeros((4, 4), bool)
    other[3, 3] = True  # holds 0.25
    r = M.class_discrimination(e, own, other)
    assert r.energy_target == pytest.approx(0.75)
    assert r.energy_other == pytest.approx(0.125)
    assert r.discrimination == pytest.approx(0.625)
    assert (r.pointing_target, r.pointing_other) == (1.0, 0.0)
    swapped = M.class_discrimination(e, other, own)  # the same map read as the other class's
    assert swapped.discrimination == pytest.approx(-0.625)
    assert (swapped.pointing_target, swapped.pointing_other) == (0.0, 1.0)
    # a box as the other object: rows 2-3, columns 2-3 hold 0.5
    assert M.class_discrimination(e, own, (2, 2, 3, 3)).energy_other == pytest.approx(0.25)


def test_class_discrimination_batch_and_empty_map() -> None:
    own = np.zeros((2, 3, 3), bool)
    own[:, 0, 0] = True
    other = np.zeros((2, 3, 3), bool)
    other[:, 2, 2] = True
    maps = np.zeros((2, 3, 3))
    maps[0, 2, 2] = 1.0  # all on the other object
    r = M.class_discrimination(maps, own, other)  # map 1 is all zero: no energy anywhere
    np.testing.assert_allclose(r.discrimination, [-1.0, 0.0])
    np.testing.assert_allclose(r.pointing_other, [1.0, 0.0])


def test_each_class_view_of_pair_scenes() -> None:
    ds = Shapes(3, seed=11, size=64, scene="pair")
    view = each_class(ds)
    assert len(view) == 6
    for j in range(6):
        src = ds[j // 2]
        item = view[j]
        c = src["labels"][j % 2]
        assert item["label"] == item["target"] == c and item["source_index"] == j // 2
        assert np.array_equal(item["mask"], src["masks"][c])
        assert item["box"] == src["boxes"][c]
        assert torch.equal(item["image"], src["image"])
    assert view[-1]["label"] == view[5]["label"]
    with pytest.raises(IndexError):
        view[6]
    with pytest.raises(ValueError, match="scene='pair'"):
        each_class(Shapes(2, seed=11, size=64))[0]


class MaskOracle:
    """An explainer whose map is exactly an object of the image: the explained class's (``"own"``)
    or the other class's (``"other"``); it finds the image's masks by its pixel sum."""

    def __init__(self, scenes: dict[float, dict[int, np.ndarray]], model: nn.Module, image: Any,
                 target: int | None = None, **_: Any) -> None:
        self.masks = scenes[round(float(torch.as_tensor(image).sum()), 2)]
        self.target = int(target) if target is not None else -1

    def own(self) -> SimpleNamespace:
        return SimpleNamespace(map=self.masks[self.target].astype(np.float32))

    def other(self) -> SimpleNamespace:
        (rest,) = [m for c, m in self.masks.items() if c != self.target]
        return SimpleNamespace(map=rest.astype(np.float32))


def test_evaluate_scores_each_class_against_its_own_object() -> None:
    ds = Shapes(3, seed=11, size=64, scene="pair")
    scenes = {round(float(it["image"].sum()), 2): it["masks"] for it in ds}
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))

    def make(model: nn.Module, image: Any, **kw: Any) -> MaskOracle:
        return MaskOracle(scenes, model, image, **kw)

    res = evaluate(model, each_class(ds), ["own", "other"], ["energy_pointing_game", "discrimination"],
                   explainer_factory=make, progress=False)
    assert len(res.rows) == 12
    for row in res.rows:
        src = ds[row["index"] // 2]
        assert row["target"] == src["labels"][row["index"] % 2]
        if row["method"] == "own":
            assert (row["discrimination"], row["energy_pointing_game"], row["energy_other"],
                    row["pointing_other"]) == (1.0, 1.0, 0.0, 0.0)
        else:
            assert (row["discrimination"], row["energy_pointing_game"], row["energy_other"],
                    row["pointing_other"]) == (-1.0, 0.0, 1.0, 1.0)
    # the pair item itself, explained for a fixed class: scored against that class's object
    small = ds[0]["labels"][1]
    res = evaluate(model, [ds[0]], ["own"], ["energy_pointing_game", "discrimination"], target=small,
                   explainer_factory=make, progress=False)
    assert res.rows[0]["target"] == small and res.rows[0]["discrimination"] == 1.0


def test_single_object_items_have_no_discrimination() -> None:
    ds = Shapes(2, seed=11, size=64)
    scenes = {round(float(it["image"].sum()), 2): {it["label"]: it["mask"], -2: ~it["mask"]} for it in ds}
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
    res = evaluate(model, ds, ["own"], ["energy_pointing_game", "discrimination"],
                   explainer_factory=lambda m, im, **kw: MaskOracle(scenes, m, im, **kw), progress=False)
    for row in res.rows:
        assert row["energy_pointing_game"] == 1.0
        assert row["discrimination"] is None and row["energy_other"] is None and row["pointing_other"] is None
    # other objects given explicitly
    item = {**ds[0], "other_masks": [~ds[0]["mask"]]}
    res = evaluate(model, [item], ["own"], ["discrimination"],
                   explainer_factory=lambda m, im, **kw: MaskOracle(scenes, m, im, **kw), progress=False)
    assert res.rows[0]["discrimination"] == 1.0

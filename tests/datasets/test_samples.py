import numpy as np
import pytest
import torch

from camwidgets.datasets import CLASSES, list_samples, load_sample


@pytest.mark.parametrize("name", list_samples())
def test_every_sample_loads_as_rgb_in_unit_range(name):
    s = load_sample(name)
    img = s["image"]
    assert img.dtype == torch.float32 and img.dim() == 3 and img.shape[0] == 3
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert s["description"]
    if name.startswith(("shapes-", "pair-")):
        assert s["mask"].shape == tuple(img.shape[1:]) and s["mask"].any()
        if name.startswith("shapes-") and name != "shapes-multi":
            assert s["label"] == name.removeprefix("shapes-")


@pytest.mark.parametrize("name", list_samples("pair"))
def test_pair_samples_carry_both_objects_larger_first(name):
    s = load_sample(name)
    big, small = name.removeprefix("pair-").split("-")
    assert s["labels"] == (big, small) and s["label"] == big
    assert set(s["masks"]) == set(s["boxes"]) == {big, small}
    assert s["mask"] is s["masks"][big] and s["box"] == s["boxes"][big]
    m_big, m_small = s["masks"][big], s["masks"][small]
    assert not (m_big & m_small).any()
    assert 0.35 <= m_small.sum() / m_big.sum() <= 0.8
    for c, m in s["masks"].items():
        rows, cols = np.nonzero(m)
        assert s["boxes"][c] == (cols.min(), rows.min(), cols.max(), rows.max())


def test_synthetic_samples_cover_every_class_and_photos_exist():
    assert {f"shapes-{c}" for c in CLASSES} <= set(list_samples("synthetic"))
    pairs = list_samples("pair")
    assert len(pairs) >= 4 and set(pairs) <= set(list_samples("synthetic"))
    assert {c for p in pairs for c in p.removeprefix("pair-").split("-")} == set(CLASSES)
    assert "chelsea" in list_samples("photo")


def test_unknown_sample_names_the_choices():
    with pytest.raises(ValueError, match="shapes-circle"):
        load_sample("nope")
    with pytest.raises(ValueError, match="pair-"):
        load_sample("pair-circle-circle")
    with pytest.raises(ValueError, match="kind"):
        list_samples("video")


def test_stored_pair_indices_are_those_the_search_finds():
    from camwidgets.datasets.samples import _pair_index, _scan_pair_index

    assert _pair_index() == _scan_pair_index()

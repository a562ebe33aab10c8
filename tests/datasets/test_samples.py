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
    if name.startswith("shapes-"):
        assert s["mask"].shape == tuple(img.shape[1:]) and s["mask"].any()
        if name != "shapes-multi":
            assert s["label"] == name.removeprefix("shapes-")


def test_synthetic_samples_cover_every_class_and_photos_exist():
    assert {f"shapes-{c}" for c in CLASSES} <= set(list_samples("synthetic"))
    assert "chelsea" in list_samples("photo")


def test_unknown_sample_names_the_choices():
    with pytest.raises(ValueError, match="shapes-circle"):
        load_sample("nope")
    with pytest.raises(ValueError, match="kind"):
        list_samples("video")

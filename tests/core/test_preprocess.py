import pytest
import torch

from camwidgets.core.preprocess import Preprocess


def test_normalize_roundtrip_and_values():
    p = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    img = torch.tensor([1.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    x = p.normalize(img)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 1.0, 0.5]))
    assert torch.allclose(p.denormalize(x), img)


def test_resize_shorter_side_then_centre_crop():
    p = Preprocess(size=4, resize=4)
    img = torch.zeros(3, 4, 8)
    img[:, :, 2:6] = 1.0  # the centre 4 columns
    out = p.geometry(img)
    assert out.shape == (3, 4, 4) and torch.all(out == 1.0)


def test_direct_resize_keeps_batches():
    p = Preprocess(size=(6, 5))
    assert p.geometry(torch.rand(2, 3, 12, 10)).shape == (2, 3, 6, 5)
    assert p(torch.rand(3, 6, 5)).shape == (3, 6, 5)


def test_bad_std_is_rejected():
    with pytest.raises(ValueError, match="std"):
        Preprocess(std=(1.0, 0.0, 1.0))

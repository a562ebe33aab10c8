import numpy as np
import pytest
import torch
from PIL import Image

from camwidgets.core.image import load_image


def _check(t, h, w):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (3, h, w)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def test_uint8_rgb_array_and_tensor_and_pil_agree(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    ref = torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255)
    for src in (arr, Image.fromarray(arr), torch.from_numpy(arr.transpose(2, 0, 1).copy())):
        out = load_image(src)
        _check(out, 5, 7)
        assert torch.allclose(out, ref)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert torch.allclose(load_image(tmp_path / "a.png"), ref)
    assert torch.allclose(load_image(str(tmp_path / "a.png")), ref)
    assert torch.allclose(load_image((tmp_path / "a.png").read_bytes()), ref)


def test_grey_palette_rgba_and_16bit_become_rgb(tmp_path):
    grey = Image.fromarray(np.full((4, 4), 51, dtype=np.uint8), mode="L")
    out = load_image(grey)
    _check(out, 4, 4)
    assert torch.allclose(out, torch.full((3, 4, 4), 0.2))

    pal = grey.convert("P")
    assert torch.allclose(load_image(pal), out)

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # opaque red; the others are transparent -> white
    out = load_image(Image.fromarray(rgba, mode="RGBA"))
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out[:, 1, 1], torch.tensor([1.0, 1.0, 1.0]))

    sixteen = np.full((3, 3), 65535 // 2, dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    _check(out, 3, 3)
    assert float(out.mean()) == pytest.approx(0.5, abs=1e-3)
    assert float(load_image(sixteen).mean()) == pytest.approx(0.5, abs=1e-3)


def test_float_arrays_and_channels_first():
    arr = np.full((3, 6, 5), 0.25, dtype=np.float32)
    _check(load_image(arr), 6, 5)
    # Ambiguous shape: numpy is read channels-last (a 3x6 RGBA image), torch channels-first.
    _check(load_image(np.full((3, 6, 4), 1.0, dtype=np.float32)), 3, 6)
    _check(load_image(torch.full((3, 6, 4), 0.5)), 6, 4)
    assert float(load_image(arr * 255).mean()) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="normalis"):
        load_image(arr - 1.0)


def test_size_resizes():
    out = load_image(np.zeros((10, 20, 3), dtype=np.uint8), size=8)
    _check(out, 8, 8)
    _check(load_image(np.zeros((10, 20, 3), dtype=np.uint8), size=(4, 6)), 4, 6)


def test_not_an_image_file_names_the_problem(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        load_image(txt)
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ValueError, match="not an image"):
        load_image(b"\x00\x01 definitely not a png")


def test_empty_and_malformed_arrays():
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 5, 3)))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((5, 5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((2, 2), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="cannot read"):
        load_image(42)


def test_decompression_bomb_is_a_value_error(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels is now over the limit
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_image(tmp_path / "big.png")
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_image(np.zeros((40, 40, 3), dtype=np.uint8))

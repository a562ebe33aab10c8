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
    with pytest.raises(ValueError, match="normalis"):
        load_image(arr - 1.0)


# --- the input contract (docs/input.md) -------------------------------------------------------


def test_uint16_is_scaled_by_65535_whatever_its_values(tmp_path):
    # Before: a uint16 array whose values were all <= 255 was divided by 255 (200 -> 0.78),
    # while the same values in a 16-bit PNG were divided by 65535.
    a = np.full((3, 3), 200, dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "dark16.png")
    want = 200 / 65535
    for src in (a, torch.from_numpy(a.astype(np.int32)).to(torch.uint16), Image.fromarray(a),
                tmp_path / "dark16.png"):
        out = load_image(src)
        _check(out, 3, 3)
        assert float(out.max()) == pytest.approx(want, rel=1e-6), type(src)


def test_16bit_pgm_read_by_pil_as_mode_I_is_16bit():
    # Pillow decodes a PGM with maxval > 255 to mode "I", rescaled to 0..65535. Before: read
    # as 0..255 data when its values happened to be small.
    data = b"P5 2 1 65535\n" + np.array([100, 200], dtype=">u2").tobytes()
    out = load_image(data)
    _check(out, 1, 2)
    assert torch.allclose(out[:, 0, :], torch.tensor([100 / 65535, 200 / 65535]).expand(3, 2))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_integer_dtypes_of_unknown_range_are_refused(dtype):
    # Before: int64 0..255 data was divided by 255, int8 -5 gave a negative "pixel".
    arr = np.full((4, 4, 3), 100, dtype=dtype)
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"dtype {name} .*uint8.*float array in \[0, 1\]"):
        load_image(arr)
    with pytest.raises(ValueError, match=r"dtype torch\.int"):
        load_image(torch.from_numpy(arr.astype(np.int64)))


def test_pil_mode_I_is_refused():
    img = Image.fromarray(np.full((4, 4), 100, dtype=np.int32))
    assert img.mode == "I"
    with pytest.raises(ValueError, match=r"mode 'I'.*uint8"):
        load_image(img)


def test_bool_is_zero_or_one():
    out = load_image(np.array([[True, False]]))
    assert out.tolist() == [[[1.0, 0.0]]] * 3


def test_float_barely_outside_unit_range_is_clipped():
    # Before: one pixel at 1.001 (a resize overshoot) made the image read as 0..255: all black.
    arr = np.full((4, 4, 3), 0.5, dtype=np.float32)
    arr[0, 0, 0] = 1.001
    arr[1, 1, 1] = -0.001
    out = load_image(arr)
    _check(out, 4, 4)
    assert float(out[0, 0, 0]) == 1.0 and float(out[1, 1, 1]) == 0.0
    assert float(out[2, 2, 2]) == 0.5
    assert float(load_image(torch.from_numpy(arr).permute(2, 0, 1))[0, 0, 0]) == 1.0


@pytest.mark.parametrize("lo, hi", [(0.0, 255.0), (0.0, 1.0011), (-0.0011, 1.0), (-2.1, 2.6)])
def test_float_outside_unit_range_is_refused_with_the_range_found(lo, hi):
    # Before: [0, 255] floats were silently divided by 255 (and so was anything up to 255).
    arr = np.linspace(lo, hi, 16, dtype=np.float64).reshape(4, 4)
    with pytest.raises(ValueError, match=r"float values in \[.*\].*divide by 255 yourself, or pass uint8") as err:
        load_image(arr)
    assert f"{hi:.6g}" in str(err.value)


def test_a_batch_of_one_is_one_image():
    # Before: a numpy (1, C, H, W) array was refused (tensors were accepted).
    rng = np.random.default_rng(1)
    chw = rng.random((3, 5, 6)).astype(np.float32)
    want = torch.from_numpy(chw)
    assert torch.equal(load_image(chw[None]), want)
    assert torch.equal(load_image(torch.from_numpy(chw)[None]), want)
    assert torch.equal(load_image(chw.transpose(1, 2, 0)[None]), want)  # (1, H, W, C)
    assert load_image(np.zeros((1, 1, 5, 6), dtype=np.uint8)).shape == (3, 5, 6)


def test_a_batch_of_several_is_refused_clearly():
    for src in (np.zeros((2, 3, 5, 6), dtype=np.float32), torch.zeros(2, 3, 5, 6)):
        with pytest.raises(ValueError, match=r"batch of 2 images.*explain_batch"):
            load_image(src)


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

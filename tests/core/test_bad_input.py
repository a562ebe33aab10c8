"""The bad-input contract, through the public API.

Every bad input gets a clear error (ValueError / TypeError) whose message names the problem
and the fix, raised before any work starts (no forward pass, where the check needs none),
and leaves nothing half-done: no hook on any module, every module's training flag and every
parameter's ``requires_grad`` as they were, parameters and buffers unchanged, no ``.grad``.
Inputs that can be converted (palette, CMYK, 16-bit, grey + alpha, RGBA) are checked to be
converted correctly.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn.modules import module as _module

import camwidgets
import camwidgets.metrics as M
from camwidgets import Explainer, load_image

# Every per-module hook dict torch has had (missing ones are skipped), and the global ones.
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_full_backward_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


# ------------------------------------------------------------------------------------ helpers
@dataclass(frozen=True)
class _Before:
    modes: list[bool]
    requires_grad: list[bool]
    state: dict[str, torch.Tensor]


def _snapshot(model: nn.Module) -> _Before:
    return _Before(
        modes=[m.training for m in model.modules()],
        requires_grad=[p.requires_grad for p in model.parameters()],
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )


def _assert_untouched(model: nn.Module, before: _Before) -> None:
    """Nothing left behind: no hook, the same modes, ``requires_grad`` flags, parameters and buffers."""
    for name, m in model.named_modules():
        for attr in _HOOK_DICTS:
            assert not getattr(m, attr, {}), f"{attr} left on module {name or '<root>'!r}"
    for attr in _GLOBAL_HOOKS:
        assert not getattr(_module, attr, {}), f"global {attr} left behind"
    assert [m.training for m in model.modules()] == before.modes, "a module's training flag changed"
    assert [p.requires_grad for p in model.parameters()] == before.requires_grad, "requires_grad changed"
    assert all(p.grad is None for p in model.parameters()), "a parameter's .grad was written"
    state = model.state_dict()
    assert state.keys() == before.state.keys()
    changed = [k for k, v in before.state.items() if not torch.equal(state[k], v)]
    assert not changed, f"parameters / buffers changed: {changed[:5]}"


class _Passes:
    n = 0


@contextmanager
def _forward_passes(model: nn.Module) -> Iterator[_Passes]:
    """Counts the model's forward passes in the block; the counting hook is removed on exit."""
    counter = _Passes()

    def hook(module: nn.Module, args: Any) -> None:
        counter.n += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------ models
def _mixed_modes(model: nn.Module) -> nn.Module:
    """Train mode with one eval submodule and one frozen stage, so a restore that guesses shows."""
    model.train()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first_conv.eval()
    for p in first_conv.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """torchvision ResNet-18, random weights, 10 classes (64x64 inputs give layer4 a 2x2 map)."""
    torch.manual_seed(0)
    return _mixed_modes(torchvision.models.resnet18(weights=None, num_classes=10))


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, Any]:
    model, preprocess, classes = camwidgets.load_demo_model()
    assert len(classes) == model.fc.out_features
    return model, preprocess


class _SmallCNN(nn.Module):
    """A custom CNN whose class count camwidgets cannot know before a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(1)
    return _mixed_modes(_SmallCNN())


def _img(size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ 1. images
def _text_png(tmp: Path) -> Any:
    path = tmp / "notes.png"
    path.write_text("not an image, just text")
    return path


def _pil_mode_i(tmp: Path) -> Any:
    return Image.new("I", (8, 8), 5)


def _pil_mode_f_255(tmp: Path) -> Any:
    img = Image.fromarray(np.full((8, 8), 200.0, dtype=np.float32))
    assert img.mode == "F"
    return img


def _truncated_png(tmp: Path) -> Any:
    """A valid 64x64 PNG cut in half: the header reads, the pixel data ends early."""
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, "PNG")
    path = tmp / "half.png"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    return path


def _empty_file(tmp: Path) -> Any:
    path = tmp / "empty.jpg"
    path.write_bytes(b"")
    return path


_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8" fill="red"/></svg>'


def _svg_file(tmp: Path) -> Any:
    path = tmp / "drawing.svg"
    path.write_text('<?xml version="1.0"?>\n' + _SVG)
    return path


BAD_IMAGES: list[tuple[str, Callable[[Path], Any], str]] = [
    ("2 channels", lambda t: np.zeros((8, 8, 2), np.uint8),
     r"\(8, 8, 2\): 2 channels.*1 \(grey\), 3 \(RGB\) or 4 \(RGBA\).*Pick the channels"),
    ("5 channels", lambda t: np.zeros((8, 8, 5), np.uint8), r"5 channels.*Pick the channels you mean"),
    ("5-D tensor", lambda t: torch.zeros(1, 1, 3, 8, 8),
     r"shape \(1, 1, 3, 8, 8\) \(5 dimensions\); expected \(H, W\).*reshape it to one image"),
    ("1-D array", lambda t: np.zeros(12, np.uint8), r"\(1 dimensions\); expected .*reshape"),
    ("empty array", lambda t: np.zeros((0, 0, 3), np.uint8), r"empty \(shape \(0, 0, 3\)\); pass an image with"),
    ("empty tensor", lambda t: torch.zeros(3, 0, 5), r"empty .*at least one pixel"),
    ("NaN", lambda t: np.full((8, 8, 3), np.nan, np.float32), r"NaN or infinite values; replace them .*nan_to_num"),
    ("inf", lambda t: torch.full((3, 8, 8), float("inf")), r"NaN or infinite.*nan_to_num"),
    ("float 0..255", lambda t: np.full((8, 8, 3), 200.0, np.float32),
     r"float values in \[200, 200\]; float images must lie in \[0, 1\].*divide by 255"),
    ("negative float", lambda t: torch.full((3, 8, 8), -2.0), r"\[-2, -2\].*must lie in \[0, 1\].*normalisation"),
    ("int16", lambda t: np.zeros((8, 8, 3), np.int16), r"dtype int16 .*cannot know.*Convert it: to uint8"),
    ("int32 tensor", lambda t: torch.zeros(3, 8, 8, dtype=torch.int32), r"dtype torch\.int32 .*Convert it"),
    ("complex", lambda t: np.zeros((8, 8, 3), np.complex64), r"dtype complex64; pass a numeric array"),
    ("PIL mode I", _pil_mode_i, r"mode 'I' \(32-bit integers\).*Convert it yourself"),
    ("PIL mode F 0..255", _pil_mode_f_255, r"float values in \[200, 200\].*divide by 255"),
    ("missing file", lambda t: t / "missing.png", r"missing\.png' does not exist; check the path"),
    ("missing str path", lambda t: str(t / "nope" / "x.jpg"), r"does not exist; check the path"),
    ("a folder", lambda t: t, r"is a folder; pass the path of an image file"),
    ("text file .png", _text_png, r"notes\.png' is not an image PIL can read; pass a PNG, JPEG"),
    ("bytes", lambda t: b"GIF89a but not really an image", r"The data given is not an image PIL can read; pass"),
    ("truncated PNG", _truncated_png,
     r"half\.png' is cut short \(image file is truncated.*Download or export it again.*LOAD_TRUNCATED_IMAGES"),
    ("0-byte file", _empty_file, r"empty\.jpg' is empty \(0 bytes\); pass a PNG, JPEG"),
    ("0 bytes", lambda t: b"", r"The data given is empty \(0 bytes\); pass a PNG, JPEG"),
    ("SVG file", _svg_file, r"drawing\.svg' is an SVG \(vector graphics\), which PIL cannot read; rasterise it"),
    ("SVG bytes", lambda t: _SVG.encode(), r"The data given is an SVG .*rasterise it first"),
    ("None", lambda t: None, r"cannot read a NoneType; pass a file path, bytes, a PIL image"),
    ("list", lambda t: [[0.0, 1.0]], r"cannot read a list; pass a file path"),
]


@pytest.mark.parametrize(("make", "match"), [(m, r) for _, m, r in BAD_IMAGES], ids=[n for n, _, _ in BAD_IMAGES])
def test_bad_image_is_refused_by_load_image(make: Callable[[Path], Any], match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        load_image(make(tmp_path))


@pytest.mark.parametrize(("make", "match"), [(m, r) for _, m, r in BAD_IMAGES], ids=[n for n, _, _ in BAD_IMAGES])
def test_bad_image_is_refused_by_the_explainer_before_any_pass(
        make: Callable[[Path], Any], match: str, tmp_path: Path, resnet: nn.Module) -> None:
    src = make(tmp_path)
    before = _snapshot(resnet)
    with _forward_passes(resnet) as passes, pytest.raises(ValueError, match=match):
        Explainer(resnet, src, target=1)
    assert passes.n == 0
    _assert_untouched(resnet, before)


def test_a_batch_of_images_is_refused_before_any_pass(resnet: nn.Module) -> None:
    batch = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"batch of 2 images, but one image is expected.*Pass one image"):
        load_image(batch)
    before = _snapshot(resnet)
    with _forward_passes(resnet) as passes, pytest.raises(
            ValueError, match=r"got a batch of 2\. Create one Explainer per image.*explain_batch"):
        Explainer(resnet, batch)
    assert passes.n == 0
    _assert_untouched(resnet, before)


def test_four_channels_are_read_as_rgba_composited_over_white() -> None:
    # camwidgets cannot tell a 4-band array from RGBA: it documents 4 channels as RGBA.
    arr = np.zeros((1, 3, 4), np.float32)
    arr[0, :, :3] = [0.2, 0.4, 0.6]
    arr[0, :, 3] = [1.0, 0.5, 0.0]  # opaque, half, transparent
    out = load_image(arr)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    torch.testing.assert_close(out[:, 0, 1], torch.tensor([0.6, 0.7, 0.8]))
    torch.testing.assert_close(out[:, 0, 2], torch.ones(3))
    # A 4th band that is no alpha (e.g. an infrared band 0..255 stored as float) is refused, not mixed in.
    band = np.concatenate([np.full((4, 4, 3), 0.5, np.float32), np.full((4, 4, 1), 180.0, np.float32)], axis=-1)
    with pytest.raises(ValueError, match=r"float values in \[0\.5, 180\].*must lie in \[0, 1\]"):
        load_image(band)


def test_pil_modes_are_converted_correctly() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    np.testing.assert_allclose(load_image(pal)[:, 0, :].numpy().T * 255, [[10, 20, 30], [200, 100, 50]], atol=1e-3)
    pal.info["transparency"] = 1  # palette index 1 transparent: white, as a viewer shows it
    np.testing.assert_allclose(load_image(pal)[:, 0, :].numpy().T * 255, [[10, 20, 30], [255, 255, 255]], atol=1e-3)
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 0, 0))  # full magenta ink
    np.testing.assert_allclose(load_image(cmyk)[:, 0, 0].numpy(), [1.0, 0.0, 1.0], atol=1e-6)
    sixteen = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    out = load_image(sixteen)
    np.testing.assert_allclose(out[0, 0].numpy(), [0.0, 32768 / 65535, 1.0], atol=1e-6)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # grey: three equal channels
    la = Image.new("LA", (1, 1), (100, 0))  # transparent grey
    np.testing.assert_allclose(load_image(la)[:, 0, 0].numpy(), [1.0, 1.0, 1.0], atol=1e-6)


def _map(model: nn.Module, image: Any, **kwargs: Any) -> np.ndarray:
    return np.asarray(Explainer(model, image, target=1, **kwargs).gradcam().map)


def test_an_animated_gif_is_read_as_its_first_frame(tmp_path: Path, resnet: nn.Module) -> None:
    # Documented (load_image, docs/input.md): of an animated or multi-page file the first frame is read.
    first = np.zeros((64, 64, 3), np.uint8)
    first[:, :32] = (255, 0, 0)
    first[:, 32:] = (0, 255, 0)
    frames = [Image.fromarray(first), Image.new("RGB", (64, 64), (0, 0, 255)), Image.new("RGB", (64, 64), (9, 9, 9))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as im:
        assert im.n_frames == 3
    expected = torch.from_numpy(first.transpose(2, 0, 1).astype(np.float32) / 255)
    assert torch.equal(load_image(path), expected)  # red / green, exactly: not blue, not a mix
    before = _snapshot(resnet)
    exp = Explainer(resnet, path, target=1)
    assert torch.equal(exp.image.cpu(), expected)
    np.testing.assert_array_equal(np.asarray(exp.gradcam().map), _map(resnet, expected))
    _assert_untouched(resnet, before)


def test_an_image_over_the_decompression_bomb_limit_is_refused_before_any_pass(
        tmp_path: Path, resnet: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels is now over the limit
    before = _snapshot(resnet)
    for src in (path, path.read_bytes(), np.zeros((40, 40, 3), np.uint8), Image.new("RGB", (40, 40))):
        with _forward_passes(resnet) as passes, pytest.raises(
                ValueError, match=r"decompression-bomb limit.*Downscale it first, or raise PIL\.Image\.MAX_IMAGE_PIX"):
            Explainer(resnet, src, target=1)
        assert passes.n == 0
    _assert_untouched(resnet, before)


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """PIL's naive conversion (no colour profile): R = (255 - C)(255 - K) / 255, rounded; G, B alike."""
    c = cmyk.astype(np.float64)
    return np.round((255 - c[..., :3]) * (255 - c[..., 3:]) / 255)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_files_of_every_pil_mode_give_the_map_of_their_rgb_pixels(
        mode: str, tmp_path: Path, resnet: nn.Module) -> None:
    rng = np.random.default_rng(3)
    if mode == "L":
        grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        img, rgb = Image.fromarray(grey), np.repeat(grey[..., None], 3, axis=-1)
    elif mode == "RGBA":
        rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
        img = Image.fromarray(rgba)
        a = rgba[..., 3:].astype(np.float64) / 255  # composited over white, in 8 bits (PIL rounds)
        rgb = np.round(rgba[..., :3] * a + 255 * (1 - a))
    elif mode == "P":
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        img = Image.fromarray(index, mode="P")
        img.putpalette(palette.tobytes())
        rgb = palette[index]
    else:
        cmyk = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
        img, rgb = Image.fromarray(cmyk, mode="CMYK"), _cmyk_to_rgb(cmyk)
    path = tmp_path / ("img.tif" if mode == "CMYK" else "img.png")  # TIFF keeps CMYK, losslessly
    img.save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    expected = torch.from_numpy(np.asarray(rgb, np.float64).transpose(2, 0, 1) / 255).float()
    before = _snapshot(resnet)
    exp = Explainer(resnet, path, target=1)
    torch.testing.assert_close(exp.image.cpu(), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(exp.gradcam().map), _map(resnet, expected), atol=1e-5)
    _assert_untouched(resnet, before)


# ------------------------------------------------------------------------------------ 2. models and layers
def test_a_model_without_convolution_is_refused_before_any_pass() -> None:
    mlp = _mixed_modes_mlp()
    for kwargs in ({}, {"layers": "auto"}):
        before = _snapshot(mlp)
        with _forward_passes(mlp) as passes, pytest.raises(
                ValueError, match=r"Sequential has no 2-D convolution.*Pass a convolutional network"):
            Explainer(mlp, _img(8), **kwargs)
        assert passes.n == 0
        _assert_untouched(mlp, before)


def _mixed_modes_mlp() -> nn.Module:
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    mlp.train()
    mlp[2].eval()
    return mlp


@pytest.mark.parametrize(("layer", "match"), [
    ("layr4", r"no layer named 'layr4'\. Did you mean 'layer4'.*named_modules\(\); candidate layers include .*"
              r"'layer4\.1'"),
    ("layer4.7", r"no layer named 'layer4\.7'\. Did you mean .*'layer4\.1'"),
    ("", r"no layer named ''.*candidate layers include"),
])
def test_an_unknown_layer_name_suggests_real_ones_before_any_pass(resnet: nn.Module, layer: str, match: str) -> None:
    before = _snapshot(resnet)
    with _forward_passes(resnet) as passes, pytest.raises(ValueError, match=match):
        Explainer(resnet, _img(), layers=[layer])
    assert passes.n == 0
    exp = Explainer(resnet, _img())
    with _forward_passes(resnet) as passes, pytest.raises(ValueError, match=match):
        exp.gradcam(layer=layer)
    assert passes.n == 0
    _assert_untouched(resnet, before)


def test_a_layer_without_4d_output_is_refused(resnet: nn.Module) -> None:
    before = _snapshot(resnet)
    with pytest.raises(ValueError, match=r"\['fc'\] do not output a 4-D feature map .*pass convolutional layers "
                                         r"or blocks, e.g. \['layer4\.0', 'layer4\.1'\]"):
        Explainer(resnet, _img(), layers=["layer4.1", "fc"])
    exp = Explainer(resnet, _img())
    with pytest.raises(ValueError, match=r"'fc' does not output a 4-D feature map .*got shape \(1, 10\).*"
                                         r"choose a convolutional layer or block, e.g\. one of"):
        exp.gradcam(layer="fc")
    with _forward_passes(resnet) as passes, pytest.raises(ValueError, match="'fc' does not output a 4-D"):
        exp.gradcam(layer="fc")  # known now: not run again to find out
    assert passes.n == 0
    _assert_untouched(resnet, before)


def test_a_layer_with_a_1x1_map_is_refused_not_answered_with_a_zero_map(resnet: nn.Module) -> None:
    # avgpool's output is 4-D, (1, 512, 1, 1): its CAM is constant, i.e. all zeros once normalised.
    before = _snapshot(resnet)
    exp = Explainer(resnet, _img())
    with _forward_passes(resnet) as passes, pytest.raises(
            ValueError, match=r"gradcam: Layer 'avgpool' gives a 1x1 feature map for the 64x64 model input.*"
                              r"constant.*Pass a preprocess that resizes.*layer='layer4\.1' \(2x2\)"):
        exp.gradcam(layer="avgpool")
    assert passes.n == 1  # one capture to find the layer's output, then no map computed
    _assert_untouched(resnet, before)


class _TupleOut(_SmallCNN):
    def forward(self, x: torch.Tensor) -> Any:  # (logits, features), as some detection-style heads do
        feats = self.body(x)
        return self.head(feats.mean((2, 3))), feats


class _DictOut(_SmallCNN):
    def forward(self, x: torch.Tensor) -> Any:  # a Hugging Face-style output
        return {"logits": super().forward(x)}


@pytest.mark.parametrize(("cls", "kind"), [(_TupleOut, "tuple"), (_DictOut, "dict")])
def test_a_model_not_returning_a_logits_tensor_is_refused_with_the_fix(cls: type[nn.Module], kind: str) -> None:
    torch.manual_seed(1)
    model = _mixed_modes(cls())
    before = _snapshot(model)
    with _forward_passes(model) as passes, pytest.raises(
            ValueError, match=rf"output must be a logits tensor of shape \(N, num_classes\); got {kind}\. "
                              r"Wrap the model so that it returns the class scores"):
        Explainer(model, _img(16))
    assert passes.n == 1  # the output's type shows only once the model has run; no backward
    _assert_untouched(model, before)


def _demo_copy(demo: tuple[nn.Module, Any]) -> nn.Module:
    return copy.deepcopy(demo[0])


def _demo_maps(model: nn.Module, preprocess: Any, image: Any = None) -> dict[str, np.ndarray]:
    """The demo model's Grad-CAM of its predicted class at its last block (the default layer, one hooked
    forward and a partial backward) and at an early one (a second, full backward pass)."""
    exp = Explainer(model, _img(40) if image is None else image, preprocess=preprocess)
    return {layer: np.asarray(exp.gradcam(layer=layer).map) for layer in ("layer4.1", "layer2.1")}


@pytest.fixture(scope="module")
def demo_ref(demo: tuple[nn.Module, Any]) -> dict[str, np.ndarray]:
    """The maps of the float32, eval-mode, contiguous, uncompiled demo model (preprocessed 40x40 image)."""
    return _demo_maps(*demo)


def _assert_maps_close(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], atol: float) -> None:
    for layer, m in ref.items():
        assert float(m.max()) == 1.0 and float(m.min()) == 0.0, f"{layer}: the reference map is degenerate"
        assert got[layer].dtype == m.dtype and got[layer].shape == m.shape
        np.testing.assert_allclose(got[layer], m, rtol=0, atol=atol, err_msg=layer)


def test_a_model_in_train_mode_is_explained_in_eval_mode(
        demo: tuple[nn.Module, Any], demo_ref: dict[str, np.ndarray]) -> None:
    # Documented (Explainer "Model hygiene", _hooks.eval_mode): every pass runs in eval mode and each
    # module's own flag comes back; so the map is the eval-mode model's, and BatchNorm's statistics stay.
    _, preprocess = demo
    trained = _mixed_modes(_demo_copy(demo))
    before = _snapshot(trained)
    _assert_maps_close(_demo_maps(trained, preprocess), demo_ref, atol=0.0)
    assert trained.training
    _assert_untouched(trained, before)


def test_a_frozen_model_gives_the_same_map(demo: tuple[nn.Module, Any], demo_ref: dict[str, np.ndarray]) -> None:
    _, preprocess = demo
    frozen = _demo_copy(demo).requires_grad_(False)
    before = _snapshot(frozen)
    with torch.no_grad():  # and under no_grad, as a frozen model usually runs
        got = _demo_maps(frozen, preprocess)
    _assert_maps_close(got, demo_ref, atol=0.0)
    assert not any(p.requires_grad for p in frozen.parameters())
    _assert_untouched(frozen, before)


# Half precision on CPU: the passes run in the model's dtype (eps 2**-10 for float16, 2**-7 for
# bfloat16), the map comes back float32 in [0, 1] like any other. At the last block rounding
# compounds over the ~10 layers to a few eps: the bound is 8 eps, 7.8e-3 and 6.3e-2 (measured
# 1.8e-3 and 1.7e-2). The early layer's gradient goes back through the whole network, partly in
# float16's subnormal range (7 % of its values here), and where rounding meets a near-cancellation
# (the ReLU of a channel sum close to 0) a few pixels move by up to ~80 eps (measured over 6
# images), so there the bound is on the mean: 4 eps (measured at most 3.1 eps). A wrong map
# (another class, zeros, an overflow) differs by 0.1 to 1 on average.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_gives_the_float32_map_within_rounding(
        demo: tuple[nn.Module, Any], demo_ref: dict[str, np.ndarray], dtype: torch.dtype) -> None:
    _, preprocess = demo
    half = _demo_copy(demo).to(dtype)
    before = _snapshot(half)
    got, eps = _demo_maps(half, preprocess), torch.finfo(dtype).eps
    _assert_maps_close({"layer4.1": got["layer4.1"]}, {"layer4.1": demo_ref["layer4.1"]}, atol=8 * eps)
    assert got["layer2.1"].dtype == np.float32 and float(got["layer2.1"].max()) == 1.0
    assert float(np.abs(got["layer2.1"] - demo_ref["layer2.1"]).mean()) <= 4 * eps
    assert all(p.dtype == dtype for p in half.parameters())
    _assert_untouched(half, before)


def test_a_channels_last_model_and_input_give_the_contiguous_map(
        demo: tuple[nn.Module, Any], demo_ref: dict[str, np.ndarray]) -> None:
    _, preprocess = demo
    image = _img(40)[None].contiguous(memory_format=torch.channels_last)  # demo_ref's pixels, (1, 3, H, W)
    assert not image.is_contiguous()
    last = _demo_copy(demo).to(memory_format=torch.channels_last)
    before = _snapshot(last)
    # Channels-last convolutions sum in another order: float32 round-off only (measured 6e-7).
    _assert_maps_close(_demo_maps(last, preprocess, image), demo_ref, atol=1e-5)
    assert last.get_parameter("conv1.weight").is_contiguous(memory_format=torch.channels_last)
    _assert_untouched(last, before)


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skip(
        reason="inductor compiles C++ for minutes on a small CPU; it loses hook outputs from the autograd "
               "path as aot_eager does (tests/core/test_compiled.py), which is the case checked")),
])
def test_a_compiled_model_gives_the_uncompiled_map(
        demo: tuple[nn.Module, Any], demo_ref: dict[str, np.ndarray], backend: str) -> None:
    _, preprocess = demo
    original = _demo_copy(demo)
    before = _snapshot(original)
    torch._dynamo.reset()
    try:
        got = _demo_maps(cast(nn.Module, torch.compile(original, backend=backend)), preprocess)
    finally:
        torch._dynamo.reset()
    _assert_maps_close(got, demo_ref, atol=1e-5)  # was: all-zero Grad-CAM maps
    _assert_untouched(original, before)


# ------------------------------------------------------------------------------------ 3. targets
@pytest.mark.parametrize(("target", "match"), [
    (-1, r"Target class -1 is out of range: class indices start at 0\. Pass target=None"),
    (10, r"Target class 10 is out of range: the model has 10 classes \(valid indices 0\.\.9\)\. Pass target=None"),
    (1.5, r"target must be a class index \(int\) or None, got 1\.5"),
    (2.0, r"target must be a class index \(int\) or None, got 2\.0"),
    ("cat", r"target must be a class index \(int\) or None, got 'cat'"),
    (True, r"target must be a class index \(int\) or None, got True"),
    (torch.tensor(1.0), r"target must be a class index \(int\) or None"),
    ([1, 2], r"target must be a class index \(int\) or None"),
])
def test_a_bad_target_is_refused_before_any_pass(resnet: nn.Module, target: Any, match: str) -> None:
    before = _snapshot(resnet)
    with _forward_passes(resnet) as passes, pytest.raises(ValueError, match=match):
        Explainer(resnet, _img(), target=target)
    assert passes.n == 0
    _assert_untouched(resnet, before)


def test_a_target_beyond_an_unknown_head_is_refused_before_the_backward(cnn: nn.Module) -> None:
    # The class count of a custom model shows only in its output: refused after the forward pass.
    before = _snapshot(cnn)
    with _forward_passes(cnn) as passes, pytest.raises(
            ValueError, match=r"Target class 3 is out of range: the model has 3 classes \(valid indices 0\.\.2\)\. "
                              r"Pass target=None"):
        Explainer(cnn, _img(16), target=3)
    assert passes.n == 1
    _assert_untouched(cnn, before)


# ------------------------------------------------------------------------------------ 4. methods and parameters
@pytest.mark.parametrize(("method", "params", "match"), [
    ("nope", {}, r"Unknown method 'nope'; choose from gradcam, .*fusioncam.*camwidgets\.methods\(\) lists them"),
    ("icam", {"threshold": 0.3}, r"icam: threshold must be float in \[0\.5, 1\], got 0\.3"),
    ("icam", {"alpha": -0.1}, r"icam: alpha must be float in \[0, 1\], got -0\.1"),
    ("icam", {"n": 0}, r"icam: n must be int in \[1, 64\], got 0"),
    ("icam", {"sigma": 0.0}, r"icam: sigma must be float in \(0, inf\), got 0\.0"),
    ("icam", {"bias": "both"}, r"icam: bias must be one of 'channel', 'spatial', 'none', got 'both'"),
    ("fusioncam", {"theta": 150}, r"fusioncam: theta must be float in \[0, 100\], got 150"),
    ("fusioncam", {"theta": float("nan")}, r"fusioncam: theta must be float in \[0, 100\], got nan"),
    ("fusioncam", {"region": "gradcam"}, r"fusioncam: region must be one of 'scorecam'"),
    ("scorecam", {"batch_size": 0}, r"scorecam: batch_size must be int in \[1, inf\), got 0"),
    ("gradcam", {"foo": 1}, r"gradcam has no parameter\(s\) \['foo'\]; its parameters are \['layer'\]"),
])
def test_a_bad_method_or_parameter_is_refused_before_any_pass(
        resnet: nn.Module, method: str, params: dict[str, Any], match: str) -> None:
    before = _snapshot(resnet)
    exp = Explainer(resnet, _img())
    with _forward_passes(resnet) as passes:
        with pytest.raises(ValueError, match=match):
            exp.explain(method, **params)
        if method != "nope":
            with pytest.raises(ValueError, match=match):
                getattr(exp, method)(**params)
    assert passes.n == 0
    _assert_untouched(resnet, before)


def test_too_many_positional_arguments_are_a_type_error(resnet: nn.Module) -> None:
    exp = Explainer(resnet, _img())
    with pytest.raises(TypeError, match=r"gradcam\(\) takes at most 1 positional arguments \(layer\), got 2"):
        exp.gradcam("layer4.1", "layer3.1")
    with pytest.raises(TypeError, match=r"got multiple values for argument 'layer'"):
        exp.gradcam("layer4.1", layer="layer3.1")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"methods": ["nope"]}, r"methods\['nope'\]: Unknown method 'nope'; choose from gradcam"),
    ({"methods": ["gradcam", "nope"]}, r"Unknown method 'nope'"),
    ({"methods": {"icam": {"threshold": 0.3}}}, r"methods\['icam'\]: icam: threshold must be float in \[0\.5, 1\]"),
    ({"methods": {"fusioncam": {"theta": 150}}}, r"fusioncam: theta must be float in \[0, 100\], got 150"),
    ({"methods": {"cam": {"alpha": 1}}}, r"cam has no parameter\(s\) \['alpha'\]; its parameters are"),
    ({"methods": ["gradcam"], "metrics": ["accuracy"]}, r"Unknown metric\(s\) \['accuracy'\]; choose from \["),
])
def test_evaluate_refuses_bad_methods_before_writing_anything(
        cnn: nn.Module, tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    out = tmp_path / "run"
    before = _snapshot(cnn)
    with _forward_passes(cnn) as passes, pytest.raises(ValueError, match=match):
        camwidgets.evaluate(cnn, [{"image": _img(16), "label": 0}], out_dir=out, progress=False, **kwargs)
    assert passes.n == 0
    assert not out.exists(), f"evaluate wrote {sorted(p.name for p in out.iterdir())} before refusing"
    _assert_untouched(cnn, before)


# ------------------------------------------------------------------------------------ 5. metrics
@pytest.mark.parametrize(("metric", "saliency", "kwargs", "match"), [
    ("deletion", np.ones((32, 32)), {"steps": 5},
     r"saliency map is 32x32 but the image is 64x64; compute the map on the same preprocessed image, "
     r"or resize it to 64x64"),
    ("insertion", np.ones((64, 32)), {"steps": 5}, r"64x32 but the image is 64x64.*resize it to 64x64"),
    ("average_drop", np.ones((1, 1, 64, 64)), {},
     r"shape \(1, 1, 64, 64\); expected \(H, W\) for one image or \(N, H, W\) for a batch"),
    ("average_drop", np.ones((2, 64, 64)), {}, r"Got 2 saliency map\(s\) for 1 image\(s\); pass one \(H, W\) map"),
    ("increase_in_confidence", np.full((64, 64), np.nan), {}, r"NaN or infinite values; normalise it"),
    ("average_drop", np.full((64, 64), 255.0), {}, r"values in \[255, 255\]; metrics need a map in \[0, 1\]\. "
                                                   r"Min-max normalise it first"),
    ("average_drop", "not a map", {}, r"saliency map is a str; pass a numpy array, a tensor or a result"),
    ("average_drop", np.ones((64, 64)), {"target": 1.5},
     r"target must hold integer class indices, got 1\.5; pass an int class index"),
    ("deletion", np.ones((64, 64)), {"target": -2, "steps": 5},
     r"target class -2 is out of range: class indices start at 0; pass a class index >= 0"),
    ("deletion", np.ones((64, 64)), {"steps": 0},
     r"steps must be a positive integer \(50 live, 224 for evaluation\), got 0"),
])
def test_a_bad_metric_input_is_refused_before_any_pass(
        resnet: nn.Module, metric: str, saliency: Any, kwargs: dict[str, Any], match: str) -> None:
    before = _snapshot(resnet)
    with _forward_passes(resnet) as passes, pytest.raises(ValueError, match=match):
        getattr(M, metric)(resnet, _img(), saliency, **kwargs)
    assert passes.n == 0
    _assert_untouched(resnet, before)


def test_a_target_beyond_the_classes_is_refused_by_a_metric(resnet: nn.Module) -> None:
    before = _snapshot(resnet)
    with _forward_passes(resnet) as passes, pytest.raises(
            ValueError, match=r"target class 10 is out of range for a model with 10 classes; pass a class index "
                              r"in 0\.\.9"):
        M.average_drop(resnet, _img(), np.ones((64, 64)), target=10)
    assert passes.n == 1  # the class count is the logits' width
    _assert_untouched(resnet, before)


@pytest.mark.parametrize(("metric", "saliency", "truth", "match"), [
    ("energy_pointing_game", np.ones((8, 8)), np.ones((4, 4), bool),
     r"ground truth has shape \(4, 4\); pass a mask with the map's shape \(\(8, 8\)\) or a box"),
    ("pointing_game", np.ones((8, 8)), (0, 0, 9), r"ground truth has shape \(3,\).*or a box \(x0, y0, x1, y1\)"),
    ("saliency_score", np.ones(8), np.ones((8, 8), bool), r"shape \(8,\); expected \(H, W\)"),
    ("localisation", np.ones((8, 8)), (5, 5, 2, 2), r"x1 < x0 or y1 < y0; use \(x0, y0, x1, y1\)"),
    ("energy_pointing_game", np.ones((8, 8)), np.zeros((8, 8), bool), r"mask of image 0 is empty; .*at least one"),
])
def test_a_bad_map_or_ground_truth_is_refused_by_map_metrics(
        metric: str, saliency: Any, truth: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        getattr(M, metric)(saliency, truth)


# ------------------------------------------------------------------------------------ 6. images too small
@pytest.mark.parametrize("size", [1, 3, 8, 16])
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "cam"])
def test_an_image_too_small_for_the_demo_model_is_refused_not_mapped_to_zeros(
        demo: tuple[nn.Module, Any], size: int, method: str) -> None:
    model, _ = demo
    before = _snapshot(model)
    exp = Explainer(model, _img(size))  # no preprocess: the image is used as it is
    msg = (rf"{method}: (the model input is 1x1 pixel|Layer 'layer4\.1' gives a 1x1 feature map for the "
           rf"{size}x{size} model input) \(used as it is: no preprocess\).*constant.*"
           r"Pass a preprocess that resizes the image to the model's input size.*load_demo_model\(\)")
    with _forward_passes(model) as passes, pytest.raises(ValueError, match=msg):
        exp.explain(method)
    assert passes.n == 0
    _assert_untouched(model, before)


def test_a_too_small_image_names_a_layer_that_still_has_a_map(demo: tuple[nn.Module, Any]) -> None:
    model, _ = demo
    exp = Explainer(model, _img(8))
    with pytest.raises(ValueError, match=r"or pick an earlier layer with a spatial map, e\.g\. layer='layer2\.1' "
                                         r"\(2x2\)"):
        exp.gradcam()
    assert float(exp.gradcam(layer="layer2.1").map.max()) == 1.0  # and that layer does give a map


def test_icam_on_a_one_pixel_image_is_refused(demo: tuple[nn.Module, Any]) -> None:
    model, _ = demo
    before = _snapshot(model)
    exp = Explainer(model, _img(1))
    for method in ("icam", "lime"):
        with pytest.raises(ValueError, match=rf"{method}: the model input is 1x1 pixel.*Pass a preprocess"):
            exp.explain(method)
    _assert_untouched(model, before)


@pytest.mark.parametrize("size", [1, 3, 8])
def test_a_small_image_with_the_demo_preprocess_gives_a_real_map(demo: tuple[nn.Module, Any], size: int) -> None:
    model, preprocess = demo
    before = _snapshot(model)
    res = Explainer(model, _img(size), preprocess=preprocess).gradcam()
    assert res.map.shape == (128, 128)
    assert float(res.map.max()) == 1.0 and float(res.map.min()) == 0.0
    _assert_untouched(model, before)


def test_the_size_rule_is_not_too_broad(demo: tuple[nn.Module, Any]) -> None:
    model, _ = demo
    res = Explainer(model, _img(17)).gradcam()  # layer4.1 is 2x2: a real map
    assert float(res.map.max()) == 1.0
    res = Explainer(model, _img(8)).icam()  # layer1 is 4x4, so I-CAM has layers with a map
    assert float(res.map.max()) == 1.0


def test_the_helper_sees_what_it_must(cnn: nn.Module) -> None:
    # The checks above could not fail if _assert_untouched missed these.
    probe = copy.deepcopy(cnn)
    before = _snapshot(probe)
    conv, norm, head = probe.get_submodule("body.0"), probe.get_submodule("body.1"), probe.get_submodule("head")
    handle = conv.register_forward_hook(lambda *a: None)
    with pytest.raises(AssertionError, match="_forward_hooks left"):
        _assert_untouched(probe, before)
    handle.remove()
    norm.eval()
    with pytest.raises(AssertionError, match="training flag"):
        _assert_untouched(probe, before)
    norm.train()
    head.get_parameter("weight").requires_grad_(False)
    with pytest.raises(AssertionError, match="requires_grad"):
        _assert_untouched(probe, before)
    head.get_parameter("weight").requires_grad_(True)
    probe(_img(8)[None])  # a train-mode pass moves BatchNorm's running statistics
    with pytest.raises(AssertionError, match=r"body\.1\.running_mean"):
        _assert_untouched(probe, before)

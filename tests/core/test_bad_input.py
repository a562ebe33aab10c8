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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

"""Vision transformers without a hand-written reshape: token grids found by camwidgets.

The gradient family on torchvision's ``vit_b_32`` (tokens ``(N, 1 + 7·7, 768)`` at 224 px)
and ``swin_t`` (channels-last stage maps ``(N, h, w, C)``) equals pytorch-grad-cam 1.5
given the ``reshape_transform`` its documentation writes for those models, compared as
:mod:`tests.core.test_equivalence` and :mod:`tests.core.test_methods_activation` do: the
reference's raw map at feature resolution (``get_cam_image`` on the activations and
gradients its own hooks record, reshaped by its ``reshape_transform``), ReLU'd and
min-max normalised like camwidgets' raw map, within 1e-4.

Random weights, seeded. torchvision initialises a ViT's classification head to zeros (every
gradient would be 0), so it is re-initialised here with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm
from torchvision.transforms._presets import ImageClassification

from camwidgets.core import Explainer
from camwidgets.core._hooks import capture
from camwidgets.core.tokens import Layout, grid_matches, infer_layout

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import (  # noqa: E402
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4
PEERS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
         "hirescam": HiResCAM, "eigencam": EigenCAM, "eigengradcam": EigenGradCAM}


# ------------------------------------------------------------------ the reshape functions of pytorch-grad-cam's docs
def vit_reshape(tensor: torch.Tensor, height: int = 7, width: int = 7) -> torch.Tensor:
    """pytorch-grad-cam's ViT ``reshape_transform``: class token dropped, tokens folded, channels first."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)  # == permute(0, 3, 1, 2)


def swin_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """Swin (channels-last stage maps): channels first."""
    return tensor.permute(0, 3, 1, 2)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = tvm.vit_b_32().eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision's zero head gives zero gradients
    return model


@pytest.fixture(scope="module")
def swin() -> nn.Module:
    torch.manual_seed(0)
    return tvm.swin_t().eval()


@pytest.fixture(scope="module")
def preprocess() -> ImageClassification:
    return ImageClassification(crop_size=224, resize_size=224)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(3, 240, 240, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def single_blas_thread() -> Iterator[None]:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    span = a.max() - a.min()
    return np.zeros_like(a) if span == 0 else (a - a.min()) / span


def _norm(a: np.ndarray) -> np.ndarray:
    return _minmax(np.maximum(np.asarray(a, dtype=np.float64), 0))


def _oriented(projection: np.ndarray, decomposed: np.ndarray) -> np.ndarray:
    """The reference's projection with camwidgets' sign (see tests/core/test_methods_activation.py)."""
    s = decomposed.sum(axis=0)
    return -projection if float((projection * (s - s.mean())).sum()) < 0 else projection


def _peer_capture(model: nn.Module, x: torch.Tensor, layer: str, target: int,
                  reshape: Callable[[torch.Tensor], torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and ``g`` recorded by pytorch-grad-cam's hooks, folded by its ``reshape_transform``."""
    cam = GradCAM(model, [model.get_submodule(layer)], reshape_transform=reshape)
    try:
        outputs = cam.activations_and_grads(x)
        ClassifierOutputTarget(target)(outputs[0]).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return acts, grads


def _peer_raw(method: str, model: nn.Module, x: torch.Tensor, layer: str, target: int, acts: np.ndarray,
              grads: np.ndarray, reshape: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    module = model.get_submodule(layer)
    cam = PEERS[method](model, [module], reshape_transform=reshape)
    try:
        raw = cam.get_cam_image(x, module, [ClassifierOutputTarget(target)], acts, grads, False)
    finally:
        cam.activations_and_grads.release()
    return np.asarray(raw[0], dtype=np.float64)


def equivalence_diffs(exp: Explainer, layer: str | None,
                      reshape: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """Max abs difference after normalisation, per method, between camwidgets and pytorch-grad-cam."""
    model, x = exp.model, exp.input
    name = exp.layer_name(layer)
    acts, grads = _peer_capture(model, x, name, exp.target, reshape)
    decomposed = {"eigencam": acts[0], "eigengradcam": (grads * acts)[0]}
    diffs = {}
    for method in PEERS:
        res = exp.explain(method, layer=layer)
        ref = _peer_raw(method, model, x, name, exp.target, acts, grads, reshape)
        assert ref.shape == res.raw.shape, method
        if method in decomposed:
            ref = _oriented(ref, decomposed[method])
        diffs[method] = float(np.abs(_norm(res.raw) - _norm(ref)).max())
    return diffs


# ------------------------------------------------------------------ equivalence with pytorch-grad-cam
CASES = [  # (model, layer or None for the default layer)
    ("vit", None), ("vit", "encoder.layers.encoder_layer_9"),
    ("swin", None), ("swin", "features.5.5"),
]


@pytest.mark.usefixtures("single_blas_thread")
@pytest.mark.parametrize(("arch", "layer"), CASES)
def test_gradient_family_equals_pytorch_grad_cam(request, preprocess, image, arch: str, layer: str | None) -> None:
    model = request.getfixturevalue(arch)
    exp = Explainer(model, image, preprocess=preprocess)
    diffs = equivalence_diffs(exp, layer, vit_reshape if arch == "vit" else swin_reshape)
    if arch == "swin" and layer is None:
        # Swin's last block feeds only the final LayerNorm, which is invariant to shifting and scaling each
        # position's channels: sum_k g_k A_k = 0 there up to the norm's eps. HiResCAM's map is float32
        # cancellation noise (|sum| ~1e-7 of terms ~1e-3), whose summation order differs between the two
        # implementations; the activations and gradients themselves are identical (checked below).
        a, g = exp.activation(exp.default_layer).double(), exp.gradient(exp.default_layer).double()
        assert float((g * a).sum(0).abs().max()) < 1e-4 * float((g * a).abs().sum(0).max())
        del diffs["hirescam"]
    assert max(diffs.values()) <= TOL, diffs
    # Not a comparison of empty maps: Grad-CAM and EigenCAM have spatial structure at these layers.
    for method in ("gradcam", "eigencam"):
        raw = exp.explain(method, layer=layer).raw
        assert float(raw.max()) > float(raw.min()), method


def test_default_layers(vit, swin, preprocess, image) -> None:
    exp = Explainer(vit, image, preprocess=preprocess)
    # The last block's patch tokens get no gradient (only the class token reaches the head): its ln_1 instead.
    assert exp.default_layer == "encoder.layers.encoder_layer_11.ln_1"
    assert exp.candidate_layers[:2] == ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1")
    assert len(exp.candidate_layers) == 12
    assert exp.layout(exp.default_layer) == Layout("tokens", (50, 768), (7, 7), 1)
    assert tuple(exp.activation(exp.default_layer).shape) == (768, 7, 7)
    exp = Explainer(swin, image, preprocess=preprocess)
    assert exp.default_layer == "features.7.1"
    assert exp.candidate_layers[0] == "features.1.0" and len(exp.candidate_layers) == 12
    assert exp.layout("features.1.0") == Layout("nhwc", (56, 56, 96), (56, 56))
    assert tuple(exp.activation("features.1.0").shape) == (96, 56, 56)


# ------------------------------------------------------------------ the automatic grid
@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_automatic_grid_equals_hand_written(request, preprocess, image, arch: str) -> None:
    model = request.getfixturevalue(arch)
    hand = vit_reshape if arch == "vit" else swin_reshape
    exp = Explainer(model, image, preprocess=preprocess)
    layers = list(exp.candidate_layers[-3:])
    raw = capture(model, exp.input, layers, exp.target)  # the layers' outputs as they are
    for name in layers:
        torch.testing.assert_close(exp.activation(name), hand(raw.activations[name])[0], rtol=0, atol=0)
        torch.testing.assert_close(exp.gradient(name), hand(raw.gradients[name])[0], rtol=0, atol=0)
    user = Explainer(model, image, preprocess=preprocess, reshape=hand)
    for method in ("gradcam", "layercam"):
        np.testing.assert_allclose(exp.explain(method).map, user.explain(method).map, rtol=0, atol=1e-6)


def test_infer_layout_rules() -> None:
    size = (224, 224)
    assert infer_layout((1, 197, 768), size) == Layout("tokens", (197, 768), (14, 14), 1)  # ViT-B/16
    assert infer_layout((2, 49, 768), size) == Layout("tokens", (49, 768), (7, 7), 0)  # no class token
    assert infer_layout((1, 1 + 4 + 256, 384), size) == Layout("tokens", (261, 384), (16, 16), 5)  # + 4 registers
    assert infer_layout((1, 1 + 7 * 14, 768), (224, 448)) == Layout("tokens", (99, 768), (7, 14), 1)
    assert infer_layout((1, 56, 56, 96), size) == Layout("nhwc", (56, 56, 96), (56, 56))
    assert infer_layout((1, 56, 80, 96), (224, 320)) == Layout("nhwc", (56, 80, 96), (56, 80))
    assert infer_layout((1, 512, 7, 7), size) == Layout("nchw", (512, 7, 7), (7, 7))
    assert infer_layout((1, 7, 7, 7), size).kind == "nchw"  # both fit: kept as it is
    assert infer_layout((1, 512, 4, 5), (100, 150)).kind == "nchw"  # ceil-rounded strides
    assert infer_layout((1, 10), size) is None
    assert infer_layout((1, 3, 1000), size) is None  # 3 tokens: no grid of a square input
    assert grid_matches((7, 7), size) and not grid_matches((5, 10), size)
    # A known patch size decides the grid (torchvision's ViT): 1 + 14·14 tokens at 224 px, patch 16.
    vit16 = nn.Module()
    vit16.patch_size = 16  # type: ignore[assignment]
    assert infer_layout((1, 197, 768), size, vit16) == Layout("tokens", (197, 768), (14, 14), 1)


def test_fold_round_trip() -> None:
    t = torch.randn(2, 50, 8)
    layout = infer_layout(t.shape, (224, 224))
    assert layout is not None
    grid = layout.fold(t)
    torch.testing.assert_close(grid, vit_reshape(t), rtol=0, atol=0)
    torch.testing.assert_close(layout.unfold(grid, t), t, rtol=0, atol=0)


# ------------------------------------------------------------------ a user reshape
def test_user_reshape_is_used(vit, preprocess, image) -> None:
    calls: list[tuple[int, ...]] = []

    def fold(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return vit_reshape(t)

    exp = Explainer(vit, image, preprocess=preprocess, layers=["encoder.layers.encoder_layer_10"], reshape=fold)
    assert exp.reshape is fold
    assert calls and all(s == (1, 50, 768) for s in calls)
    auto = Explainer(vit, image, preprocess=preprocess, layers=["encoder.layers.encoder_layer_10"])
    np.testing.assert_allclose(exp.gradcam().map, auto.gradcam().map, rtol=0, atol=1e-6)
    assert exp.layout(exp.default_layer).kind == "custom"
    # Methods that replace the layer's output cannot invert a user's fold: a clear error.
    with pytest.raises(ValueError, match="cannot invert"):
        exp.ablationcam()

    # A fold that does not give (N, C, h, w) is refused with the layer named.
    with pytest.raises(ValueError, match=r"reshape returned .*encoder_layer_10"):
        Explainer(vit, image, preprocess=preprocess, layers=["encoder.layers.encoder_layer_10"],
                  reshape=lambda t: t[:, 1:, :])
    with pytest.raises(ValueError, match="reshape must be"):
        Explainer(vit, image, preprocess=preprocess, reshape="auto")  # type: ignore[arg-type]


# ------------------------------------------------------------------ CAM refuses, the model is left as it was
def test_cam_refuses_transformer_layers(vit, swin, preprocess, image) -> None:
    exp = Explainer(vit, image, preprocess=preprocess)
    with pytest.raises(ValueError, match="class token"):
        exp.cam()
    exp = Explainer(swin, image, preprocess=preprocess)
    with pytest.raises(ValueError, match=r"GAP \+ linear head.*LayerNorm"):
        exp.cam()
    # After Swin's final LayerNorm the head is GAP + linear: CAM is defined there (channels-last, permuted).
    assert exp.cam(layer="norm").raw.shape == (7, 7)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def test_model_unchanged(vit, preprocess, image) -> None:
    hooks_before = _hooks(vit)
    vit.train()
    vit.encoder.layers.encoder_layer_3.eval()  # a mix of modes, restored module by module
    modes = [m.training for m in vit.modules()]
    try:
        exp = Explainer(vit, image, preprocess=preprocess)
        exp.gradcam()
        exp.layercam(layer="encoder.layers.encoder_layer_5")  # the all-layer gradient capture
        exp.reciprocam(batch_size=49)  # substituted (un-folded) tokens
        assert [m.training for m in vit.modules()] == modes
        assert _hooks(vit) == hooks_before
        assert all(p.grad is None for p in vit.parameters())
    finally:
        vit.eval()

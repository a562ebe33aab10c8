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

The region family runs one forward pass per channel, position or group, so it is checked on a
small torchvision ViT (64 px, patch 16, 2 blocks, 32 channels) and on ``swin_t`` at 64 px
(stage 1, 96 channels): Score-CAM and Ablation-CAM (``ablation="gradcam"``) against
pytorch-grad-cam (``ScoreCAM``; ``AblationCAM`` with ``AblationLayerVit``), Recipro-CAM and
Group-CAM against references written from their definitions on the folded map. Why
Ablation-CAM's default ablates transformer layers with 0 is shown by
:func:`test_ablationcam_value_on_transformer_layers`.
"""

from __future__ import annotations

from collections.abc import Callable

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

from .conftest import minmax, relu_minmax  # noqa: E402

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
        diffs[method] = float(np.abs(relu_minmax(res.raw) - relu_minmax(ref)).max())
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


# ------------------------------------------------------------------ the region family on token layers (a small ViT)
# A torchvision ViT small enough for one forward pass per channel or position in CI: 64 px, patch 16 (a 4x4
# grid, 1 + 16 tokens), 2 blocks, 32 channels. Random weights, seeded; the head re-initialised as above and the
# LayerNorms' affine parameters randomised: with torchvision's (1, 0) every ln_1 output has an exactly zero
# channel sum at each token, so sums over channels (the region maps) cancel to a small remainder.
SMALL_VIT_LAYERS = ("encoder.layers.encoder_layer_1.ln_1",  # the default layer: the last block's ln_1
                    "encoder.layers.encoder_layer_0")  # a block's output (the residual stream), middle of the net
SMALL_GRID = 4


def small_vit_reshape(tensor: torch.Tensor) -> torch.Tensor:
    return vit_reshape(tensor, SMALL_GRID, SMALL_GRID)


def small_vit_unfold(feature: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`small_vit_reshape` for one map ``(K, h, w)``: the class token taken from ``tokens``."""
    return torch.cat([tokens[:, :1], feature.reshape(1, feature.shape[0], -1).transpose(1, 2)], dim=1)


@pytest.fixture(scope="module")
def small_vit() -> nn.Module:
    torch.manual_seed(0)
    model = tvm.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32,
                                  mlp_dim=64, num_classes=10).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, mean=1.0, std=0.3)
            nn.init.normal_(m.bias, std=0.3)
    return model


@pytest.fixture(scope="module")
def small_image() -> torch.Tensor:
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))


def _region_peer_raw(cls: type, model: nn.Module, x: torch.Tensor, layer: str, target: int,
                     reshape: Callable[[torch.Tensor], torch.Tensor], **kw: object) -> np.ndarray:
    """pytorch-grad-cam's Score-CAM / Ablation-CAM map at feature resolution (its own masked or ablated passes)."""
    acts, grads = _peer_capture(model, x, layer, target, reshape)
    module = model.get_submodule(layer)
    cam = cls(model, [module], reshape_transform=reshape, **kw)
    try:
        raw = cam.get_cam_image(x, module, [ClassifierOutputTarget(target)], acts, grads, False)
    finally:
        cam.activations_and_grads.release()
    return np.asarray(raw[0], dtype=np.float64)


REGION_CASES = [("small_vit", SMALL_VIT_LAYERS[0]), ("small_vit", SMALL_VIT_LAYERS[1]),
                ("swin", "features.1.0")]  # Swin at 64 px: stage 1, a (16, 16, 96) channels-last map


@pytest.mark.usefixtures("single_blas_thread")
@pytest.mark.parametrize(("arch", "layer"), REGION_CASES)
def test_scorecam_and_ablationcam_equal_pytorch_grad_cam(request, arch: str, layer: str) -> None:
    """Score-CAM (variant "gradcam") = pytorch-grad-cam's ScoreCAM; Ablation-CAM with ``ablation="gradcam"`` =
    its AblationCAM with ``ablation_layer=AblationLayerVit()``, the layer its ViT tutorial (usage_examples/
    vit_example.py) and Swin example pass for transformers: the channel is ablated in every token, the class
    token included (camwidgets does the same on every folded layer), to ``min − 1e7``. pytorch-grad-cam's
    minimum drifts by −1e7 per row of an ablation batch (:mod:`camwidgets.core.region`), camwidgets' does not;
    on these layers the −1e7 saturates the network (see the next test) and the drift changes nothing."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.ablation_layer import AblationLayerVit

    model = request.getfixturevalue(arch)
    image = request.getfixturevalue("small_image")
    reshape = small_vit_reshape if arch == "small_vit" else swin_reshape
    exp = Explainer(model, image, layers=[layer])
    assert exp.layout(layer).kind == ("tokens" if arch == "small_vit" else "nhwc")
    x = exp.input
    score = exp.scorecam(layer=layer)
    ref = _region_peer_raw(ScoreCAM, model, x, layer, exp.target, reshape)
    assert ref.shape == score.raw.shape
    assert float(np.abs(relu_minmax(score.raw) - relu_minmax(ref)).max()) <= TOL
    ablation = exp.ablationcam(layer=layer, ablation="gradcam")
    ref = _region_peer_raw(AblationCAM, model, x, layer, exp.target, reshape, ablation_layer=AblationLayerVit())
    assert float(np.abs(relu_minmax(ablation.raw) - relu_minmax(ref)).max()) <= TOL
    for res in (score, ablation):  # not a comparison of empty maps
        assert float(res.raw.max()) > float(res.raw.min())


def test_ablationcam_value_on_transformer_layers(small_vit, small_image) -> None:
    """Why ``ablation="auto"`` ablates transformer layers with 0, not with pytorch-grad-cam's ``min(A) − 1e7``.

    At a LayerNorm's output (or in the residual stream) a channel at −1e7 in every token dominates the
    attention's queries, keys and values: the class token becomes a fixed multiple of that channel's
    direction, which the final LayerNorm rescales, so the ablated logit ``y_k`` depends on ``k`` only. The
    weights ``(y − y_k) / y`` then carry no evidence about the image, and the map is a fixed projection of
    ``A`` (all zero on images where it is negative everywhere). Measured on ``vit_b_32``'s default layer
    too: ``y_k`` equal across two images to 1e-5, against a spread of 3.7 over the channels.
    """
    other = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(6))
    for layer in SMALL_VIT_LAYERS:
        exps = [Explainer(small_vit, img, target=2, layers=[layer]) for img in (small_image, other)]
        pgc_rule = [np.asarray(e.ablationcam(layer=layer, ablation="gradcam").scores) for e in exps]
        zero = [np.asarray(e.ablationcam(layer=layer).scores) for e in exps]  # "auto": 0 on a token layer
        assert np.ptp(pgc_rule[0]) > 0.1  # the channels' ablated logits differ ...
        assert np.abs(pgc_rule[0] - pgc_rule[1]).max() < 1e-5  # ... but not with the image
        assert np.abs(zero[0] - zero[1]).max() > 1e-2 * np.ptp(zero[0])
        auto, explicit = exps[0].ablationcam(layer=layer), exps[0].ablationcam(layer=layer, ablation="zero")
        assert auto.params["ablation"] == "auto"
        np.testing.assert_array_equal(auto.raw, explicit.raw)
        assert float(auto.raw.max()) > float(auto.raw.min())

    # The channel is ablated in every token, the class token included: what the next module receives.
    layer = SMALL_VIT_LAYERS[0]
    exp = Explainer(small_vit, small_image, layers=[layer])
    seen: list[torch.Tensor] = []
    attention = small_vit.get_submodule("encoder.layers.encoder_layer_1.self_attention")
    handle = attention.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].detach().clone()),
                                                 with_kwargs=True)
    try:
        exp.ablationcam(layer=layer, batch_size=32)
    finally:
        handle.remove()
    batch = seen[-1]  # the ablated batch: row k has channel k ablated
    assert batch.shape == (32, 1 + SMALL_GRID ** 2, 32)
    for k in (0, 5, 31):
        assert torch.all(batch[k, :, k] == 0)
        assert bool(torch.all(batch[k, :, k + 1 if k < 31 else 0] != 0))
    # A CNN layer keeps pytorch-grad-cam's rule under "auto" (tests/core/test_region.py); a user's fold cannot be
    # un-folded for the ablation (test_user_reshape_is_used).
    with pytest.raises(ValueError, match="must be 'gradcam' or 'zero'"):
        from camwidgets.core.region import ablationcam_weights
        ablationcam_weights(small_vit, exp.input, layer, exp.activation(layer), exp.target, 1.0, ablation="min")


def _capture_tokens(model: nn.Module, x: torch.Tensor, layer: str, target: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's tokens ``(1, T, C)``, their folded map and folded gradient ``(K, h, w)``: the test's own hook."""
    store: list[torch.Tensor] = []

    def hook(m: nn.Module, i: object, o: torch.Tensor) -> torch.Tensor:
        store.append(o)
        return o.clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            (grad,) = torch.autograd.grad(logits[0, target], store[0])
    finally:
        handle.remove()
    tokens = store[0].detach()
    return tokens, small_vit_reshape(tokens)[0], small_vit_reshape(grad)[0]


def _logits_with_tokens(model: nn.Module, layer: str, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: tokens.clone())
    try:
        with torch.no_grad():
            return model(x)[0]
    finally:
        handle.remove()


RECIPRO_KERNEL = [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]]


def reference_reciprocam_tokens(model: nn.Module, x: torch.Tensor, layer: str, target: int,
                                variant: str) -> np.ndarray:
    """Recipro-CAM from its definition on the folded map, one position and one full forward at a time.

    As :func:`tests.core.test_methods_fast_region.reference_reciprocam`, the masked map un-folded by hand
    (:func:`small_vit_unfold`, the class token as the layer computed it)."""
    tokens, a, _ = _capture_tokens(model, x, layer, target)
    _, h, w = a.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            masked = torch.zeros_like(a)
            if variant == "plain":
                masked[:, i, j] = a[:, i, j]
            else:
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < h and 0 <= j + dj < w:
                            masked[:, i + di, j + dj] = a[:, i, j] * RECIPRO_KERNEL[di + 1][dj + 1]
            logits = _logits_with_tokens(model, layer, x, small_vit_unfold(masked, tokens))
            out[i, j] = float(torch.softmax(logits.double(), dim=0)[target])
    return out


def _direct_blur(x: torch.Tensor, size: int = 51, sigma: float = 50.0) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - size // 2
    g1 = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g2 = torch.outer(g1, g1)
    g2 = (g2 / g2.sum()).to(x.dtype)
    pad = size // 2
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    return torch.nn.functional.conv2d(padded, g2.expand(x.shape[1], 1, size, size), groups=x.shape[1])


def reference_groupcam_tokens(model: nn.Module, x: torch.Tensor, layer: str, target: int, groups: int
                              ) -> np.ndarray:
    """Group-CAM from its definition on the folded map and gradient, one group at a time (as
    :func:`tests.core.test_methods_fast_region.reference_groupcam`): ``sum_g s_g M_g`` at feature resolution."""
    _, a, g = _capture_tokens(model, x, layer, target)
    k = a.shape[0]
    alpha = g.mean(dim=(1, 2))
    blurred = _direct_blur(x)
    with torch.no_grad():
        base = float(torch.softmax(model(blurred)[0].double(), dim=0)[target])
    raw = torch.zeros(a.shape[1:], dtype=torch.float64)
    for gi in range(groups):
        chans = range(gi * k // groups, (gi + 1) * k // groups)  # K divisible by G here: contiguous, equal
        group = torch.relu(sum(alpha[c] * a[c] for c in chans))
        up = torch.nn.functional.interpolate(group[None, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                             align_corners=False)[0, 0]
        lo, hi = up.min(), up.max()
        mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
        with torch.no_grad():
            p = float(torch.softmax(model(x * mask + blurred * (1 - mask))[0].double(), dim=0)[target])
        raw += max(p - base, 0.0) * group.double()
    return raw.numpy()


@pytest.mark.parametrize("layer", SMALL_VIT_LAYERS)
def test_reciprocam_and_groupcam_equal_references_on_tokens(small_vit, small_image, layer: str) -> None:
    exp = Explainer(small_vit, small_image, layers=[layer])
    x = exp.input
    for variant in ("plain", "gaussian"):
        res = exp.reciprocam(layer=layer, variant=variant, batch_size=5)  # 16 positions: batches of 5, 5, 5, 1
        ref = reference_reciprocam_tokens(small_vit, x, layer, exp.target, variant)
        assert float(np.abs(minmax(res.raw) - minmax(ref)).max()) <= TOL, variant
        assert float(res.raw.max()) > float(res.raw.min())
    res = exp.groupcam(layer=layer, groups=8)
    ref = reference_groupcam_tokens(small_vit, x, layer, exp.target, 8)
    assert float(np.abs(minmax(res.raw) - minmax(ref)).max()) <= TOL
    assert float(res.raw.max()) > float(res.raw.min())


def test_region_family_on_tokens_is_deterministic_and_leaves_the_model(small_vit, small_image) -> None:
    params = [p.detach().clone() for p in small_vit.parameters()]
    hooks_before = _hooks(small_vit)
    first = {}
    for method in ("scorecam", "ablationcam", "reciprocam", "groupcam"):
        a = Explainer(small_vit, small_image).explain(method)
        b = Explainer(small_vit, small_image).explain(method)
        np.testing.assert_array_equal(a.map, b.map)
        assert np.isfinite(a.map).all() and a.map.min() >= 0 and a.map.max() <= 1 and np.ptp(a.map) > 0, method
        first[method] = a
    assert _hooks(small_vit) == hooks_before
    assert all(torch.equal(p, q) for p, q in zip(params, small_vit.parameters(), strict=True))
    assert all(p.grad is None for p in small_vit.parameters())
    assert not small_vit.training


# ------------------------------------------------------------------ I-CAM across blocks, metrics on a ViT result
def test_icam_across_blocks_and_metrics(small_vit, small_image) -> None:
    from camwidgets import metrics

    exp = Explainer(small_vit, small_image)
    # The candidates are the blocks, the last one by its ln_1 (its patch tokens get no gradient).
    assert exp.candidate_layers == ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1.ln_1")
    every = exp.icam(threshold=1.0, n=4)
    assert every.candidate_layers == exp.candidate_layers
    scores = np.asarray(every.layer_scores)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert set(every.kept_layers) == set(exp.candidate_layers)  # T = 1 keeps every layer ...
    best = exp.icam(threshold=0.5, n=4)
    assert best.kept_layers == (exp.candidate_layers[int(np.argmax(scores))],)  # ... T = 0.5 the best-scored one
    for res in (every, best):
        assert np.isfinite(res.map).all() and np.ptp(res.map) > 0
        assert all(np.ptp(m) > 0 for m in res.layer_maps.values())
    # The metrics on a ViT result (the map at input resolution, the explainer's input as the image).
    image, target = exp.image, exp.target
    ad = metrics.average_drop(small_vit, image, every.map, target)
    assert 0.0 <= ad <= 100.0
    for curve in (metrics.insertion(small_vit, image, every.map, target, steps=8),
                  metrics.deletion(small_vit, image, every.map, target, steps=8)):
        assert 0.0 <= curve.auc <= 1.0 and len(curve.curve) == 9


# ------------------------------------------------------------------ methods undefined on token layers
def test_only_cam_is_refused_on_token_layers(small_vit, small_image) -> None:
    """Every registered method runs on a ViT's token layers except CAM, which needs a GAP + linear head: its
    error names the layer, the layout, why CAM is undefined there, and what to use instead."""
    from camwidgets.core.methods import names

    exp = Explainer(small_vit, small_image)
    for layer in exp.candidate_layers:
        with pytest.raises(ValueError) as err:
            exp.cam(layer=layer)
        message = str(err.value)
        assert repr(layer) in message and "tokens (17, 32): 1 leading token dropped, 4x4 grid" in message
        assert "classifies from its class token" in message and "CAM is undefined here" in message
        assert "Use gradcam" in message
    for method in names():
        if method == "cam":
            continue
        res = exp.explain(method)
        assert res.map.shape == (64, 64) and np.isfinite(res.map).all(), method

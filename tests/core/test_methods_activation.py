"""CAM, EigenCAM, HiResCAM and EigenGradCAM against their references, at feature resolution.

References: torchcam's ``CAM`` (with ``fc_layer`` given) for CAM; pytorch-grad-cam 1.5's
``HiResCAM``, ``EigenCAM`` and ``EigenGradCAM`` for the others. pytorch-grad-cam resizes
its output with cv2, so its map is taken before that step, as in ``test_equivalence.py``:
its own hooks record ``A`` and ``g`` and its ``get_cam_image`` gives the raw map at
feature resolution. Both maps are then normalised the same way and compared with a
tolerance of 1e-4 (max abs difference).

The two Eigen methods' maps depend on the sign of a singular vector, which the reference
leaves to LAPACK. camwidgets orients it (the projection correlates positively with the
channel sum of the decomposed tensor); the tests orient the reference's projection by the
same rule before comparing, so a reference map equal to ours or to its negative passes
and anything else fails.

Models: the trained demo model on Shapes images, and torchvision models with seeded
random weights on small random inputs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

import camwidgets
from camwidgets.core import Explainer
from camwidgets.core.methods.activation import find_gap_linear_head, principal_projection

from .conftest import ForwardCounter, minmax, relu_minmax

pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam import EigenCAM, EigenGradCAM, GradCAM, HiResCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread", "single_blas_thread")

TOL = 1e-4
PEERS = {"hirescam": HiResCAM, "eigencam": EigenCAM, "eigengradcam": EigenGradCAM}


# ------------------------------------------------------------------ helpers


def _peer_capture(model: nn.Module, x: torch.Tensor, layer: str, target: int) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and ``g`` (batch of one) recorded by pytorch-grad-cam's own hooks."""
    cam = GradCAM(model, [model.get_submodule(layer)])
    try:
        outputs = cam.activations_and_grads(x)
        ClassifierOutputTarget(target)(outputs[0]).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # it accumulates .grad; the models are this module's own
    return acts, grads


def _peer_raw(method: str, model: nn.Module, x: torch.Tensor, layer: str, target: int,
              acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's map at feature resolution, before its ReLU, normalisation and resize."""
    module = model.get_submodule(layer)
    cam = PEERS[method](model, [module])
    try:
        raw = cam.get_cam_image(x, module, [ClassifierOutputTarget(target)], acts, grads, False)
    finally:
        cam.activations_and_grads.release()
    return np.asarray(raw[0], dtype=np.float64)


def _oriented(projection: np.ndarray, decomposed: np.ndarray) -> np.ndarray:
    """A projection with camwidgets' sign: positively correlated with the channel sum of ``decomposed``."""
    s = decomposed.sum(axis=0)
    return -projection if float((projection * (s - s.mean())).sum()) < 0 else projection


def _tv(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(tvm, name)().eval()


@pytest.fixture(scope="module")
def demo_and_pre() -> tuple[nn.Module, camwidgets.core.Preprocess]:
    model, pre, _ = camwidgets.load_demo_model()
    return model, pre


@pytest.fixture(scope="module")
def tv_models() -> dict[str, nn.Module]:
    return {n: _tv(n) for n in ("resnet18", "vgg11", "mobilenet_v3_small", "mobilenet_v2")}


def _x(size: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))


def _explainer(case: str, demo_and_pre, tv_models) -> Explainer:
    """The demo model on two Shapes images, or a torchvision model on a random 64 px input."""
    if case == "demo-star":
        model, pre = demo_and_pre
        return Explainer(model, camwidgets.load_sample("shapes-star")["image"], preprocess=pre)
    if case == "demo-shapes":
        model, pre = demo_and_pre
        return Explainer(model, camwidgets.datasets.Shapes(3, seed=7)[2]["image"], preprocess=pre)
    return Explainer(tv_models[case], _x(64))


# ------------------------------------------------------------------ HiResCAM, EigenCAM, EigenGradCAM
PGC_CASES = [  # (model / image, layer or None for the default layer)
    ("demo-star", None), ("demo-shapes", "layer3.1"),
    ("resnet18", None), ("resnet18", "layer3.1"), ("vgg11", None), ("vgg11", "features.14"),
    ("mobilenet_v3_small", None),
]


@pytest.mark.parametrize(("case", "layer"), PGC_CASES)
def test_equal_pytorch_grad_cam(demo_and_pre, tv_models, case: str, layer: str | None) -> None:
    exp = _explainer(case, demo_and_pre, tv_models)
    model, x = exp.model, exp.input
    name = exp.layer_name(layer)
    acts, grads = _peer_capture(model, x, name, exp.target)
    decomposed = {"eigencam": acts[0], "eigengradcam": (grads * acts)[0]}
    for method in ("hirescam", "eigencam", "eigengradcam"):
        res = exp.explain(method, layer=layer)
        ref = _peer_raw(method, model, x, name, exp.target, acts, grads)
        assert ref.shape == res.raw.shape
        if method in decomposed:
            ref = _oriented(ref, decomposed[method])
        assert np.abs(relu_minmax(res.raw) - relu_minmax(ref)).max() <= TOL, method


def test_eigen_sign_convention(demo_and_pre, tv_models) -> None:
    """The component's entries sum to >= 0: the projection correlates positively with the channel sum."""
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    for method, f in [("eigencam", exp.activation(exp.default_layer)),
                      ("eigengradcam", exp.gradient(exp.default_layer) * exp.activation(exp.default_layer))]:
        res = exp.explain(method)
        v = torch.tensor(res.weights)
        assert float(v.sum()) > 0 and abs(float(v.norm()) - 1) < 1e-5
        fc = f.reshape(f.shape[0], -1) - f.reshape(f.shape[0], -1).mean(dim=1, keepdim=True)
        p = (v @ fc).reshape(f.shape[1:])
        assert float((p * f.sum(0)).sum()) > 0
        np.testing.assert_allclose(np.maximum(p.numpy(), 0), res.raw, atol=1e-5 * float(p.abs().max()))

    # A rank-one feature map with a bright blob: the blob is positive whichever sign LAPACK returns, and
    # the same features negated (their channel sum is now low on the blob) put the blob at the minimum.
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    blob = torch.exp(-((yy - 2) ** 2 + (xx - 5) ** 2) / 4)
    u = torch.tensor([0.5, 1.0, 0.2, -0.1])
    f = u[:, None, None] * blob
    p, v = principal_projection(f)
    assert p.argmax() == blob.argmax() and float(v.sum()) > 0
    p_neg, v_neg = principal_projection(-f)
    torch.testing.assert_close(p_neg, -p)
    assert p_neg.argmin() == blob.argmax() and float(v_neg.sum()) > 0
    for flat in (torch.ones(4, 8, 8), torch.rand(4, 1, 1)):  # positions do not vary: an all-zero map
        p0, v0 = principal_projection(flat)
        assert not p0.any() and not v0.any()


def test_eigencam_is_class_independent(demo_and_pre) -> None:
    model, pre = demo_and_pre
    image = camwidgets.load_sample("shapes-star")["image"]
    a, b = (Explainer(model, image, target=t, preprocess=pre) for t in (0, 4))
    np.testing.assert_array_equal(a.eigencam().map, b.eigencam().map)
    assert np.abs(a.eigengradcam().map - b.eigengradcam().map).max() > 0.05  # g depends on the class
    assert np.abs(a.hirescam().map - b.hirescam().map).max() > 0.05


# ------------------------------------------------------------------ CAM
def _torchcam(model: nn.Module, x: torch.Tensor, layer: str, fc: str, target: int) -> tuple[np.ndarray, np.ndarray]:
    """torchcam's CAM for (layer, target): (normalised map, unnormalised map), both at feature resolution."""
    with torchcam_methods.CAM(model, target_layer=layer, fc_layer=fc, input_shape=tuple(x.shape[1:])) as ext:
        with torch.no_grad():
            model(x)
        normalised = ext(class_idx=target)[0][0].numpy()
        raw = ext(class_idx=target, normalized=False)[0][0].numpy()
    return normalised, raw


CAM_CASES = [  # (model / image, layer, the head torchcam is given)
    ("demo-star", "layer4.1", "fc"), ("demo-shapes", "layer4.1", "fc"),
    ("resnet18", "layer4.1", "fc"), ("mobilenet_v2", "features.18", "classifier.1"),
]


@pytest.mark.parametrize(("case", "layer", "fc"), CAM_CASES)
def test_cam_equals_torchcam(demo_and_pre, tv_models, case: str, layer: str, fc: str) -> None:
    exp = _explainer(case, demo_and_pre, tv_models)
    model, x = exp.model, exp.input
    ref_normalised, ref_raw = _torchcam(model, x, layer, fc, exp.target)
    signed, positive = exp.cam(layer), exp.cam(layer, relu=True)
    assert exp.stage(("cam-head", layer), lambda: None).name == fc  # found by itself
    head = model.get_submodule(fc)
    assert isinstance(head, nn.Linear)
    np.testing.assert_array_equal(signed.weights, head.weight[exp.target].detach().numpy())
    assert ref_raw.shape == signed.raw.shape
    # relu=False is torchcam's convention: no ReLU on either side, min-max normalised.
    assert np.abs(minmax(signed.raw) - minmax(ref_raw)).max() <= TOL
    # torchcam's own normalisation adds 1e-8 to the map's range: compared where that is negligible (the
    # random-weight MobileNet's maps span ~1e-10, where torchcam's eps dominates its normalised map).
    if np.ptp(ref_raw) > 1e-2:
        assert np.abs(minmax(signed.raw) - ref_normalised).max() <= TOL
    else:
        assert case == "mobilenet_v2"
    # relu=True: the ReLU of torchcam's unnormalised map.
    assert np.abs(minmax(positive.raw) - relu_minmax(ref_raw)).max() <= TOL
    if case == "demo-star":
        assert (signed.raw < 0).any()  # the two conventions really differ here


@pytest.mark.parametrize("case", ["demo-star", "demo-shapes", "resnet18"])
def test_cam_equals_gradcam_and_hirescam_on_gap_linear_heads(demo_and_pre, tv_models, case: str) -> None:
    """On logits = W GAP(A) + b, dS_c/dA = W[c] / (h w) everywhere: Grad-CAM's weights are CAM's / (h w)."""
    exp = _explainer(case, demo_and_pre, tv_models)
    cam, grad, hires = exp.cam(relu=True), exp.gradcam(), exp.hirescam()
    h, w = cam.raw.shape
    np.testing.assert_allclose(grad.weights * h * w, cam.weights, rtol=1e-4, atol=1e-6 * np.abs(cam.weights).max())
    for other in (grad, hires):
        assert np.abs(minmax(cam.raw) - minmax(other.raw)).max() <= 1e-5
        assert np.abs(cam.map - other.map).max() <= 1e-5
    assert np.abs(relu_minmax(exp.cam().raw) - minmax(grad.raw)).max() <= 1e-5  # ReLU + normalise of the signed map


class _MaxPoolNet(nn.Module):
    """conv -> global MAX pool -> linear: a linear head of the right shape, but not after a GAP."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.mark.parametrize(("case", "layer", "match"), [
    ("vgg11", None, "no nn.Linear"),                      # 3 linear layers after a 7x7 pool
    ("mobilenet_v3_small", None, "no nn.Linear"),         # linear, hardswish, linear
    ("demo-star", "layer3.1", "no nn.Linear"),            # 64 channels, the head takes 128
    ("demo-star", "layer4.0", r"'fc' \(relative difference"),  # right shape, but layer4.1 lies between
    ("maxpool", "features", r"'fc' \(relative difference"),   # global max pool, not average
])
def test_cam_refuses_models_that_are_not_gap_linear(demo_and_pre, tv_models, case: str, layer: str | None,
                                                    match: str) -> None:
    if case == "maxpool":
        torch.manual_seed(0)
        exp = Explainer(_MaxPoolNet().eval(), _x(16), layers=["features"])
    else:
        exp = _explainer(case, demo_and_pre, tv_models)
    name = exp.layer_name(layer)
    counter = ForwardCounter(exp.model)
    try:
        for relu in (False, True):
            with pytest.raises(ValueError, match="CAM needs a GAP \\+ linear head after the layer") as info:
                exp.cam(layer, relu=relu)
            assert "use gradcam" in str(info.value).lower() and re.search(match, str(info.value))
    finally:
        counter.remove()
    assert counter.calls == 0
    exp.gradcam(name)  # the suggested fix works on the same layer


def test_head_check_tolerance() -> None:
    """The check accepts a float32 head exactly and refuses a logit off by 1e-3 of its terms' size."""
    torch.manual_seed(0)
    fc = nn.Linear(16, 3)
    a = torch.rand(16, 4, 4)
    logits = fc(a.mean(dim=(-2, -1)))
    head = find_gap_linear_head(fc, a, logits.detach())
    assert head.name == "" and head.max_error < 1e-6
    off = logits.detach().clone()
    with torch.no_grad():
        off[1] += 1e-3 * float(fc.weight[1].abs() @ a.mean(dim=(-2, -1)) + fc.bias[1].abs())
    with pytest.raises(ValueError, match=r"relative difference 0\.001"):
        find_gap_linear_head(fc, a, off)


class _ConvHeadNet(nn.Module):
    """conv -> GAP -> 1x1 conv classifier: a GAP + linear model whose head is an nn.Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.pool(self.features(x))), 1)


def test_cam_with_a_1x1_conv_head() -> None:
    torch.manual_seed(0)
    exp = Explainer(_ConvHeadNet().eval(), _x(16), layers=["features"])
    cam = exp.cam(relu=True)
    assert exp.stage(("cam-head", "features"), lambda: None).name == "classifier"
    head = exp.model.get_submodule("classifier")
    assert isinstance(head, nn.Conv2d)
    np.testing.assert_array_equal(cam.weights, head.weight[exp.target, :, 0, 0].detach().numpy())
    assert np.abs(cam.map - exp.gradcam().map).max() <= 1e-5


# ------------------------------------------------------------------ parameters and model hygiene
def test_invalid_parameters_fail_before_any_model_pass(demo_and_pre, tv_models) -> None:
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    counter = ForwardCounter(exp.model)
    try:
        cases: list[tuple[str, dict[str, object], str]] = [
            ("cam", {"relu": 2}, r"cam: relu must be True or False"),
            ("cam", {"relu": "yes"}, r"cam: relu must be True or False"),
            ("cam", {"weights": "fc"}, r"cam has no parameter\(s\) \['weights'\]"),
            ("eigencam", {"layer": "layer9"}, "layer9"),
            ("eigencam", {"target": 3}, r"eigencam has no parameter\(s\) \['target'\]"),
            ("hirescam", {"layer": 4}, "layer must be a dotted name"),
            ("eigengradcam", {"layr": "layer4"}, r"eigengradcam has no parameter\(s\)"),
        ]
        for method, params, match in cases:
            with pytest.raises(ValueError, match=match):
                exp.explain(method, **params)
    finally:
        counter.remove()
    assert counter.calls == 0


def test_model_left_unchanged(demo: nn.Module, image64: torch.Tensor) -> None:
    demo.train()
    demo.layer1.requires_grad_(False)
    flags = [p.requires_grad for p in demo.parameters()]
    modes = [m.training for m in demo.modules()]
    state = {k: v.clone() for k, v in demo.state_dict().items()}
    exp = Explainer(demo, image64)
    for method in ("cam", "eigencam", "hirescam", "eigengradcam"):
        assert np.isfinite(exp.explain(method).map).all()
    exp.cam(relu=True)
    assert [p.requires_grad for p in demo.parameters()] == flags
    assert [m.training for m in demo.modules()] == modes
    assert all(p.grad is None for p in demo.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not m._forward_hooks_with_kwargs for m in demo.modules())
    for k, v in demo.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_registry_entries_and_fusion(demo_and_pre, tv_models) -> None:
    from camwidgets.core import methods as registry

    assert {"cam", "eigencam"} <= set(registry.names("activation"))
    assert {"hirescam", "eigengradcam"} <= set(registry.names("gradient"))
    for name in ("cam", "eigencam"):
        assert not registry.get(name).needs_gradients
    for name in ("hirescam", "eigengradcam"):
        assert registry.get(name).needs_gradients
        assert name in registry.get("fusioncam").param("gradient").allowed()
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    f = exp.fusioncam(gradient="hirescam", region="ablationcam")
    assert f.map.shape == exp.size and np.isfinite(f.map).all()
    assert exp.cam() is exp.cam(relu=False) is exp.explain("cam", layer=exp.default_layer)

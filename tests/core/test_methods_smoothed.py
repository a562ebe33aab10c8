"""SmoothGrad-CAM++, SS-CAM and IS-CAM equal torchcam 0.5 at feature resolution.

The references are torchcam's ``SmoothGradCAMpp``, ``SSCAM`` and ``ISCAM``, run at the same
layer on the same model input ``x`` (the explainer's) for the same class. Their maps
(``cam(class_idx)``, ReLU'd and min-max normalised at feature resolution) are compared with
camwidgets' ``raw`` normalised the same way, tolerance 1e-4. SS-CAM's and IS-CAM's
channel weights are a softmax, which is nearly uniform when the scores are close, so the
averaged scores themselves are compared too: torchcam's ``log w`` and camwidgets' ``scores``
both equal the averaged score increase up to one constant per image, so they agree
after centring.

Same noise: torchcam draws its noise from torch's global generator, camwidgets from a CPU
``torch.Generator`` seeded with ``seed``, in the same order and shapes (see
:mod:`camwidgets.core.methods.smoothed`), so ``torch.manual_seed(seed)`` before the torchcam
call reproduces camwidgets' noise exactly; every input side here makes ``H·W`` a multiple of
16, where that holds for SS-CAM's per-channel draws. The draws happen inside
``torch.random.fork_rng`` so the global generator is left as it was.

Models: the demo model (trained weights, a bundled sample) and torchvision ResNet-18 and
VGG-11 with seeded random weights on small inputs; the region methods use layers with few
channels (their cost is samples × channels forward passes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

import camwidgets
from camwidgets.core import methods as registry
from camwidgets.core.explainer import Explainer
from camwidgets.core.methods import smoothed

from .conftest import ForwardCounter

torchcam_methods = pytest.importorskip("torchcam.methods")

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4


def _norm(a: np.ndarray | torch.Tensor) -> np.ndarray:
    a = np.maximum(np.asarray(a, dtype=np.float64), 0)
    span = a.max() - a.min()
    return np.zeros_like(a) if span == 0 else (a - a.min()) / span


def _centred(v: np.ndarray | torch.Tensor) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v - v.mean()


def torchcam_run(cls: type, model: nn.Module, x: torch.Tensor, layer: str, target: int, seed: int,
                 record: Callable[[Any], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """torchcam's map ``(h, w)`` and channel weights ``(K,)`` for ``x`` and ``target``.

    ``torch.manual_seed(seed)`` right before the extractor's call makes its noise
    camwidgets' (nothing between the seed and the draws uses the generator).
    ``record(cam)`` is called after each of SmoothGradCAMpp's noisy backward passes.
    """
    cam = cls(model, layer, **kwargs)
    got: dict[str, Any] = {}
    get_weights = cam._get_weights

    def weights(*args: Any, **kw: Any) -> Any:
        w = get_weights(*args, **kw)
        got["weights"] = w[0][0].detach().clone()
        return w

    cam._get_weights = weights
    if record is not None:
        backprop = cam._backprop

        def backprop_and_record(*args: Any, **kw: Any) -> None:
            backprop(*args, **kw)
            record(cam)

        cam._backprop = backprop_and_record
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                model(x)
            got["clean_activation"] = cam.hook_a[0][0].clone()
            got["map"] = cam(class_idx=target)[0][0].detach().numpy()
    finally:
        cam.remove_hooks()
    return got


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return {"resnet18": tvm.resnet18, "vgg11": tvm.vgg11}[arch]().eval()


@pytest.fixture(scope="module")
def explainers() -> dict[str, Explainer]:
    """One explainer per (architecture, input side), built once for the module.

    The region methods cost samples × channels forward passes, so they run the torchvision
    models at 32 px. (MobileNet and EfficientNet are not used: with random weights their
    logits do not depend on the input to float32 precision, so every method's weights
    would be uniform and the comparison could not fail.)
    """
    demo, pre, _ = camwidgets.load_demo_model()
    out = {"demo": Explainer(demo, camwidgets.load_sample("shapes-star")["image"], preprocess=pre)}
    for arch in ("resnet18", "vgg11"):
        model = _model(arch)
        for size in (32, 64):
            x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))
            out[f"{arch}@{size}"] = Explainer(model, x)
    return out


# (explainer, layer): SmoothGrad-CAM++ runs a handful of passes, any layer is cheap.
GRADIENT_CASES = [("demo", "layer4"), ("demo", "layer3.0"), ("resnet18@64", "layer4"),
                  ("resnet18@64", "layer3"), ("vgg11@64", "features.19")]


@pytest.mark.parametrize(("arch", "layer"), GRADIENT_CASES)
def test_smoothgradcampp_equals_torchcam(explainers: dict[str, Explainer], arch: str, layer: str) -> None:
    exp = explainers[arch]
    # batch_size=1: one noisy pass at a time, as torchcam runs them. α's denominator 2ḡ² + Σ A ḡ³
    # nearly cancels at some positions, so the float32 rounding of batched passes (~1e-7 on g)
    # can reach ~1e-4 of the map (ResNet-18 layer3, batch_size=2: 1.2e-4). torchcam sums g² and g³ in
    # float32, camwidgets in float64: on the demo model's layer3.0 (weights of 2026-12-04) that alone
    # gives 1.6e-4 at one position, hence 2e-4 for this comparison (the weights below stay at 1e-3).
    res = exp.smoothgradcampp(layer=layer, samples=3, std=0.3, seed=11, batch_size=1)
    grads: list[torch.Tensor] = []
    ref = torchcam_run(torchcam_methods.SmoothGradCAMpp, exp.model, exp.input_tensor, layer, exp.target, 11,
                       record=lambda cam: grads.append(cam.hook_g[0][0].clone()), num_samples=3, std=0.3)
    assert ref["map"].shape == res.raw.shape
    assert np.abs(_norm(res.raw) - _norm(ref["map"])).max() <= 2 * TOL
    # Channel weights to 1e-3 of the largest: the same cancellation turns the float32 vs float64
    # sums of g² and g³ into up to ~1e-4 relative differences.
    w_ref = ref["weights"].double().numpy()
    assert np.abs(res.weights - w_ref).max() <= 1e-3 * np.abs(w_ref).max()

    # Variant "paper": the same α with the mean gradient and the clean activation, rebuilt here
    # from torchcam's own noisy gradients.
    a, g = ref["clean_activation"].double(), torch.stack(grads).double()
    g2, g3 = g.pow(2).mean(0), g.pow(3).mean(0)
    alpha = g2 / (2 * g2 + (g3 * a).sum((1, 2), keepdim=True) + 1e-8)
    w = (alpha * torch.relu(g.mean(0))).sum((1, 2))
    paper_ref = torch.relu((w[:, None, None] * a).sum(0)).numpy()
    paper = exp.smoothgradcampp(layer=layer, samples=3, std=0.3, seed=11, variant="paper")
    assert np.abs(_norm(paper.raw) - _norm(paper_ref)).max() <= TOL


# (explainer, layer): layers with 64-128 channels keep the n × K masked passes cheap. The demo
# model's layer4 has 17 constant channels, which IS-CAM scores with one shared zero image.
SSCAM_CASES = [("demo", "layer3"), ("resnet18@32", "layer2"), ("vgg11@32", "features.1")]
ISCAM_CASES = [("demo", "layer4"), ("resnet18@32", "layer2"), ("vgg11@32", "features.1")]


@pytest.mark.parametrize(("arch", "layer"), SSCAM_CASES)
def test_sscam_equals_torchcam(explainers: dict[str, Explainer], arch: str, layer: str) -> None:
    exp = explainers[arch]
    res = exp.sscam(layer=layer, samples=2, std=2.0, seed=7, batch_size=48)
    ref = torchcam_run(torchcam_methods.SSCAM, exp.model, exp.input_tensor, layer, exp.target, 7,
                       num_samples=2, std=2.0, batch_size=32)
    assert np.abs(_norm(res.raw) - _norm(ref["map"])).max() <= TOL
    log_w = torch.log(ref["weights"]).numpy()
    assert np.ptp(log_w) > 1e-2  # the weights are not uniform: the comparison can fail
    assert np.abs(_centred(res.scores) - _centred(log_w)).max() <= TOL
    assert res.forward_passes == -(-2 * res.scores.size // 48) and not res.skipped.any()


@pytest.mark.parametrize(("arch", "layer"), ISCAM_CASES)
def test_iscam_equals_torchcam(explainers: dict[str, Explainer], arch: str, layer: str) -> None:
    exp = explainers[arch]
    res = exp.iscam(layer=layer, steps=2, batch_size=64)  # intensities 0.5 and 1.5
    ref = torchcam_run(torchcam_methods.ISCAM, exp.model, exp.input_tensor, layer, exp.target, 0,
                       num_samples=2, batch_size=32)
    assert np.abs(_norm(res.raw) - _norm(ref["map"])).max() <= TOL
    log_w = torch.log(ref["weights"]).numpy()
    assert np.ptp(log_w) > 1e-2
    assert np.abs(_centred(res.scores) - _centred(log_w)).max() <= TOL
    if arch == "demo":  # the constant channels' shortcut (one zero image for all of them) is exercised
        assert res.skipped.sum() > 0


def test_iscam_coefficients_follow_torchcam() -> None:
    assert smoothed._iscam_coefficients(4) == pytest.approx([0.25, 0.75, 1.5, 2.5])


def test_smoothgradcampp_without_noise_is_gradcampp_closed_form(explainers: dict[str, Explainer]) -> None:
    exp = explainers["demo"]
    a, g = exp.activation("layer4").double(), exp.gradient("layer4").double()
    alpha = g.pow(2) / (2 * g.pow(2) + (g.pow(3) * a).sum((1, 2), keepdim=True) + 1e-8)
    ref = torch.relu(((alpha * torch.relu(g)).sum((1, 2))[:, None, None] * a).sum(0)).numpy()
    for variant in ("torchcam", "paper"):
        res = exp.smoothgradcampp(layer="layer4", samples=1, std=0.0, variant=variant)
        assert np.abs(_norm(res.raw) - _norm(ref)).max() <= TOL


# ----------------------------------------------------------------------------------------
# Seeds, caching, parameters, hygiene, fusion
# ----------------------------------------------------------------------------------------
class Tiny(nn.Module):
    """Two convolutions (8 channels) and a linear head: the region methods' defaults run in a blink."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _tiny() -> tuple[Tiny, torch.Tensor]:
    torch.manual_seed(1)
    return Tiny().eval(), torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_seed_determines_the_noise_and_batch_size_reruns_nothing() -> None:
    model, x = _tiny()
    one, two = Explainer(model, x), Explainer(model, x)
    counter = ForwardCounter(model)
    try:
        # features.1: the last layer's gradient is the head's weight whatever the input (a linear head after
        # average pooling), so only an earlier layer's gradient feels the noise.
        for name, params in (("sscam", {"samples": 3, "std": 1.0}),
                             ("smoothgradcampp", {"samples": 5, "std": 0.5, "layer": "features.1"})):
            a = one.explain(name, seed=3, batch_size=4, **params)
            before = counter.calls
            b = one.explain(name, seed=3, batch_size=1, **params)  # another batch size: the cached passes
            assert counter.calls == before
            np.testing.assert_array_equal(a.map, b.map)
            c = two.explain(name, seed=3, batch_size=7, **params)  # another explainer, another batching
            np.testing.assert_allclose(c.map, a.map, atol=1e-5)
            d = one.explain(name, seed=4, batch_size=4, **params)  # another seed, other noise
            assert d.weights is not None and a.weights is not None
            assert np.abs(d.weights - a.weights).max() > 1e-3 * np.abs(a.weights).max(), name
        r = one.iscam(steps=4, batch_size=5)  # (step, channel) pairs batched together, constant channels not run
        assert r.forward_passes == -(-4 * int((~r.skipped).sum()) // 5)
        before = counter.calls
        one.iscam(steps=4, batch_size=2)
        assert counter.calls == before
    finally:
        counter.remove()


def test_noise_is_drawn_as_documented() -> None:
    """SS-CAM's noise: one (H, W) standard draw per (sample, channel), samples outer, times σ."""
    model, x = _tiny()
    exp = Explainer(model, x)
    k, size, seed, std = 8, exp.size, 9, 0.7
    gen = torch.Generator().manual_seed(seed)
    noise = torch.stack([torch.randn(size, generator=gen) for _ in range(2 * k)]).view(2, k, *size) * std
    masks = smoothed.channel_masks(exp.activation(exp.default_layer), size)
    with torch.no_grad():
        logits = torch.stack([model((masks + noise[i])[:, None] * exp.input_tensor)[:, exp.target]
                              for i in range(2)])
    expected = (logits.double() - float(exp.logits_tensor[exp.target])).mean(0)
    res = exp.sscam(samples=2, std=std, seed=seed, batch_size=5)
    np.testing.assert_allclose(res.scores, expected.numpy(), atol=1e-5)


def test_bad_parameters_fail_before_any_model_pass() -> None:
    model, x = _tiny()
    exp = Explainer(model, x)
    counter = ForwardCounter(model)
    try:
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("smoothgradcampp", {"samples": 0}, r"samples must be int in \[1, 64\]"),
            ("smoothgradcampp", {"std": -0.1}, r"std must be float in \[0, 3\]"),
            ("smoothgradcampp", {"variant": "papers"}, "variant must be one of"),
            ("smoothgradcampp", {"seed": -1}, r"seed must be int in \[0, inf\)"),
            ("smoothgradcampp", {"batch_size": 0}, "batch_size"),
            ("sscam", {"samples": 2.5}, "samples must be int"),
            ("sscam", {"std": float("nan")}, "std must be float"),
            ("sscam", {"seed": "0"}, "seed must be int"),
            ("sscam", {"noise": 1.0}, r"has no parameter\(s\) \['noise'\]"),
            ("iscam", {"steps": 0}, r"steps must be int in \[1, 100\]"),
            ("iscam", {"seed": 1}, r"has no parameter\(s\) \['seed'\]"),
            ("iscam", {"batch_size": True}, "batch_size must be int"),
            ("sscam", {"layer": "nope"}, "nope"),
        ]
        for name, params, match in cases:
            with pytest.raises(ValueError, match=match):
                exp.explain(name, **params)
    finally:
        counter.remove()
    assert counter.calls == 0


def test_model_is_left_unchanged() -> None:
    model, x = _tiny()
    model.train()
    first = model.features[0]
    assert isinstance(first, nn.Conv2d)
    first.weight.requires_grad_(False)
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exp = Explainer(model, x)
    exp.smoothgradcampp(samples=3)
    exp.smoothgradcampp(samples=3, variant="paper")
    exp.sscam(samples=2)
    exp.iscam(steps=2)
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or getattr(m, "_backward_pre_hooks", None))
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_region_methods_serve_fusion_and_union() -> None:
    model, x = _tiny()
    exp = Explainer(model, x)
    assert {"sscam", "iscam"} <= set(registry.names("region"))
    assert "smoothgradcampp" in registry.names("gradient")
    for region in ("sscam", "iscam"):  # their defaults: 10 samples / steps
        f = exp.fusioncam(region=region)
        np.testing.assert_array_equal(f.region_map, exp.explain(region).map)
        assert np.isfinite(f.map).all() and f.map.max() == pytest.approx(1.0)
        u = exp.unioncam(region=region)
        np.testing.assert_array_equal(u.region_map, exp.explain(region).map)
    g = exp.fusioncam(gradient="smoothgradcampp", region="sscam")
    assert np.isfinite(g.map).all()


def test_results_carry_their_parameters() -> None:
    model, x = _tiny()
    exp = Explainer(model, x)
    r = exp.sscam(samples=2, std=1.5, seed=4)
    assert dict(r.params) == {"layer": exp.default_layer, "samples": 2, "std": 1.5, "seed": 4, "batch_size": 32}
    assert r.weights.shape == r.scores.shape == (8,) and r.weights.sum() == pytest.approx(1.0, abs=1e-5)
    s = exp.smoothgradcampp()
    assert dict(s.params)["variant"] == "torchcam" and s.map.shape == exp.size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_uses_the_same_noise_as_cpu() -> None:
    model, x = _tiny()
    cpu = Explainer(model, x)
    gpu = Explainer(_to_cuda(model), x)
    for name, params in (("sscam", {"samples": 3}), ("smoothgradcampp", {"samples": 3}), ("iscam", {"steps": 3})):
        a, b = cpu.explain(name, **params), gpu.explain(name, **params)
        assert b.map_tensor.device.type == "cuda"
        np.testing.assert_allclose(b.map, a.map, atol=1e-4)


def _to_cuda(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cuda()

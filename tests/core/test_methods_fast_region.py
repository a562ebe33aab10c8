"""Recipro-CAM and Group-CAM: equal to straightforward re-implementations of the papers' definitions.

The references below are written from the papers (and the official code's conventions, documented
in :mod:`camwidgets.core.methods.fast_region`) and share no code with camwidgets: the activation
and gradient are captured with the test's own hooks, Recipro-CAM's masked feature maps go through
the network one at a time (a forward hook returning one map, the whole model run on the single
image), Group-CAM's masked inputs one at a time with a direct (non-separable) 2-D Gaussian blur.
Maps are compared after min-max normalisation; the tolerance is 1e-4.

With ``CAMWIDGETS_OFFICIAL_RECIPROCAM`` / ``CAMWIDGETS_OFFICIAL_GROUPCAM`` pointing to work trees of
the official code (github.com/sybyun/ReciproCAM, github.com/wofmanaf/Group-CAM; Group-CAM also needs
``kornia`` importable), camwidgets is also compared with the official code, through
``benchmarks/check_official_region.py``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camwidgets
from camwidgets.core.methods import get, names
from camwidgets.core.methods.fast_region import _reflect_index, gaussian_blur
from camwidgets.core.preprocess import Preprocess

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
KERNEL = [[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]]


# ----------------------------------------------------------------------------------------- helpers
def _norm(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    rng = t.max() - t.min()
    return (t - t.min()) / rng if rng > 0 else torch.zeros_like(t)


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _demo() -> tuple[nn.Module, Preprocess, torch.Tensor, int]:
    model, pre, classes = camwidgets.load_demo_model()
    sample = camwidgets.load_sample("shapes-star")
    return model, pre, sample["image"], classes.index(sample["label"])


def _torchvision(name: str, size: int, calibrate: bool = True) -> tuple[nn.Module, Preprocess, torch.Tensor, None]:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    if calibrate:
        # Random weights, made less degenerate: with torchvision's N(0, 0.01) heads and BatchNorm statistics
        # of (0, 1), a random MobileNet's activations vanish and its probabilities are uniform to 1e-14. So
        # the heads get He-normal weights and BatchNorm the statistics of 8 random images.
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # a plain average over the calibration batch
                m.reset_running_stats()
        with torch.no_grad():
            model.train()(torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(5)))
    model.eval()
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    return model, Preprocess(size=(size, size), **IMAGENET), image, None


def _float64(case: tuple[nn.Module, Preprocess, torch.Tensor, int | None]
             ) -> tuple[nn.Module, Preprocess, torch.Tensor, int | None]:
    return (case[0].double(), *case[1:])


CASES = {
    "demo": lambda: _demo(),
    "resnet18": lambda: _torchvision("resnet18", 96),
    # In float64: with an early layer masked, a random MobileNet's probabilities span 24 orders of magnitude
    # (1e-24 .. 1) and float32 rounding, amplified that much, reaches 2e-4 after normalisation (measured: the
    # same difference whatever the batch size); in float64 the two agree to 4e-8 (the float32 of ``raw``).
    "mobilenet_v3_small_f64": lambda: _float64(_torchvision("mobilenet_v3_small", 96)),
    # torchvision's own random initialisation (calibrated, a masked DenseNet's probabilities saturate at 1);
    # then the probabilities spread over only 5% of their value, so float64 again (float32: 6e-5).
    "densenet121_f64": lambda: _float64(_torchvision("densenet121", 64, calibrate=False)),
}


def _activation_and_gradient(model: nn.Module, x: torch.Tensor, layer: str, target: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` and ``dS_c/dA`` of ``layer`` with the test's own hook and autograd."""
    store: list[torch.Tensor] = []

    def hook(m: nn.Module, i: Any, o: torch.Tensor) -> torch.Tensor:
        store.append(o)
        return o.clone()  # later in-place operations must not change the recorded output

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x.to(_dtype(model)))
            (grad,) = torch.autograd.grad(logits[0, target], store[0])
    finally:
        handle.remove()
    return store[0][0].detach(), grad[0].detach()


def _with_layer_output(model: nn.Module, layer: str, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """The model's logits on ``x`` (one image) with ``layer``'s output replaced by ``feature`` (K, h, w)."""
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: feature[None].clone())
    try:
        with torch.no_grad():
            return model(x.to(_dtype(model)))[0]
    finally:
        handle.remove()


def reference_reciprocam(model: nn.Module, x: torch.Tensor, layer: str, target: int, variant: str) -> torch.Tensor:
    """Recipro-CAM from its definition: every position masked in turn, one full forward each. ``(h, w)``."""
    a, _ = _activation_and_gradient(model, x, layer, target)
    _, h, w = a.shape
    out = torch.zeros(h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            masked = torch.zeros_like(a)
            if variant == "plain":
                masked[:, i, j] = a[:, i, j]
            else:  # the neighbourhood carries position (i, j)'s features, weighted by the kernel
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        if 0 <= i + di < h and 0 <= j + dj < w:
                            masked[:, i + di, j + dj] = a[:, i, j] * KERNEL[di + 1][dj + 1]
            logits = _with_layer_output(model, layer, x, masked)
            out[i, j] = torch.softmax(logits.double(), dim=0)[target]
    return out


def _direct_blur(x: torch.Tensor, size: int = 51, sigma: float = 50.0) -> torch.Tensor:
    """A 2-D Gaussian blur as one (non-separable) convolution after reflect padding."""
    t = torch.arange(size, dtype=torch.float64) - size // 2
    g1 = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g2 = torch.outer(g1, g1)
    g2 = (g2 / g2.sum()).to(x.dtype)
    c = x.shape[1]
    pad = size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, g2.expand(c, 1, size, size), groups=c)


def reference_groupcam(model: nn.Module, x: torch.Tensor, layer: str, target: int, groups: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-CAM from its definition, one group at a time. ``(raw (h, w), map (H, W))``, both normalised."""
    a, g = _activation_and_gradient(model, x, layer, target)
    k = a.shape[0]
    n_groups = min(groups, k)
    alpha = g.mean(dim=(1, 2))
    size = x.shape[-2:]
    x = x.to(_dtype(model))
    blurred = _direct_blur(x)
    with torch.no_grad():
        base = float(torch.softmax(model(blurred)[0].double(), dim=0)[target])
    raw = torch.zeros(a.shape[1:], dtype=torch.float64)
    up_sum = torch.zeros(tuple(size), dtype=torch.float64)
    start = 0
    for gi in range(n_groups):
        n = k // n_groups + (1 if gi < k % n_groups else 0)  # the first K mod G groups one channel larger
        group = torch.relu(sum(alpha[c] * a[c] for c in range(start, start + n)))
        start += n
        up = F.interpolate(group[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
        lo, hi = up.min(), up.max()
        mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
        with torch.no_grad():
            p = float(torch.softmax(model(x * mask + blurred * (1 - mask))[0].double(), dim=0)[target])
        score = max(p - base, 0.0)
        raw += score * group.double()
        up_sum += score * up.double()
    assert start == k
    return _norm(raw), _norm(up_sum)


def _explainer(case: str, layer: str) -> tuple[camwidgets.Explainer, nn.Module]:
    model, pre, image, target = CASES[case]()
    return camwidgets.Explainer(model, image, target=target, preprocess=pre, layers=[layer]), model


# ----------------------------------------------------------------------------------------- Recipro-CAM
RECIPRO = [
    ("demo", "layer4.1", "plain"), ("demo", "layer4.1", "gaussian"),
    ("resnet18", "layer4.1.bn2", "plain"),  # inside a block: the residual identity broadcasts from batch 1
    ("resnet18", "layer3", "gaussian"),
    ("mobilenet_v3_small_f64", "features.5.block", "plain"),  # inside an inverted residual block
    ("mobilenet_v3_small_f64", "features.6.block", "gaussian"),
    ("densenet121_f64", "features.denseblock3.denselayer2", "plain"),  # concatenated: the input is repeated
]


@pytest.mark.parametrize(("case", "layer", "variant"), RECIPRO)
def test_reciprocam_equals_position_by_position_reference(case: str, layer: str, variant: str) -> None:
    exp, model = _explainer(case, layer)
    res = exp.reciprocam(layer=layer, variant=variant)
    ref = reference_reciprocam(model, exp.input, layer, exp.target, variant)
    assert res.raw.shape == tuple(ref.shape) and res.weights is None
    assert float(ref.max() - ref.min()) > 1e-6  # the maps are not constant: the comparison means something
    assert float((_norm(torch.tensor(res.raw)) - _norm(ref)).abs().max()) <= TOL
    # The probabilities themselves, not only their shape after normalisation.
    torch.testing.assert_close(torch.tensor(res.raw).double(), ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(res.map), exp.finish(torch.tensor(res.raw)))


def test_reciprocam_prefix_once_per_batch_and_fallback(counter) -> None:
    exp, model = _explainer("resnet18", "layer4.1.bn2")
    c = counter(model)
    one = exp.reciprocam(layer="layer4.1.bn2", batch_size=64)  # 3x3 positions: one pass, prefix on 1 image
    assert one.forward_passes == c.calls == 1 and c.images == 1
    exp2, model2 = _explainer("resnet18", "layer4.1.bn2")
    c2 = counter(model2)
    small = exp2.reciprocam(layer="layer4.1.bn2", batch_size=5)
    assert small.forward_passes == c2.calls == math.ceil(9 / 5) and c2.images == c2.calls
    # Batch composition changes float32 rounding (here up to 5e-5 relative on a probability): not the map.
    assert float((_norm(torch.tensor(small.raw)) - _norm(torch.tensor(one.raw))).abs().max()) <= TOL
    # DenseNet concatenates the layer's output with earlier features: the broadcast is refused once,
    # then the input is repeated.
    exp3, model3 = _explainer("densenet121_f64", "features.denseblock3.denselayer2")
    c3 = counter(model3)
    res = exp3.reciprocam(layer="features.denseblock3.denselayer2", batch_size=8)
    assert res.forward_passes == c3.calls == 1 + 2 and c3.images == 1 + 16


def test_reciprocam_batch_size_is_not_a_stage_key(counter) -> None:
    exp, model = _explainer("demo", "layer4.1")
    first = exp.reciprocam()
    c = counter(model)
    again = exp.reciprocam(batch_size=7)
    assert c.calls == 0 and again is not first
    np.testing.assert_array_equal(again.map, first.map)


# ----------------------------------------------------------------------------------------- Group-CAM
GROUP = [
    ("demo", "layer4.1", 16), ("demo", "layer4.1", 32),  # G = 32: two groups have an all-zero map
    ("resnet18", "layer4", 32),
    ("mobilenet_v3_small_f64", "features.8", 32),  # 48 channels, G not a divisor: groups of 2 and 1
]


@pytest.mark.parametrize(("case", "layer", "groups"), GROUP)
def test_groupcam_equals_group_by_group_reference(case: str, layer: str, groups: int) -> None:
    exp, model = _explainer(case, layer)
    res = exp.groupcam(layer=layer, groups=groups)
    raw_ref, map_ref = reference_groupcam(model, exp.input, layer, exp.target, groups)
    assert float(raw_ref.max()) == 1.0  # not an all-zero map
    assert float((_norm(torch.tensor(res.raw)) - raw_ref).abs().max()) <= TOL
    assert float((torch.tensor(res.map).double() - map_ref).abs().max()) <= TOL
    assert res.scores.shape == (min(groups, exp.activation(layer).shape[0]),)
    assert np.all(res.scores[res.skipped] == 0)


def test_groupcam_blur_matches_direct_convolution_and_small_images() -> None:
    x = torch.rand(2, 3, 70, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_blur(x), _direct_blur(x), rtol=0, atol=1e-5)
    # Reflection of any width (an image smaller than the kernel): numpy's repeated reflect padding.
    for n in (1, 2, 5, 30):
        got = _reflect_index(n, 25, 25, torch.device("cpu")).numpy()
        np.testing.assert_array_equal(got, np.pad(np.arange(n), 25, mode="reflect"))
    small = torch.rand(1, 3, 9, 12)
    blurred = gaussian_blur(small)
    assert blurred.shape == small.shape and torch.isfinite(blurred).all()


def test_groupcam_stages(counter) -> None:
    exp, model = _explainer("demo", "layer4.1")
    first = exp.groupcam(groups=16)
    c = counter(model)
    assert exp.groupcam(groups=16, batch_size=3).map is not None and c.calls == 0  # cached scores
    exp.groupcam(groups=8)
    assert c.calls == 1  # the blurred baseline is cached too: one batch of 8 masked inputs
    assert first.forward_passes == 1


# ----------------------------------------------------------------------------------------- registry
def test_entries_and_fusion_region_choice() -> None:
    assert {"reciprocam", "groupcam"} <= set(names("region"))
    assert get("reciprocam").defaults["variant"] == "plain" and get("groupcam").defaults["groups"] == 32
    assert not get("reciprocam").needs_gradients and get("groupcam").needs_gradients
    exp, _ = _explainer("demo", "layer4.1")
    for region in ("reciprocam", "groupcam"):
        assert region in get("fusioncam").param("region").allowed()
        fused = exp.fusioncam(region=region)
        np.testing.assert_array_equal(fused.region_map, exp.explain(region).map)
        assert fused.map.shape == exp.size and fused.map.min() >= 0 and fused.map.max() <= 1


@pytest.mark.parametrize(("method", "params"), [
    ("reciprocam", {"variant": "mosaic"}), ("reciprocam", {"batch_size": 0}), ("reciprocam", {"batch_size": 2.5}),
    ("reciprocam", {"groups": 4}), ("groupcam", {"groups": 0}), ("groupcam", {"groups": 1.5}),
    ("groupcam", {"batch_size": -1}), ("groupcam", {"variant": "plain"}), ("fusioncam", {"region": "recipro"}),
])
def test_invalid_parameters_raise_before_any_pass(method: str, params: dict[str, Any], counter) -> None:
    exp, model = _explainer("demo", "layer4.1")
    c = counter(model)
    with pytest.raises(ValueError):
        exp.explain(method, **params)
    assert c.calls == 0


def test_model_left_unchanged() -> None:
    model, pre, image, target = _demo()
    model.train()
    model.layer1.requires_grad_(False)
    before_train = {n: m.training for n, m in model.named_modules()}
    before_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    exp = camwidgets.Explainer(model, image, target=target, preprocess=pre)
    exp.reciprocam(variant="plain")
    exp.reciprocam(variant="gaussian", layer="layer3.1")
    exp.groupcam()
    exp.fusioncam(region="reciprocam")
    exp.fusioncam(region="groupcam")
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or getattr(m, "_backward_pre_hooks", None))
    assert {n: m.training for n, m in model.named_modules()} == before_train
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before_grad
    assert all(p.grad is None for p in model.parameters())


def test_hook_removed_when_the_rest_of_the_network_fails() -> None:
    from camwidgets.core.region import substituted_layer_passes

    model, _, _, _ = _demo()
    x = torch.rand(1, 3, 32, 32)

    def bad(idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(idx), 3, 1, 1)  # wrong channels: the rest of the network raises

    with pytest.raises(RuntimeError):
        substituted_layer_passes(model, x, "layer4.1", [torch.arange(2)], bad, lambda o: o[:, 0])
    assert not any(m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------------------- official code
def _official_script() -> Any:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "check_official_region.py"
    spec = importlib.util.spec_from_file_location("check_official_region", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reciprocam_equals_official_code() -> None:
    path = os.environ.get("CAMWIDGETS_OFFICIAL_RECIPROCAM")
    if not path:
        pytest.skip("set CAMWIDGETS_OFFICIAL_RECIPROCAM to a work tree of github.com/sybyun/ReciproCAM")
    script = _official_script()
    try:
        cls, _ = script.load_official_reciprocam(path)
    except script.Unavailable as err:
        pytest.skip(f"official Recipro-CAM not available: {err}")
    for name in ("demo", "resnet18"):
        s = script.setup(name, 128)
        for variant in ("plain", "gaussian"):
            for layer in (s["block"], None):
                out = script.compare_reciprocam(cls, s, layer, variant)
                assert out["comparable"] and out["max_abs"] <= TOL, out


def test_groupcam_equals_official_code() -> None:
    path = os.environ.get("CAMWIDGETS_OFFICIAL_GROUPCAM")
    if not path:
        pytest.skip("set CAMWIDGETS_OFFICIAL_GROUPCAM to a work tree of github.com/wofmanaf/Group-CAM "
                    "(and make kornia importable)")
    script = _official_script()
    try:
        cls, _ = script.load_official_groupcam(path)
    except script.Unavailable as err:
        pytest.skip(f"official Group-CAM not available: {err}")
    for name in ("demo", "resnet18"):
        s = script.setup(name, 128)
        outs = [script.compare_groupcam(cls, s, s["block"], groups) for groups in (32, 16, 8)]
        # Where a group's map is constant the official map is NaN (camwidgets: score 0): nothing to compare.
        assert all(o["comparable"] or (o["groups_skipped"] > 0 and "NaN" in o["reason"]) for o in outs), outs
        assert any(o["comparable"] for o in outs)
        assert all(o["max_abs"] <= TOL for o in outs if o["comparable"]), outs

"""The Explainer: results, validation before any work, model hygiene."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core import CAMResult, Explainer, fusion
from camwidgets.core.preprocess import Preprocess
from camwidgets.models.demo import demo_preprocess

pytestmark = pytest.mark.usefixtures("single_thread")

SINGLE = ["gradcam", "gradcampp", "xgradcam", "layercam", "scorecam", "ablationcam"]


@pytest.fixture
def exp(demo: nn.Module, image64: torch.Tensor) -> Explainer:
    return Explainer(demo, image64)


def test_basics(exp: Explainer) -> None:
    assert exp.target == int(np.argmax(exp.probabilities))
    assert exp.probabilities.shape == (8,) and abs(float(exp.probabilities.sum()) - 1) < 1e-5
    assert exp.candidate_layers == tuple(f"layer{s}.{b}" for s in range(1, 5) for b in range(2))
    assert exp.default_layer == "layer4.1"
    assert exp.size == (64, 64)


@pytest.mark.parametrize("method", SINGLE)
def test_single_layer_results(exp: Explainer, method: str) -> None:
    res = getattr(exp, method)()
    assert isinstance(res, CAMResult)
    assert res.method == method and res.layer == "layer4.1" and res.target == exp.target
    assert res.map.shape == (64, 64) and res.map.dtype == np.float32
    assert res.raw.shape == (4, 4)
    assert res.map.min() >= 0.0 and res.map.max() <= 1.0
    assert res.map_tensor.device == exp.device and res.map_tensor.shape == (64, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.map = np.zeros((64, 64))  # type: ignore[misc]
    with pytest.raises(ValueError):
        res.map[0, 0] = 1.0  # read-only view
    assert res.params["layer"] == "layer4.1"


def test_layer_by_name_or_module_is_the_same_cached_result(exp: Explainer, demo: nn.Module) -> None:
    a = exp.gradcam("layer3.1")
    assert exp.gradcam(demo.layer3[1]) is a
    assert a.raw.shape == (8, 8)
    assert exp.gradcam() is exp.gradcam("layer4.1")


def test_custom_layer_list_and_non_candidate_layer(demo: nn.Module, image64: torch.Tensor) -> None:
    exp = Explainer(demo, image64, layers=["layer2.1", demo.layer4[0]])
    assert exp.candidate_layers == ("layer2.1", "layer4.0")
    assert exp.gradcam().layer == "layer4.0"
    assert exp.gradcam("layer1.0.conv1").raw.shape == (32, 32)  # captured on demand


def test_preprocess_geometry(demo: nn.Module) -> None:
    img = torch.rand(3, 100, 80)
    exp = Explainer(demo, img, preprocess=demo_preprocess())
    assert exp.size == (128, 128) and exp.gradcam().map.shape == (128, 128)
    pre = Preprocess(size=(48, 40))
    assert Explainer(demo, img, preprocess=pre).gradcam().map.shape == (48, 40)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": 8}, "out of range.*8 classes"),
        ({"target": -1}, "out of range"),
        ({"target": 1.5}, "class index"),
        ({"layers": ["layer9"]}, "no layer named 'layer9'"),
        ({"layers": "all"}, "'auto' or a list"),
        ({"layers": []}, "empty"),
        ({"preprocess": lambda t: t}, "Preprocess"),
    ],
)
def test_validation_before_any_pass(demo: nn.Module, image64: torch.Tensor, counter, kwargs,
                                    match: str) -> None:
    c = counter(demo)
    with pytest.raises(ValueError, match=match):
        Explainer(demo, image64, **kwargs)
    assert c.calls == 0


def test_model_without_feature_layer(counter) -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    c = counter(mlp)
    with pytest.raises(ValueError, match="no 2-D convolution"):
        Explainer(mlp, torch.rand(3, 8, 8))
    assert c.calls == 0


def test_method_level_validation(exp: Explainer, counter, demo: nn.Module) -> None:
    c = counter(demo)
    with pytest.raises(ValueError, match="no layer named 'layer5'"):
        exp.gradcam("layer5")
    with pytest.raises(ValueError, match="batch_size"):
        exp.scorecam(batch_size=0)
    with pytest.raises(ValueError, match="variant"):
        exp.scorecam(variant="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="baseline"):
        exp.unioncam(baseline="grey")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="theta"):
        exp.fusioncam(theta=101)
    with pytest.raises(ValueError, match="gradient"):
        exp.fusioncam(gradient="eigencam")
    with pytest.raises(ValueError, match="alpha"):
        exp.icam(alpha=1.5)
    with pytest.raises(ValueError, match="bias"):
        exp.icam(bias="row")  # type: ignore[arg-type]
    assert c.calls == 0
    with pytest.raises(ValueError, match=r"4-D feature map .*got shape \(1, 8\)"):
        exp.gradcam("fc")  # known only after running it: one capture
    with pytest.raises(ValueError, match="4-D feature map"):
        exp.layercam("fc")  # remembered: no second pass
    assert c.calls == 1


def test_model_untouched(demo: nn.Module, image64: torch.Tensor) -> None:
    demo.train()
    before = {k: v.clone() for k, v in demo.state_dict().items()}
    flags = [p.requires_grad for p in demo.parameters()]
    exp = Explainer(demo, image64)
    for m in SINGLE:
        getattr(exp, m)()
    exp.icam(n=2)
    exp.fusioncam()
    exp.unioncam()
    assert demo.training  # restored
    after = demo.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched too
    assert [p.requires_grad for p in demo.parameters()] == flags
    assert all(p.grad is None for p in demo.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in demo.modules())
    # Explained in eval mode regardless of the model's mode.
    demo.eval()
    np.testing.assert_array_equal(Explainer(demo, image64).gradcam().map, exp.gradcam().map)


def _norm(a: np.ndarray) -> np.ndarray:
    span = a.max() - a.min()
    return np.zeros_like(a) if span == 0 else (a - a.min()) / span


def test_fusioncam_result_is_the_spec_formula(exp: Explainer) -> None:
    res = exp.fusioncam(theta=20)
    b = res.betas
    assert set(b) >= {"gradient_raw", "region_raw", "combined_raw", "gradient", "region", "combined",
                      "region_final"}
    assert abs(b["gradient"] + b["region"] - 1) < 1e-6 and abs(b["combined"] + b["region_final"] - 1) < 1e-6
    # Step 3 and 4 from the stored intermediates (docs/methods.md, Fusion-CAM).
    l_gr = _norm(b["gradient"] * res.gradient_map + b["region"] * res.region_map)
    np.testing.assert_allclose(res.combined_map, l_gr, atol=1e-6)
    l1, l2 = b["combined"] * res.combined_map, b["region_final"] * res.region_map
    sim = np.clip(1 - np.abs(l1 - l2), 0, 1)
    np.testing.assert_allclose(res.similarity, sim, atol=1e-6)
    fused = sim * np.maximum(l1, l2) + (1 - sim) * (l1 + l2) / 2
    np.testing.assert_allclose(res.map, _norm(fused), atol=1e-6)
    # Step 1: L_g is the normalised Grad-CAM map with values below its θ-th percentile zeroed.
    g = exp.gradcam().map
    np.testing.assert_allclose(res.gradient_map, np.where(g < np.percentile(g, 20), 0, g), atol=1e-6)
    np.testing.assert_array_equal(res.region_map, exp.scorecam().map)
    assert res.params == {"theta": 20.0, "gradient": "gradcam", "region": "scorecam", "layer": "layer4.1",
                          "baseline": "zeros"}


def test_unioncam_choice_follows_eq8(exp: Explainer) -> None:
    res = exp.unioncam()
    assert res.choice == ("union" if res.beta_union > res.beta_region else "region")
    chosen = res.union_map if res.choice == "union" else res.region_map
    np.testing.assert_allclose(res.map, _norm(chosen), atol=1e-6)
    wd, wr = fusion.union_weights(res.beta_gradient, res.beta_region)  # β clamped at 0 before the union
    np.testing.assert_allclose(res.union_map, wd * res.gradient_map + wr * res.region_map, atol=1e-6)
    assert res.params["baseline"] == "black" and 0 <= res.baseline_probability <= 1


def test_icam_result(exp: Explainer, demo: nn.Module, image64: torch.Tensor) -> None:
    res = exp.icam(n=3, threshold=0.9)
    assert res.candidate_layers == exp.candidate_layers and res.layer_scores.shape == (8,)
    assert set(res.kept_layers) <= set(res.candidate_layers) and res.layer == res.kept_layers
    assert abs(float(res.layer_weights.sum()) - 1) < 1e-5
    assert res.perturbations.shape == (3, 3, 64, 64) and res.svim.shape == res.mds.shape == (3,)
    np.testing.assert_allclose(res.perturbation_weights, np.sqrt(res.svim * res.mds), atol=1e-6)
    combined = sum(w * res.layer_maps[ln] for w, ln in zip(res.layer_weights, res.kept_layers, strict=True))
    np.testing.assert_allclose(res.map, _norm(combined), atol=1e-5)
    # Seeded: another explainer of the same image draws the same perturbations.
    again = Explainer(demo, image64).icam(n=3, threshold=0.9)
    np.testing.assert_array_equal(again.perturbations, res.perturbations)
    np.testing.assert_allclose(again.map, res.map, atol=1e-6)


def test_user_layer_without_4d_output(demo: nn.Module, image64: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\['fc'\] do not output a 4-D feature map"):
        Explainer(demo, image64, layers=["layer4.1", "fc"])


def test_error_after_forward_leaves_model_clean() -> None:
    class Custom(nn.Module):  # not a known architecture: the class count is known only after a forward
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x).mean((2, 3)))

    net = Custom().train()
    with pytest.raises(ValueError, match="out of range: the model has 3 classes"):
        Explainer(net, torch.rand(3, 16, 16), target=5)
    assert net.training and all(m.training for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    exp = Explainer(net, torch.rand(3, 16, 16))
    assert exp.candidate_layers == ("body.1", "body.3") and exp.gradcam().raw.shape == (12, 12)


def test_trained_demo_model_end_to_end() -> None:
    from camwidgets.datasets import Shapes
    from camwidgets.models import load_demo_model

    try:
        model, pre, classes = load_demo_model()
    except FileNotFoundError:
        pytest.skip("demo weights not built yet")
    item = Shapes(1, seed=11)[0]
    exp = Explainer(model, item["image"], preprocess=pre)
    assert exp.size == (128, 128) and len(exp.probabilities) == len(classes)
    for method in [*SINGLE, "unioncam", "fusioncam"]:
        res = getattr(exp, method)()
        assert res.map.shape == (128, 128) and np.isfinite(res.map).all()
        assert res.map.min() == 0.0 and res.map.max() == pytest.approx(1.0)
    # I-CAM with the defaults can be blank on this model: alpha=0.4 flips every perturbation's
    # prediction, so MDS = 0, every S_l = 0 and the selection falls back to layer1.0, whose
    # "channel"-bias map the ReLU clips to 0 (the I-CAM formulas).
    res = exp.icam()
    assert res.map.shape == (128, 128) and np.isfinite(res.map).all()
    assert 0 <= res.map.min() <= res.map.max() <= 1
    mild = exp.icam(alpha=0.02)
    assert mild.map.max() == pytest.approx(1.0) and len(mild.kept_layers) > 1

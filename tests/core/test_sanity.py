"""Sanity checks (camwidgets.sanity): parameter randomisation (Adebayo et al. 2018) and random logit
(Sixt et al. 2020) on the embedded demo model, and against Quantus's MPRT and RandomLogit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core.explainer import Explainer
from camwidgets.datasets.samples import load_sample
from camwidgets.models.demo import load_demo_model
from camwidgets.sanity import (
    MEASURES,
    SanityResult,
    default_layers,
    parameter_randomisation,
    random_logit,
    similarity,
)

METHODS = ("gradcam", "layercam", "eigencam")


@pytest.fixture(scope="module")
def setup() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model, pre, _ = load_demo_model()
    image = load_sample("shapes-star")["image"]
    pixels = pre.geometry(image)  # (3, 128, 128) in [0, 1]: what Quantus gets, and camwidgets too
    yield model, pre, pixels
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cascade(setup: Any) -> SanityResult:
    model, pre, pixels = setup
    return parameter_randomisation(model, pixels, methods=METHODS, preprocess=pre, mode="cascading")


def test_default_layers_are_every_parameterised_module_top_down(setup: Any) -> None:
    model, _, _ = setup
    names = default_layers(model)
    assert names[0] == "fc" and names[-1] == "conv1" and len(names) == 41
    # on the demo model the same modules as Quantus's (every module with reset_parameters), reversed
    quantus_order = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    assert names == quantus_order


def test_cascading_step0_is_exactly_one_and_randomisation_destroys_gradcam(cascade: SanityResult) -> None:
    r = cascade
    assert r.target == 3  # star, the demo model's prediction
    assert r.layers[0] == "fc" and len(r.layers) == 41
    for m in METHODS:
        for k in MEASURES:
            v = r.similarity[m][k]
            assert v.shape == (42,)
            assert v[0] == 1.0
            assert np.all((v[np.isfinite(v)] >= -1) & (v[np.isfinite(v)] <= 1))
    # measured (seed 0): Grad-CAM's Spearman is 0.23 after all 41 layers (mean over the last 10 steps 0.18),
    # SSIM 0.19; LayerCAM's Spearman 0.41. The margin leaves ~0.3 for platform differences.
    g = r.similarity["gradcam"]["spearman_abs"]
    assert g[-1] < 0.6
    assert np.nanmean(g[-10:]) < 0.6
    assert r.similarity["gradcam"]["ssim"][-1] < 0.6
    # EigenCAM is class-independent; the random-logit test catches that, this one does not fully
    assert r.similarity["eigencam"]["spearman_abs"][1] > 0.99  # randomising the head alone leaves it


def test_to_rows(cascade: SanityResult) -> None:
    rows = cascade.to_rows()
    assert len(rows) == len(METHODS) * 42
    assert rows[0] == {"method": "gradcam", "step": 0, "layer": "original",
                       "spearman_abs": 1.0, "ssim": 1.0, "spearman": 1.0}
    assert rows[1]["layer"] == "fc"


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_user_model_untouched(setup: Any) -> None:
    model, pre, pixels = setup
    before = _snapshot(model)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    r = parameter_randomisation(model, pixels, methods=("gradcam",), preprocess=pre,
                                layers=["fc", "layer4.1.conv2", "layer4.1.bn2"], mode="cascading")
    random_logit(model, pixels, methods=("gradcam",), preprocess=pre, n=2)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                     for m in model.modules()]
    assert flags == [m.training for m in model.modules()]
    assert grads == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())
    assert r.similarity["gradcam"]["spearman_abs"][1] < 1.0  # the copy did change


def test_independent_changes_one_layer_at_a_time(setup: Any) -> None:
    model, pre, pixels = setup
    trained = _snapshot(model)
    layers = ["fc", "layer4.1.bn2", "layer4.1.conv2", "layer3.0.downsample.0"]
    seen: list[tuple[int, str, set[str]]] = []

    def check(i: int, layer: str, copy: nn.Module) -> None:
        assert copy is not model
        now = copy.state_dict()
        changed = {k.rsplit(".", 1)[0] for k in trained if not torch.equal(trained[k], now[k])}
        seen.append((i, layer, changed))

    r = parameter_randomisation(model, pixels, methods=("gradcam",), preprocess=pre, mode="independent",
                                layers=layers, callback=check)
    assert [s[:2] for s in seen] == list(enumerate(layers, start=1))
    for _, layer, changed in seen:
        assert changed == {layer}  # parameters (and, for the norm, running statistics) of that layer only
    assert r.mode == "independent" and r.layers == tuple(layers)

    cumulative: list[set[str]] = []

    def track(i: int, layer: str, copy: nn.Module) -> None:
        now = copy.state_dict()
        cumulative.append({k.rsplit(".", 1)[0] for k in trained if not torch.equal(trained[k], now[k])})

    parameter_randomisation(model, pixels, methods=("gradcam",), preprocess=pre, mode="cascading",
                            layers=layers, callback=track)
    assert cumulative == [set(layers[:i]) for i in range(1, len(layers) + 1)]


def test_seeded_and_global_rng_left_alone(setup: Any) -> None:
    model, pre, pixels = setup
    kw: dict[str, Any] = {"methods": ("layercam",), "preprocess": pre, "layers": ["fc", "layer4.1.conv2"]}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = parameter_randomisation(model, pixels, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = parameter_randomisation(model, pixels, seed=5, **kw)
    c = parameter_randomisation(model, pixels, seed=6, **kw)
    np.testing.assert_array_equal(a.similarity["layercam"]["ssim"], b.similarity["layercam"]["ssim"])
    assert not np.array_equal(a.similarity["layercam"]["ssim"], c.similarity["layercam"]["ssim"])


def test_random_logit_ranges(setup: Any) -> None:
    model, pre, pixels = setup
    r = random_logit(model, pixels, methods=METHODS, preprocess=pre, n=3, seed=0)
    assert r.target == 3 and len(r.classes) == 3 and 3 not in r.classes
    assert len(set(r.classes.tolist())) == 3
    for m in METHODS:
        for k in MEASURES:
            v = r.similarity[m][k]
            assert v.shape == (3,)
            assert np.all((v >= -1) & (v <= 1)), (m, k, v)
    # EigenCAM does not depend on the class: every score exactly 1; Grad-CAM does
    for k in MEASURES:
        np.testing.assert_array_equal(r.similarity["eigencam"][k], 1.0)
    assert r.mean()["gradcam"]["spearman_abs"] < 0.9
    assert len(r.to_rows()) == 9
    # n is capped at num_classes - 1
    assert len(random_logit(model, pixels, methods=("eigencam",), preprocess=pre, n=50).classes) == 7


def test_similarity_measures() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert similarity(a, a) == dict.fromkeys(MEASURES, 1.0)
    s = similarity(a, 1 - a)
    assert s["spearman"] == pytest.approx(-1.0) and s["spearman_abs"] == pytest.approx(-1.0)
    assert math.isnan(similarity(a, np.zeros_like(a))["spearman"])
    assert -1 <= similarity(a, np.zeros_like(a))["ssim"] <= 1
    with pytest.raises(ValueError):
        similarity(a, a[:8])


def test_bad_arguments(setup: Any) -> None:
    model, _, pixels = setup
    with pytest.raises(ValueError, match="mode"):
        parameter_randomisation(model, pixels, mode="bottom_up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown layer"):
        parameter_randomisation(model, pixels, layers=["nope"])
    with pytest.raises(ValueError):
        parameter_randomisation(model, pixels, methods=("no-such-method",))
    with pytest.raises(ValueError):
        random_logit(model, pixels, n=0)


# ---------------------------------------------------------------------------------------------- Quantus

class _SeedPerStep:
    """Stands in for ``torch`` inside Quantus's PyTorchModel: its layer generator seeds every layer with
    ``torch.manual_seed(seed + 1)``; this makes call ``k`` seed ``seed + k``, camwidgets's convention (step
    ``i`` under ``seed + i``). Everything else is torch itself."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def manual_seed(self, seed: int) -> Any:
        self.calls += 1
        return torch.manual_seed(seed - 1 + self.calls)


def _quantus_gradcam(pre: Any) -> Any:
    def explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        maps = [np.asarray(Explainer(model, torch.as_tensor(x), target=int(y), preprocess=pre).explain("gradcam").map)
                for x, y in zip(inputs, targets, strict=True)]
        return np.stack(maps)[:, None]  # (N, 1, H, W)

    return explain_func


def _ssim_2d(a: np.ndarray, b: np.ndarray, batched: bool = False, **kwargs: Any) -> Any:
    """camwidgets's SSIM for Quantus: Quantus hands the maps over flattened (N, H*W); this folds them back
    to 128x128 and uses data_range=1 (Quantus's own ``ssim`` runs a 1-D SSIM on the flat vectors with the
    pair's own range, another measure)."""
    from skimage.metrics import structural_similarity

    # in float64, as camwidgets computes it (the float32 maps widen exactly; SSIM in float32 differs by ~1e-8)
    out = [float(structural_similarity(x.reshape(128, 128).astype(np.float64), y.reshape(128, 128).astype(np.float64),
                                       data_range=1.0))
           for x, y in zip(np.atleast_2d(a), np.atleast_2d(b), strict=True)]
    return np.array(out) if batched else out[0]


@pytest.mark.slow
def test_parameter_randomisation_matches_quantus_mprt(setup: Any, cascade: SanityResult,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    quantus = pytest.importorskip("quantus")
    from quantus.helpers.model import pytorch_model

    model, pre, pixels = setup
    x = pixels[None].numpy()
    y = np.array([3])
    seed = cascade.seed  # 0: the cascade fixture's run is camwidgets's side of parts 1 and 3

    # 1. cascading (Quantus "top_down"), Spearman (Quantus's default similarity; abs + normalise_by_max, which
    #    leave camwidgets's [0, 1] maps with max 1 unchanged), with camwidgets's per-step seeds
    monkeypatch.setattr(pytorch_model, "torch", _SeedPerStep())
    mprt = quantus.MPRT(layer_order="top_down", seed=seed, disable_warnings=True)
    q = mprt(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=_quantus_gradcam(pre), device="cpu")
    assert list(q)[1:] == list(cascade.layers)
    q_sp = np.array([q[k][0] for k in q])
    # same maps, same ranks: only the summation order of the two Pearson-of-ranks differs
    np.testing.assert_allclose(q_sp, cascade.similarity["gradcam"]["spearman_abs"], atol=1e-9, equal_nan=True)

    # 2. independent (Quantus iterates it bottom-up, forward order), SSIM on the 2-D maps with data_range=1;
    #    seed 1: with seed 0, re-initialising layer4.1.conv2 alone turns every Grad-CAM weight-map product
    #    negative, the map is all zero after the ReLU (camwidgets scores it; Quantus refuses all-zero maps)
    seed2 = 1
    monkeypatch.setattr(pytorch_model, "torch", _SeedPerStep())
    mprt = quantus.MPRT(layer_order="independent", seed=seed2, similarity_func=_ssim_2d, disable_warnings=True)
    q = mprt(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=_quantus_gradcam(pre), device="cpu")
    forward = default_layers(model)[::-1]
    ours = parameter_randomisation(model, pixels, methods=("gradcam",), preprocess=pre, seed=seed2,
                                   mode="independent", layers=forward)
    assert list(q)[1:] == forward
    np.testing.assert_allclose(np.array([q[k][0] for k in q]), ours.similarity["gradcam"]["ssim"], atol=1e-9)

    # 3. Quantus as shipped seeds every layer with seed + 1: its first step is camwidgets's first step exactly,
    #    and its second (a BatchNorm, whose reset draws nothing) too
    monkeypatch.undo()
    mprt = quantus.MPRT(layer_order="top_down", seed=seed, disable_warnings=True)
    q = mprt(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=_quantus_gradcam(pre), device="cpu")
    q_sp = np.array([q[k][0] for k in q])
    ours = cascade.similarity["gradcam"]["spearman_abs"]
    np.testing.assert_allclose(q_sp[:3], ours[:3], atol=1e-9)  # the head (seed + 1 on both sides), then a BatchNorm
    # later steps are other random draws (measured with seed 0: up to 0.88 apart at single steps; the mean of
    # the last 10 steps 0.42 for Quantus, 0.18 for camwidgets): not equal, and both far below 1
    assert not np.allclose(q_sp, ours, atol=1e-3)
    assert np.nanmean(q_sp[-10:]) < 0.6


def test_random_logit_matches_quantus(setup: Any) -> None:
    quantus = pytest.importorskip("quantus")
    model, pre, pixels = setup
    x = pixels[None].numpy()
    y = np.array([3])
    ours = random_logit(model, pixels, methods=("gradcam",), preprocess=pre, n=7)  # every other class
    for seed in (0, 1, 2):
        # the class Quantus draws (its evaluate_batch, for one image: np.random.seed(seed), then randint(0, C - 1))
        off = [c for c in range(8) if c != 3][int(np.random.RandomState(seed).randint(0, 7, 1)[0])]
        j = int(np.flatnonzero(ours.classes == off)[0])
        for func, key in ((quantus.similarity_func.correlation_spearman, "spearman_abs"), (_ssim_2d, "ssim")):
            metric = quantus.RandomLogit(num_classes=8, seed=seed, similarity_func=func, disable_warnings=True)
            q = metric(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=_quantus_gradcam(pre),
                       device="cpu")
            assert q[0] == pytest.approx(ours.similarity["gradcam"][key][j], abs=1e-9), (seed, key)


def test_cascade_figure(cascade: SanityResult) -> None:
    from camwidgets.viz.sanity import cascade_figure

    fig = cascade_figure(cascade)
    assert len(fig.data) == len(METHODS) * 2  # one line per method in each of the two default subplots
    first = fig.data[0]
    assert first.name == "gradcam" and len(first.x) == 42
    np.testing.assert_allclose(first.y, cascade.similarity["gradcam"]["spearman_abs"])
    assert list(fig.layout.xaxis.ticktext[:2]) == ["original", "fc"]
    assert [d.showlegend for d in fig.data].count(True) == len(METHODS)
    with pytest.raises(ValueError):
        cascade_figure(cascade, measures=("pearson",))


def test_sanity_module_imports_no_plotly() -> None:
    import subprocess
    import sys

    code = ("import sys, camwidgets.sanity;"
            "print(','.join(m for m in ('plotly', 'ipywidgets', 'camwidgets.viz') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == ""

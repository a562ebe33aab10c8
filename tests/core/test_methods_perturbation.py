"""LIME and KernelSHAP on superpixels against Captum's ``Lime`` and ``KernelShap``.

Captum draws its perturbations internally; the tests give it camwidgets' own samples so
that both fit the same data: ``Lime`` gets a ``perturb_func`` generator replaying them,
``KernelShap`` the same generator in place of its ``kernel_shap_perturb_generator``.
Everything else is Captum's: the masked inputs (``feature_mask`` = camwidgets'
superpixels, ``baselines`` = the same baseline pixel image), the forward passes, the
regression weights (``KernelShap``'s own kernel; for ``Lime`` Captum's exponential
kernel ``get_exp_kernel_similarity_function("cosine", w)`` applied to the binary sample
and the all-ones vector, the ``lime`` package's distance) and the regression
(``SkLearnRidge(alpha=1)`` / ``SkLearnLinearRegression``). The forward function is the
softmax probability of the target on the normalised masked pixel image, camwidgets' score.

Tolerance: the coefficients are compared relative to their largest magnitude and the
normalised maps ``normalise(ReLU(φ[segments]))`` by their max abs difference, both
<= 1e-4. Captum casts the samples, scores and weights to float32 and lets scikit-learn
solve in float32; camwidgets solves in float64. With KernelSHAP's 10⁶ endpoint weights
the float32 solve alone is off by up to ~1e-3 (scikit-learn float32 against float64 on
the same data), so the main comparison lets Captum's scikit-learn model fit Captum's own
(float32) data in float64 (``_Float64Fit``); the rounding of the scores to float32 then
leaves differences of ~1e-6. ``test_stock_captum`` compares with the unmodified float32
fit, within that fit's own measured error.

Models: the trained demo model on Shapes images, and torchvision resnet18, densenet121
and squeezenet1_1 with seeded random weights and 10 classes on a 64 px Shapes image.
(Random-weight MobileNets and EfficientNets are left out: their classifiers start near
zero, so every masked image gets probability 0.1 and there is nothing to compare.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import models as tvm

import camwidgets
from camwidgets.core import Explainer, Preprocess
from camwidgets.core.methods import get
from camwidgets.core.methods import perturbation as P

pytest.importorskip("sklearn")  # Captum's linear models are scikit-learn's
captum_attr = pytest.importorskip("captum.attr")
from captum._utils.models.linear_model import SkLearnLinearRegression, SkLearnRidge  # noqa: E402
from captum.attr._core.lime import get_exp_kernel_similarity_function  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
FAST = {"n_segments": 16, "n_samples": 48, "batch_size": 16}
TV = {"n_segments": 25, "compactness": 40.0}


# ------------------------------------------------------------------ helpers
def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    span = a.max() - a.min()
    return np.zeros_like(a) if span == 0 else (a - a.min()) / span


def _map(coef: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """The map both sides get: ReLU of the coefficient map, min-max normalised."""
    return _minmax(np.maximum(np.asarray(coef, dtype=np.float64)[segments], 0))


def _tv(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(tvm, name)(num_classes=10).eval()


@pytest.fixture(scope="module")
def demo_and_pre() -> tuple[nn.Module, Preprocess]:
    model, pre, _ = camwidgets.load_demo_model()
    return model, pre


@pytest.fixture(scope="module")
def tv_models() -> dict[str, nn.Module]:
    return {n: _tv(n) for n in ("resnet18", "densenet121", "squeezenet1_1")}


def _explainer(case: str, demo_and_pre: Any, tv_models: dict[str, nn.Module]) -> Explainer:
    """The demo model on two Shapes images, or a random-weight torchvision model on a 64 px Shapes image."""
    model, pre = demo_and_pre
    if case == "demo-star":
        return Explainer(model, camwidgets.load_sample("shapes-star")["image"], preprocess=pre)
    if case == "demo-shapes":
        return Explainer(model, camwidgets.datasets.Shapes(3, seed=7)[2]["image"], preprocess=pre)
    image = camwidgets.datasets.Shapes(2, seed=11)[1]["image"]
    return Explainer(tv_models[case], image, preprocess=Preprocess(size=64, **IMAGENET))


def _replay(samples: np.ndarray) -> Any:
    """A Captum perturbation generator yielding camwidgets' samples, one ``(1, M)`` row at a time."""
    rows = torch.from_numpy(np.array(samples)).long()

    def perturb(original_inp: Any, **kwargs: Any) -> Iterator[torch.Tensor]:
        assert kwargs["num_interp_features"] == rows.shape[1]
        for row in rows:
            yield row[None].to(original_inp.device)

    return perturb


def _forward(exp: Explainer) -> Any:
    """Captum's forward function: softmax probabilities of the normalised pixel batch (camwidgets' score)."""
    def forward(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(exp.model(exp.normalize(pixels)).double(), dim=1)
    return forward


class _Float64Fit:
    """Makes one of Captum's scikit-learn models fit in float64.

    Captum casts samples, scores and weights to float32 and scikit-learn then solves in
    float32; with KernelSHAP's 10⁶ endpoint weights that solve alone is off by up to ~1e-3
    of the largest coefficient (measured: scikit-learn float32 against float64 on the same
    data). The samples and weights are exact in float32 and the scores lose 6e-8 relative,
    so fitting Captum's own data in float64 leaves only the differences that matter.
    """

    def fit(self, train_data: DataLoader, **kwargs: Any) -> Any:
        x, y, w = (t.double() for t in next(iter(train_data)))  # Captum passes one batch of all samples
        return super().fit(DataLoader(TensorDataset(x, y, w), batch_size=len(x)), **kwargs)  # type: ignore[misc]


class _Ridge64(_Float64Fit, SkLearnRidge):
    pass


class _Linear64(_Float64Fit, SkLearnLinearRegression):
    pass


def _captum(method: str, exp: Explainer, res: P.SuperpixelCAMResult, kernel_width: float = 0.25,
            float64: bool = True) -> np.ndarray:
    """Captum's coefficients ``(M,)`` on the same superpixels, baseline image and samples as ``res``.

    ``float64=False`` keeps Captum's float32 fit (see :class:`_Float64Fit`).
    """
    segments = torch.from_numpy(res.segments.copy())
    base = P.baseline_image(exp.image_tensor, segments, res.params["baseline"])
    n, m = res.samples.shape
    if method == "lime":
        captum_kernel = get_exp_kernel_similarity_function("cosine", kernel_width)

        def similarity(original: Any, perturbed: Any, interpretable: torch.Tensor, **kwargs: Any) -> float:
            # the lime package's distance: the binary sample against the unperturbed (all-ones) sample
            z = interpretable.float()
            return float(captum_kernel(torch.ones_like(z), z, None))

        model = _Ridge64(alpha=1.0) if float64 else SkLearnRidge(alpha=1.0)
        explainer = captum_attr.Lime(_forward(exp), interpretable_model=model, similarity_func=similarity,
                                     perturb_func=_replay(res.samples))
    else:
        explainer = captum_attr.KernelShap(_forward(exp))
        if float64:
            explainer.interpretable_model = _Linear64()
        explainer.perturb_func = _replay(res.samples)  # replaces kernel_shap_perturb_generator
    coefs = explainer.attribute(exp.image_tensor[None], target=exp.target, baselines=base[None],
                                feature_mask=segments[None, None], n_samples=n, perturbations_per_eval=16,
                                return_input_shape=False)
    out = coefs.detach().double().reshape(-1).numpy()
    assert out.shape == (m,)
    return out


def _sklearn64(method: str, res: P.SuperpixelCAMResult) -> np.ndarray:
    """scikit-learn's float64 fit of the result's samples, scores and weights (Captum's models, without the cast)."""
    from sklearn.linear_model import LinearRegression, Ridge

    ref = Ridge(alpha=1.0) if method == "lime" else LinearRegression()
    ref.fit(res.samples.astype(np.float64), res.scores, sample_weight=res.sample_weights)
    return np.asarray(ref.coef_, dtype=np.float64)


def _compare(mine: P.SuperpixelCAMResult, ref: np.ndarray) -> tuple[float, float]:
    """(max |Δφ| / max |φ_ref|, max |Δ normalised map|)."""
    coef = np.asarray(mine.weights, dtype=np.float64)
    rel = float(np.abs(coef - ref).max() / np.abs(ref).max())
    maps = float(np.abs(_map(coef, mine.segments) - _map(ref, mine.segments)).max())
    return rel, maps


# ------------------------------------------------------------------ equivalence with Captum
CASES = [
    ("demo-star", {}), ("demo-shapes", {"baseline": "mean"}), ("demo-star", {"baseline": "blur", "seed": 3}),
    ("demo-shapes", {"segmentation": "quickshift", "kernel_size": 3.0, "max_dist": 10.0, "n_samples": 80}),
    # the 64 px Shapes image is plain: SLIC needs more compactness for about 20 superpixels there
    ("resnet18", TV), ("resnet18", {**TV, "baseline": "mean"}), ("densenet121", TV),
    ("squeezenet1_1", {**TV, "baseline": "blur"}),
]


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
@pytest.mark.parametrize(("case", "params"), CASES)
def test_equal_captum(demo_and_pre, tv_models, method: str, case: str, params: dict[str, Any]) -> None:
    exp = _explainer(case, demo_and_pre, tv_models)
    res = exp.explain(method, **{**FAST, **params})
    assert isinstance(res, P.SuperpixelCAMResult) and res.layer == ()
    n = params.get("n_samples", FAST["n_samples"])
    assert res.n_superpixels >= 4 and res.samples.shape == (n, res.n_superpixels)
    assert np.ptp(res.scores) > 1e-3, "the masks must move the class probability for the test to mean anything"
    rel, maps = _compare(res, _captum(method, exp, res))
    assert rel <= TOL and maps <= TOL, (rel, maps)
    # the float64 solve itself: scikit-learn in float64 on the same data agrees to rounding
    ref64 = _sklearn64(method, res)
    assert np.abs(res.weights.astype(np.float64) - ref64).max() <= 1e-6 * np.abs(ref64).max()
    # the map is the normalised positive part of the signed coefficient map
    np.testing.assert_allclose(res.raw, res.weights[res.segments], rtol=0, atol=1e-7)
    np.testing.assert_allclose(res.map, _map(res.weights, res.segments), rtol=0, atol=1e-6)


def _sklearn32_error(method: str, res: P.SuperpixelCAMResult) -> float:
    """The float32 solve's own error on the result's data: scikit-learn float32 against float64, relative."""
    from sklearn.linear_model import LinearRegression, Ridge

    ref = Ridge(alpha=1.0) if method == "lime" else LinearRegression()
    ref.fit(res.samples.astype(np.float32), res.scores.astype(np.float32),
            sample_weight=res.sample_weights.astype(np.float32))
    ref64 = _sklearn64(method, res)
    return float(np.abs(ref.coef_ - ref64).max() / np.abs(ref64).max())


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
@pytest.mark.parametrize(("case", "params"), [("demo-shapes", {}), ("resnet18", TV)])
def test_stock_captum(demo_and_pre, tv_models, method: str, case: str, params: dict[str, Any]) -> None:
    """Unmodified Captum (float32 fit): equal within 1e-4, or within twice its float32 solve's own error."""
    exp = _explainer(case, demo_and_pre, tv_models)
    res = exp.explain(method, **{**FAST, **params})
    rel, maps = _compare(res, _captum(method, exp, res, float64=False))
    tol = max(TOL, 2 * _sklearn32_error(method, res))
    assert rel <= tol and maps <= tol, (rel, maps, tol)


def test_lime_kernel_width_against_captum(demo_and_pre, tv_models) -> None:
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    res = exp.lime(**FAST, kernel_width=0.6)
    rel, maps = _compare(res, _captum("lime", exp, res, kernel_width=0.6))
    assert rel <= TOL and maps <= TOL


def test_comparison_can_fail(demo_and_pre, tv_models, monkeypatch) -> None:
    """A wrong formula (LIME's kernel without the factor 2, KernelSHAP without its endpoint weights) is caught."""
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    monkeypatch.setattr(P, "lime_kernel", lambda s, w: torch.exp(-(1 - torch.sqrt(s.double().mean(1))) ** 2 / w**2))
    monkeypatch.setattr(P, "shapley_weights", lambda s: torch.ones(s.shape[0], dtype=torch.float64))
    for method in ("lime", "kernelshap"):
        res = exp.explain(method, **FAST)
        rel, _ = _compare(res, _captum(method, exp, res))
        assert rel > 10 * TOL, (method, rel)


def test_kernelshap_efficiency(demo_and_pre, tv_models) -> None:
    """Σ φ = Y_c(x) − Y_c(baseline) and b = Y_c(baseline), up to the finite endpoint weight."""
    exp = _explainer("demo-shapes", demo_and_pre, tv_models)
    res = exp.kernelshap(**FAST)
    full, empty = res.scores[0], res.scores[1]
    assert res.samples[0].all() and not res.samples[1].any()
    assert abs(full - float(exp.probabilities_tensor64[exp.target])) < 1e-5
    assert abs(float(res.weights.astype(np.float64).sum()) - (full - empty)) < 1e-4
    assert abs(res.intercept - empty) < 1e-4


# ------------------------------------------------------------------ samples, seeds, stages
def test_samples_distributions() -> None:
    z = P.lime_samples(4000, 12, seed=1)
    assert z[0].all() and abs(float(z[1:].float().mean()) - 0.5) < 0.01
    assert torch.equal(z, P.lime_samples(4000, 12, seed=1)) and not torch.equal(z, P.lime_samples(4000, 12, seed=2))
    m = 8
    s = P.kernelshap_samples(20000, m, seed=0)
    assert s[0].all() and not s[1].any()
    k = s[2:].sum(1)
    assert int(k.min()) >= 1 and int(k.max()) <= m - 1
    expected = torch.tensor([(m - 1) / (j * (m - j)) for j in range(1, m)], dtype=torch.float64)
    observed = torch.bincount(k, minlength=m)[1:].double() / k.numel()
    assert float((observed - expected / expected.sum()).abs().max()) < 0.01
    # given k, every superpixel is equally likely to be in the coalition
    assert float((s[2:].float().mean(0) - s[2:].float().mean()).abs().max()) < 0.02
    assert P.kernelshap_samples(50, 1, seed=0).shape == (2, 1)  # one superpixel: only the endpoints


def test_lime_kernel_is_lime_packages() -> None:
    """π(z) = sqrt(exp(−d²/w²)), d = cosine distance of z to the all-ones vector (1 for the empty sample)."""
    z = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    cos = torch.nn.functional.cosine_similarity(z.double(), torch.ones(4, 4, dtype=torch.float64), dim=1)
    expected = torch.sqrt(torch.exp(-((1 - cos) ** 2) / 0.25**2))
    torch.testing.assert_close(P.lime_kernel(z, 0.25), expected)


def test_weighted_fit_equals_sklearn() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    z = torch.rand(60, 7, generator=g) < 0.5
    y = torch.rand(60, generator=g, dtype=torch.float64)
    w = torch.rand(60, generator=g, dtype=torch.float64) + 0.1
    for alpha, ref in ((1.0, linear_model.Ridge(alpha=1.0)), (0.0, linear_model.LinearRegression())):
        ref.fit(z.double().numpy(), y.numpy(), sample_weight=w.numpy())
        coef, b = P.weighted_linear_fit(z, y, w, alpha)
        np.testing.assert_allclose(coef.numpy(), ref.coef_, atol=1e-10)
        assert abs(b - ref.intercept_) < 1e-10
    # a superpixel that never changes: the minimum-norm solution gives it 0
    z[:, 3] = True
    coef, _ = P.weighted_linear_fit(z, y, w, 0.0)
    assert abs(float(coef[3])) < 1e-10


def test_baseline_images(demo_and_pre, tv_models) -> None:
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    img = exp.image_tensor
    seg = P.superpixels(img, n_segments=20)
    assert seg.shape == img.shape[1:] and int(seg.min()) == 0
    assert torch.equal(torch.unique(seg), torch.arange(int(seg.max()) + 1))
    assert not P.baseline_image(img, seg, "black").any()
    mean = P.baseline_image(img, seg, "mean").numpy()
    arr, s = img.double().numpy(), seg.numpy()
    for j in range(int(seg.max()) + 1):
        np.testing.assert_allclose(mean[:, s == j], arr[:, s == j].mean(axis=1, keepdims=True)
                                   * np.ones((1, int((s == j).sum()))), atol=1e-6)
    blur = P.baseline_image(img, seg, "blur")
    assert blur.shape == img.shape and abs(float(blur.mean() - img.mean())) < 0.02
    assert float(blur.diff(dim=-1).abs().mean()) < 0.5 * float(img.diff(dim=-1).abs().mean())


def test_stage_cache_and_seed(demo_and_pre, tv_models, counter) -> None:
    """batch_size and kernel_width re-run no model pass; seed and baseline do; a seed gives the same map."""
    model, _ = demo_and_pre
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    c = counter(model)
    a = exp.lime(**FAST)
    passes = -(-a.evaluated // FAST["batch_size"])
    assert c.images == a.evaluated <= FAST["n_samples"] and c.calls == a.forward_passes == passes
    b = exp.lime(**{**FAST, "batch_size": 5})
    c2 = exp.lime(**FAST, kernel_width=0.5)
    assert c.calls == passes and np.array_equal(a.map, b.map) and not np.array_equal(a.map, c2.map)
    exp.kernelshap(**FAST)  # the same superpixels: only the KernelSHAP scores run
    calls = c.calls
    d = exp.lime(**{**FAST, "seed": 1})
    assert c.calls > calls and not np.array_equal(a.samples, d.samples)
    again = _explainer("demo-star", demo_and_pre, tv_models).lime(**{**FAST, "batch_size": 7})
    assert np.array_equal(again.samples, a.samples) and np.abs(again.map - a.map).max() < 1e-5
    assert P.superpixels(exp.image_tensor, "quickshift", seed=4).shape == exp.size


# ------------------------------------------------------------------ API, validation, hygiene
def test_invalid_params_raise_before_any_pass(demo_and_pre, tv_models, counter) -> None:
    model, _ = demo_and_pre
    exp = _explainer("demo-star", demo_and_pre, tv_models)
    c = counter(model)
    bad = [("lime", {"segmentation": "felzenszwalb"}), ("lime", {"n_samples": 5}), ("lime", {"kernel_width": 0}),
           ("lime", {"baseline": "white"}), ("kernelshap", {"ratio": 1.5}), ("kernelshap", {"compactness": 0}),
           ("kernelshap", {"n_segments": 0}), ("kernelshap", {"kernel_width": 0.3}), ("lime", {"layer": "layer4"}),
           ("kernelshap", {"seed": -1}), ("lime", {"batch_size": 0}), ("lime", {"n_samples": 2.5})]
    for method, params in bad:
        with pytest.raises(ValueError):
            exp.explain(method, **params)
    assert c.calls == 0


def test_registry_entries() -> None:
    for name in ("lime", "kernelshap"):
        m = get(name)
        assert m.family == "perturbation" and not m.needs_gradients and not m.layered
        assert m.param("seed").control is False and m.param("batch_size").control is False
    assert get("lime").defaults["n_samples"] == 500 and "kernel_width" not in get("kernelshap").param_names


def test_model_left_unchanged(tv_models) -> None:
    model = tv_models["resnet18"]
    model.train()
    model.layer1.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    image = camwidgets.datasets.Shapes(2, seed=11)[0]["image"]
    exp = Explainer(model, image, preprocess=Preprocess(size=64, **IMAGENET))
    exp.lime(**FAST)
    exp.kernelshap(**FAST)
    try:
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert all(p.grad is None for p in model.parameters())
        for mod in model.modules():
            assert not (mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks)
        for k, v in model.state_dict().items():  # BatchNorm statistics untouched (eval mode during the passes)
            assert torch.equal(v, state[k]), k
    finally:
        model.layer1.requires_grad_(True)
        model.eval()


def test_any_classifier_and_evaluate(tmp_path, counter) -> None:
    """A classifier of our own (not torchvision's) through explain() and camwidgets.evaluate."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(2))
    exp = Explainer(model, image)
    for name in ("lime", "kernelshap"):
        r = exp.explain(name, n_segments=9, n_samples=30)
        assert r.map.shape == (40, 40) and r.map.min() >= 0 and r.map.max() <= 1
        assert r.raw.shape == (40, 40) and r.weights.shape == (r.n_superpixels,)
    data = [{"image": camwidgets.datasets.Shapes(2, seed=1)[i]["image"], "label": i} for i in range(2)]
    demo, pre, _ = camwidgets.load_demo_model()
    out = camwidgets.evaluate(demo, data, {"lime": {"n_samples": 20, "n_segments": 12},
                                           "kernelshap": {"n_samples": 20, "n_segments": 12}},
                              metrics=["average_drop"], preprocess=pre, out_dir=tmp_path, progress=False)
    assert len(out.rows) == 4 and not out.errors

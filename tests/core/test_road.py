"""ROAD (noisy linear imputation, MoRF / LeRF / combined) and ARCC against pytorch-grad-cam 1.5.

Tolerances. Both sides solve the same sparse system in float64 and cast the solution to
float32; only the assembly order (and so SuperLU's rounding, ~1e-15 relative) differs, so
an imputed pixel in [0, 1] agrees to one float32 ulp (<= 6e-8): we allow 1e-6. The scores
then go through the same float32 model, in differently composed batches (the peer runs
one batch per percentile, we mix percentiles), which moves a softmax probability by
~1e-7: we allow 1e-5 (the scores themselves span > 0.1 across percentiles, checked, so the
comparison is not vacuous). With a normalisation the peer imputes the normalised tensor
and we impute pixels, then normalise: equal in exact arithmetic (the imputation is a
weighted mean, weights summing to 1), ~1e-6 apart in float32.

Alignments (each a deliberate difference, docs/evaluate.md "ROAD and ARCC"):
- the noise is switched off on both sides (the peer draws it from torch's global generator
  in normalised units, we from a seeded generator in pixel units);
- the peer's ``percentile`` q is the share of pixels *kept* and it thresholds at the
  interpolated ``np.percentile``, so it removes ``N − ceil((N − 1) q / 100)`` pixels; we
  remove ``round(p/100 · N)`` for our ``p`` (share removed). We pass
  ``p = 100 · removed_by_peer / N`` to compare the same masks;
- the score is the softmax probability (``ClassifierOutputSoftmaxTarget`` on the peer's side),
  and ``return_diff=True`` is our ``scores − original``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pgc_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
from pytorch_grad_cam.metrics.arcc import ARCC as PeerARCC  # noqa: E402
from pytorch_grad_cam.metrics.perturbation_confidence import RemoveMostRelevantFirst  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

import camwidgets  # noqa: E402
from camwidgets.core import evaluate as E  # noqa: E402
from camwidgets.core import metric_registry as R  # noqa: E402
from camwidgets.core import metrics as M  # noqa: E402
from camwidgets.core import road as RD  # noqa: E402

from .conftest import ForwardCounter  # noqa: E402

# the peer calls np.argwhere on torch tensors (numpy 2 deprecation, its code, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

SIZE = 32
N_PIX = SIZE * SIZE


@pytest.fixture(autouse=True)
def _peer_noise_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer builds its imputer inside each metric with noise=0.01: make its default 0."""
    init = pgc_road.NoisyLinearImputer.__init__
    monkeypatch.setattr(init, "__defaults__", (0.0, pgc_road.neighbors_weights))


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, classes))
    with torch.no_grad():
        model[-1].weight.mul_(40.0)  # a peaked softmax, so that removing pixels moves the probability
    return model.eval()


def images_and_maps(n: int = 2, size: int = SIZE, seed: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, size, size, generator=g)
    # smooth-ish, tie-free maps: a blob plus a little noise
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    maps = np.stack([np.exp(-((yy - rng.random()) ** 2 + (xx - rng.random()) ** 2) * 8)
                     + 1e-3 * rng.random((size, size)) for _ in range(n)])
    maps = (maps - maps.min(axis=(1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
    return pixels, maps


def peer_removed(q: float, n: int = N_PIX) -> int:
    """Pixels the peer removes at its percentile q (share kept) on a tie-free map."""
    return n - math.ceil((n - 1) * q / 100)


def aligned(qs: list[float], n: int = N_PIX) -> list[float]:
    """Our percentiles (share removed) that remove the peer's pixel counts."""
    return [100.0 * peer_removed(q, n) / n for q in qs]


def targets_of(classes: Any) -> list[ClassifierOutputSoftmaxTarget]:
    return [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]


# ----------------------------------------------------------------------------------------
# the imputation, by hand
# ----------------------------------------------------------------------------------------
def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours() -> None:
    img = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    removed = np.zeros((5, 6), bool)
    removed[2, 3] = True
    out = RD.noisy_linear_imputation(img, removed, noise=0)
    v = img.numpy()
    direct = v[:, 1, 3] + v[:, 3, 3] + v[:, 2, 2] + v[:, 2, 4]
    diagonal = v[:, 1, 2] + v[:, 1, 4] + v[:, 3, 2] + v[:, 3, 4]
    np.testing.assert_allclose(out[:, 2, 3].numpy(), direct / 6 + diagonal / 12, rtol=0, atol=1e-14)
    keep = ~removed
    assert torch.equal(out[:, torch.from_numpy(keep)], img[:, torch.from_numpy(keep)])
    # a corner pixel: the weights of its 3 neighbours inside the image, renormalised (1/6 + 1/6 + 1/12 = 5/12)
    corner = np.zeros((5, 6), bool)
    corner[0, 0] = True
    out = RD.noisy_linear_imputation(img, corner, noise=0)
    expect = (v[:, 0, 1] / 6 + v[:, 1, 0] / 6 + v[:, 1, 1] / 12) / (5 / 12)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expect, rtol=0, atol=1e-14)


def test_constant_and_linear_images_are_filled_exactly() -> None:
    const = torch.full((3, 7, 7), 0.3)
    removed = np.zeros((7, 7), bool)
    removed[::2, 1::3] = True
    removed[0, 0] = True  # on the border too
    np.testing.assert_allclose(RD.noisy_linear_imputation(const, removed, noise=0).numpy(), const.numpy(), atol=1e-7)
    # a linear ramp is its own symmetric weighted mean: any interior hole (even a 3x3 block) is filled exactly
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(9.0), indexing="ij")
    ramp = torch.stack([0.1 * yy + 0.05 * xx, 0.02 * xx, 1 - 0.1 * yy]).double()
    hole = np.zeros((8, 9), bool)
    hole[2:5, 3:6] = True
    hole[6, 1] = True
    np.testing.assert_allclose(RD.noisy_linear_imputation(ramp, hole, noise=0).numpy(), ramp.numpy(), atol=1e-12)


def test_noise_is_seeded_and_only_on_removed_pixels() -> None:
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3))
    removed = np.zeros((16, 16), bool)
    removed[4:12, 4:12] = True
    clean = RD.noisy_linear_imputation(img, removed, noise=0)
    a = RD.noisy_linear_imputation(img, removed, noise=0.05, seed=7)
    b = RD.noisy_linear_imputation(img, removed, noise=0.05, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, RD.noisy_linear_imputation(img, removed, noise=0.05, seed=8))
    diff = (a - clean)[:, torch.from_numpy(removed)]
    assert torch.equal((a - clean)[:, torch.from_numpy(~removed)], torch.zeros(3, int((~removed).sum())))
    assert 0.04 < float(diff.std()) < 0.06 and abs(float(diff.mean())) < 0.01
    with pytest.raises(ValueError, match="at least one kept pixel"):
        RD.noisy_linear_imputation(img, np.ones((16, 16), bool), noise=0)
    with pytest.raises(ValueError, match="noise must be"):
        RD.noisy_linear_imputation(img, removed, noise=-1)


# ----------------------------------------------------------------------------------------
# equivalence with pytorch-grad-cam
# ----------------------------------------------------------------------------------------
def test_imputed_images_and_masks_equal_the_peers() -> None:
    pixels, maps = images_and_maps(1)
    img, emap = pixels[0], maps[0]
    worst = 0.0
    for q in (10, 30, 50, 80, 90):
        recorded: list[torch.Tensor] = []
        RemoveMostRelevantFirst(q, lambda x, keep, rec=recorded: rec.append(keep) or x)(img, torch.from_numpy(emap))
        peer_keep = recorded[0].numpy() > 0.5
        ours = RD.road_masks(emap, aligned([q]), "morf")[0]
        assert np.array_equal(ours, ~peer_keep), q  # the same pixels once the count is aligned
        peer_img = pgc_road.NoisyLinearImputer(noise=0.0)(img, recorded[0])
        our_img = RD.noisy_linear_imputation(img, ours, noise=0)
        worst = max(worst, float((peer_img - our_img).abs().max()))
        # unaligned, the count differs by at most one pixel (the peer's interpolated threshold)
        assert abs(int(RD.road_masks(emap, [100 - q], "morf")[0].sum()) - int((~peer_keep).sum())) <= 1
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("normalise", [False, True])
def test_morf_lerf_and_combined_equal_the_peers(normalise: bool) -> None:
    model = small_cnn()
    pixels, maps = images_and_maps(2)
    pre = camwidgets.Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) if normalise else None
    inputs = pre.normalize(pixels) if pre is not None else pixels
    cams = maps.astype(np.float32)
    classes = model(inputs).argmax(1).tolist()
    targets = targets_of(classes)
    qs = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    worst = {}
    with torch.no_grad():
        morf_peer = np.stack([pgc_road.ROADMostRelevantFirst(q)(inputs, cams, targets, model, return_diff=False)
                              for q in qs], axis=1)
        lerf_peer = np.stack([pgc_road.ROADLeastRelevantFirst(q)(inputs, cams, targets, model, return_diff=False)
                              for q in qs], axis=1)
        morf_diff = pgc_road.ROADMostRelevantFirst(80)(inputs, cams, targets, model)  # return_diff=True
        combined_peer = pgc_road.ROADCombined(percentiles=qs)(inputs, cams, targets, model)
    ours = RD.road_combined(model, pixels, maps, classes, pre, percentiles=aligned(qs), noise=0, batch_size=7)
    worst["morf"] = np.abs(ours.morf.scores - morf_peer).max()
    worst["lerf"] = np.abs(ours.lerf.scores - lerf_peer).max()
    worst["morf diff"] = np.abs(ours.morf.scores[:, 7] - ours.morf.original - morf_diff).max()
    worst["combined"] = np.abs(ours.combined - combined_peer).max()
    assert max(worst.values()) <= 1e-5, worst
    assert np.ptp(ours.morf.scores) > 0.1 and np.ptp(ours.lerf.scores) > 0.05  # the scores do move
    single = RD.road(model, pixels[1], maps[1], classes[1], pre, percentiles=aligned(qs), order="lerf", noise=0)
    np.testing.assert_allclose(single.scores, ours.lerf.scores[1], atol=1e-6)
    assert single.scores.shape == (9,) and isinstance(single.mean, float)


def test_resnet18_combined_equals_the_peers() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():
        model.fc.weight.mul_(200.0)  # random weights give a near-uniform softmax: sharpen it
    pixels, maps = images_and_maps(2, size=32, seed=4)
    n = 32 * 32
    qs = [20, 40, 60, 80]
    with torch.no_grad():
        classes = model(pixels).argmax(1).tolist()
        peer = pgc_road.ROADCombined(percentiles=qs)(pixels, maps.astype(np.float32), targets_of(classes), model)
    ours = RD.road_combined(model, pixels, maps, classes, percentiles=aligned(qs, n), noise=0)
    assert np.abs(ours.combined - peer).max() <= 1e-5 and np.ptp(ours.morf.scores) > 0.01
    # the default grid is symmetric, so shares kept (peer) and removed (ours) average the same masks up to
    # the peer's +-1 pixel count: the unaligned values stay close
    unaligned = RD.road_combined(model, pixels, maps, classes, percentiles=[100 - q for q in qs], noise=0)
    assert np.abs(unaligned.combined - peer).max() < 1e-2


def test_arcc_equals_the_peers() -> None:
    # a linear model and the map of its evidence for the class: ROAD > 0, so no ARCC term is 0
    # (where one is, ARCC is 0 here and ~3e-8 there: its 1e-8 guard)
    torch.manual_seed(2)
    linear = nn.Linear(3 * SIZE * SIZE, 5)
    with torch.no_grad():
        linear.weight.mul_(3.0)
    model = nn.Sequential(nn.Flatten(), linear).eval()
    pixels, _ = images_and_maps(2, seed=5)
    classes = model(pixels).argmax(1).tolist()
    w = linear.weight.detach().view(5, 3, SIZE, SIZE)
    # (not clamped at 0: a map with ties is where the peer removes every tied pixel and we keep exact counts)
    evidence = ((w[classes] - w.mean(0, keepdim=True)) * pixels).sum(1).numpy()
    maps = (evidence - evidence.min(axis=(1, 2), keepdims=True)) / np.ptp(evidence, axis=(1, 2), keepdims=True)

    def fake_cam(x: torch.Tensor) -> np.ndarray:  # a deterministic "method": the brightness, min-max
        m = x.detach().double().mean(dim=-3).numpy()
        lo, hi = m.min(axis=(-2, -1), keepdims=True), m.max(axis=(-2, -1), keepdims=True)
        return (m - lo) / (hi - lo)

    def base_method(input_tensor: torch.Tensor, targets: Any) -> np.ndarray:
        return fake_cam(input_tensor).astype(np.float32)

    qs = [20, 40, 60, 80]
    with torch.no_grad():
        peer = PeerARCC(base_method, road_percentiles=qs)(pixels, maps.astype(np.float32), targets_of(classes), model)
    ours = RD.arcc(model, pixels, maps, classes, explain_fn=lambda x, t: fake_cam(x), percentiles=aligned(qs),
                   noise=0)
    assert float(np.min(ours.road)) > 0.1 and float(np.min(ours.arcc)) > 0.2
    assert np.abs(ours.arcc - peer).max() <= 1e-5
    adcc = M.adcc(model, pixels, maps, classes, explain_fn=lambda x, t: fake_cam(x))
    np.testing.assert_allclose(ours.coherency, adcc.coherency)  # the same terms as ADCC but the third


# ----------------------------------------------------------------------------------------
# our own conventions
# ----------------------------------------------------------------------------------------
def test_constant_map_batch_size_seed_and_errors() -> None:
    model = small_cnn(seed=1)
    pixels, maps = images_and_maps(2, size=16)
    flat = np.full((16, 16), 0.5)
    res = RD.road_combined(model, pixels[0], flat, 0, percentiles=(25, 75), noise=0.01)
    assert res.combined == 0.0 and np.array_equal(res.morf.scores, res.lerf.scores)  # same masks, same noise
    a = RD.road_combined(model, pixels, maps, [0, 1], percentiles=(10, 50, 90), seed=3, batch_size=1)
    b = RD.road_combined(model, pixels, maps, [0, 1], percentiles=(10, 50, 90), seed=3, batch_size=32)
    np.testing.assert_allclose(a.lerf.scores, b.lerf.scores, atol=1e-6)
    np.testing.assert_allclose(a.combined, b.combined, atol=1e-6)
    c = RD.road_combined(model, pixels, maps, [0, 1], percentiles=(10, 50, 90), seed=4)
    assert not np.allclose(a.morf.scores, c.morf.scores, atol=0, rtol=1e-9)  # a different noise draw
    masks = RD.road_masks(maps, (10, 50), "lerf")
    assert masks.shape == (2, 2, 16, 16) and masks[:, 1].sum(axis=(1, 2)).tolist() == [128, 128]
    with pytest.raises(ValueError, match="percentiles"):
        RD.road(model, pixels[0], maps[0], percentiles=(10, 100))
    with pytest.raises(ValueError, match="order must be"):
        RD.road(model, pixels[0], maps[0], order="random")  # type: ignore[arg-type]


def test_registry_entries_share_passes_and_stay_out_of_the_default() -> None:
    model = small_cnn(seed=3)
    pixels, maps = images_and_maps(1, size=16, seed=2)
    calls = []

    def explain_fn(x: torch.Tensor, t: int) -> np.ndarray:
        calls.append(t)
        return maps[0]

    ctx = R.MetricContext(model=model, pixels=pixels[0], saliency_map=maps[0], target=1, explain_fn=explain_fn,
                          params={"road": {"percentiles": (20, 60), "seed": 5}})
    counter = ForwardCounter(model)
    try:
        road = R.get_metric("road").compute(ctx)
        R.get_metric("adcc").compute(ctx)
        before_arcc = counter.calls
        arcc = R.get_metric("arcc").compute(ctx)
        assert len(calls) == 1  # coherency once for ADCC and ARCC
        assert counter.calls == before_arcc  # ARCC reused ROAD's imputed images and ADCC's coherency
    finally:
        counter.remove()
    ref = RD.road_combined(model, pixels[0], maps[0], 1, percentiles=(20, 60), seed=5)
    assert road == pytest.approx({"road_morf": ref.morf.mean, "road_lerf": ref.lerf.mean, "road": ref.combined})
    ref_arcc = RD.arcc(model, pixels[0], maps[0], 1, explain_fn=lambda x, t: maps[0], percentiles=(20, 60), seed=5)
    assert arcc["arcc"] == pytest.approx(ref_arcc.arcc)
    assert "road" not in E.DEFAULT_METRICS and "arcc" not in E.DEFAULT_METRICS
    assert not R.get_metric("road").default and not R.get_metric("arcc").default
    assert R.get_metric("road").columns[0].direction == "lower" and R.get_metric("road").columns[2].arrow == "↑"

"""The explainer's cache is an LRU per stage kind, bounded by ``STAGE_LIMITS``.

Driven on the embedded demo model and a bundled sample through many distinct α, T and θ:
no kind ever holds more than its limit, a recently used entry survives while the least
recently used one goes, a dropped entry asked again comes back equal (a new object with
the same values), and recomputing it re-runs only its own passes (the forward counter
shows no second capture of the image). Results show their stages' arrays (no copies).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from camwidgets.core import Explainer
from camwidgets.core.explainer import DEFAULT_STAGE_LIMIT, STAGE_LIMITS, stage_kind, stage_limit
from camwidgets.core.methods.icam import PERTURBATION_STAGES_KEPT
from camwidgets.datasets.samples import load_sample
from camwidgets.models.demo import load_demo_model

from .conftest import ForwardCounter

pytestmark = pytest.mark.usefixtures("single_thread")

N = 2  # perturbations per I-CAM stage: small, the bounds do not depend on it


@pytest.fixture
def setup() -> Iterator[tuple[Explainer, ForwardCounter]]:
    model, pre, _ = load_demo_model()
    c = ForwardCounter(model)
    exp = Explainer(model, load_sample("shapes-star")["image"], preprocess=pre)
    assert c.calls == 1
    c.calls = c.images = 0
    yield exp, c
    c.remove()


def _within_limits(exp: Explainer) -> None:
    for kind, (entries, limit) in exp.cache_info().items():
        assert limit == stage_limit(kind)
        assert entries <= limit, (kind, entries, limit)


def test_kinds_and_limits() -> None:
    assert stage_kind(("result", "icam", ())) == "result:icam"
    assert stage_kind(("icam-perturb", 0.4, 8, 0)) == "icam-perturb"
    assert stage_limit("result:icam") == STAGE_LIMITS["result:icam"] == PERTURBATION_STAGES_KEPT
    assert stage_limit("result:gradcam") == STAGE_LIMITS["result"]
    assert stage_limit("no-such-kind") == DEFAULT_STAGE_LIMIT
    assert all(v >= 1 for v in STAGE_LIMITS.values())


def test_icam_alpha_and_threshold_stay_bounded(setup) -> None:
    exp, c = setup
    alphas = [round(0.05 * i, 2) for i in range(1, 13)]  # 12 distinct α: 3x the perturbation stages kept
    thresholds = [round(0.5 + 0.02 * i, 2) for i in range(25)]  # 25 distinct T on one α
    for a in alphas:
        exp.icam(alpha=a, n=N)
        _within_limits(exp)
    assert c.calls == 1 + len(alphas)  # the all-layer capture once, then one pass per α
    for t in thresholds:
        exp.icam(alpha=alphas[-1], threshold=t, n=N)
        _within_limits(exp)
    assert c.calls == 1 + len(alphas)  # T runs no model pass
    info = exp.cache_info()
    assert info["icam-perturb"] == (PERTURBATION_STAGES_KEPT, PERTURBATION_STAGES_KEPT)
    assert info["result:icam"][0] == STAGE_LIMITS["result:icam"]
    assert info["icam-scores"][0] <= STAGE_LIMITS["icam-scores"]


def test_lru_hit_keeps_an_entry(setup) -> None:
    exp, c = setup
    k = PERTURBATION_STAGES_KEPT
    alphas = [0.1 * (i + 1) for i in range(k)]  # fills the perturbation stages, alphas[0] the oldest
    for a in alphas:
        exp.icam(alpha=a, n=N)
    calls = c.calls
    exp.icam(alpha=alphas[0], n=N, threshold=0.7)  # a new T on the oldest α: its stage is hit, now the newest
    assert c.calls == calls
    exp.icam(alpha=0.9, n=N)  # one more stage: drops the least recently used, alphas[1]
    assert c.calls == calls + 1
    exp.icam(alpha=alphas[0], n=N, threshold=0.8)  # recently used: its stage survived
    assert c.calls == calls + 1
    exp.icam(alpha=alphas[1], n=N, threshold=0.8)  # the oldest was dropped: one pass again
    assert c.calls == calls + 2
    # The results' own LRU: a hit returns the very object and keeps it past newer results.
    limit = stage_limit("result:icam")
    first = exp.icam(alpha=0.9, n=N, threshold=0.51)
    others = [exp.icam(alpha=0.9, n=N, threshold=0.52 + 0.01 * i) for i in range(limit - 1)]
    assert exp.icam(alpha=0.9, n=N, threshold=0.51) is first
    exp.icam(alpha=0.9, n=N, threshold=0.99)  # drops others[0], the least recently used
    assert exp.icam(alpha=0.9, n=N, threshold=0.51) is first
    assert exp.icam(alpha=0.9, n=N, threshold=0.52) is not others[0]


def test_stage_lru_and_keep(setup) -> None:
    exp, _ = setup
    made: list[int] = []

    def value(i: int) -> object:
        made.append(i)
        return object()

    objs = {i: exp.stage(("probe", i), lambda i=i: value(i)) for i in range(DEFAULT_STAGE_LIMIT)}
    assert exp.stage(("probe", 0), lambda: value(-1)) is objs[0]  # hit: 0 is now the most recent
    exp.stage(("probe", 99), lambda: value(99))  # drops 1, the least recently used
    assert exp.cache_info()["probe"] == (DEFAULT_STAGE_LIMIT, DEFAULT_STAGE_LIMIT)
    assert exp.stage(("probe", 0), lambda: value(-1)) is objs[0]
    again = exp.stage(("probe", 1), lambda: value(1))
    assert again is not objs[1] and made.count(1) == 2 and -1 not in made
    # keep= sets the kind's limit (the oldest dropped first).
    for i in range(5):
        exp.stage(("kept", i), lambda i=i: value(i), keep=2)
    assert exp.cache_info()["kept"] == (2, 2)
    assert exp.stage(("kept", 4), lambda: value(-1)) is not None and -1 not in made


def test_evicted_icam_result_is_equal_and_costs_only_its_pass(setup) -> None:
    exp, c = setup
    first = exp.icam(alpha=0.15, threshold=0.8, n=N)
    snapshot = {name: np.array(getattr(first, name)) for name in
                ("map", "raw", "layer_scores", "layer_weights", "perturbations", "svim", "mds",
                 "perturbation_weights", "input_saliency")}
    maps = {k: np.array(v) for k, v in first.layer_maps.items()}
    for i in range(2 * PERTURBATION_STAGES_KEPT):  # pushes the stage and the result out
        exp.icam(alpha=0.3 + 0.05 * i, threshold=0.8, n=N)
    calls, images = c.calls, c.images
    again = exp.icam(alpha=0.15, threshold=0.8, n=N)
    assert again is not first
    # One pass of the N perturbations: no capture of the image itself (its passes are never dropped).
    assert (c.calls - calls, c.images - images) == (1, N)
    for name, value in snapshot.items():
        np.testing.assert_array_equal(getattr(again, name), value, err_msg=name)
    assert again.kept_layers == first.kept_layers
    assert set(again.layer_maps) == set(maps)
    for k, v in maps.items():
        np.testing.assert_array_equal(again.layer_maps[k], v)
    _within_limits(exp)


def test_fusioncam_theta_stays_bounded_and_recomputes_equal(setup) -> None:
    exp, c = setup
    first = exp.fusioncam(theta=10)
    snapshot = {name: np.array(getattr(first, name)) for name in
                ("map", "gradient_map", "region_map", "combined_map", "similarity")}
    betas = dict(first.betas)
    limit = stage_limit("result:fusioncam")
    for theta in range(11, 11 + limit + 8):  # more distinct θ than results kept
        before = c.calls
        exp.fusioncam(theta=float(theta))
        assert c.calls - before == 2  # β of L_g, then β of L_gr: the region map and the baseline stay cached
        _within_limits(exp)
    assert exp.cache_info()["result:fusioncam"] == (limit, limit)
    before, images = c.calls, c.images
    again = exp.fusioncam(theta=10)
    assert again is not first
    assert (c.calls - before, c.images - images) == (2, 2)  # the same two single-image passes, nothing more
    # Equal to float32 rounding: the first call ran β_g in the batch [baseline, L_g, L_r], the recomputation
    # runs [L_g] alone (the baseline and β_r are cached), and a batch of another size rounds differently.
    for name, value in snapshot.items():
        np.testing.assert_allclose(getattr(again, name), value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert dict(again.betas) == pytest.approx(betas, rel=1e-5, abs=1e-7)
    assert exp.fusioncam(theta=10) is again  # now cached: the very object


def test_results_share_their_stages_arrays(setup) -> None:
    exp, _ = setup
    a = exp.icam(alpha=0.4, threshold=0.95, n=N)
    b = exp.icam(alpha=0.4, threshold=0.6, n=N)
    # One copy of the perturbed images and per-layer maps, however many thresholds.
    assert np.shares_memory(a.perturbations, b.perturbations)
    for name in set(a.layer_maps) & set(b.layer_maps):
        assert np.shares_memory(a.layer_maps[name], b.layer_maps[name])
    assert np.shares_memory(a.map, a.map_tensor.numpy())
    fused = exp.fusioncam(theta=20)
    assert np.shares_memory(fused.region_map, exp.scorecam().map)
    # Still immutable from the user's side: read-only, and numpy refuses to make them writable.
    for arr in (a.perturbations, a.map, a.layer_maps[a.kept_layers[0]], fused.region_map, fused.similarity):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.setflags(write=True)
        with pytest.raises(ValueError):
            arr[(0,) * arr.ndim] = 1.0


def test_shared_view_of_a_larger_storage_is_copied() -> None:
    from camwidgets.core.results import freeze_array

    big = torch.rand(4, 8, 8)
    part = freeze_array(big[1], share=True)  # a view would keep all of `big` alive: copied
    assert not np.shares_memory(part, big.numpy())
    whole = freeze_array(big, share=True)
    assert np.shares_memory(whole, big.numpy())
    writable = np.zeros(3)
    assert not np.shares_memory(freeze_array(writable, share=True), writable)
    assert freeze_array(whole, share=True) is whole

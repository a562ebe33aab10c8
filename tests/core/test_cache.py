"""The staged cache, proved by counting the model's forward calls (a forward-pre-hook).

Expected counts (see the table in :mod:`camwidgets.core.explainer`):

* construction: 1 forward recording every candidate layer, with a backward pass only as
  deep as the default layer;
* gradient methods on the default layer: 0; on any other candidate layer: 1 forward (+ full
  backward) once, which records every candidate's gradient and the input gradient; on a
  layer that is not a candidate: 1, once;
* I-CAM: that all-layer capture once (its input saliency and per-layer maps), then 1 batched
  forward of the n perturbations per (alpha, n, seed); threshold, bias and sigma changes: 0;
* UnionCAM / Fusion-CAM: a theta change costs exactly 2 single-image forwards. This is
  the minimum: the combined map ``L_gr = normalise(β_g L_g + β_r L_r)`` needs ``β_g`` of the
  new denoised map first (forward 1), then its own contribution ``β_gr`` (forward 2). The
  region map, ``β_r`` and the baseline's probability stay cached;
* same parameters twice: 0, and the very same result object.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core import Explainer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def setup(demo: nn.Module, image64: torch.Tensor, counter):
    c = counter(demo)
    exp = Explainer(demo, image64)
    assert c.calls == 1
    c.calls = 0
    return exp, c


def test_gradient_methods_need_no_pass(setup) -> None:
    exp, c = setup
    for m in ("gradcam", "gradcampp", "xgradcam", "layercam"):
        getattr(exp, m)()
    assert c.calls == 0  # the default layer's gradient came with construction
    for m in ("gradcam", "gradcampp", "xgradcam", "layercam"):
        for layer in exp.candidate_layers:
            getattr(exp, m)(layer)
    assert c.calls == 1  # one capture recorded every other candidate's gradient
    exp.input_gradient()
    assert c.calls == 1  # ... and the input gradient
    exp.gradcam("layer4.1.conv2")  # not a candidate: one capture, once
    exp.layercam("layer4.1.conv2")
    assert c.calls == 2


def test_scorecam_batches_and_cache(setup) -> None:
    exp, c = setup
    res = exp.scorecam(batch_size=32)
    k_run = int((~res.skipped).sum())
    assert c.calls == res.forward_passes == max(1, math.ceil(k_run / 32))
    assert exp.scorecam(batch_size=32) is res
    other = exp.scorecam(batch_size=7)  # the scores are cached: no pass, same map
    assert c.calls == res.forward_passes and other is not res
    np.testing.assert_array_equal(other.map, res.map)
    exp.ablationcam()
    n_abl = c.calls
    exp.ablationcam()
    assert c.calls == n_abl


def test_icam_stages(setup) -> None:
    exp, c = setup
    first = exp.icam(alpha=0.4, threshold=0.95, n=4)
    assert c.calls == 2  # the all-layer capture, then one batched forward (+ backward) of the 4 perturbations
    assert exp.icam(alpha=0.4, threshold=0.95, n=4) is first
    exp.icam(alpha=0.4, threshold=0.6, n=4)
    exp.icam(alpha=0.4, threshold=0.6, n=4, bias="none")
    exp.icam(alpha=0.4, threshold=0.6, n=4, bias="spatial", sigma=0.5)
    assert c.calls == 2  # threshold, bias, sigma: no model pass
    exp.icam(alpha=0.2, threshold=0.95, n=4)
    assert c.calls == 3  # alpha: the perturbation stage only
    exp.icam(alpha=0.4, threshold=0.8, n=4)
    assert c.calls == 3  # back to a cached alpha


@pytest.mark.parametrize("method", ["fusioncam", "unioncam"])
def test_theta_costs_two_sequential_forwards(setup, method: str) -> None:
    exp, c = setup
    region = exp.scorecam()
    n_region = c.calls
    assert n_region == region.forward_passes
    first = getattr(exp, method)(theta=10)
    assert c.calls - n_region == 2  # [baseline, L_g, L_r] in one batch, then L_gr
    assert getattr(exp, method)(theta=10) is first
    before = c.calls
    getattr(exp, method)(theta=30)
    assert c.calls - before == 2
    getattr(exp, method)(theta=10)
    assert c.calls - before == 2  # cached


def test_scorecam_paper_variant_caches_its_baseline(setup) -> None:
    exp, c = setup
    ref = exp.scorecam()
    n_ref = c.calls
    paper = exp.scorecam(variant="paper", baseline="black")
    assert c.calls - n_ref == ref.forward_passes + 1  # the masked batches + the black baseline, once
    assert exp.scorecam(variant="paper", baseline="black") is paper
    exp.unioncam()  # UnionCAM's default baseline is also "black": cached, not rerun
    assert c.calls - n_ref == ref.forward_passes + 1 + 2
    np.testing.assert_allclose(paper.weights, paper.scores)  # w_k = score_k in the paper variant
    assert paper.params["variant"] == "paper"


def test_icam_keeps_the_last_four_perturbation_stages(setup) -> None:
    exp, c = setup
    for alpha in (0.1, 0.2, 0.3, 0.4, 0.5):
        exp.icam(alpha=alpha, n=2)
    assert c.calls == 6  # the all-layer capture once, then one perturbation stage per alpha
    exp.icam(alpha=0.5, n=2, threshold=0.7)
    exp.icam(alpha=0.2, n=2, threshold=0.7)
    assert c.calls == 6  # still cached
    exp.icam(alpha=0.1, n=2, threshold=0.7)
    assert c.calls == 7  # the oldest stage was dropped and is recomputed

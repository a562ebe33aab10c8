"""Failure modes seen in peer libraries that camwidgets must not have (one test each)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core import Explainer, explain_batch

pytestmark = pytest.mark.usefixtures("single_thread")


def test_batch_is_never_silently_reduced_to_first_image(demo: nn.Module, counter) -> None:
    """pytorch-grad-cam #264: a batch with one target explained only the first image."""
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    c = counter(demo)
    with pytest.raises(ValueError, match="batch of 2"):
        Explainer(demo, images)
    assert c.calls == 0
    results = explain_batch(demo, images, "gradcam", targets=[3, 5])
    assert [r.target for r in results] == [3, 5]
    for i, r in enumerate(results):
        single = Explainer(demo, images[i], target=[3, 5][i]).gradcam()
        np.testing.assert_allclose(r.map, single.map, atol=1e-6)
    assert not np.allclose(results[0].map, results[1].map)
    # One target for all images is applied to each image, not only the first.
    same = explain_batch(demo, images, "gradcam", targets=4)
    assert [r.target for r in same] == [4, 4]
    assert not np.allclose(same[0].map, same[1].map)


def test_explainers_are_freed_without_gc(demo: nn.Module, image64: torch.Tensor) -> None:
    """Re-creating explainers in a loop must not grow memory: no reference cycles."""
    gc.collect()
    gc.disable()
    try:
        refs = []
        for _ in range(3):
            exp = Explainer(demo, image64)
            res = exp.gradcam()
            exp.scorecam(layer="layer4.1", batch_size=64)
            exp.fusioncam()
            refs += [weakref.ref(exp), weakref.ref(exp._acts["layer4.1"]), weakref.ref(res.map_tensor)]
            del exp, res
        assert all(r() is None for r in refs)  # freed by reference counting alone
    finally:
        gc.enable()
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in demo.modules())


def test_frozen_params_second_explainer_no_grad_inference_mode(demo: nn.Module,
                                                                image64: torch.Tensor) -> None:
    """'cannot register a hook on a tensor that doesn't require gradient' must not happen."""
    reference = Explainer(demo, image64).gradcam().map
    demo.requires_grad_(False)
    first = Explainer(demo, image64)
    second = Explainer(demo, image64)  # a second explainer on the same model
    np.testing.assert_allclose(first.gradcam().map, reference, atol=1e-6)
    np.testing.assert_allclose(second.layercam().map, Explainer(demo, image64).layercam().map, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(Explainer(demo, image64).gradcam().map, reference, atol=1e-6)
    with torch.inference_mode():
        inf_image = image64.clone()
        np.testing.assert_allclose(Explainer(demo, inf_image).gradcam().map, reference, atol=1e-6)
    assert not any(p.requires_grad for p in demo.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_work_stays_on_cuda(demo: nn.Module, image64: torch.Tensor) -> None:
    model = demo.cuda()
    exp = Explainer(model, image64)
    for res in (exp.gradcam(), exp.scorecam(), exp.icam(n=2), exp.fusioncam()):
        assert res.map_tensor.device.type == "cuda"
    np.testing.assert_allclose(exp.gradcam().map, Explainer(demo.cpu(), image64).gradcam().map, atol=1e-4)

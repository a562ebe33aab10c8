"""Batches of images run as batches: Explainer.batch, explain_batch, evaluate(image_batch=...), prefetch.

What is checked: an explainer built from a batched pass is the per-image explainer (same
class, logits, maps, up to the summation order of a batched convolution); the passes really
are batched (forward calls counted); a batch leaves the model as it was, also when it fails;
evaluate's rows do not depend on ``image_batch``, and a bad item in a batch fails alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camwidgets
from camwidgets.core import Explainer, explain_batch
from camwidgets.core import metric_registry as R
from camwidgets.core import metrics as M
from camwidgets.core.evaluate import DEFAULT_METRICS
from camwidgets.datasets import Shapes, each_class

from .conftest import ForwardCounter


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Any]:
    model, preprocess, _ = camwidgets.load_demo_model()
    return model, preprocess


def test_batch_explainers_equal_the_single_image_ones(demo: nn.Module, single_thread: None) -> None:
    g = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(4)]
    targets = [None, 3, None, 5]
    counter = ForwardCounter(demo)
    try:
        batch = Explainer.batch(demo, images, targets)
    finally:
        counter.remove()
    assert (counter.calls, counter.images) == (1, 4)  # one forward (with its backward) for the four images
    for image, target, b in zip(images, targets, batch, strict=True):
        one = Explainer(demo, image, target)
        assert b.target == one.target and (target is None or b.target == target)
        assert b.candidate_layers == one.candidate_layers
        np.testing.assert_allclose(b.logits, one.logits, atol=1e-5)
        np.testing.assert_allclose(b.probabilities, one.probabilities, atol=1e-6)
        for method in ("gradcam", "layercam", "gradcampp", "icam"):  # icam: every layer's gradient, later
            np.testing.assert_allclose(getattr(b, method)().map, getattr(one, method)().map, atol=1e-4,
                                       err_msg=method)
    assert _no_hooks(demo)


def test_batch_groups_images_by_size_and_each_explainer_owns_its_tensors(demo: nn.Module,
                                                                         single_thread: None) -> None:
    g = torch.Generator().manual_seed(8)
    images = [torch.rand(3, s, s, generator=g) for s in (64, 48, 64)]
    counter = ForwardCounter(demo)
    try:
        batch = Explainer.batch(demo, images, 2)
    finally:
        counter.remove()
    assert counter.calls == 2 and counter.images == 3  # one pass per input size
    assert [b.size for b in batch] == [(64, 64), (48, 48), (64, 64)]
    assert [b.target for b in batch] == [2, 2, 2]
    np.testing.assert_allclose(batch[1].gradcam().map, Explainer(demo, images[1], 2).gradcam().map, atol=1e-4)
    a = batch[0].activation(batch[0].default_layer)
    # a copy of its own row: keeping one explainer does not keep the whole batch's activations
    assert a.untyped_storage().nbytes() == a.numel() * a.element_size()


def test_batch_refuses_bad_input_before_any_pass_and_leaves_the_model_as_it_was(demo: nn.Module) -> None:
    demo.train()
    counter = ForwardCounter(demo)
    try:
        good = torch.rand(3, 32, 32)
        with pytest.raises(ValueError, match="Got 1 targets for 2 images"):
            Explainer.batch(demo, [good, good], [1])
        with pytest.raises(ValueError, match="out of range"):  # the demo's head is known: 8 classes
            Explainer.batch(demo, [good, good], [1, 99])
        with pytest.raises(ValueError, match=r"channel|image|shape|mode"):  # the second image is not an image
            Explainer.batch(demo, [good, np.zeros((32, 32, 7))])
        assert counter.calls == 0
    finally:
        counter.remove()
    generic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="Target class 5 is out of range: the model has 3 classes"):
        Explainer.batch(generic, [good, good], [0, 5])  # found after the forward pass, before the backward
    assert _no_hooks(generic) and _no_hooks(demo)
    assert demo.training and all(m.training for m in demo.modules())  # modes restored


def test_explain_batch_runs_one_pass(demo: nn.Module, single_thread: None) -> None:
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    counter = ForwardCounter(demo)
    try:
        maps = explain_batch(demo, images, "gradcam", targets=[1, None, 4])
    finally:
        counter.remove()
    assert (counter.calls, counter.images) == (1, 3)
    for i, res in enumerate(maps):
        one = Explainer(demo, images[i], [1, None, 4][i]).gradcam()
        assert res.target == one.target
        np.testing.assert_allclose(res.map, one.map, atol=1e-4)


def test_curves_and_coherency_take_the_known_logits(demo: nn.Module, single_thread: None) -> None:
    """Given the unmasked logits, insertion / deletion / coherency run no unmasked pass of their own."""
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(4))
    exp = Explainer(demo, img)
    emap = exp.gradcam().map
    logits = exp.logits_tensor[None]
    for fn in (M.insertion, M.deletion):
        counter = ForwardCounter(demo)
        try:
            given = fn(demo, img, emap, exp.target, steps=8, logits=logits)
        finally:
            counter.remove()
        assert counter.images == 9  # the 9 steps only
        assert given.auc == pytest.approx(fn(demo, img, emap, exp.target, steps=8).auc, abs=1e-6)
    counter = ForwardCounter(demo)
    try:
        coh = M.coherency(demo, img, exp.gradcam(), exp.target, logits=logits)
    finally:
        counter.remove()
    assert counter.calls == 1  # the re-explained masked image's own pass only
    assert coh == pytest.approx(M.coherency(demo, img, exp.gradcam(), exp.target), abs=1e-6)
    with pytest.raises(ValueError, match=r"logits must be a tensor \(N, num_classes\) for the 1 image"):
        M.insertion(demo, img, emap, exp.target, logits=logits[0])


def _contexts(model: nn.Module, preprocess: Any, items: list[dict[str, Any]], method: str,
              explain_many: Any = None) -> list[R.MetricContext]:
    out = []
    for item in items:
        geo = preprocess.geometry(camwidgets.load_image(item["image"]))
        norm = camwidgets.core.Preprocess(mean=preprocess.mean, std=preprocess.std)
        exp = Explainer(model, geo, item["label"], preprocess=norm)

        def explain_fn(masked: torch.Tensor, t: int, norm: Any = norm) -> Any:
            return getattr(Explainer(model, masked, t, preprocess=norm), method)()

        out.append(R.MetricContext(model=model, pixels=geo, saliency_map=getattr(exp, method)().map,
                                   target=exp.target, preprocess=norm, steps=10, batch_size=64,
                                   explain_fn=explain_fn, logits=exp.logits_tensor[None], explain_many=explain_many))
    return out


def test_prefetch_batches_the_shared_passes_and_gives_the_per_image_values(trained: tuple[nn.Module, Any],
                                                                           single_thread: None) -> None:
    model, preprocess = trained
    items = [Shapes(3, seed=21)[i] for i in range(3)]
    norm = camwidgets.core.Preprocess(mean=preprocess.mean, std=preprocess.std)

    def explain_many(masked: torch.Tensor, targets: Any) -> list[Any]:
        return [e.gradcam() for e in Explainer.batch(model, masked, list(targets), preprocess=norm)]

    metrics = ["average_drop", "increase_in_confidence", "insertion", "deletion", "adcc"]
    batched = _contexts(model, preprocess, items, "gradcam", explain_many)
    counter = ForwardCounter(model)
    try:
        R.prefetch(batched, metrics)
        # confidence: 1 pass of 3 masked images; the curves: 33 images each in one pass of 64 or less;
        # coherency: one batched explainer pass of the 3 masked images
        assert (counter.calls, counter.images) == (1 + 1 + 1 + 1, 3 + 33 + 33 + 3)
        after = counter.calls
        values = [{k: v for m in metrics for k, v in R.get_metric(m).compute(ctx).items()} for ctx in batched]
        assert counter.calls == after  # every metric found its pass done
    finally:
        counter.remove()
    alone = _contexts(model, preprocess, items, "gradcam")
    for got, ctx in zip(values, alone, strict=True):
        want = {k: v for m in metrics for k, v in R.get_metric(m).compute(ctx).items()}
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], abs=1e-3 if k in ("insertion", "deletion") else 1e-4), k


def test_every_metric_declares_the_shared_passes_it_reads(trained: tuple[nn.Module, Any]) -> None:
    """What a metric's compute reads through ctx.shared (string keys) is what its `shares` names,
    and every declared pass has a batched computation: prefetch cannot miss one or invent one."""
    model, preprocess = trained
    item = Shapes(1, seed=22)[0]
    for metric in R.list_metrics():
        (ctx,) = _contexts(model, preprocess, [{**item}], "gradcam")
        ctx.mask = item["mask"]
        read: list[Any] = []
        original = ctx.shared

        def spy(key: Any, compute: Any, original: Any = original, read: list[Any] = read) -> Any:
            read.append(key)
            return original(key, compute)

        ctx.shared = spy  # type: ignore[method-assign]
        if metric.name in ("road", "arcc"):
            ctx.params = {"road": {"percentiles": (50,)}}
        metric.compute(ctx)
        assert {k for k in read if isinstance(k, str)} == set(metric.shares), metric.name
        assert set(metric.shares) <= set(R.SHARED_PASSES)


def _compare_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [(r["index"], r["method"]) for r in a] == [(r["index"], r["method"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k, va in ra.items():
            vb = rb[k]
            if k.endswith("seconds"):
                continue
            if isinstance(va, float) and isinstance(vb, float) and not (math.isnan(va) and math.isnan(vb)):
                # the curves rank pixels by the map: a 1e-7 change can swap two tied pixels' order
                tol = 2e-3 if k in ("insertion", "deletion", "over_all") else 1e-4
                assert va == pytest.approx(vb, abs=tol), (ra["index"], ra["method"], k)
            else:
                assert va == vb, (ra["index"], ra["method"], k)


def test_evaluate_rows_do_not_depend_on_image_batch(trained: tuple[nn.Module, Any], single_thread: None) -> None:
    model, preprocess = trained
    data = list(Shapes(3, seed=23)) + [each_class(Shapes(1, seed=24, scene="pair"))[i] for i in range(2)]
    kw: dict[str, Any] = {"preprocess": preprocess, "steps": 10, "progress": False}
    methods = ["gradcam", "layercam", "fusioncam"]
    calls = {}
    rows = {}
    for image_batch in (1, 4):
        counter = ForwardCounter(model)
        try:
            res = camwidgets.evaluate(model, data, methods, DEFAULT_METRICS, image_batch=image_batch, **kw)
        finally:
            counter.remove()
        assert not res.errors
        calls[image_batch], rows[image_batch] = (counter.calls, counter.images), res.rows
    _compare_rows(rows[1], rows[4])
    assert {r["discrimination"] is None for r in rows[4]} == {True, False}  # the pair scored per class
    # the same images through the model, in fewer passes
    assert calls[4][1] == calls[1][1] and calls[4][0] < calls[1][0]


def test_a_bad_item_in_a_batch_fails_alone(trained: tuple[nn.Module, Any], single_thread: None) -> None:
    model, preprocess = trained
    good = list(Shapes(3, seed=25))
    data = [good[0], {"image": b"not an image", "label": 1}, good[1], {**good[2], "label": 42}]
    kw: dict[str, Any] = {"preprocess": preprocess, "steps": 10, "progress": False, "on_error": "skip",
                          "metrics": ["average_drop", "insertion", "adcc"]}
    batched = camwidgets.evaluate(model, data, ["gradcam"], image_batch=4, **kw)
    assert [(e["index"], e["stage"]) for e in batched.errors] == [(1, "item"), (3, "item")]
    assert "out of range" in batched.errors[1]["error"]
    alone = camwidgets.evaluate(model, [good[0], good[1]], ["gradcam"], image_batch=1, **kw)
    _compare_rows([{**r, "index": {0: 0, 2: 1}[r["index"]]} for r in batched.rows], alone.rows)


def test_a_bad_map_in_a_batch_fails_alone() -> None:
    """A map that fails its metric (NaN) makes the batched metric pass fail: each item is then scored
    alone, and only the bad one is an error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    images = [torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]

    class Maps:
        def __init__(self, model: nn.Module, image: Any, **kw: Any) -> None:
            self.image = torch.as_tensor(image)

        def flat(self) -> np.ndarray:
            m = self.image.mean(0).numpy().astype(np.float64)
            m = (m - m.min()) / (m.max() - m.min())
            if abs(float(self.image[0, 0, 0]) - float(images[1][0, 0, 0])) < 1e-9:
                m[0, 0] = np.nan
            return m

    res = camwidgets.evaluate(model, images, ["flat"], ["average_drop", "deletion"], explainer_factory=Maps,
                              steps=4, progress=False, on_error="skip", image_batch=8)
    assert [e["index"] for e in res.errors] == [1] and "NaN" in res.errors[0]["error"]
    assert [r["index"] for r in res.rows] == [0, 2]
    for r in res.rows:
        emap = Maps(model, images[r["index"]]).flat()
        assert r["average_drop"] == pytest.approx(M.average_drop(model, images[r["index"]], emap), abs=1e-4)


def test_image_batch_must_be_a_positive_int() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="image_batch must be a positive int"):
            camwidgets.evaluate(model, [torch.rand(3, 8, 8)], ["gradcam"], image_batch=bad, progress=False)

"""The metric registry: entries are complete, evaluate reads it, shared passes run once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import camwidgets
from camwidgets.core import evaluate as E
from camwidgets.core import metric_registry as R
from camwidgets.core import metrics as M

from .conftest import ForwardCounter


def test_entries_are_complete_and_evaluate_reads_them() -> None:
    entries = R.list_metrics()
    assert [m.name for m in entries if m.default] == list(E.DEFAULT_METRICS)
    assert {m.name for m in entries if not m.default} == {"road", "arcc"}  # costlier than insertion + deletion
    assert {m.name: m.column_names for m in entries} == dict(E.METRIC_COLUMNS)
    columns = [c.name for m in entries for c in m.columns]
    assert len(columns) == len(set(columns))  # one column, one metric
    for m in entries:
        assert m.label and m.summary and m.reference
        assert all(c.direction in ("higher", "lower", None) for c in m.columns)
    assert R.get_metric("deletion").columns[0].direction == "lower"
    assert R.get_metric("deletion").columns[0].arrow == "↓"
    with pytest.raises(ValueError, match="Unknown metric 'auc'; choose from average_drop"):
        R.get_metric("auc")


def test_evaluate_refuses_unknown_names_before_any_work() -> None:
    model, pre, _ = camwidgets.load_demo_model()
    calls = []

    class Data:
        def __len__(self) -> int:
            return 1

        def __getitem__(self, i: int) -> dict:
            calls.append(i)
            raise AssertionError("no item may be loaded")

    with pytest.raises(ValueError, match="Unknown metric"):
        camwidgets.evaluate(model, Data(), ["gradcam"], ["average_drop", "auc"], preprocess=pre, progress=False)
    with pytest.raises(ValueError, match=r"methods\['gradcamm'\]: Unknown method 'gradcamm'"):
        camwidgets.evaluate(model, Data(), ["gradcamm"], ["average_drop"], preprocess=pre, progress=False)
    with pytest.raises(ValueError, match=r"methods\['s'\]: scorecam: variant must be one of"):
        camwidgets.evaluate(model, Data(), {"s": {"method": "scorecam", "variant": "x"}}, ["average_drop"],
                            preprocess=pre, progress=False)
    assert calls == []


def test_shared_confidence_pass_and_values_equal_the_functions() -> None:
    model, pre, _ = camwidgets.load_demo_model()
    sample = camwidgets.load_sample("shapes-star")
    exp = camwidgets.Explainer(model, sample["image"], preprocess=pre)
    emap = exp.gradcam().map
    pixels = pre.geometry(camwidgets.load_image(sample["image"]))
    norm = camwidgets.Preprocess(mean=pre.mean, std=pre.std)
    ctx = R.MetricContext(model=model, pixels=pixels, saliency_map=emap, target=exp.target, preprocess=norm,
                          steps=16, mask=None, box=None)
    counter = ForwardCounter(model)
    try:
        ad = R.get_metric("average_drop").compute(ctx)
        after_ad = counter.calls
        ic = R.get_metric("increase_in_confidence").compute(ctx)
        assert after_ad > 0 and counter.calls == after_ad  # IC reuses AD's passes
        ins = R.get_metric("insertion").compute(ctx)
        before = counter.calls
        R.get_metric("over_all").compute(ctx)
        dele_calls = counter.calls - before
        R.get_metric("deletion").compute(ctx)
        assert counter.calls - before == dele_calls  # over_all reused insertion, then deletion is cached
    finally:
        counter.remove()
    assert ad["average_drop"] == pytest.approx(M.average_drop(model, pixels, emap, exp.target, norm))
    assert ic["increase_in_confidence"] == pytest.approx(M.increase_in_confidence(model, pixels, emap,
                                                                                   exp.target, norm))
    assert ins["insertion"] == pytest.approx(M.insertion(model, pixels, emap, exp.target, norm, steps=16).auc)
    none = R.get_metric("localisation").compute(ctx)
    assert set(none) == set(R.get_metric("localisation").column_names) and all(v is None for v in none.values())
    mask = np.zeros(emap.shape, bool)
    mask[tuple(np.unravel_index(np.argmax(emap), emap.shape))] = True
    hit = R.get_metric("pointing_game").compute(R.MetricContext(model=model, pixels=pixels, saliency_map=emap,
                                                                target=0, mask=mask))
    assert hit == {"pointing_game": 1.0}
    with pytest.raises(ValueError, match="explain_fn"):
        R.get_metric("adcc").compute(ctx)
    assert isinstance(pixels, torch.Tensor)

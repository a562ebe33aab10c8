"""On a model with many channels at its default layer the explorer picks the registry's fast defaults,
says so, and uses fewer live curve steps; a value the user gave is kept. Metrics come AD/IC, curves, ADCC."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camwidgets
from camwidgets.widgets import CAMExplorer
from camwidgets.widgets import explorer as explorer_module
from camwidgets.widgets.controller import METRIC_COLUMN as COL

REGION = camwidgets.core.methods.get("fusioncam").param("region")


def wide_cnn(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, channels, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)).eval()


IMAGE = np.random.default_rng(0).random((24, 24, 3)).astype(np.float32)


def make(model: nn.Module, **kw: Any) -> CAMExplorer:
    ex = CAMExplorer(model=model, image=IMAGE, methods=["gradcam", "fusioncam"], background=False, **kw)
    assert ex.message == ""
    return ex


def test_the_registry_has_a_fast_region_default() -> None:
    assert REGION.fast_default is not None and REGION.fast_default != REGION.default
    assert REGION.fast_default in REGION.allowed()


def test_a_wide_model_gets_the_fast_region_map_and_a_note() -> None:
    channels = explorer_module.FAST_ABOVE_CHANNELS + 88
    ex = make(wide_cnn(channels), metrics=False)
    try:
        assert ex.auto_params[("fusioncam", "region")] == REGION.fast_default
        assert ex.results["fusioncam"].params["region"] == REGION.fast_default
        assert ex.param_controls["fusioncam"]["region"].value == REGION.fast_default  # the menu shows it
        assert f"{channels} channels" in ex.options_note.value
        assert f"{channels} forward passes" in ex.options_note.value
        assert ex.curve_steps == explorer_module.LARGE_MODEL_CURVE_STEPS
        # choosing the default in the menu runs it, and the note goes
        ex.param_controls["fusioncam"]["region"].value = REGION.default
        assert ex.results["fusioncam"].params["region"] == REGION.default
        assert ex.options_note.value == ""
    finally:
        ex.close()


def test_a_value_the_user_gave_is_kept_and_a_narrow_model_keeps_the_defaults() -> None:
    channels = explorer_module.FAST_ABOVE_CHANNELS + 88
    ex = make(wide_cnn(channels), metrics=False, method_params={"fusioncam": {"region": REGION.default}},
              curve_steps=7)
    try:
        assert ("fusioncam", "region") not in ex.auto_params
        assert ex.results["fusioncam"].params["region"] == REGION.default
        assert ex.options_note.value == "" and ex.curve_steps == 7
    finally:
        ex.close()
    ex = make(wide_cnn(explorer_module.FAST_ABOVE_CHANNELS), metrics=False)
    try:
        assert not ex.auto_params and ex.results["fusioncam"].params["region"] == REGION.default
        assert ex.curve_steps == explorer_module.CURVE_STEPS
    finally:
        ex.close()


def test_metrics_run_ad_ic_then_curves_then_adcc() -> None:
    ex = make(wide_cnn(16), curve_steps=4)
    seen: list[str] = []
    ex.status.observe(lambda c: seen.append(c["new"]), "value")
    try:
        ex.theta = 20.0  # a new Fusion-CAM map (Grad-CAM is cached), with the status observed from the start
        assert set(ex.timings) >= {"maps", "metrics", "curves", "adcc"}
        for row in ex.metric_values.values():
            assert all(isinstance(row[COL[k]], float)
                       for k in ("average_drop", "increase_in_confidence", "insertion", "deletion", "adcc"))
        curve_at = next(i for i, s in enumerate(seen) if "Insertion AUC / Deletion AUC of" in s)
        adcc_at = next(i for i, s in enumerate(seen) if "ADCC re-runs" in s)
        assert curve_at < adcc_at and "(4 steps)" in seen[curve_at]
        assert "ADCC in" in seen[-1]
    finally:
        ex.close()


def test_bad_curve_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="curve_steps must be a positive integer"):
        CAMExplorer(model=wide_cnn(4), image=IMAGE, curve_steps=0, background=False)

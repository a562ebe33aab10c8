"""The explorer's method toggles and parameter controls come from the method registry."""

import ipywidgets as widgets
import numpy as np
import pytest

import camwidgets
from camwidgets.widgets import DEFAULT_METHODS, METHOD_LABELS, CAMExplorer


@pytest.fixture(scope="module")
def explorer():
    ex = CAMExplorer(methods=["gradcam", "fusioncam"], metrics=False, curves=False, background=False,
                     method_params={"fusioncam": {"region": "reciprocam"}})
    assert ex.message == ""
    yield ex
    ex.close()


def test_toggles_and_labels_follow_the_registry(explorer):
    entries = camwidgets.methods()
    assert list(explorer.method_toggles) == [m.name for m in entries]
    assert {m.name: m.label for m in entries} == METHOD_LABELS
    assert [b.description for b in explorer.method_toggles.values()] == [m.label for m in entries]
    assert tuple(m.name for m in entries if m.in_explorer) == DEFAULT_METHODS


def test_method_params_reach_the_method_and_build_controls(explorer):
    fusion = explorer.results["fusioncam"]
    assert fusion.params["region"] == "reciprocam"
    np.testing.assert_array_equal(fusion.region_map, explorer.explainer.explain("reciprocam").map)
    region = explorer.param_controls["fusioncam"]["region"]
    assert isinstance(region, widgets.Dropdown) and region.value == "reciprocam"
    assert set(region.options) == set(camwidgets.core.methods.names("region"))
    # the shared sliders are not duplicated: theta is Fusion-CAM's θ slider
    assert "theta" not in explorer.param_controls["fusioncam"]
    assert region in explorer.options_box.children


def test_moving_a_method_control_recomputes_that_method(explorer):
    before = explorer.results["fusioncam"]
    explorer.param_controls["fusioncam"]["region"].value = "ablationcam"
    after = explorer.results["fusioncam"]
    assert after is not before and after.params["region"] == "ablationcam"
    assert explorer.results["gradcam"] is explorer.explainer.gradcam()  # unchanged, cached
    explorer.theta = 25
    assert explorer.results["fusioncam"].params == {**after.params, "theta": 25.0}


def test_a_new_method_shown_gets_its_controls(explorer):
    explorer.methods = ["gradcam", "fusioncam", "scorecam"]
    assert explorer.results["scorecam"].params["variant"] == "gradcam"
    explorer.param_controls["scorecam"]["variant"].value = "paper"
    assert explorer.results["scorecam"].params["variant"] == "paper"
    assert explorer.param_controls["scorecam"]["variant"] in explorer.options_box.children


def test_bad_method_params_are_refused_before_any_widget():
    with pytest.raises(ValueError, match="fusioncam: region must be one of"):
        CAMExplorer(metrics=False, method_params={"fusioncam": {"region": "gradcam"}})
    with pytest.raises(ValueError, match="shared controls"):
        CAMExplorer(metrics=False, method_params={"icam": {"alpha": 0.2}})
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        CAMExplorer(metrics=False, method_params={"nope": {}})

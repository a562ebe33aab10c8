"""The explorer's controller, driven directly (no widget), and the pane registry."""

from __future__ import annotations

import dataclasses

import ipywidgets
import numpy as np
import pytest

from camwidgets.core import methods as registry
from camwidgets.models import load_demo_model
from camwidgets.widgets import CAMExplorer, ExplorerController, PaneSpec, map_pane
from camwidgets.widgets import panes as panes_module
from camwidgets.widgets.panes import MIMETYPE, PaneContext, pane_specs


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


class Forwards:
    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(lambda *_: setattr(self, "n", self.n + 1))

    def remove(self):
        self.handle.remove()


def _controller(demo, **kw):
    model, pre, names = demo
    kw.setdefault("methods", ["gradcam", "icam", "fusioncam"])
    kw.setdefault("background", False)
    return ExplorerController(model, "shapes-star", preprocess=pre, class_names=names, **kw)


def test_controller_holds_no_widget_and_computes_on_start(demo):
    events: list[str] = []
    ctrl = _controller(demo, metrics=True, curve_steps=4, start=False)
    ctrl.subscribe(events.append)
    assert ctrl.results == {} and events == []  # nothing computed before start()
    ctrl.start()
    assert not any(isinstance(v, ipywidgets.Widget) for v in vars(ctrl).values())
    assert list(ctrl.results) == ["gradcam", "icam", "fusioncam"]
    # one event per stage, in order: the image, each method's map, all maps, then the metrics
    shown = [e for e in events if e != "status"]
    assert shown[:5] == ["image", "map", "map", "map", "maps"], shown
    assert "curves" in shown and shown.index("curves") > shown.index("maps")
    assert set(ctrl.metric_values) == set(ctrl.results)
    assert all(v is not None for row in ctrl.metric_values.values() for v in row.values())
    assert ctrl.status.startswith("star: maps in") and ctrl.level == "success" and ctrl.progress == 1.0
    ctrl.close()


def test_moving_t_reselects_layers_without_a_model_pass(demo):
    ctrl = _controller(demo, metrics=False)
    first = ctrl.results["icam"]
    counter = Forwards(ctrl.model)
    try:
        ctrl.threshold = 0.7
    finally:
        counter.remove()
    assert counter.n == 0
    icam = ctrl.results["icam"]
    assert icam is not first and len(icam.kept_layers) < len(first.kept_layers)
    assert ctrl.results["gradcam"] is not None and ctrl.results["fusioncam"].params["theta"] == 10.0
    ctrl.close()


def test_a_t_step_that_keeps_the_layers_says_so(demo):
    ctrl = _controller(demo, metrics=False, methods=["icam"])
    ctrl.threshold = 0.70
    kept = ctrl.results["icam"].kept_layers
    assert "keeps the same" not in ctrl.status
    ctrl.threshold = 0.69  # the demo model's layer scores: the same layers at 0.69 and 0.70
    assert ctrl.results["icam"].kept_layers == kept
    assert f"T = 0.69 keeps the same {len(kept)} layers as T = 0.70: I-CAM's map is unchanged" in ctrl.status
    ctrl.threshold = 0.95  # more layers: nothing to say
    assert "keeps the same" not in ctrl.status
    ctrl.close()


def test_bad_values_and_images_are_refused_with_the_state_kept(demo):
    ctrl = _controller(demo, metrics=False)
    before = dict(ctrl.results)
    assert ctrl.set_image(b"not an image") is False
    assert "not an image" in ctrl.message and ctrl.level == "danger"
    assert ctrl.results == before
    with pytest.raises(Exception, match="out of range"):
        ctrl.target = 99
    with pytest.raises(ValueError, match="shared controls"):
        ctrl.set_method_param("fusioncam", "theta", 3)
    with pytest.raises(ValueError):
        ctrl.set_method_param("fusioncam", "region", "no-such-method")
    ctrl.set_method_param("fusioncam", "region", "reciprocam")
    assert ctrl.results["fusioncam"].params["region"] == "reciprocam"
    ctrl.close()
    assert ctrl.results == {} and ctrl.explainer is None and ctrl.set_image("shapes-star") is False


def test_every_pane_builds_from_the_registry(demo):
    ctrl = _controller(demo, metrics=True, curve_steps=4, methods=[m.name for m in registry.methods()
                                                                    if m.name in ("gradcam", "icam", "fusioncam")])
    specs = pane_specs(ctrl)
    names = [s.name for s in specs]
    assert names == ["gradcam", "fusioncam", "icam", "icam_scores", "icam_maps", "perturbations", "fusion",
                     "metrics", "curves"]
    ctx = PaneContext(ctrl)
    for spec in specs:
        fig = spec.figure(ctx)
        assert fig.layout.title.text, spec.name
    # a map pane draws its method's map over the image, values as computed
    fig = map_pane("gradcam").figure(ctx)
    assert np.array_equal(np.asarray(fig.data[1].z), ctrl.results["gradcam"].map)
    ctrl.close()


def test_a_new_pane_is_one_registry_entry(demo, monkeypatch):
    """A pane added to PANES appears in its tab, is drawn from its inputs, and redrawn when they change."""
    import plotly.graph_objects as go

    def figure(ctx):
        icam = ctx.controller.results.get("icam")
        weights = [] if icam is None else list(icam.layer_weights)
        return go.Figure(go.Bar(y=weights), layout={"title": {"text": f"{len(weights)} weights"}})

    extra = PaneSpec("weights", "Layer weights", "Weights", lambda c: "icam" in c.methods,
                     lambda ctx: (ctx.controller.results.get("icam"),), figure)
    monkeypatch.setattr(panes_module, "PANES", (*panes_module.PANES, extra))
    model, pre, names = demo
    ex = CAMExplorer(model, "shapes-star", preprocess=pre, class_names=names, methods=["gradcam", "icam"],
                     metrics=False, background=False)
    try:
        assert "Weights" in ex.details.titles
        pane = ex.panes["weights"]
        n = len(ex.results["icam"].kept_layers)
        assert pane.outputs[0]["data"][MIMETYPE]["layout"]["title"]["text"] == f"{n} weights"
        draws = pane.draws
        ex.theta = 25.0  # Fusion-CAM only: I-CAM's result, and this pane, stay as they are
        assert pane.draws == draws
        ex.threshold = 0.6
        assert pane.draws == draws + 1
        assert ex.figures["weights"].layout.title.text == f"{len(ex.results['icam'].kept_layers)} weights"
    finally:
        ex.close()


def test_pane_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        map_pane("gradcam").name = "x"  # type: ignore[misc]


def test_sanity_check_from_the_explorer(demo):
    """The display tab's button runs the model-parameter randomisation test of the shown maps; its tab
    comes with the result and leaves with the class it was about."""
    import torch

    model, pre, names = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ex = CAMExplorer(model, "shapes-star", preprocess=pre, class_names=names,
                     methods=["gradcam", "layercam", "fusioncam"], metrics=False, background=False)
    try:
        assert "Sanity check" not in ex.details.titles and ex.controller.sanity is None
        ex.sanity_button.click()
        res = ex.controller.sanity
        assert res.methods == ("gradcam", "layercam")  # Fusion-CAM runs region passes per step: left out
        assert ex.details.titles[ex.details.selected_index] == "Sanity check"
        assert "sanity" in ex.figures and len(ex.figures["sanity"].data) >= 2
        sim = res.similarity["gradcam"]["spearman_abs"]
        assert sim[0] == 1.0 and sim[-1] < 0.6  # every layer randomised: Grad-CAM's map is another map
        assert "sanity check in" in ex.controller.status
        ex.target = 0  # another class: the result said nothing about it
        assert ex.controller.sanity is None and "Sanity check" not in ex.details.titles
        assert "sanity" not in ex.figures
    finally:
        ex.close()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_metrics_table_comes_from_the_registry_with_ground_truth_on_samples(demo):
    """The live table is the registry's in_explorer metrics (no list of its own), cheapest first;
    on a bundled sample the ground-truth columns score the map against the explained class's own
    object, live as the class changes, and show "no value" (NaN) where the image has no such object."""
    from camwidgets.core import metric_registry as metric_reg
    from camwidgets.core import metrics as M
    from camwidgets.datasets import load_sample
    from camwidgets.widgets.controller import EXPLORER_METRICS, METRIC_COLUMN, METRIC_COLUMNS

    assert [m.name for m in EXPLORER_METRICS] == [m.name for m in metric_reg.list_metrics() if m.in_explorer]
    assert len(METRIC_COLUMNS) == len(EXPLORER_METRICS) and METRIC_COLUMN["average_drop"] == "AD % ↓"
    costs = {m.name: m.cost for m in EXPLORER_METRICS}
    assert costs["discrimination"] == 0 < costs["average_drop"] < costs["insertion"] < costs["adcc"]

    model, pre, names = demo
    sample = load_sample("pair-crescent-triangle")
    ctrl = ExplorerController(model, "pair-crescent-triangle", preprocess=pre, class_names=names,
                              methods=["gradcam", "layercam"], metrics=True, curve_steps=4, background=False)
    try:
        for cls in ("crescent", "triangle"):
            ctrl.target = names.index(cls)
            other = "triangle" if cls == "crescent" else "crescent"
            for method, row in ctrl.metric_values.items():
                emap = ctrl.results[method].map
                own = M.energy_pointing_game(emap, sample["masks"][cls])
                ref = M.class_discrimination(emap, sample["masks"][cls], sample["masks"][other])
                assert row[METRIC_COLUMN["energy_pointing_game"]] == pytest.approx(own, abs=1e-9)
                assert row[METRIC_COLUMN["discrimination"]] == pytest.approx(ref.discrimination, abs=1e-9)
                assert row[METRIC_COLUMN["discrimination"]] > 0.1, (cls, method)  # the map is on its own object
                assert row[METRIC_COLUMN["average_drop"]] == pytest.approx(
                    float(M.average_drop(model, ctrl.explainer.image, emap, ctrl.explainer.target, pre)), abs=1e-6)
        ctrl.target = names.index("star")  # no star in the image: no ground truth, the rest computed
        row = ctrl.metric_values["gradcam"]
        assert np.isnan(row[METRIC_COLUMN["energy_pointing_game"]]) and np.isnan(row[METRIC_COLUMN["discrimination"]])
        assert not np.isnan(row[METRIC_COLUMN["average_drop"]])
        ctrl.set_image(np.asarray(sample["image"].permute(1, 2, 0)))  # the same pixels, uploaded: no masks
        ctrl.target = names.index("crescent")
        assert np.isnan(ctrl.metric_values["gradcam"][METRIC_COLUMN["discrimination"]])
    finally:
        ctrl.close()

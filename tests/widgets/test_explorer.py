"""CAMExplorer driven through its traitlets, without a browser."""

import time

import numpy as np
import pytest
import torch

from camwidgets.core.metrics import class_discrimination
from camwidgets.datasets import load_sample
from camwidgets.widgets import CAMExplorer
from camwidgets.widgets.controller import DEMO_IMAGE
from camwidgets.widgets.controller import METRIC_COLUMN as COL


class PassCounter:
    """Counts forward calls of a model's top module (added and removed by the test)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.n += 1

    def remove(self):
        self.handle.remove()


def _z(fig):
    return np.array(fig.data[1].z, dtype=np.float32, copy=True)


@pytest.fixture(scope="module")
def explorer():
    ex = CAMExplorer(metrics=False, curves=False)
    assert ex.wait(120)
    assert ex.message == ""
    return ex


def test_opens_on_demo_model_with_default_panes(explorer):
    assert list(explorer.results) == ["gradcam", "layercam", "fusioncam", "icam"]  # registry order
    for m in explorer.results:
        z = _z(explorer.figures[m])
        assert z.shape == (128, 128) and float(z.max()) == pytest.approx(1.0) and float(z.min()) >= 0.0
        assert np.array_equal(z, explorer.results[m].map)
    # the pair scene's larger object is the prediction
    assert explorer.explainer.target == explorer.class_names.index(load_sample(DEMO_IMAGE)["label"])
    # the target dropdown offers top-5 first, then every class
    opts = explorer.target_picker.options
    assert opts[0][1] is None and len(opts) == 1 + len(explorer.class_names)
    # ... and shows its first entry ("predicted: ..."), not a blank box: value None alone selects nothing
    assert explorer.target_picker.index == 0 and explorer.target_picker.label.startswith("predicted")


def test_the_class_menu_moves_every_map_from_one_object_to_the_other(explorer):
    scene = load_sample(DEMO_IMAGE)
    assert set(scene["labels"]) == {"crescent", "triangle"}
    try:
        for name, other in (scene["labels"], scene["labels"][::-1]):
            explorer.target = explorer.class_names.index(name)
            assert explorer.wait(120) and explorer.message == ""
            assert explorer.explainer.target == explorer.class_names.index(name)
            for method, result in explorer.results.items():
                d = class_discrimination(result.map, scene["masks"][name], scene["masks"][other])
                # most of the energy the two objects hold is on the explained one
                assert d.energy_target > 2 * d.energy_other, (name, method, d)
                assert d.pointing_other == 0.0, (name, method, d)
    finally:
        explorer.target = None
        assert explorer.wait(120)


def test_threshold_redraws_only_icam_and_runs_no_model_pass(explorer):
    before = {m: _z(explorer.figures[m]) for m in explorer.results}
    scores_before = np.array(explorer.figures["icam_scores"].data[0].marker.color)
    results_before = dict(explorer.results)
    counter = PassCounter(explorer.model)
    try:
        explorer.threshold = 0.6
        assert explorer.wait(60)
    finally:
        counter.remove()
    assert counter.n == 0
    assert explorer.results["icam"] is not results_before["icam"]
    for m in ("gradcam", "layercam", "fusioncam"):
        assert explorer.results[m] is results_before[m]
        assert np.array_equal(_z(explorer.figures[m]), before[m])
    kept = explorer.results["icam"].kept_layers
    assert len(kept) < len(results_before["icam"].kept_layers)
    assert not np.array_equal(_z(explorer.figures["icam"]), before["icam"])
    colors = np.array(explorer.figures["icam_scores"].data[0].marker.color)
    assert (colors != scores_before).any()
    explorer.threshold = 0.95
    assert explorer.wait(60)


def test_theta_reruns_only_fusion_with_bounded_forward_passes(explorer):
    results_before = dict(explorer.results)
    counter = PassCounter(explorer.model)
    try:
        explorer.theta = 30
        assert explorer.wait(60)
    finally:
        counter.remove()
    # Fusion-CAM's θ stage: the denoised map's contribution, then the combined map's
    # (which depends on it); the region map, its β and the baseline stay cached.
    assert 1 <= counter.n <= 2
    assert explorer.results["fusioncam"] is not results_before["fusioncam"]
    assert explorer.results["fusioncam"].params["theta"] == 30
    for m in ("gradcam", "layercam", "icam"):
        assert explorer.results[m] is results_before[m]
    fusion_titles = [a.text for a in explorer.figures["fusion"].layout.annotations]
    assert any("θ=30" in t for t in fusion_titles)


def test_alpha_reruns_only_the_perturbations(explorer):
    before = dict(explorer.results)
    explorer.alpha = 0.7
    assert explorer.wait(60)
    assert explorer.results["icam"].params["alpha"] == pytest.approx(0.7)
    assert not np.array_equal(explorer.results["icam"].perturbations, before["icam"].perturbations)
    assert all(explorer.results[m] is before[m] for m in ("gradcam", "layercam", "fusioncam"))
    assert "α = 0.70" in explorer.figures["perturbations"].layout.title.text


def test_rapid_moves_compute_once_more_and_show_the_last_value(explorer):
    explorer.wait(60)
    started = explorer.controller._runner.started
    for i in range(100):
        explorer.theta = float(i % 50)
    explorer.theta = 17.0
    assert explorer.wait(120)
    # at most the computation already running plus one for the latest value
    assert explorer.controller._runner.started - started <= 2
    assert explorer.results["fusioncam"].params["theta"] == 17.0
    assert np.array_equal(_z(explorer.figures["fusioncam"]), explorer.results["fusioncam"].map)


def test_sliders_clamp_and_bad_values_are_refused(explorer):
    explorer.alpha = 3.0
    assert explorer.alpha == 1.0
    with pytest.raises(Exception, match="out of range"):
        explorer.target = 99
    with pytest.raises(Exception, match="Unknown method"):
        explorer.methods = ["gradcam", "magic"]
    explorer.alpha = 0.4
    assert explorer.wait(60)


def test_non_image_upload_shows_a_message_and_the_explorer_still_works(explorer):
    before = explorer.results["gradcam"]
    assert explorer.set_image(b"this is a text file, not a PNG", label="upload: notes.txt") is False
    assert "not an image" in explorer.message and "not an image" in explorer.status.value
    assert explorer.results["gradcam"] is before
    assert explorer.set_image("shapes-circle")
    assert explorer.wait(120)
    assert explorer.message == ""
    assert explorer.results["gradcam"] is not before
    assert explorer.class_names[explorer.explainer.target] == "circle"


def test_target_and_method_toggles(explorer):
    explorer.target = 0
    assert explorer.wait(120)
    assert explorer.explainer.target == 0 and explorer.results["gradcam"].target == 0
    explorer.methods = ["gradcam", "scorecam"]
    assert explorer.wait(120)
    assert set(explorer.results) == {"gradcam", "scorecam"}
    assert [p.spec.name for p in explorer.maps_box.children] == ["gradcam", "scorecam"]
    # I-CAM's and Fusion-CAM's tabs leave with their methods
    assert not {"I-CAM layers", "I-CAM perturbations", "Fusion-CAM"} & set(explorer.details.titles)
    assert explorer.details.titles[-1] == "Display / export"
    assert "icam_scores" not in explorer.figures
    # the UI path: clicking a method's toggle button
    explorer.method_toggles["xgradcam"].value = True
    assert explorer.methods == ["gradcam", "xgradcam", "scorecam"]
    assert explorer.wait(120) and "xgradcam" in explorer.results
    explorer.methods = ["gradcam", "layercam", "fusioncam", "icam"]  # toggles are in registry order
    assert [b for b, t in explorer.method_toggles.items() if t.value] == explorer.methods
    explorer.target = None
    assert explorer.wait(120)


def test_controls_are_linked_to_the_traits(explorer):
    explorer.sliders["threshold"].value = 0.8
    assert explorer.threshold == 0.8
    explorer.theta = 12.0
    assert explorer.sliders["theta"].value == 12.0
    explorer.bias_picker.value = "none"
    assert explorer.bias == "none"
    assert explorer.wait(120)
    assert explorer.results["icam"].params["bias"] == "none"
    assert explorer.results["icam"].params["threshold"] == 0.8
    explorer.bias, explorer.threshold = "channel", 0.95
    explorer.opacity = 0.2  # a style change: no computation
    assert explorer.figures["gradcam"].data[1].opacity == 0.2
    assert explorer.wait(120)


def test_metrics_fill_the_table_after_the_maps():
    ex = CAMExplorer(methods=["gradcam", "layercam"], metrics=True, curves=True, curve_steps=10)
    assert ex.wait(300)
    assert ex.message == ""
    rows = ex.metric_values
    assert set(rows) == {"gradcam", "layercam"}
    for row in rows.values():
        assert 0.0 <= row[COL["average_drop"]] <= 100.0 and row[COL["increase_in_confidence"]] in (0.0, 100.0)
        assert 0.0 <= row[COL["adcc"]] <= 1.0
        assert 0.0 <= row[COL["deletion"]] <= 1.0 and 0.0 <= row[COL["insertion"]] <= 1.0
    cells = ex.figures["metrics"].data[0].cells.values
    assert list(cells[0]) == ["Grad-CAM", "LayerCAM"]
    assert len([t for t in ex.figures["curves"].data if t.visible is not False]) == 4


def test_exports(explorer, tmp_path):
    html = explorer.export_html(tmp_path / "cams.html").read_text()
    assert "plotly" in html.lower() and "Grad-CAM" in html
    doc = explorer.export_json(tmp_path / "cams.json")
    assert set(doc["results"]) == set(explorer.results)
    assert np.asarray(doc["results"]["gradcam"]["map"]).shape == (128, 128)


def test_bad_model_or_image_fails_before_building():
    with pytest.raises(ValueError, match=r"torch\.nn\.Module"):
        CAMExplorer(model="resnet")
    with pytest.raises(ValueError, match="not an image"):
        CAMExplorer(image=b"nope")


def test_user_model_with_torch_tensor_image():
    from camwidgets.models import load_demo_model

    model, pre, names = load_demo_model()
    ex = CAMExplorer(model, torch.rand(3, 128, 128), methods=["gradcam"], preprocess=pre, class_names=names,
                     metrics=False)
    assert ex.wait(120) and ex.message == ""
    assert ex.results["gradcam"].map.shape == (128, 128)


def test_maps_never_wait_for_metrics_and_stale_metrics_are_dropped(monkeypatch):
    import time

    from camwidgets.core import metrics as core_metrics

    real_adcc, real_coherency = core_metrics.adcc, core_metrics.coherency
    calls = []

    def slow_coherency(*args, **kwargs):
        calls.append(time.perf_counter())
        time.sleep(1.5)  # an expensive metric (on ResNet-50, Fusion-CAM's ADCC re-runs Score-CAM)
        return real_coherency(*args, **kwargs)

    monkeypatch.setattr(core_metrics, "coherency", slow_coherency)
    ex = CAMExplorer(methods=["gradcam", "fusioncam"], metrics=True, curves=False)
    assert ex.wait(120)
    before = ex.map_updates
    ex.theta = 33
    t0 = time.perf_counter()
    while ex.map_updates == before and time.perf_counter() - t0 < 60:
        time.sleep(0.01)
    # the new map is drawn while the metrics of the update are still being computed
    assert ex.map_updates == before + 1
    assert ex.controller._metrics_runner.busy
    ex.theta = 34  # supersedes the metrics still running
    assert ex.wait(120)
    assert ex.results["fusioncam"].params["theta"] == 34
    final = ex.metric_values["fusioncam"]
    assert final[COL["adcc"]] == pytest.approx(float(real_adcc(ex.model, ex.explainer.image, ex.results["fusioncam"],
                                                             target=ex.explainer.target,
                                                             preprocess=ex.preprocess).adcc))


def test_export_buttons_write_files(explorer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    explorer.export_folder.value = str(tmp_path / "out")
    explorer.export_buttons["json"].click()
    explorer.export_buttons["html"].click()
    assert (tmp_path / "out" / "camwidgets.json").is_file() and (tmp_path / "out" / "camwidgets.html").is_file()
    assert "saved" in explorer.status.value


def test_png_export_writes_one_png_per_visible_pane(explorer, tmp_path):
    import shutil

    if not (shutil.which("chromium") or shutil.which("google-chrome") or shutil.which("chrome")):
        pytest.skip("PNG export needs Chrome or Chromium (.ci/run installs Debian's chromium)")
    paths = explorer.export_png(tmp_path, scale=1)
    names = {p.stem for p in paths}
    assert {"gradcam", "layercam", "icam", "fusioncam", "icam_scores", "icam_maps", "perturbations", "fusion"} == names
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_upload_control_accepts_png_then_rejects_text(explorer):
    import datetime
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    png = {"name": "mine.png", "type": "image/png", "size": len(buf.getvalue()),
           "content": memoryview(buf.getvalue()), "last_modified": datetime.datetime(2026, 1, 1)}
    explorer.upload.value = (png,)
    assert explorer.upload.value == ()  # emptied, so the same file can be uploaded again
    assert explorer.wait(120) and explorer.message == ""
    assert explorer.image_picker.value == "(uploaded)"
    assert explorer.results["gradcam"].map.shape == (128, 128)
    before = explorer.results["gradcam"]
    text = dict(png, name="notes.txt", type="text/plain", content=memoryview(b"hello"), size=5)
    explorer.upload.value = (text,)
    assert "not an image" in explorer.message
    assert explorer.results["gradcam"] is before
    explorer.set_image("shapes-star")
    assert explorer.wait(120)


def test_map_panes_are_built_only_for_shown_methods():
    # a pane is built (and sent to the browser) only when it is shown
    ex = CAMExplorer(methods=["gradcam", "icam"], metrics=False)
    assert ex.wait(120)
    assert set(ex.panes) == {"gradcam", "icam", "icam_scores", "icam_maps", "perturbations"}
    assert "layercam" not in ex.figures
    ex.methods = ["gradcam", "icam", "layercam"]
    assert ex.wait(120)
    assert set(ex.panes) == {"gradcam", "icam", "layercam", "icam_scores", "icam_maps", "perturbations"}
    assert np.array_equal(_z(ex.figures["layercam"]), ex.results["layercam"].map)


def test_rapid_moves_still_finish_with_every_metric():
    # the metrics of the last update were dropped as stale while its own map update was running
    # (before the fix: in about 2 of 12 runs of this sequence)
    ex = CAMExplorer(methods=["gradcam", "icam"], metrics=True, curves=True, curve_steps=10)
    assert ex.wait(120)
    for t in np.linspace(0.5, 0.95, 10):
        ex.threshold = float(t)
    assert ex.wait(300)
    assert ex.results["icam"].params["threshold"] == pytest.approx(0.95)
    for method in ("gradcam", "icam"):
        assert all(v is not None for v in ex.metric_values[method].values()), ex.metric_values[method]


def test_a_first_upload_shows_the_uploaded_image():
    # The first upload adds "(uploaded)" to the image picker; new options make ipywidgets
    # re-select the first sample, which must not be loaded over the uploaded image.
    import io

    from PIL import Image

    ex = CAMExplorer(methods=["gradcam"], metrics=False)
    assert ex.wait(120)
    assert "(uploaded)" not in ex.image_picker.options
    pixels = (np.random.default_rng(1).random((96, 96, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    ex.set_image(buf.getvalue())
    assert ex.wait(120) and ex.message == ""
    assert ex.image_picker.value == "(uploaded)"
    expected = ex.preprocess.geometry(torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1))
    assert torch.allclose(ex.explainer.image.cpu(), expected, atol=1e-6)


def test_slider_moves_during_real_metrics_never_collide_on_the_model():
    # The map worker and the metrics worker share the model. Before the model lock, moving
    # alpha while AD/IC/ADCC/insertion ran made one worker's forward passes reach the other's
    # hooks: 39 of 60 moves ended in "Layer(s) ... ran more than once" errors.
    ex = CAMExplorer(methods=["gradcam", "icam", "fusioncam"], metrics=True, curves=True, curve_steps=10)
    assert ex.wait(120)
    errors = []
    ex.controller._runner._on_error = errors.append
    ex.controller._metrics_runner._on_error = errors.append
    for i in range(30):
        ex.alpha = round(0.1 + 0.01 * i, 2)
        if i % 3 == 0:
            ex.threshold = round(0.6 + 0.01 * i, 2)
        time.sleep(0.1)  # moves while the maps and metrics of the last ones run
    assert ex.wait(300)
    assert errors == [] and ex.message == ""
    assert ex.results["icam"].params["alpha"] == pytest.approx(0.39)
    for method in ("gradcam", "icam", "fusioncam"):
        assert all(v is not None for v in ex.metric_values[method].values()), ex.metric_values[method]


def test_a_stale_metric_stops_at_its_next_batch(monkeypatch):
    from camwidgets.core import metrics as core_metrics
    from camwidgets.core._hooks import Cancelled, checkpoint

    real_coherency = core_metrics.coherency
    outcome = []
    armed = []

    def long_coherency(*args, **kwargs):
        # ADCC's coherency as a metric of many batches (Fusion-CAM's on ResNet-50: ~70 s of Score-CAM
        # passes), the first time after the test arms it
        if not armed:
            return real_coherency(*args, **kwargs)
        armed.clear()
        try:
            for _ in range(1200):  # 60 s unless stopped
                checkpoint()
                time.sleep(0.05)
        except Cancelled:
            outcome.append("stopped")
            raise
        outcome.append("ran to the end")
        return real_coherency(*args, **kwargs)

    monkeypatch.setattr(core_metrics, "coherency", long_coherency)
    ex = CAMExplorer(methods=["fusioncam"], metrics=True, curves=False)
    assert ex.wait(120)
    armed.append(True)
    ex.theta = 33
    while not outcome and not ex.controller._metrics_runner.busy:
        time.sleep(0.01)
    time.sleep(0.3)  # the metrics of theta = 33 are in the long metric now
    ex.theta = 34
    assert ex.wait(120)
    assert outcome == ["stopped"]
    assert ex.message == ""
    assert ex.results["fusioncam"].params["theta"] == 34
    assert ex.metric_values["fusioncam"][COL["adcc"]] is not None

"""CAMExplorer.close(): nothing of a closed explorer stays registered, running or alive."""

import gc
import threading
import time
import weakref

import ipywidgets
import pytest
import torch
from ipywidgets.widgets import widget as widget_module

from camwidgets.models import load_demo_model
from camwidgets.widgets import CAMExplorer
from camwidgets.widgets._runner import LatestRunner
from camwidgets.widgets.panes import PaneContext, PaneView, map_pane


def _registered() -> int:
    """Widgets in ipywidgets' registry of live widgets (``_instances`` in 8.x, ``Widget.widgets`` in 7.x)."""
    registry = getattr(widget_module, "_instances", None)
    return len(registry if registry is not None else ipywidgets.Widget.widgets)


def _runner_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "camwidgets-runner"]


def _settle(timeout: float = 30.0) -> None:
    """Wait for runner threads (of earlier tests too) to end, then collect garbage."""
    deadline = time.perf_counter() + timeout
    while _runner_threads() and time.perf_counter() < deadline:
        time.sleep(0.05)
    gc.collect()


class PassCounter:
    """Counts forward calls of a model's top module."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.n += 1

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def demo():
    model, pre, names = load_demo_model()
    return model, pre, names


def _explorer(demo, **kw):
    model, pre, names = demo
    kw.setdefault("methods", ["gradcam", "icam"])
    return CAMExplorer(model, "shapes-star", preprocess=pre, class_names=names, **kw)


def _model_state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()))


def test_closed_explorers_leave_no_widgets_threads_or_objects(demo):
    model = demo[0]
    state_before = _model_state(model)
    _explorer(demo, metrics=False).close()  # first use: imports and lazily built state out of the count
    _settle()
    widgets_before, threads_before = _registered(), len(threading.enumerate())
    refs = []
    for i in range(20):
        if i % 2:  # closed while its first update (and then its metrics) may still be running
            ex = _explorer(demo, metrics=True, curves=True, curve_steps=5)
        else:  # closed after its update
            ex = _explorer(demo, metrics=False)
            assert ex.wait(120) and ex.message == ""
        refs.append(weakref.ref(ex))
        ex.close()
        del ex
    _settle()
    assert _registered() == widgets_before
    assert _runner_threads() == []
    assert len(threading.enumerate()) <= threads_before
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of 20 closed explorers are still alive"
    state_after = _model_state(model)
    assert state_after[1:] == state_before[1:]  # modes and hooks as they were
    assert all(torch.equal(state_after[0][k], v) for k, v in state_before[0].items())


def test_close_is_idempotent_and_a_closed_explorer_computes_nothing(demo):
    model = demo[0]
    ex = _explorer(demo, methods=["gradcam", "icam", "fusioncam"], metrics=True, curves=True, curve_steps=5)
    assert ex.wait(300) and ex.message == ""
    sliders, toggles = dict(ex.sliders), dict(ex.method_toggles)
    ex.close()
    ex.close()  # twice is fine
    started = (ex.controller._runner.started, ex.controller._metrics_runner.started)
    updates, threads = ex.map_updates, len(threading.enumerate())
    counter = PassCounter(model)
    try:
        ex.alpha, ex.threshold, ex.theta = 0.7, 0.6, 30
        ex.bias, ex.n_perturbations = "spatial", 4
        ex.target = 1
        ex.methods = ["layercam", "scorecam"]
        ex.opacity, ex.colorscale = 0.9, "Viridis"
        # ... and through the controls, as a (stale) frontend would
        sliders["alpha"].value = 0.2
        toggles["gradcampp"].value = True
        ex.n_slider.value = 16
        ex.bias_picker.value = "none"
        ex.target_picker.index = 2
        ex.image_picker.value = next(o for o in ex.image_picker.options if o != "shapes-star")
        accepted = ex.set_image(torch.rand(3, 64, 64))
        ex.wait(60)
    finally:
        counter.remove()
    assert counter.n == 0
    assert accepted is False
    assert ex.wait(1)
    assert (ex.controller._runner.started, ex.controller._metrics_runner.started) == started
    assert ex.map_updates == updates and len(threading.enumerate()) <= threads
    assert ex.message == ""
    # the links are gone: a control no longer moves the trait
    assert ex.alpha == 0.7
    # the explainers (the model's cached activations and gradients) and the results are released
    assert ex.explainer is None and ex.results == {} and not ex.controller._explainers
    assert all(p.figure is None for p in ex.panes.values()) and ex.figures == {}


def test_close_during_a_computation_stops_it_and_its_worker(demo):
    model = demo[0]
    _settle()
    ex = _explorer(demo, methods=["gradcam", "scorecam", "fusioncam"], metrics=True, curves=True,
                   curve_steps=20)
    time.sleep(0.2)  # the first update is under way
    t0 = time.perf_counter()
    ex.close()
    took = time.perf_counter() - t0
    assert _runner_threads() == []
    counter = PassCounter(model)
    try:
        time.sleep(0.5)
    finally:
        counter.remove()
    assert counter.n == 0
    assert took < 30
    assert ex.wait(1)


def test_runner_close_drops_the_waiting_job_and_refuses_new_ones():
    started, release, seen = threading.Event(), threading.Event(), []
    runner = LatestRunner()
    runner.submit(lambda: (started.set(), release.wait(5), seen.append("running")))
    assert started.wait(5)
    runner.submit(lambda: seen.append("waiting"))
    assert runner.superseded()
    done = threading.Thread(target=lambda: seen.append(runner.close(10)))
    done.start()
    time.sleep(0.1)
    release.set()
    done.join(10)
    assert seen == ["running", True]
    runner.submit(lambda: seen.append("after close"))
    assert runner.closed and not runner.busy and runner.close() is True
    assert seen == ["running", True]
    assert not runner._thread.is_alive()


def test_a_pane_view_closes_and_forgets_its_figure(demo):
    before = _registered()
    ex = _explorer(demo, metrics=False, background=False)
    ex.close()
    assert _registered() == before
    pane = PaneView(map_pane("gradcam"))
    ctrl = ex.controller  # closed: its results are gone, the pane draws the bare map slot
    assert pane.draw(PaneContext(ctrl)) and pane.figure is not None and pane.draws == 1
    assert not pane.draw(PaneContext(ctrl))  # same inputs: nothing drawn, nothing sent
    pane.close()
    pane.close()
    assert pane.figure is None and _registered() == before


def test_a_script_that_never_closes_its_explorer_exits_cleanly():
    """At exit the explorer's workers are stopped before Python tears down: a worker still inside
    a torch operation then aborted the process ("terminate called without an active exception")."""
    import subprocess
    import sys

    code = "import camwidgets; camwidgets.CAMExplorer()"  # exits while the first maps are computed
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "terminate called" not in proc.stderr

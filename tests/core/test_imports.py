"""One-way imports: the compute core never loads the widget stack (the core's import rule)."""

from __future__ import annotations

import subprocess
import sys


def test_core_import_leaves_widgets_out() -> None:
    code = (
        "import sys, camwidgets.core as core;"
        "[getattr(core, name) for name in core.__all__];"  # every public name, every submodule
        "bad = [m for m in ('ipywidgets', 'plotly', 'anywidget', 'camwidgets.widgets', 'camwidgets.viz') "
        "if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == ""


def test_core_all_is_explicit_and_importable() -> None:
    import camwidgets.core as core

    assert isinstance(core.__all__, list) and core.__all__
    for name in core.__all__:
        assert hasattr(core, name), name
    for name in ("Explainer", "explain_batch", "CAMResult", "ICAMResult", "UnionCAMResult", "FusionCAMResult",
                 "candidate_layers", "capture"):
        assert name in core.__all__


def _loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """The modules of ``watched`` found in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys; print(','.join(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    return [m for m in out.stdout.strip().split(",") if m]


# Plotly's FigureWidget (plotly.basewidget) imports plotly.io._renderers, which imports nbformat, which imports
# jsonschema, whose format checkers import rfc3987_syntax when it is installed (JupyterLab brings it): that one
# compiles some 20 Lark grammars on import, seconds on a small machine. The explorer uses no FigureWidget.
_WIDGET_STACK = ("torch", "torchvision", "ipywidgets", "plotly", "anywidget", "nbformat", "jsonschema",
                 "rfc3987_syntax")


def test_top_level_import_loads_nothing_heavy() -> None:
    """``import camwidgets`` is lazy: no torch, no widget stack, no schema validators."""
    assert _loaded_after("import camwidgets", _WIDGET_STACK) == []


def test_a_built_explorer_loads_no_figurewidget_nor_schema_validators() -> None:
    """Building (and drawing) the explorer on the demo model imports neither plotly.basewidget nor anywidget,
    nbformat, jsonschema or rfc3987_syntax: its panes are plain Plotly figures sent as JSON."""
    watched = ("plotly.basewidget", "anywidget", "nbformat", "jsonschema", "rfc3987_syntax")
    code = "from camwidgets import CAMExplorer; ex = CAMExplorer(background=False, metrics=False); ex.close()"
    assert _loaded_after(code, watched) == []


def test_core_metrics_import_leaves_scipy_out() -> None:
    """scikit-image's ``measure`` (and with it scipy.ndimage) is imported by the localisation metrics when
    they run, not with ``camwidgets.core.metrics``, which the explorer imports."""
    watched = ("skimage.measure", "scipy.ndimage")
    assert _loaded_after("import camwidgets.core.metrics", watched) == []


def test_every_top_level_name_imports() -> None:
    import camwidgets

    for name in camwidgets.__all__:
        exec(f"from camwidgets import {name}", {})


def test_explorer_on_the_demo_model_never_imports_torchvision() -> None:
    """torchvision (seconds to import: its ``ops`` import ``torch._dynamo``) is not needed by the demo
    model, whose BasicBlock is camwidgets' own: neither building the explorer nor drawing its first maps
    imports it, and the default layer is still the demo model's last block."""
    code = (
        "import sys, time, camwidgets\n"
        "ex = camwidgets.CAMExplorer()\n"
        "assert 'torchvision' not in sys.modules, 'imported by the construction'\n"
        "t = time.perf_counter()\n"
        "while ex.map_updates < 1 and not ex.message and time.perf_counter() - t < 240:\n"
        "    time.sleep(0.01)\n"
        "assert ex.map_updates >= 1, ex.message or 'no maps'\n"
        "assert ex.controller.explainer.default_layer == 'layer4.1', ex.controller.explainer.default_layer\n"
        "ex.close()"
    )
    assert _loaded_after(code, ("torchvision", "torch._dynamo")) == []


def test_core_at_work_loads_no_widget_stack() -> None:
    """Explaining with camwidgets.Explainer and running camwidgets.evaluate import neither plotly nor
    ipywidgets (nor anything of camwidgets.viz / camwidgets.widgets), nor torchvision for the demo model."""
    code = (
        "import camwidgets\n"
        "from camwidgets.datasets import Shapes, load_sample\n"
        "from camwidgets.models import load_demo_model\n"
        "model, pre, _ = load_demo_model()\n"
        "camwidgets.Explainer(model, load_sample('shapes-star')['image'], preprocess=pre).explain('gradcam')\n"
        "camwidgets.evaluate(model, Shapes(1, seed=3), methods=['gradcam'], metrics=['deletion'],\n"
        "                    preprocess=pre, steps=4, progress=False)"
    )
    watched = ("ipywidgets", "plotly", "anywidget", "camwidgets.widgets", "camwidgets.viz", "torchvision")
    assert _loaded_after(code, watched) == []

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

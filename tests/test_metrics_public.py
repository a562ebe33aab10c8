"""camwidgets.metrics re-exports camwidgets.core.metrics and core.road, and stays free of widget imports."""

from __future__ import annotations

import subprocess
import sys

import camwidgets
import camwidgets.core.metrics as core_metrics
import camwidgets.core.road as core_road
import camwidgets.metrics as public_metrics


def test_public_module_re_exports_the_core() -> None:
    assert sorted(public_metrics.__all__) == sorted([*core_metrics.__all__, *core_road.__all__])
    for module in (core_metrics, core_road):
        for name in module.__all__:
            assert getattr(public_metrics, name) is getattr(module, name), name
    assert camwidgets.metrics is public_metrics


def test_import_leaves_widget_libraries_out() -> None:
    code = (
        "import sys, camwidgets.metrics, camwidgets.core.metrics\n"
        "bad = [m for m in ('ipywidgets', 'plotly', 'anywidget') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

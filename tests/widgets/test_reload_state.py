"""A page reload, a second tab or a reopened notebook builds each pane from its widget state: it must be
the figure shown now. A pane is an ``Output`` whose state is the figure's Plotly JSON, set from the kernel."""

from __future__ import annotations

import json
from typing import Any

from camwidgets.widgets import CAMExplorer
from camwidgets.widgets.panes import MIMETYPE


def _state(pane: Any) -> dict[str, Any]:
    (out,) = pane.get_state()["outputs"]  # what the kernel syncs, and what a new view is built from
    assert out["output_type"] == "display_data"
    return out["data"][MIMETYPE]


def test_every_pane_state_is_the_figure_shown() -> None:
    ex = CAMExplorer(background=False, curve_steps=4)
    try:
        first = {name: json.dumps(_state(p)) for name, p in ex.panes.items()}
        ex.theta = 30.0
        ex.threshold = 0.8
        for name, pane in ex.panes.items():
            state = _state(pane)
            assert state["data"] == json.loads(pane.figure.to_json())["data"], name
            assert state["layout"]["title"] == json.loads(pane.figure.to_json())["layout"]["title"], name
            assert state["config"]["displaylogo"] is False
        # the state moved on from the first picture where the figure did, and only there
        assert json.dumps(_state(ex.panes["fusioncam"])) != first["fusioncam"]
        assert json.dumps(_state(ex.panes["fusion"])) != first["fusion"]
        assert json.dumps(_state(ex.panes["gradcam"])) == first["gradcam"]
        # nothing in the state is a FigureWidget's plotly.js bundle: a pane weighs a few hundred kB
        assert all(len(json.dumps(p.get_state())) < 600_000 for p in ex.panes.values())
    finally:
        ex.close()

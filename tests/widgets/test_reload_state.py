"""A page reload or a second tab builds each pane from its FigureWidget's synced state: it must be current."""

from __future__ import annotations

from typing import Any

import numpy as np

from camwidgets.widgets import CAMExplorer


def _synced(fig: Any) -> list[dict[str, Any]]:
    return list(fig._widget_data)


def _same_data(fig: Any) -> bool:
    """Every trace's arrays in the synced state equal the figure's current ones."""
    now, synced = [t.to_plotly_json() for t in fig.data], _synced(fig)
    if len(now) != len(synced):
        return False
    for a, b in zip(now, synced, strict=True):
        for key in ("z", "x", "y", "source", "cells", "header"):
            if key in a or key in b:
                va, vb = a.get(key), b.get(key)
                if isinstance(va, dict) or isinstance(vb, dict):
                    if str(va) != str(vb):
                        return False
                elif not np.array_equal(np.asarray(va, dtype=object), np.asarray(vb, dtype=object)):
                    return False
    return fig._widget_layout.get("title") == fig.layout.to_plotly_json().get("title")


def test_every_pane_state_follows_the_updates() -> None:
    ex = CAMExplorer(background=False, curve_steps=4)
    try:
        first = {name: [dict(t) for t in _synced(fig)] for name, fig in ex.figures.items()}
        ex.theta = 30.0
        ex.threshold = 0.8
        for name, fig in ex.figures.items():
            assert _same_data(fig), f"{name}: a new view would be built from a stale figure"
        # and the state did move on from the first picture where the figure did
        assert str(_synced(ex.figures["fusioncam"])) != str(first["fusioncam"])
        assert ex.figures["metrics"]._widget_data and _same_data(ex.figures["metrics"])
    finally:
        ex.close()

"""The Plotly panes: built once, then updated in place with the right data."""

from types import MappingProxyType, SimpleNamespace

import numpy as np
import pytest

from camwidgets.viz import cam as vz


def _icam(kept, n=3, alpha=0.4, threshold=0.9):
    layers = ("layer1.0", "layer2.0", "layer3.0", "layer4.0")
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    w = np.array([scores[layers.index(k)] for k in kept])
    return SimpleNamespace(
        candidate_layers=layers, layer_scores=scores, kept_layers=tuple(kept), layer_weights=w / w.sum(),
        layer_maps={k: np.full((8, 8), 0.5, np.float32) for k in kept},
        perturbations=np.random.default_rng(0).random((n, 3, 8, 8)).astype(np.float32),
        svim=np.linspace(0.5, 0.9, n), mds=np.linspace(0.9, 0.5, n), perturbation_weights=np.full(n, 0.7),
        params=MappingProxyType({"alpha": alpha, "threshold": threshold}), map=np.zeros((8, 8), np.float32))


def test_map_figure_overlays_and_updates_in_place():
    img = np.zeros((3, 6, 6), np.float32)
    fig = vz.map_figure(img, None, "Grad-CAM", opacity=0.3, colorscale="Viridis")
    assert fig.data[1].visible is False and fig.data[1].opacity == 0.3
    m = np.arange(36, dtype=np.float32).reshape(6, 6) / 35
    vz.update_map_figure(fig, m, title="new", opacity=0.8, colorscale="Hot")
    assert np.allclose(fig.data[1].z, m) and fig.data[1].visible is True
    assert fig.data[1].opacity == 0.8 and fig.layout.title.text == "new"
    assert len(fig.data) == 2  # nothing was added
    # with a colour bar the pane is wider by the bar, the plot area stays square
    wide = vz.map_figure(img, m, "Grad-CAM", size=200, colorbar=True)
    assert wide.data[1].showscale is True and wide.layout.width == 234 and wide.layout.height == 230


def test_layer_scores_mark_kept_layers_and_weights():
    fig = vz.layer_scores_figure(_icam(["layer4.0", "layer3.0"]))
    colors = list(fig.data[0].marker.color)
    assert colors == [vz._DROPPED, vz._DROPPED, vz._KEPT, vz._KEPT]
    assert np.allclose(fig.data[0].y, [0.1, 0.2, 0.3, 0.4])
    assert np.allclose(fig.data[1].y, [4 / 7, 3 / 7])
    assert "keeps 2 of 4" in fig.layout.title.text
    vz.update_layer_scores_figure(fig, _icam(["layer4.0"]))
    assert list(fig.data[0].marker.color).count(vz._KEPT) == 1


def test_layer_maps_keep_one_slot_per_candidate():
    fig = vz.layer_maps_figure(_icam(["layer4.0"]))
    assert len(fig.data) == 4
    assert fig.data[3].opacity == 1.0 and fig.data[0].opacity == pytest.approx(0.15)
    vz.update_layer_maps_figure(fig, _icam(["layer4.0", "layer1.0"]))
    assert len(fig.data) == 4 and fig.data[0].opacity == 1.0


def test_perturbation_strip_shows_weights(decode_png):
    res = _icam(["layer4.0"], n=3, alpha=0.25)
    fig = vz.perturbations_figure(res)
    assert len(fig.data) == 3
    shown = decode_png(fig.data[1].source)
    assert shown.shape == (8, 8, 3)
    assert np.array_equal(shown, np.round(res.perturbations[1].transpose(1, 2, 0) * 255).astype(np.uint8))
    assert "w=0.70" in fig.layout.annotations[0].text and "SVIM 0.50" in fig.layout.annotations[0].text
    assert fig.layout.title.text.startswith("α = 0.25")


def test_fusion_pane_shows_maps_and_betas():
    maps = [np.full((4, 4), v, np.float32) for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    res = SimpleNamespace(gradient_map=maps[0], region_map=maps[1], combined_map=maps[2], similarity=maps[3],
                          map=maps[4], params={"theta": 20},
                          betas={"gradient": 0.25, "region": 0.75, "combined": 0.6, "region_final": 0.4})
    fig = vz.fusion_figure(res)
    assert [float(np.asarray(t.z)[0, 0]) for t in fig.data] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    texts = [a.text for a in fig.layout.annotations]
    assert "θ=20" in texts[0] and "β_g=0.25" in texts[0] and "β_r=0.75" in texts[1]


def test_metrics_table_and_curves():
    fig = vz.metrics_figure(["AD % ↓", "IC % ↑", "energy PG ↑"])
    vz.update_metrics_figure(fig, {"Grad-CAM": {"AD % ↓": 12.3456, "IC % ↑": None, "energy PG ↑": float("nan")}})
    cells = fig.data[0].cells.values
    assert list(cells[0]) == ["Grad-CAM"] and list(cells[1]) == ["12.346"] and list(cells[2]) == ["…"]
    assert list(cells[3]) == ["–"]  # no value (no ground truth), unlike "…" (still computing)
    curves = vz.curves_figure()
    x = np.linspace(0, 1, 5)
    vz.update_curves_figure(curves, {"A": {"insertion": (x, x), "deletion": (x, 1 - x)}})
    assert [t.name for t in curves.data] == ["A insertion", "A deletion"]
    vz.update_curves_figure(curves, {"B": {"insertion": (x, x)}})
    assert len(curves.data) == 3 and curves.data[0].visible is False

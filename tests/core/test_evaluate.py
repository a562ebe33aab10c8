"""camwidgets.core.evaluate: rows, summary, files, resume, with an injected fake explainer."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core import metrics as M
from camwidgets.core.evaluate import EvaluationResult, evaluate, summarize, t_quantile_975
from camwidgets.core.explainer import Explainer
from camwidgets.core.image import load_image
from camwidgets.core.preprocess import Preprocess

from .conftest import masked_items


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()


def bright_map(img: torch.Tensor, power: float) -> np.ndarray:
    m = img.mean(dim=0)
    return (((m - m.min()) / (m.max() - m.min())) ** power).numpy()


class Fake:
    """A stand-in for camwidgets.Explainer with two deterministic 'methods'."""

    def __init__(self, log: list[tuple[str, int]], model: nn.Module, image: Any, target: int | None = None,
                 layers: Any = "auto", preprocess: Preprocess | None = None, fail_after: int | None = None,
                 ) -> None:
        img = load_image(image)
        self.img = preprocess.geometry(img) if preprocess is not None else img
        self.target = target
        self.log = log
        self.fail_after = fail_after

    def _record(self, name: str) -> None:
        if self.fail_after is not None and len(self.log) >= self.fail_after:
            raise KeyboardInterrupt
        self.log.append((name, int(self.target or 0)))

    def bright(self, power: float = 1.0) -> SimpleNamespace:
        self._record("bright")
        return SimpleNamespace(map=bright_map(self.img, power))

    def dark(self) -> SimpleNamespace:
        self._record("dark")
        return SimpleNamespace(map=1.0 - bright_map(self.img, 1.0))

    def broken(self) -> SimpleNamespace:
        raise RuntimeError("boom")


def factory(log: list[tuple[str, int]], fail_after: int | None = None) -> Any:
    def make(model: nn.Module, image: Any, **kw: Any) -> Fake:
        return Fake(log, model, image, fail_after=fail_after, **kw)
    return make


def dataset(n: int = 4, size: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    return masked_items(n, size, seed)


METHODS = ("bright", "dark")
FAST: dict[str, Any] = {"steps": 4, "progress": False}


def test_rows_match_the_metric_functions() -> None:
    model, data = small_cnn(), dataset()
    log: list[tuple[str, int]] = []
    res = evaluate(model, data, METHODS, explainer_factory=factory(log), **FAST)
    assert isinstance(res, EvaluationResult)
    assert [(r["index"], r["method"]) for r in res.rows] == [(i, m) for i in range(4) for m in METHODS]
    assert res.computed == 8 and res.errors == [] and res.paths == {}
    row = res.rows[3]  # image 1, "dark"
    img, emap, t = data[1]["image"], 1.0 - bright_map(data[1]["image"], 1.0), 1
    assert row["target"] == row["label"] == t
    assert row["average_drop"] == pytest.approx(M.average_drop(model, img, emap, t))
    assert row["increase_in_confidence"] == M.increase_in_confidence(model, img, emap, t)
    ins = M.insertion(model, img, emap, t, steps=4)
    dele = M.deletion(model, img, emap, t, steps=4)
    assert row["insertion"] == pytest.approx(ins.auc)
    assert row["deletion"] == pytest.approx(dele.auc)
    assert row["over_all"] == pytest.approx(float(ins.auc) - float(dele.auc))
    adcc = M.adcc(model, img, emap, t, explain_fn=lambda m, c: 1.0 - bright_map(m, 1.0))
    assert row["adcc"] == pytest.approx(adcc.adcc)
    assert row["coherency"] == pytest.approx(adcc.coherency)
    assert row["complexity"] == pytest.approx(adcc.complexity)
    mask = data[1]["mask"]
    assert row["energy_pointing_game"] == pytest.approx(M.energy_pointing_game(emap, mask))
    assert row["saliency_score"] == row["energy_pointing_game"]
    assert row["pointing_game"] == M.pointing_game(emap, mask)
    loc = M.localisation(emap, mask)
    assert (row["iou"], row["f1"], row["box_iou"]) == pytest.approx((loc.iou, loc.f1, loc.box_iou))
    assert row["seconds"] > 0 and row["metric_seconds"] > 0
    assert row["probability"] == pytest.approx(M.confidence_change(model, img, emap, t).original)
    # the ADCC re-run goes through the factory: 8 maps + 8 re-runs on x ⊙ E
    assert len(log) == 16


def test_summary_is_mean_and_student_t_interval() -> None:
    from scipy import stats

    res = evaluate(small_cnn(), dataset(6), METHODS, metrics=["deletion", "localisation"],
                   explainer_factory=factory([]), **FAST)
    vals = np.array([r["deletion"] for r in res.rows if r["method"] == "dark"])
    s = res.get("dark", "deletion")
    half = stats.t.ppf(0.975, 5) * vals.std(ddof=1) / np.sqrt(6)
    assert s["n"] == 6 and s["mean"] == pytest.approx(vals.mean())
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((vals.mean() - half, vals.mean() + half))
    assert {e["metric"] for e in res.summary} >= {"deletion", "iou", "f1", "box_iou", "seconds"}
    table = res.to_markdown(["deletion", "iou"])
    assert table.splitlines()[0] == "| method | deletion | iou |"
    assert "| dark | " in table and "±" in table
    one = summarize([{"method": "a", "x": 1.0}, {"method": "a", "x": None}])
    assert one == [{"method": "a", "metric": "x", "n": 1, "mean": 1.0, "std": None, "ci_low": None,
                    "ci_high": None}]


def test_t_quantile_matches_scipy() -> None:
    from scipy import stats

    for df in [1, 2, 5, 29, 30, 31, 40, 99, 499, 5000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_targets_label_predicted_and_fixed() -> None:
    model, data = small_cnn(), dataset(3)
    kw: dict[str, Any] = {"metrics": ["average_drop"], **FAST}
    by_label = evaluate(model, data, ["bright"], explainer_factory=factory([]), **kw)
    assert [r["target"] for r in by_label.rows] == [0, 1, 2]
    predicted = evaluate(model, data, ["bright"], target="predicted", explainer_factory=factory([]), **kw)
    assert all(r["target"] == r["predicted"] for r in predicted.rows)
    fixed = evaluate(model, data, ["bright"], target=2, explainer_factory=factory([]), **kw)
    assert [r["target"] for r in fixed.rows] == [2, 2, 2]
    with pytest.raises(ValueError, match="out of range"):
        evaluate(model, data, ["bright"], target=7, explainer_factory=factory([]), **kw)


def test_any_dataset_shape_works() -> None:
    model = small_cnn()
    imgs = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kw: dict[str, Any] = {"explainer_factory": factory([]), **FAST}
    bare = evaluate(model, imgs, ["bright"], **kw)  # a tensor of bare images: no label, no mask
    assert [r["label"] for r in bare.rows] == [None] * 3
    assert all(r["target"] == r["predicted"] for r in bare.rows)
    assert bare.rows[0]["iou"] is None and bare.rows[0]["average_drop"] is not None
    assert bare.get("bright", "iou")["n"] == 0
    gen = evaluate(model, ((im, 1) for im in imgs), ["bright"], metrics=["average_drop"], **kw)
    assert [r["label"] for r in gen.rows] == [1, 1, 1]
    boxes = evaluate(model, [{"image": im, "box": (0, 0, 3, 3)} for im in imgs], ["bright"],
                     metrics=["energy_pointing_game"], **kw)
    assert boxes.rows[0]["energy_pointing_game"] == pytest.approx(
        M.energy_pointing_game(bright_map(imgs[0], 1.0), (0, 0, 3, 3)))
    with pytest.raises(ValueError, match="without an 'image' key"):
        evaluate(model, [{"img": imgs[0]}], ["bright"], **kw)
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate(model, imgs, ["bright"], metrics=["accuracy"], **kw)


def test_masks_and_boxes_follow_the_geometry() -> None:
    model = small_cnn()
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    mask = np.zeros((16, 16), dtype=bool)
    mask[4:12, 8:16] = True
    pre = Preprocess(size=8)
    res = evaluate(model, [{"image": img, "mask": mask, "box": (8, 4, 15, 11)}], ["bright"],
                   metrics=["localisation", "energy_pointing_game"], preprocess=pre,
                   explainer_factory=factory([]), **FAST)
    small_mask = np.zeros((8, 8), dtype=bool)
    small_mask[2:6, 4:8] = True
    emap = bright_map(pre.geometry(img), 1.0)
    loc = M.localisation(emap, small_mask, box=(4, 2, 7, 5))
    row = res.rows[0]
    assert (row["iou"], row["box_iou"]) == pytest.approx((loc.iou, loc.box_iou))
    assert row["energy_pointing_game"] == pytest.approx(M.energy_pointing_game(emap, small_mask))


@pytest.mark.parametrize(("image_batch", "finished"), [(1, 5), (8, 4)])
def test_resume_after_interruption_computes_only_missing_rows(tmp_path: Path, image_batch: int,
                                                              finished: int) -> None:
    model, data = small_cnn(), dataset(4)
    kw: dict[str, Any] = {"metrics": ["average_drop", "deletion"], **FAST}
    full = evaluate(model, data, METHODS, explainer_factory=factory([]), **kw)

    # The 5th map raises. One item at a time, 5 rows were finished before it: item 0's two methods,
    # item 1's two, item 2's first; a batch of 4 items runs each method over all four first.
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, data, METHODS, out_dir=tmp_path, explainer_factory=factory([], fail_after=5),
                 image_batch=image_batch, **kw)
    saved = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(saved) == finished  # every finished row is on disk
    if image_batch == 8:
        assert [(r["index"], r["method"]) for r in saved] == [(i, METHODS[0]) for i in range(4)]
    assert not (tmp_path / ".lock").exists()  # the interrupted run let go of the folder

    log: list[tuple[str, int]] = []
    res = evaluate(model, data, METHODS, out_dir=tmp_path, explainer_factory=factory(log), **kw)
    assert len(log) == 8 - finished and res.computed == 8 - finished
    assert len(res.rows) == 8
    for a, b in zip(res.rows, full.rows, strict=True):
        assert (a["index"], a["method"]) == (b["index"], b["method"])
        assert a["average_drop"] == pytest.approx(b["average_drop"])
        assert a["deletion"] == pytest.approx(b["deletion"])

    # everything done: nothing recomputed
    log.clear()
    again = evaluate(model, data, METHODS, out_dir=tmp_path, explainer_factory=factory(log), **kw)
    assert log == [] and again.computed == 0 and len(again.rows) == 8

    # a torn last line (killed mid-write) is dropped and its row recomputed
    with (tmp_path / "rows.jsonl").open("a") as fh:
        fh.write('{"index": 3, "method": "da')
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    (tmp_path / "rows.jsonl").write_text("\n".join([*lines[:-2], lines[-1]]))
    log.clear()
    fixed = evaluate(model, data, METHODS, out_dir=tmp_path, explainer_factory=factory(log), **kw)
    assert len(log) == 1 and len(fixed.rows) == 8
    assert all(json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines())

    # a new method on resume: only its rows run
    log.clear()
    more = evaluate(model, data, {"bright": {}, "dark": {}, "bright2": {"method": "bright", "power": 2.0}},
                    out_dir=tmp_path, explainer_factory=factory(log), **kw)
    assert log == [("bright", i % 3) for i in range(4)] and len(more.rows) == 12


def test_resume_refuses_other_settings_and_resume_false_starts_over(tmp_path: Path) -> None:
    model, data = small_cnn(), dataset(2)
    kw: dict[str, Any] = {"metrics": ["average_drop"], **FAST}
    evaluate(model, data, ["bright"], path=tmp_path / "run.jsonl", explainer_factory=factory([]), **kw)
    with pytest.raises(ValueError, match=r"steps=4.*steps=5"):
        evaluate(model, data, ["bright"], path=tmp_path / "run", explainer_factory=factory([]),
                 metrics=["average_drop"], steps=5, progress=False)
    with pytest.raises(ValueError, match="Method 'bright' was run with"):
        evaluate(model, data, {"bright": {"power": 3.0}}, path=tmp_path / "run",
                 explainer_factory=factory([]), **kw)
    log: list[tuple[str, int]] = []
    res = evaluate(model, data, {"bright": {"power": 3.0}}, path=tmp_path / "run", resume=False,
                   explainer_factory=factory(log), **kw)
    assert len(log) == 2 and res.computed == 2


def test_files_written(tmp_path: Path) -> None:
    res = evaluate(small_cnn(), dataset(3), METHODS, path=tmp_path / "out" / "run",
                   metrics=["average_drop", "pointing_game"], explainer_factory=factory([]), **FAST)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert names == {"run.jsonl", "run.csv", "run.summary.json", "run.summary.csv", "run.config.json"}
    with (tmp_path / "out" / "run.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and rows[0]["method"] == "bright"
    assert float(rows[1]["average_drop"]) == pytest.approx(res.rows[1]["average_drop"])
    summary = json.loads((tmp_path / "out" / "run.summary.json").read_text())
    assert summary["n_rows"] == 6 and summary["config"]["metrics"] == ["average_drop", "pointing_game"]
    with (tmp_path / "out" / "run.summary.csv").open() as fh:
        srows = list(csv.DictReader(fh))
    assert {(r["method"], r["metric"]) for r in srows} >= {("dark", "pointing_game"), ("bright", "seconds")}
    assert res.paths["rows_csv"] == tmp_path / "out" / "run.csv"
    with pytest.raises(ValueError, match="not both"):
        evaluate(small_cnn(), dataset(1), METHODS, path=tmp_path / "a", out_dir=tmp_path,
                 explainer_factory=factory([]), **FAST)


def test_on_error_skip_records_and_retries(tmp_path: Path) -> None:
    model, data = small_cnn(), dataset(2)
    kw: dict[str, Any] = {"metrics": ["average_drop"], "out_dir": tmp_path, **FAST}
    res = evaluate(model, data, ["bright", "broken"], on_error="skip", explainer_factory=factory([]), **kw)
    assert len(res.rows) == 2 and [e["method"] for e in res.errors] == ["broken", "broken"]
    assert res.errors[0] == {"index": 0, "method": "broken", "stage": "method", "error": "RuntimeError: boom",
                             "attempts": 1}
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2
    again = evaluate(model, data, ["bright", "broken"], on_error="skip", explainer_factory=factory([]), **kw)
    assert again.computed == 0 and [e["attempts"] for e in again.errors] == [2, 2]  # retried, failed again
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, data, ["bright", "broken"], explainer_factory=factory([]), **kw)


def test_progress_bar_and_model_mode(capsys: pytest.CaptureFixture[str]) -> None:
    model = small_cnn().train()
    evaluate(model, dataset(2), ["bright"], metrics=["average_drop"], steps=4, progress=True,
             explainer_factory=factory([]))
    assert "evaluate" in capsys.readouterr().err
    assert model.training and all(m.training for m in model.modules())


def test_top_level_name() -> None:
    import camwidgets

    assert camwidgets.evaluate is evaluate


def test_end_to_end_with_the_real_explainer_and_demo_model() -> None:
    from camwidgets.core.explainer import Explainer
    from camwidgets.datasets.shapes import Shapes
    from camwidgets.models.demo import load_demo_model

    model, pre, _ = load_demo_model()
    data = Shapes(2, seed=1000)
    res = evaluate(model, data, ["gradcam", "layercam"], preprocess=pre, steps=4, progress=False)
    assert len(res.rows) == 4 and res.errors == []
    for row in res.rows:
        for key in ("insertion", "deletion", "adcc", "coherency", "complexity", "energy_pointing_game",
                    "iou", "precision", "recall", "f1", "box_iou"):
            assert 0.0 <= row[key] <= 1.0, key
        assert 0.0 <= row["average_drop"] <= 100.0 and row["seconds"] > 0
        assert row["target"] == row["label"]
    # the same numbers from the metric functions on the Explainer's own result object,
    # ADCC re-running the method from the result (no explain_fn)
    item, row = data[1], res.rows[2]
    result = Explainer(model, item["image"], target=item["label"], preprocess=pre).gradcam()
    assert row["method"] == "gradcam"
    adcc = M.adcc(model, item["image"], result, target=item["label"], preprocess=pre)
    assert row["adcc"] == pytest.approx(adcc.adcc, abs=1e-6)
    assert row["average_drop"] == pytest.approx(adcc.average_drop, abs=1e-6)
    dele = M.deletion(model, item["image"], result, item["label"], pre, steps=4)
    assert row["deletion"] == pytest.approx(dele.auc)
    assert row["iou"] == pytest.approx(M.localisation(result, item["mask"]).iou)
    assert all(m.training is False for m in model.modules())  # load_demo_model's eval mode kept


@pytest.mark.parametrize("image_batch", [1, 8])
def test_each_item_gets_one_forward_pass_shared_by_its_methods(image_batch: int) -> None:
    """gradcam + layercam + gradcampp with Average Drop / IC: per item one explainer pass (with one
    backward to the layer) and one masked pass per method; no separate pass for the prediction.
    With image_batch=8 the three items run as a batch: one explainer pass over the 3 images, and
    per method one masked pass over the 3 maps."""
    model = small_cnn(4)
    calls: list[tuple[int, bool]] = []  # (batch size, grad enabled) of every forward
    handle = model.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0], torch.is_grad_enabled())))
    data = [torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    try:
        res = evaluate(model, data, ["gradcam", "layercam", "gradcampp"], ["average_drop", "increase_in_confidence"],
                       target="predicted", progress=False, image_batch=image_batch)
    finally:
        handle.remove()
    assert len(res.rows) == 9
    grad_passes = [c for c in calls if c[1]]
    if image_batch == 1:
        assert grad_passes == [(1, True)] * 3  # the explainer's, once per item
        # + one masked pass per row (the unmasked probability comes from the explainer)
        assert calls.count((1, False)) == 9 and len(calls) == 3 + 9
    else:
        assert grad_passes == [(3, True)]  # one explainer pass for the three items
        assert calls.count((3, False)) == 3 and len(calls) == 1 + 3  # one masked pass of 3 maps per method
    for r in res.rows:  # the explainer's pass gave the prediction and y, equal to a plain pass
        x = data[r["index"]][None]
        with torch.no_grad():
            p = torch.softmax(model(x), dim=1)[0]
        assert r["predicted"] == int(p.argmax())
        assert r["probability"] == pytest.approx(float(p[r["target"]]), abs=1e-6)
        emap = Explainer(model, x[0]).explain(r["method"]).map  # AD with y from that pass = AD on its own
        # AD is in percent: 1e-4 is 1e-6 of the probabilities, which a batched pass adds in another order
        assert r["average_drop"] == pytest.approx(M.average_drop(model, x[0], emap),
                                                  abs=1e-6 if image_batch == 1 else 1e-4)


def test_road_and_arcc_only_when_asked_by_name() -> None:
    from camwidgets.core import road as RD

    model, data = small_cnn(), dataset(2)
    log: list[tuple[str, int]] = []
    default = evaluate(model, data, ["dark"], explainer_factory=factory(log), **FAST)
    assert "road" not in default.rows[0] and "arcc" not in default.rows[0]
    log.clear()
    res = evaluate(model, data, ["dark"], ["adcc", "road", "arcc"], explainer_factory=factory(log),
                   metric_params={"road": {"percentiles": (25, 75), "seed": 1}}, **FAST)
    row = res.rows[1]
    img, emap, t = data[1]["image"], 1.0 - bright_map(data[1]["image"], 1.0), 1
    ref = RD.arcc(model, img, emap, t, explain_fn=lambda m, c: 1.0 - bright_map(m, 1.0), percentiles=(25, 75),
                  seed=1)
    assert row["road"] == pytest.approx(ref.road) and row["arcc"] == pytest.approx(ref.arcc)
    assert row["road_morf"] < row["road_lerf"] or row["road"] <= 0
    assert len(log) == 4  # 2 maps + 2 coherency re-runs, shared by ADCC and ARCC

"""evaluate's output folder: fingerprints, item-level errors, damaged files and the lock.

Resuming must never return rows of another model, dataset or settings, skip an item
that fails to load on every run, read past a damaged file, or let two processes write
to one folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core.evaluate import _model_fingerprint, _process_start, evaluate
from camwidgets.core.image import load_image
from camwidgets.core.preprocess import Preprocess

from .conftest import masked_items


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()


class Fake:
    """A stand-in for camwidgets.Explainer with two cheap deterministic 'methods'."""

    calls: ClassVar[list[tuple[str, int]]] = []

    def __init__(self, model: nn.Module, image: Any, target: int | None = None, layers: Any = "auto",
                 preprocess: Preprocess | None = None) -> None:
        img = load_image(image)
        self.img = preprocess.geometry(img) if preprocess is not None else img
        self.target = int(target or 0)

    def bright(self) -> SimpleNamespace:
        Fake.calls.append(("bright", self.target))
        m = self.img.mean(dim=0)
        return SimpleNamespace(map=((m - m.min()) / (m.max() - m.min() + 1e-12)).numpy())

    def dark(self) -> SimpleNamespace:
        Fake.calls.append(("dark", self.target))
        return SimpleNamespace(map=1.0 - self.bright().map)


def make_dataset(n: int = 4, seed: int = 0, size: int = 8) -> list[dict[str, Any]]:
    return masked_items(n, size, seed)


METHODS = ("bright", "dark")
KW: dict[str, Any] = {"metrics": ["average_drop", "pointing_game"], "steps": 4, "progress": False,
                      "explainer_factory": Fake}


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    Fake.calls.clear()


def keys(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(r["index"], r["method"]) for r in rows]


# ----------------------------------------------------------------------------------------
# 1. Fingerprints of the model and the dataset
# ----------------------------------------------------------------------------------------
def test_resume_refuses_rows_of_another_model(tmp_path: Path) -> None:
    data = make_dataset()
    first = evaluate(small_cnn(0), data, METHODS, out_dir=tmp_path, **KW)
    saved = (tmp_path / "rows.jsonl").read_text()
    with pytest.raises(ValueError, match=r"(?s)model: another model or other weights.*overwrite=True") as err:
        evaluate(small_cnn(1), data, METHODS, out_dir=tmp_path, **KW)
    assert "dataset" not in str(err.value) and "setting" not in str(err.value)
    assert (tmp_path / "rows.jsonl").read_text() == saved  # nothing touched
    # the same weights in a new object resume; overwrite=True discards the old rows
    assert evaluate(small_cnn(0), data, METHODS, out_dir=tmp_path, **KW).computed == 0
    other = evaluate(small_cnn(1), data, METHODS, out_dir=tmp_path, overwrite=True, **KW)
    assert other.computed == 8
    assert [r["probability"] for r in other.rows] != [r["probability"] for r in first.rows]
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 8


def test_resume_refuses_another_dataset_and_names_every_change(tmp_path: Path) -> None:
    model = small_cnn()
    evaluate(model, make_dataset(4, seed=0), METHODS, out_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="dataset: items 0, 1, 2 differ"):
        evaluate(model, make_dataset(4, seed=1), METHODS, out_dir=tmp_path, **KW)
    with pytest.raises(ValueError, match="dataset: 4 items then, 5 now"):
        evaluate(model, make_dataset(5, seed=0), METHODS, out_dir=tmp_path, **KW)
    labels = make_dataset(4, seed=0)
    labels[2]["label"] = 0  # one label of the first three items
    with pytest.raises(ValueError, match="dataset: item 2 differs"):
        evaluate(model, labels, METHODS, out_dir=tmp_path, **KW)
    with pytest.raises(ValueError) as err:  # everything that differs, in one message
        evaluate(small_cnn(1), make_dataset(5, seed=0), METHODS, out_dir=tmp_path, **{**KW, "steps": 5})
    text = str(err.value)
    assert "model:" in text and "dataset: 4 items then, 5 now" in text and "steps=4 then" in text
    assert "steps=5" in text and "new out_dir/path" in text and "overwrite=True" in text


def test_the_fingerprint_is_in_the_config_and_an_iterator_loses_no_item(tmp_path: Path) -> None:
    model, data = small_cnn(), make_dataset(5)
    res = evaluate(model, (item for item in data), METHODS, out_dir=tmp_path, **KW)  # a generator
    assert keys(res.rows) == [(i, m) for i in range(5) for m in METHODS]  # the 3 hashed items were put back
    config = json.loads((tmp_path / "config.json").read_text())
    fp = config["fingerprint"]
    assert fp["model"] == _model_fingerprint(model) and fp["model"]["sampled"] is False
    assert fp["dataset"]["length"] is None and [len(d) for d in fp["dataset"]["items"]] == [40, 40, 40]
    assert res.config["fingerprint"] == fp
    again = evaluate(model, iter(data), METHODS, out_dir=tmp_path, **KW)
    assert again.computed == 0 and len(again.rows) == 10
    with pytest.raises(ValueError, match="dataset: items 0, 1, 2 differ"):
        evaluate(model, iter(make_dataset(5, seed=3)), METHODS, out_dir=tmp_path, **KW)


def test_model_fingerprint_of_a_large_model_is_sampled_but_sees_one_changed_value() -> None:
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(2048, 2560), nn.BatchNorm1d(2560))  # 5.2 M values, 21 MB: sampled
    fp = _model_fingerprint(big)
    assert fp["sampled"] is True and fp["tensors"] == 7 and fp["values"] == 2048 * 2560 + 2560 * 5 + 1
    t0 = time.perf_counter()
    assert _model_fingerprint(big) == fp  # deterministic
    assert time.perf_counter() - t0 < 2.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _model_fingerprint(big) == fp  # independent of the thread count
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        big[0].weight[1000, 3] += 1e-6  # not one of the sampled values
    assert _model_fingerprint(big)["hash"] != fp["hash"]
    with torch.no_grad():
        big[0].weight[1000, 3] -= 1e-6
        big[1].running_mean[5] = 0.5  # a buffer counts too
    assert _model_fingerprint(big)["hash"] != fp["hash"]
    small = small_cnn()
    assert _model_fingerprint(small)["hash"] == _model_fingerprint(torch.compile(small))["hash"]


class RandomItems:
    """A dataset whose items change on every load (random transforms)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.rand(3, 8, 8), "label": i % 3}


def test_a_random_dataset_is_named_and_only_its_length_is_checked(tmp_path: Path) -> None:
    model = small_cnn()
    with pytest.warns(UserWarning, match="differs each time it is loaded"):
        evaluate(model, RandomItems(3), ["bright"], out_dir=tmp_path, **KW)
    with pytest.warns(UserWarning, match="differs each time it is loaded"):
        assert evaluate(model, RandomItems(3), ["bright"], out_dir=tmp_path, **KW).computed == 0
    with pytest.warns(UserWarning, match="differs each time"), pytest.raises(ValueError, match="3 items then, 4"):
        evaluate(model, RandomItems(4), ["bright"], out_dir=tmp_path, **KW)


def test_a_folder_without_fingerprint_is_resumed_with_a_warning(tmp_path: Path) -> None:
    model, data = small_cnn(), make_dataset(3)
    evaluate(model, data, METHODS, out_dir=tmp_path, **KW)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["fingerprint"]  # as an older camwidgets wrote it
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="no fingerprint of the model and dataset"):
        assert evaluate(model, data, METHODS, out_dir=tmp_path, **KW).computed == 0
    assert "fingerprint" in json.loads((tmp_path / "config.json").read_text())  # adopted: checked from now on
    with pytest.raises(ValueError, match="model:"):
        evaluate(small_cnn(2), data, METHODS, out_dir=tmp_path, **KW)


# ----------------------------------------------------------------------------------------
# 2. Item-level failures with on_error="skip"
# ----------------------------------------------------------------------------------------
class Flaky:
    """make_dataset items; loading an item in ``fail`` raises (a disk, a network share)."""

    def __init__(self, n: int, fail: set[int]) -> None:
        self.data, self.fail = make_dataset(n), set(fail)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i in self.fail:
            raise OSError(f"cannot read item {i}")
        return self.data[i]


def broken_items() -> list[dict[str, Any]]:
    """Items 1, 2, 3 and 5 are broken in four ways."""
    data = make_dataset(6)
    data[1]["image"] = b"not an image"
    data[2]["label"] = 7  # the model has 3 classes
    data[3]["mask"] = np.zeros((5, 5), dtype=bool)
    data[5] = {"picture": data[5]["image"]}  # no "image" key
    return data


def test_items_that_fail_to_load_are_skipped_and_recorded_per_method(tmp_path: Path) -> None:
    res = evaluate(small_cnn(), broken_items(), METHODS, on_error="skip", out_dir=tmp_path, **KW)
    assert keys(res.rows) == [(i, m) for i in (0, 4) for m in METHODS]
    assert [(e["index"], e["method"], e["stage"]) for e in res.errors] == [
        (i, m, "item") for i in (1, 2, 3, 5) for m in METHODS]
    by_index = {e["index"]: e["error"] for e in res.errors}
    assert by_index[1].startswith("ValueError: The data given is not an image")
    assert by_index[2].startswith("ValueError: target class 7 is out of range")
    assert by_index[3].startswith("ValueError: The mask has shape (5, 5)")
    assert "without an 'image' key" in by_index[5]
    assert all(e["attempts"] == 1 for e in res.errors)
    assert res.paths["errors_jsonl"] == tmp_path / "errors.jsonl"
    saved = [json.loads(x) for x in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert saved == res.errors
    assert json.loads((tmp_path / "summary.json").read_text())["errors"] == res.errors
    with pytest.raises(ValueError, match="not an image"):  # on_error="raise" still raises
        evaluate(small_cnn(), broken_items(), METHODS, out_dir=tmp_path, **KW)


def test_failed_items_are_retried_on_resume(tmp_path: Path) -> None:
    model = small_cnn()
    first = evaluate(model, Flaky(4, {1, 2}), METHODS, on_error="skip", out_dir=tmp_path, **KW)
    assert keys(first.errors) == [(1, "bright"), (1, "dark"), (2, "bright"), (2, "dark")]
    assert first.errors[0]["error"] == "OSError: cannot read item 1" and first.computed == 4
    # still failing: tried again, the attempts counted
    second = evaluate(model, Flaky(4, {1}), METHODS, on_error="skip", out_dir=tmp_path, **KW)
    assert second.computed == 2 and keys(second.errors) == [(1, "bright"), (1, "dark")]
    assert [e["attempts"] for e in second.errors] == [2, 2]
    assert len((tmp_path / "errors.jsonl").read_text().splitlines()) == 2
    # fixed: computed, and the errors file goes
    third = evaluate(model, Flaky(4, set()), METHODS, on_error="skip", out_dir=tmp_path, **KW)
    assert third.computed == 2 and third.errors == [] and len(third.rows) == 8
    assert not (tmp_path / "errors.jsonl").exists() and "errors_jsonl" not in third.paths
    plain = evaluate(model, make_dataset(4), METHODS, **KW)
    for a, b in zip(third.rows, plain.rows, strict=True):
        assert (a["index"], a["method"]) == (b["index"], b["method"])
        assert a["average_drop"] == pytest.approx(b["average_drop"])


def test_a_fixed_target_out_of_range_raises_even_with_skip() -> None:
    with pytest.raises(ValueError, match="out of range"):
        evaluate(small_cnn(), make_dataset(3), METHODS, target=9, on_error="skip", **KW)


# ----------------------------------------------------------------------------------------
# 3. Damaged files
# ----------------------------------------------------------------------------------------
def _finished(tmp_path: Path) -> Path:
    evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW)
    Fake.calls.clear()
    return tmp_path / "rows.jsonl"


@pytest.mark.parametrize(("line", "problem"), [
    (b'{"index": 1, "meth\xff\xfe", "x": 1}\n', "not UTF-8"),
    (b'{"index": 1, "method": "dark", "average_dr\n', "not valid JSON"),
    (b'[1, "dark"]\n', "not an object"),
    (b'{"index": "1", "method": "dark"}\n', "'index' is '1', not int"),
])
def test_a_damaged_row_in_the_middle_names_file_and_line(tmp_path: Path, line: bytes, problem: str) -> None:
    rows = _finished(tmp_path)
    lines = rows.read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:2], line, *lines[3:]])
    rows.write_bytes(damaged)
    with pytest.raises(ValueError, match=r"rows\.jsonl:3: ") as err:
        evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW)
    assert problem in str(err.value) and "overwrite=True" in str(err.value) and str(rows) in str(err.value)
    assert rows.read_bytes() == damaged  # nothing dropped or rewritten
    assert Fake.calls == []
    assert not (tmp_path / ".lock").exists()


def test_a_torn_last_row_is_cut_off_and_computed_again(tmp_path: Path) -> None:
    rows = _finished(tmp_path)
    good = rows.read_bytes()
    rows.write_bytes(good[:-40])  # the last row, cut mid-write
    res = evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW)
    assert res.computed == 1 and len(res.rows) == 6
    assert len(rows.read_bytes().splitlines()) == 6 and all(json.loads(x) for x in rows.read_bytes().splitlines())
    rows.write_bytes(rows.read_bytes() + b"\n\n")  # blank lines are harmless
    assert evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW).computed == 0


def test_a_damaged_config_or_errors_file_names_file_and_line(tmp_path: Path) -> None:
    _finished(tmp_path)
    config = tmp_path / "config.json"
    text = config.read_text()
    config.write_text(text[:60])
    with pytest.raises(ValueError, match=r"config.json:\d+: not valid JSON.*overwrite=True"):
        evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW)
    config.write_bytes(text.encode()[:30] + b"\xff" + text.encode()[30:])
    with pytest.raises(ValueError, match=r"config.json:\d+: not UTF-8"):
        evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW)
    config.unlink()
    with pytest.raises(ValueError, match=r"settings file .*config\.json is missing"):
        evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW)
    config.write_text(text)
    (tmp_path / "errors.jsonl").write_text('{"index": 0, "method": "bright"}\nnot json\n{"index": 1}\n')
    with pytest.raises(ValueError, match=r"errors\.jsonl:2: this line is not an error record"):
        evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, **KW)
    res = evaluate(small_cnn(), make_dataset(3), METHODS, out_dir=tmp_path, overwrite=True, **KW)
    assert res.computed == 6 and not (tmp_path / "errors.jsonl").exists()


# ----------------------------------------------------------------------------------------
# 4. One process per output folder
# ----------------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from types import SimpleNamespace
    import numpy as np, torch
    from torch import nn
    from camwidgets.core.evaluate import evaluate

    out, started = Path(sys.argv[1]), Path(sys.argv[2])

    class Slow:
        def __init__(self, model, image, **kw):
            pass
        def bright(self):
            started.write_text("1")
            time.sleep(600)  # killed by the test
            return SimpleNamespace(map=np.ones((8, 8)))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 3)).eval()
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 8, 8, generator=g), "label": i % 3} for i in range(3)]
    evaluate(model, data, ["bright"], metrics=["average_drop"], steps=4, progress=False, out_dir=out,
             explainer_factory=Slow)
""")


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_ones_lock_taken_over(tmp_path: Path) -> None:
    out, started = tmp_path / "out", tmp_path / "started"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(started)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), proc.communicate()[0].decode()
        lock = json.loads((out / ".lock").read_text())
        assert lock["pid"] == proc.pid and lock["host"] == socket.gethostname()
        data = [{"image": torch.rand(3, 8, 8), "label": i % 3} for i in range(3)]
        config_before = (out / "config.json").read_bytes()
        with pytest.raises(RuntimeError, match=rf"Another evaluate \(process {proc.pid} on this machine"):
            evaluate(small_cnn(), data, ["bright"], out_dir=out, **{**KW, "metrics": ["average_drop"]})
        with pytest.raises(RuntimeError, match="another out_dir"):  # also with overwrite=True
            evaluate(small_cnn(), data, ["bright"], out_dir=out, overwrite=True, **KW)
        assert (out / "config.json").read_bytes() == config_before and (out / ".lock").exists()
        assert Fake.calls == []
    finally:
        proc.send_signal(signal.SIGKILL)  # killed: its lock stays behind
        proc.wait(timeout=60)
    assert json.loads((out / ".lock").read_text())["pid"] == proc.pid
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 8, 8, generator=g), "label": i % 3} for i in range(3)]
    with pytest.warns(UserWarning, match=rf"Took over the lock .* of process {proc.pid}"):
        res = evaluate(small_cnn(), data, ["bright"], out_dir=out, **{**KW, "metrics": ["average_drop"]})
    assert res.computed == 3 and not (out / ".lock").exists()


def _write_lock(path: Path, **info: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "process_start": None,
                                "since": "then", "token": "x", **info}))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc (Linux)")
def test_locks_of_other_hosts_and_reused_pids(tmp_path: Path) -> None:
    data = make_dataset(2)
    _write_lock(tmp_path / ".lock", host="elsewhere", pid=1)
    with pytest.raises(RuntimeError, match=r"process 1 on host 'elsewhere'.*delete the lock file"):
        evaluate(small_cnn(), data, ["bright"], out_dir=tmp_path, **KW)
    # a live pid that now belongs to another process (its start time differs): stale
    _write_lock(tmp_path / ".lock", pid=os.getppid(), process_start="1")
    with pytest.warns(UserWarning, match="Took over the lock"):
        evaluate(small_cnn(), data, ["bright"], out_dir=tmp_path, **KW)
    assert not (tmp_path / ".lock").exists()
    _write_lock(tmp_path / ".lock", process_start=_process_start(os.getpid()))  # this process: another thread
    with pytest.raises(RuntimeError, match=rf"Another evaluate \(process {os.getpid()} on this machine"):
        evaluate(small_cnn(), data, ["bright"], out_dir=tmp_path, **KW)
    (tmp_path / ".lock").write_text("")
    os.utime(tmp_path / ".lock", (time.time() - 60, time.time() - 60))
    with pytest.raises(RuntimeError, match="does not say which process holds it"):
        evaluate(small_cnn(), data, ["bright"], out_dir=tmp_path, **KW)
    (tmp_path / ".lock").unlink()
    _write_lock(tmp_path / "run.lock", host="elsewhere")  # path= has its lock beside the stem
    with pytest.raises(RuntimeError, match=r"run\.lock exists"):
        evaluate(small_cnn(), data, ["bright"], path=tmp_path / "run", **KW)


def test_the_lock_goes_on_errors_and_interrupts(tmp_path: Path) -> None:
    class Interrupting(Fake):
        def dark(self) -> SimpleNamespace:
            raise KeyboardInterrupt

    data = make_dataset(2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(small_cnn(), data, METHODS, out_dir=tmp_path, **{**KW, "explainer_factory": Interrupting})
    # both items' "bright" rows were finished (a batch runs each method over its items) before "dark" raised
    assert not (tmp_path / ".lock").exists() and len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="model:"):
        evaluate(small_cnn(3), data, METHODS, out_dir=tmp_path, **KW)
    assert not (tmp_path / ".lock").exists()
    res = evaluate(small_cnn(), data, METHODS, out_dir=tmp_path, **KW)
    assert res.computed == 2 and sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "rows.csv", "rows.jsonl", "summary.csv", "summary.json"]


# ----------------------------------------------------------------------------------------
# The Ray executor: item-level failures behave as in a local run
# ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_workers_skip_and_record_failing_items_like_a_local_run(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from camwidgets.core.executors import RayExecutor

    model = small_cnn()
    local = evaluate(model, Flaky(6, {1, 4}), METHODS, on_error="skip", **KW)
    local_broken = evaluate(model, broken_items(), METHODS, on_error="skip", **KW)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        ex = RayExecutor(workers=1, num_cpus=0.5, shard_size=2)
        # an indexable dataset: the items are loaded by the workers
        res = evaluate(model, Flaky(6, {1, 4}), METHODS, on_error="skip", out_dir=tmp_path / "a", executor=ex,
                       **KW)
        # an iterable: the items travel in the shards, and fail in the workers
        broken = evaluate(model, iter(broken_items()), METHODS, on_error="skip", out_dir=tmp_path / "b",
                          executor=ex, **KW)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if started:
            ray.shutdown()
    for a, b in ((res, local), (broken, local_broken)):
        assert keys(a.rows) == keys(b.rows)
        assert a.errors == b.errors
        for ra, rb in zip(a.rows, b.rows, strict=True):
            assert ra["average_drop"] == pytest.approx(rb["average_drop"])
    assert [json.loads(x) for x in (tmp_path / "a" / "errors.jsonl").read_text().splitlines()] == res.errors

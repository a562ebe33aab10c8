"""evaluate(..., executor="ray"): the same rows as a local run, a killed worker, an interrupted driver.

A local Ray cluster with ``num_cpus=2`` is started once for the module (about 8 s); the
actors take half a CPU each, so two of them and the driver fit on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import camwidgets as cw
from camwidgets.core.executors import RayExecutor
from camwidgets.datasets import Shapes

ray = pytest.importorskip("ray", reason="Ray is part of camwidgets[test]; install it with pip install -e '.[test]'")

pytestmark = pytest.mark.slow

METHODS = ["gradcam", "icam", "unioncam"]
METRICS = ["average_drop", "increase_in_confidence", "insertion", "deletion", "adcc", "energy_pointing_game",
           "localisation"]
TIMING = {"seconds", "capture_seconds", "metric_seconds"}


@pytest.fixture(scope="module")
def cluster() -> Any:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the test module's classes travel to the workers by value (pytest imports it under a made-up name)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray.get_runtime_context().gcs_address
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def demo() -> tuple[Any, Any]:
    model, preprocess, _ = cw.load_demo_model()
    return model, preprocess


def _executor(**kw: Any) -> RayExecutor:
    return RayExecutor(**{"workers": 2, "num_cpus": 0.5, "shard_size": 2, **kw})


def _run(demo: tuple[Any, Any], data: Any, **kw: Any) -> cw.core.EvaluationResult:
    model, preprocess = demo
    return cw.evaluate(model, data, METHODS, METRICS, preprocess=preprocess, steps=16, progress=False, **kw)


def _same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [(r["index"], r["method"]) for r in a] == [(r["index"], r["method"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb)
        for key in set(ra) - TIMING:
            if isinstance(ra[key], float):
                # Shards and local groups batch different images together (summation order): probabilities
                # agree to ~1e-7, so Average Drop (a percentage) to 1e-4; a curve ranks pixels by the map,
                # where a 1e-7 change can swap two tied pixels
                tol = 2e-3 if key in ("insertion", "deletion") else 1e-4
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=tol), (ra["index"], ra["method"], key)
            else:
                assert rb[key] == ra[key], (ra["index"], ra["method"], key)


def _jsonl_keys(path: Path) -> list[tuple[int, str]]:
    return [(r["index"], r["method"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.fixture(scope="module")
def local_rows(demo: tuple[Any, Any]) -> list[dict[str, Any]]:
    return _run(demo, Shapes(6, seed=3)).rows


class KillOnce:
    """Shapes items; loading item ``kill_at`` the first time kills the process that loads it."""

    def __init__(self, n: int, seed: int, kill_at: int, marker: Path) -> None:
        self.data, self.kill_at, self.marker = Shapes(n, seed=seed), kill_at, marker

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        if i == self.kill_at and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.data[i]


def test_ray_rows_equal_local_rows_and_files(cluster: str, demo: tuple[Any, Any], local_rows: list[dict[str, Any]],
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, preprocess = demo
    res = cw.evaluate(model, Shapes(6, seed=3), METHODS, METRICS, preprocess=preprocess, steps=16,
                      out_dir=tmp_path, executor=_executor())
    _same_rows(local_rows, res.rows)
    assert res.computed == 18
    keys = _jsonl_keys(tmp_path / "rows.jsonl")
    assert sorted(keys) == sorted((r["index"], r["method"]) for r in local_rows)  # each row once
    for name in ("rows.csv", "summary.json", "summary.csv", "config.json"):
        assert (tmp_path / name).exists()
    assert "6/6" in capsys.readouterr().err  # the driver's progress bar counted every image
    assert ray.is_initialized()  # a cluster the caller started is left running


def test_iterable_dataset_items_travel_in_the_shards(cluster: str, demo: tuple[Any, Any],
                                                     local_rows: list[dict[str, Any]]) -> None:
    data = Shapes(6, seed=3)
    res = _run(demo, (data[i] for i in range(len(data))), executor=_executor(shard_size=4))
    _same_rows(local_rows, res.rows)


def test_a_killed_worker_has_its_shard_retried(cluster: str, demo: tuple[Any, Any], local_rows: list[dict[str, Any]],
                                               tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    res = _run(demo, KillOnce(6, 3, kill_at=3, marker=marker), out_dir=tmp_path / "out", executor=_executor())
    assert marker.exists()  # an actor process really died loading item 3
    assert int(marker.read_text()) != os.getpid()
    _same_rows(local_rows, res.rows)
    keys = _jsonl_keys(tmp_path / "out" / "rows.jsonl")
    assert len(keys) == len(set(keys)) == 18  # none lost, none duplicated


def test_without_retries_a_killed_worker_fails_clearly_and_keeps_the_rows(
        cluster: str, demo: tuple[Any, Any], local_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = KillOnce(6, 3, kill_at=5, marker=tmp_path / "killed")
    with pytest.raises(RuntimeError, match="max_retries"):
        _run(demo, data, out_dir=out, executor=_executor(workers=1, max_retries=0))
    saved = _jsonl_keys(out / "rows.jsonl")
    assert 0 < len(saved) < 18 and len(saved) == len(set(saved))
    res = _run(demo, data, out_dir=out, executor=_executor())  # the marker exists: no second kill
    assert res.computed == 18 - len(saved)
    _same_rows(local_rows, res.rows)


DRIVER = textwrap.dedent("""
    import signal
    import sys
    # Ctrl-C raises KeyboardInterrupt, as in a terminal: a process started in the background by a shell
    # without job control (e.g. "cmd &" in a script running the suite) inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import camwidgets as cw
    from camwidgets.datasets import Shapes
    model, preprocess, _ = cw.load_demo_model()
    cw.evaluate(model, Shapes(6, seed=3), {methods!r}, {metrics!r}, preprocess=preprocess, steps=16,
                progress=False, out_dir=sys.argv[1],
                executor=cw.RayExecutor(workers=1, num_cpus=0.5, shard_size=1, address=sys.argv[2]))
""")


def test_an_interrupted_driver_resumes_with_only_the_missing_rows(
        cluster: str, demo: tuple[Any, Any], local_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(methods=METHODS, metrics=METRICS))
    proc = subprocess.Popen([sys.executable, str(script), str(out), cluster],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows_file = out / "rows.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if rows_file.exists() and len(rows_file.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the driver ended before it could be interrupted:\n{proc.communicate()[0]}"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        log = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in log
    saved = _jsonl_keys(rows_file)
    assert 3 <= len(saved) < 18 and len(saved) == len(set(saved))
    res = _run(demo, Shapes(6, seed=3), out_dir=out, executor=_executor())
    assert res.computed == 18 - len(saved)
    _same_rows(local_rows, res.rows)
    assert sorted(_jsonl_keys(rows_file)) == sorted((r["index"], r["method"]) for r in local_rows)


def test_errors_of_our_code_come_back_as_themselves(cluster: str, demo: tuple[Any, Any]) -> None:
    model, preprocess = demo
    with pytest.raises(ValueError, match="out of range"):
        cw.evaluate(model, Shapes(2, seed=3), ["gradcam"], ["average_drop"], preprocess=preprocess, target=99,
                    progress=False, executor=_executor())


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, demo: tuple[Any, Any],
                                               tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    model, preprocess = demo
    with pytest.raises(ImportError, match=r"camwidgets\[ray\]"):
        cw.evaluate(model, Shapes(2, seed=3), ["gradcam"], ["average_drop"], preprocess=preprocess,
                    out_dir=tmp_path / "out", executor="ray")
    assert not (tmp_path / "out").exists()  # refused before any work
    with pytest.raises(ImportError, match=r"camwidgets\[ray\]"):
        RayExecutor()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"workers": 0}, "workers"), ({"num_cpus": 0}, "num_cpus"), ({"shard_size": 0}, "shard_size"),
    ({"max_retries": -1}, "max_retries"),
])
def test_bad_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RayExecutor(**kwargs)


def test_unknown_executor_is_refused(demo: tuple[Any, Any]) -> None:
    model, preprocess = demo
    with pytest.raises(ValueError, match="'local', 'ray'"):
        cw.evaluate(model, Shapes(2, seed=3), ["gradcam"], ["average_drop"], preprocess=preprocess,
                    executor="dask")

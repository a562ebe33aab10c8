"""Latency of CAMExplorer: from setting a trait to the map panes holding the new data.

Usage::

    python benchmarks/bench_widget_latency.py [--moves 20] [--models demo,resnet50] [--out FILE]
    python benchmarks/bench_widget_latency.py --overlap 0.3 --models resnet18 --metrics resnet18

For each model and each slider (T, θ, α with n=8), the explorer starts idle; the script
sets the trait to a new value and polls until the panes were redrawn (the explorer's
``map_updates`` counter moved), then waits for the metrics that follow so the next move
starts idle again. Prints one JSON object: p50 / p95 / max in milliseconds per model and
slider, the goals, and the process's peak resident memory.

``--overlap S`` measures what a person moving a slider sees while metrics are still being
computed: each move comes S seconds after the previous move's maps were drawn, without
waiting for its metrics, so the metrics worker is busy on the same model during the move.
It also counts the moves whose maps failed (errors shown in the status line) and the time
from the last move's maps to its metrics (a stale metrics job still running delays them).
``--models`` takes ``demo`` or any torchvision classifier name (random weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

GOALS_MS = {"demo": {"threshold": 100, "theta": 150, "alpha": 1000},
            "resnet50": {"threshold": 100, "theta": 600, "alpha": 3000}}
VALUES = {"threshold": (0.6, 0.95), "theta": (5.0, 40.0), "alpha": (0.2, 0.6)}


def _explorer(name: str, metrics: bool):
    from camwidgets.datasets import load_sample
    from camwidgets.widgets import CAMExplorer

    if name == "demo":
        return CAMExplorer(metrics=metrics, curves=False)
    from camwidgets.models import load_torchvision

    torch.manual_seed(0)
    model, pre, classes = load_torchvision(name)
    return CAMExplorer(model, load_sample("chelsea")["image"], preprocess=pre, class_names=classes,
                       metrics=metrics, curves=False)


def _move(ex, trait: str, value: float, timeout: float = 120.0, overlap: float | None = None) -> float:
    """Seconds from setting the trait to the panes redrawn (NaN if the update failed)."""
    if overlap is None:
        ex.wait(timeout)
    else:  # the previous move's maps are drawn; its metrics may still run
        while ex.controller._runner.busy:
            time.sleep(0.0005)
        time.sleep(overlap)
    before, failed = ex.map_updates, ex.controller._runner.last_error
    t0 = time.perf_counter()
    setattr(ex, trait, value)
    while ex.map_updates == before:
        if ex.controller._runner.last_error is not failed:
            return float("nan")  # the update raised: the status line shows the error
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{trait}={value}: no redraw in {timeout}s ({ex.message})")
        time.sleep(0.0005)
    dt = time.perf_counter() - t0
    if overlap is None:
        ex.wait(timeout)
    return dt


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--models", default="demo,resnet50")
    ap.add_argument("--out", default=None)
    ap.add_argument("--metrics", default="demo",
                    help="models whose explorer computes AD/IC/ADCC after each move (comma-separated; the "
                         "script waits for them before the next move unless --overlap is given)")
    ap.add_argument("--overlap", type=float, default=None, metavar="S",
                    help="move S seconds after the previous maps, while their metrics still run")
    args = ap.parse_args(argv)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "moves": args.moves,
                    "overlap_s": args.overlap, "goals_ms": GOALS_MS, "models": {}}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        with_metrics = name in args.metrics.split(",")
        ex = _explorer(name, with_metrics)
        ex.wait(600)
        first = time.perf_counter() - t0
        res: dict = {"first_picture_s": round(first, 2), "metrics": with_metrics}
        for trait, (a, b) in VALUES.items():
            times = []
            for i in range(args.moves):
                # a fresh value every move (the cache would answer a repeated one instantly)
                v = a + (b - a) * (i + 1) / (args.moves + 1)
                times.append(_move(ex, trait, round(v, 4), overlap=args.overlap))
            t_idle = time.perf_counter()
            ex.wait(600)
            all_ms = np.array(times) * 1000
            ms = all_ms[~np.isnan(all_ms)]
            res[trait] = {"p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
                          "p95_ms": round(float(np.percentile(ms, 95)), 1) if ms.size else None,
                          "max_ms": round(float(ms.max()), 1) if ms.size else None,
                          "failed_moves": int(np.isnan(all_ms).sum()),
                          "goal_ms": GOALS_MS.get(name, {}).get(trait)}
            if args.overlap is not None:
                res[trait]["last_maps_to_metrics_s"] = round(time.perf_counter() - t_idle, 2)
        report["models"][name] = res
        print(json.dumps({name: res}), file=sys.stderr, flush=True)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return report


if __name__ == "__main__":
    main()

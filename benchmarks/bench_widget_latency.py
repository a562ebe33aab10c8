"""Latency of CAMExplorer: from setting a trait to the map panes holding the new data.

Usage::

    python benchmarks/bench_widget_latency.py [--moves 20] [--models demo,resnet50] [--out FILE]

For each model and each slider (T, θ, α with n=8), the explorer starts idle; the script
sets the trait to a new value and polls until the panes were redrawn (the explorer's
``map_updates`` counter moved), then waits for the metrics that follow so the next move
starts idle again. Prints one JSON object: p50 / p95 / max in milliseconds per model and
slider, the goals, and the process's peak resident memory.
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
    model, pre, classes = load_torchvision("resnet50")
    return CAMExplorer(model, load_sample("chelsea")["image"], preprocess=pre, class_names=classes,
                       metrics=metrics, curves=False)


def _move(ex, trait: str, value: float, timeout: float = 120.0) -> float:
    ex.wait(timeout)
    before = ex.map_updates
    t0 = time.perf_counter()
    setattr(ex, trait, value)
    while ex.map_updates == before:
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{trait}={value}: no redraw in {timeout}s ({ex.message})")
        time.sleep(0.0005)
    dt = time.perf_counter() - t0
    ex.wait(timeout)
    return dt


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--models", default="demo,resnet50")
    ap.add_argument("--out", default=None)
    ap.add_argument("--metrics", default="demo",
                    help="models whose explorer computes AD/IC/ADCC after each move (comma-separated; the "
                         "script waits for them before the next move, so they never overlap a measured move)")
    args = ap.parse_args(argv)
    report: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "moves": args.moves,
                    "goals_ms": GOALS_MS, "models": {}}
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
                times.append(_move(ex, trait, round(v, 4)))
            ms = np.array(times) * 1000
            res[trait] = {"p50_ms": round(float(np.percentile(ms, 50)), 1),
                          "p95_ms": round(float(np.percentile(ms, 95)), 1),
                          "max_ms": round(float(ms.max()), 1),
                          "goal_ms": GOALS_MS.get(name, {}).get(trait)}
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

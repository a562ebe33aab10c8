"""Dataset evaluation throughput: local vs Ray with 1 and 2 workers, and a 50,000-image estimate. Prints JSON.

Runs :func:`camwidgets.evaluate` on the same ``--n`` fresh Shapes images (seed 3000) with
the demo model, the seven methods of the metrics table and its metrics (``--steps``
insertion/deletion steps), once locally and once per worker count on a local Ray cluster
started before the clock runs (``ray.init`` costs ~8 s once; actor start-up and model
loading are inside the timings). Each Ray worker gets ``--cpus-per-worker`` CPUs (torch
threads = that number, at least 1).

Reports per configuration: wall seconds, images per second, and the speed-up over one
worker; checks that every configuration produced the same rows (timings aside). From the
1-worker figure it estimates the time for all seven methods on 50,000 images with N
workers, assuming the measured 2-worker scaling efficiency holds (an assumption, said so
in the output).

Usage::

    python benchmarks/bench_ray.py                 # 8 images, 224 steps, workers 1 and 2
    python benchmarks/bench_ray.py --n 2 --steps 16 --workers 1 2   # a smoke run
    python benchmarks/bench_ray.py --device cuda --cpus-per-worker 1 --gpus-per-worker 1 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import torch

import camwidgets as cw
from camwidgets.datasets import Shapes

METHODS = ["gradcam", "gradcampp", "layercam", "scorecam", "unioncam", "fusioncam", "icam"]
METRICS = ["average_drop", "increase_in_confidence", "insertion", "deletion", "over_all", "adcc",
           "energy_pointing_game", "pointing_game", "localisation"]
TIMING = {"seconds", "capture_seconds", "metric_seconds"}


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Largest absolute difference between two row lists (timings aside); raises if they differ otherwise."""
    worst = 0.0
    if [(r["index"], r["method"]) for r in a] != [(r["index"], r["method"]) for r in b]:
        raise AssertionError("the runs produced different rows")
    for ra, rb in zip(a, b, strict=True):
        for k in set(ra) - TIMING:
            if isinstance(ra[k], float) and isinstance(rb[k], float):
                worst = max(worst, abs(ra[k] - rb[k]))
            elif ra[k] != rb[k]:
                raise AssertionError(f"row {ra['index']} {ra['method']}: {k} {ra[k]!r} != {rb[k]!r}")
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="images (default 8)")
    ap.add_argument("--steps", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--device", default="cpu", help="device of the local run")
    ap.add_argument("--no-local", action="store_true", help="skip the local run")
    ap.add_argument("--shard-size", type=int, default=1)
    args = ap.parse_args(argv)

    import ray

    model, preprocess, _ = cw.load_demo_model(args.device)
    data = Shapes(args.n, seed=3000)
    kw: dict[str, Any] = {"preprocess": preprocess, "steps": args.steps, "progress": False}
    out: dict[str, Any] = {
        "settings": {"n": args.n, "steps": args.steps, "methods": METHODS, "metrics": METRICS,
                     "cpus_per_worker": args.cpus_per_worker, "gpus_per_worker": args.gpus_per_worker,
                     "shard_size": args.shard_size, "dataset": repr(data)},
        "environment": {"torch": torch.__version__, "ray": ray.__version__, "cores": os.cpu_count(),
                        "python": platform.python_version(), "local_threads": torch.get_num_threads()},
        "runs": {},
    }
    reference: list[dict[str, Any]] | None = None
    if not args.no_local:
        t = time.perf_counter()
        res = cw.evaluate(model, data, METHODS, METRICS, **kw)
        wall = time.perf_counter() - t
        reference = res.rows
        out["runs"]["local"] = {"wall_s": round(wall, 2), "images_per_s": round(args.n / wall, 4)}
        print(f"local: {wall:.1f} s", file=sys.stderr)

    t = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    out["ray_init_s"] = round(time.perf_counter() - t, 2)
    try:
        for w in args.workers:
            ex = cw.RayExecutor(workers=w, num_cpus=args.cpus_per_worker, num_gpus=args.gpus_per_worker,
                                shard_size=args.shard_size)
            t = time.perf_counter()
            res = cw.evaluate(model.cpu() if args.gpus_per_worker else model, data, METHODS, METRICS,
                              executor=ex, **kw)
            wall = time.perf_counter() - t
            entry: dict[str, Any] = {"wall_s": round(wall, 2), "images_per_s": round(args.n / wall, 4)}
            if reference is None:
                reference = res.rows
            else:
                entry["max_abs_diff_vs_reference"] = _same(reference, res.rows)
            out["runs"][f"ray_{w}"] = entry
            print(f"ray x{w}: {wall:.1f} s", file=sys.stderr)
    finally:
        ray.shutdown()

    runs = out["runs"]
    if "ray_1" in runs:
        per_image = runs["ray_1"]["wall_s"] / args.n  # one worker, all seven methods and the metrics
        eff = 1.0
        if "ray_2" in runs:
            speedup = runs["ray_2"]["images_per_s"] / runs["ray_1"]["images_per_s"]
            runs["ray_2"]["speedup_vs_1"] = round(speedup, 3)
            eff = speedup / 2
        out["estimate_50000_images"] = {
            "seconds_per_image_one_worker": round(per_image, 3),
            "scaling_efficiency_assumed": round(eff, 3),
            "hours_by_workers": {str(n): round(50_000 * per_image / (n * eff) / 3600, 2)
                                 for n in (1, 2, 8, 32, 128)},
            "assumption": "linear in workers at the measured 2-worker efficiency; a worker is what one "
                          f"actor had here ({args.cpus_per_worker} CPU, {args.gpus_per_worker} GPU)",
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Recipro-CAM, Group-CAM and Score-CAM: time per map, and time to the first Fusion-CAM picture. Prints JSON.

For each model (torchvision, random weights after ``torch.manual_seed(0)``, ``load_sample("chelsea")``
resized and centre-cropped to 224 x 224 by the architecture's own preprocessing, the model's
predicted class, the default layer: the last block of ``layer4``):

* ``per_map_s``: one region map from an :class:`~camwidgets.Explainer` already built (its capture
  done, untimed): ``exp.reciprocam()``, ``exp.groupcam()``, ``exp.scorecam()`` with their default
  parameters. Every run uses a new explainer, so nothing is cached between runs.
* ``explainer_s``: building the explainer itself (preprocessing, one forward and one backward pass
  recording every candidate layer), for reference.
* ``fusion_first_picture_s`` (ResNet-50 by default): what a user waits for the first Fusion-CAM
  picture, ``Explainer(model, image, preprocess=pre).fusioncam(region=R)`` from nothing, for
  ``R = "reciprocam"`` and ``R = "scorecam"``. The goal: ``reciprocam`` under 2 s.

The runs are interleaved (each round runs every case once, in the same order) after one untimed
warm-up of the cheap cases (Score-CAM is not warmed up: one ResNet-50 map takes over a minute), and
the median of ``--repeats`` rounds is reported with every run. ``os.getloadavg()`` is recorded
before and after: the machine may be shared.

Usage::

    python benchmarks/bench_region_methods.py               # ResNet-18 and ResNet-50, 3 rounds (~15 min)
    python benchmarks/bench_region_methods.py --quick       # ResNet-18 at 64 px, one round: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import camwidgets
from camwidgets.core.preprocess import Preprocess
from camwidgets.datasets import load_sample
from camwidgets.models import load_torchvision

METHODS = ("reciprocam", "groupcam", "scorecam")


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _setup(name: str, size: int | None) -> dict[str, Any]:
    torch.manual_seed(0)
    model, pre, _ = load_torchvision(name)
    if size is not None:  # --quick: a small input instead of the weights' 224 px
        pre = Preprocess(size=(size, size), resize=size, mean=pre.mean, std=pre.std)
    image = load_sample("chelsea")["image"]
    exp = camwidgets.Explainer(model, image, preprocess=pre)
    return {"model": model.eval(), "pre": pre, "image": image, "layer": exp.default_layer,
            "channels": int(exp.activation(exp.default_layer).shape[0]),
            "feature": list(exp.activation(exp.default_layer).shape[1:]), "input": list(exp.input.shape)}


def bench_model(name: str, size: int | None, repeats: int, fusion: bool) -> dict[str, Any]:
    s = _setup(name, size)

    def new_explainer() -> camwidgets.Explainer:
        return camwidgets.Explainer(s["model"], s["image"], preprocess=s["pre"])

    def per_map(method: str) -> Callable[[], float]:
        def run() -> float:
            exp = new_explainer()  # untimed: the capture
            return _timed(lambda: exp.explain(method))
        return run

    def first_picture(region: str) -> Callable[[], float]:
        return lambda: _timed(lambda: new_explainer().fusioncam(region=region))

    cases: dict[str, Callable[[], float]] = {"explainer_s": lambda: _timed(new_explainer)}
    cases.update({f"per_map_s/{m}": per_map(m) for m in METHODS})
    if fusion:
        cases.update({f"fusion_first_picture_s/{r}": first_picture(r) for r in ("reciprocam", "scorecam")})
    for key, fn in cases.items():  # warm-up
        if "scorecam" not in key:
            fn()
    runs: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for key, fn in cases.items():
            runs[key].append(fn())
    out: dict[str, Any] = {"model": name, **{k: v for k, v in s.items() if k not in ("model", "pre", "image")}}
    for key, values in runs.items():
        group, _, case = key.partition("/")
        entry = {"median": statistics.median(values), "runs": values}
        if case:
            out.setdefault(group, {})[case] = entry
        else:
            out[group] = entry
    if fusion:
        fast = out["fusion_first_picture_s"]["reciprocam"]["median"]
        out["goal"] = {"fusion_reciprocam_under_s": 2.0, "met": fast < 2.0,
                       "speedup_vs_scorecam": out["fusion_first_picture_s"]["scorecam"]["median"] / fast}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50", help="comma-separated torchvision names")
    parser.add_argument("--fusion-models", default="resnet50", help="where to time the first Fusion-CAM picture")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at 64 px, one round (fusion included)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        runs, fusion_models, repeats, size = ["resnet18"], {"resnet18"}, 1, 64
    else:
        runs = [m for m in args.models.split(",") if m]
        fusion_models = {m for m in args.fusion_models.split(",") if m}
        repeats, size = max(1, args.repeats), None
    report: dict[str, Any] = {
        "torch": torch.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "quick": args.quick, "repeats": repeats,
        "loadavg_before": list(os.getloadavg()),
    }
    report["models"] = [bench_model(m, size, repeats, m in fusion_models) for m in runs]
    report["loadavg_after"] = list(os.getloadavg())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""What one ``evaluate`` row costs beside the passes it cannot avoid. Prints JSON.

For each model (224 px) one Grad-CAM row of :func:`camwidgets.evaluate` with Average Drop and
Increase in Confidence is timed against its bound: one forward + backward down to the
explained layer (the map) plus one forward pass of the masked image (the metrics' own pass).
Rounds alternate between the two, on a fresh image each round, so a load change hits both
alike; the medians and the ratio ``evaluate / bound`` are reported, with the process CPU time
and the machine's load average before and after.

Each round is one ``evaluate`` call over ``--batch`` images (a dataset evaluation's rows,
default 4) against the bound of the same images; times are per row.

Usage::

    python benchmarks/bench_evaluate_row.py                      # demo model and ResNet-50, 10 rounds
    python benchmarks/bench_evaluate_row.py --models resnet18 --rounds 5
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
import torchvision

import camwidgets
from camwidgets.datasets import Shapes

METRICS = ["average_drop", "increase_in_confidence"]


def _model(name: str) -> tuple[torch.nn.Module, Any, str]:
    if name == "demo":
        model, preprocess, _ = camwidgets.load_demo_model()
        return model, preprocess, camwidgets.Explainer(model, Shapes(1, seed=0)[0]["image"],
                                                        preprocess=preprocess).default_layer
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    preprocess = camwidgets.core.Preprocess(size=224)
    return model, preprocess, "layer4"


def _bound(model: torch.nn.Module, preprocess: Any, layer: str, image: Any) -> None:
    """Forward + backward to ``layer`` (Grad-CAM's map), then the masked image's forward."""
    pixels = preprocess.geometry(camwidgets.load_image(image))
    x = preprocess.normalize(pixels)[None]
    acts: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    c = int(logits.argmax())
    (g,) = torch.autograd.grad(logits[0, c], acts[0])
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    with torch.inference_mode():
        model(preprocess.normalize(pixels * cam[0])[None]).softmax(1)


def _evaluate(model: torch.nn.Module, preprocess: Any, items: list[Any]) -> None:
    camwidgets.evaluate(model, items, ["gradcam"], METRICS, preprocess=preprocess, target="predicted",
                        progress=False)


def _timed(fn: Any) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def run(name: str, rounds: int, batch: int, size: int) -> dict[str, Any]:
    model, preprocess, layer = _model(name)
    data = Shapes(rounds * batch + 1, seed=11, size=size)
    warm = data[rounds * batch]
    _evaluate(model, preprocess, [warm])
    _bound(model, preprocess, layer, warm["image"])
    wall: dict[str, list[float]] = {"evaluate": [], "bound": []}
    cpu: dict[str, list[float]] = {"evaluate": [], "bound": []}
    for i in range(rounds):
        items = [data[i * batch + j] for j in range(batch)]

        def bound(items: list[Any] = items) -> None:
            for item in items:
                _bound(model, preprocess, layer, item["image"])

        order = ("evaluate", "bound") if i % 2 == 0 else ("bound", "evaluate")
        for what in order:
            fn = functools.partial(_evaluate, model, preprocess, items) if what == "evaluate" else bound
            w, c = _timed(fn)
            wall[what].append(w / batch)
            cpu[what].append(c / batch)
    out: dict[str, Any] = {
        "model": name, "layer": layer, "image_size": size, "images_per_call": batch, "rounds": rounds,
        "median_s_per_row": {k: statistics.median(v) for k, v in wall.items()},
        "range_s_per_row": {k: [min(v), max(v)] for k, v in wall.items()},
        "median_cpu_s_per_row": {k: statistics.median(v) for k, v in cpu.items()},
    }
    out["ratio_evaluate_to_bound"] = out["median_s_per_row"]["evaluate"] / out["median_s_per_row"]["bound"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["demo", "resnet50"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                    "torchvision": torchvision.__version__, "platform": platform.platform(),
                    "cpus": os.cpu_count(), "threads": args.threads},
        "load_before": os.getloadavg(),
        "metrics": METRICS,
        "results": [run(m, args.rounds, args.batch, args.size) for m in args.models],
        "load_after": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

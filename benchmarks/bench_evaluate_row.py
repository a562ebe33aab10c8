"""What one ``evaluate`` row costs beside the passes it cannot avoid. Prints JSON.

For each model (224 px) one Grad-CAM row of :func:`camwidgets.evaluate` with Average Drop and
Increase in Confidence is timed against its bound: one forward + backward down to the
explained layer (the map) plus one forward pass of the masked image (the metrics' own pass).
Rounds alternate between the two, on a fresh image each round, so a load change hits both
alike; the medians and the ratio ``evaluate / bound`` are reported, with the process CPU time
and the machine's load average before and after.

Each round times, on the same ``--batch`` images (default 8), in rotating order:

* ``evaluate``: one ``evaluate`` call with ``image_batch=--batch`` (the images run as one
  batch: one batched construction pass, one batched masked pass);
* ``evaluate_one_by_one``: the same call with ``image_batch=1`` (what evaluate did before
  it batched images);
* ``bound``: the two passes written by hand for each image alone;
* ``bound_batched``: the same two passes written by hand, each over the whole batch.

Times are per row. ``ratio_evaluate_to_bound`` is the issue's criterion (a row against one
image's own passes); ``ratio_evaluate_to_bound_batched`` compares like with like.

``--metrics default`` times the rows with every default metric instead (the bound then still
counts only the two passes above, so its ratio is not a criterion; the two ``evaluate`` columns
say what batching gains on a full row).

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


def _bound_batched(model: torch.nn.Module, preprocess: Any, layer: str, images: list[Any]) -> None:
    """Grad-CAM's passes written by hand for ``images`` as one batch: a forward + backward to ``layer`` (the
    map), then the masked images' forward (Average Drop / IC). One image is the per-image bound."""
    pixels = torch.stack([preprocess.geometry(camwidgets.load_image(im)) for im in images])
    x = preprocess.normalize(pixels)
    acts: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    c = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), acts[0])
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    lo = cam.amin(dim=(1, 2, 3), keepdim=True)
    hi = cam.amax(dim=(1, 2, 3), keepdim=True)
    cam = (cam - lo) / (hi - lo + 1e-7)
    with torch.inference_mode():
        model(preprocess.normalize(pixels * cam)).softmax(1)


def _evaluate(model: torch.nn.Module, preprocess: Any, items: list[Any], image_batch: int) -> None:
    camwidgets.evaluate(model, items, ["gradcam"], METRICS, preprocess=preprocess, target="predicted",
                        progress=False, image_batch=image_batch)


def _use_metrics(which: str) -> None:
    global METRICS
    METRICS = list(camwidgets.core.evaluate.DEFAULT_METRICS) if which == "default" else METRICS


def _timed(fn: Any) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def run(name: str, rounds: int, batch: int, size: int) -> dict[str, Any]:
    model, preprocess, layer = _model(name)
    data = Shapes(rounds * batch + 1, seed=11, size=size)
    warm = data[rounds * batch]
    _evaluate(model, preprocess, [warm, warm], 2)
    _bound_batched(model, preprocess, layer, [warm["image"]])
    _bound_batched(model, preprocess, layer, [warm["image"]] * 2)
    kinds = ("evaluate", "evaluate_one_by_one", "bound", "bound_batched")
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(rounds):
        items = [data[i * batch + j] for j in range(batch)]

        def bound(items: list[Any] = items) -> None:
            for item in items:  # each image's own passes
                _bound_batched(model, preprocess, layer, [item["image"]])

        fns = {"evaluate": functools.partial(_evaluate, model, preprocess, items, batch),
               "evaluate_one_by_one": functools.partial(_evaluate, model, preprocess, items, 1),
               "bound": bound,
               "bound_batched": functools.partial(_bound_batched, model, preprocess, layer,
                                                  [item["image"] for item in items])}
        order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
        for what in order:
            w, c = _timed(fns[what])
            wall[what].append(w / batch)
            cpu[what].append(c / batch)
    out: dict[str, Any] = {
        "model": name, "layer": layer, "image_size": size, "images_per_call": batch, "rounds": rounds,
        "median_s_per_row": {k: statistics.median(v) for k, v in wall.items()},
        "range_s_per_row": {k: [min(v), max(v)] for k, v in wall.items()},
        "median_cpu_s_per_row": {k: statistics.median(v) for k, v in cpu.items()},
    }
    med = out["median_s_per_row"]
    out["ratio_evaluate_to_bound"] = med["evaluate"] / med["bound"]
    out["ratio_evaluate_to_bound_batched"] = med["evaluate"] / med["bound_batched"]
    out["ratio_one_by_one_to_bound"] = med["evaluate_one_by_one"] / med["bound"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["demo", "resnet50"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--metrics", choices=["ad-ic", "default"], default="ad-ic")
    args = ap.parse_args()
    _use_metrics(args.metrics)
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

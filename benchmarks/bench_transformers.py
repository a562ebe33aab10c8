"""Time per image on vision transformers beside ResNet-50: Grad-CAM and Fusion-CAM. Prints JSON.

For each model (torchvision, random weights, head re-initialised for ViT, 224 px, a fresh
random image each round): camwidgets' Grad-CAM (``Explainer(...).gradcam()``: the token grid
found by the capture), pytorch-grad-cam's ``GradCAM`` with the ``reshape_transform`` its
documentation gives for the model (where installed), camwidgets' Fusion-CAM with the fast
region map (``region="reciprocam"``, what the explorer uses on such models), and the bound
every implementation pays: one forward pass. The implementations take turns within a round;
medians over the rounds; the load average before and after.

Usage::

    python benchmarks/bench_transformers.py [--models vit_b_16 swin_t resnet50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

import camwidgets


def _model(name: str) -> tuple[torch.nn.Module, str, Callable[[torch.Tensor], torch.Tensor] | None, Any]:
    """The model, its default layer's module path for pytorch-grad-cam, its reshape, and the module."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    if name.startswith("vit"):
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        grid = 224 // model.patch_size
        layer = model.encoder.layers[-1].ln_1

        def vit_reshape(t: torch.Tensor) -> torch.Tensor:
            return t[:, 1:, :].reshape(t.size(0), grid, grid, t.size(2)).permute(0, 3, 1, 2)

        return model, "encoder.layers[-1].ln_1", vit_reshape, layer
    if name.startswith("swin"):
        return model, "features[-1][-1]", lambda t: t.permute(0, 3, 1, 2), model.features[-1][-1]
    return model, "layer4[-1]", None, model.layer4[-1]


def _median_ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 1)


def run(name: str, rounds: int) -> dict[str, Any]:
    model, where, reshape, module = _model(name)
    pre = camwidgets.Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    try:
        from pytorch_grad_cam import GradCAM  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - the peer is a test dependency
        GradCAM = None
    target = 3
    times: dict[str, list[float]] = {"forward": [], "camwidgets_gradcam": [], "pgc_gradcam": [],
                                      "camwidgets_fusioncam_reciprocam": []}
    for r in range(rounds + 1):  # the first round warms up, untimed
        image = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(r))
        x = pre(image)[None]
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        fwd = time.perf_counter() - t
        t = time.perf_counter()
        camwidgets.Explainer(model, image, target=target, preprocess=pre).gradcam()
        ours = time.perf_counter() - t
        pgc = float("nan")
        if GradCAM is not None:
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # type: ignore[import-untyped]

            t = time.perf_counter()
            with GradCAM(model=model, target_layers=[module], reshape_transform=reshape) as cam:
                cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])
            pgc = time.perf_counter() - t
        t = time.perf_counter()
        camwidgets.Explainer(model, image, target=target, preprocess=pre).fusioncam(region="reciprocam")
        fusion = time.perf_counter() - t
        if r:
            times["forward"].append(fwd)
            times["camwidgets_gradcam"].append(ours)
            times["pgc_gradcam"].append(pgc)
            times["camwidgets_fusioncam_reciprocam"].append(fusion)
    return {"model": name, "layer": where, "rounds": rounds,
            "median_ms": {k: _median_ms(v) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["vit_b_16", "swin_t", "resnet50"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = [run(m, args.rounds) for m in args.models]
    print(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__, "threads": args.threads,
                      "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_before": load_before,
                      "results": results, "load_after": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()

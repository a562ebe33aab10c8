"""One CAM map per image: camwidgets beside torchcam, Captum and pytorch-grad-cam, round-robin. Prints JSON.

For each model (random weights, 224 px) and each gradient method every implementation
builds one map of a fresh image for a fixed class, in rounds where the implementations take
turns (so a load change hits them alike); per implementation the median wall time and the
median process CPU time over the rounds are reported, with the bound every implementation
must pay: one forward pass (``forward``) and one forward + backward down to the explained
layer (``forward_backward``, what torchcam and Captum do). ``ratio_to_fastest_peer`` is
camwidgets' median over the fastest peer's. The machine's load average is printed before
and after.

Peers (each only where it has the method): torchcam (``GradCAM``, ``GradCAMpp``,
``XGradCAM``, ``LayerCAM``), Captum (``LayerGradCam``: Grad-CAM only), pytorch-grad-cam
(all five incl. ``HiResCAM``). Peers missing from the environment are reported as missing.

Usage::

    python benchmarks/bench_single_image.py                     # ResNet-18 and ResNet-50, 10 rounds
    python benchmarks/bench_single_image.py --models resnet18 --rounds 3
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
import torchvision

import camwidgets

METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")
_TORCHCAM = {"gradcam": "GradCAM", "gradcampp": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}
_PGC = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
        "hirescam": "HiResCAM"}
TARGET = 7


def _peers(model: torch.nn.Module, layer: str, method: str) -> dict[str, Callable[[torch.Tensor], Any]]:
    out: dict[str, Callable[[torch.Tensor], Any]] = {}
    module = model.get_submodule(layer)
    try:
        import torchcam.methods as tc

        if method in _TORCHCAM:
            cls = getattr(tc, _TORCHCAM[method])

            def torchcam(x: torch.Tensor) -> Any:
                with cls(model, target_layer=layer) as extractor:
                    scores = model(x[None])
                    return extractor(TARGET, scores)[0]

            out["torchcam"] = torchcam
    except ImportError:
        pass
    try:
        from captum.attr import LayerGradCam

        if method == "gradcam":
            def captum(x: torch.Tensor) -> Any:
                return LayerGradCam(model, module).attribute(x[None], target=TARGET)

            out["captum"] = captum
    except ImportError:
        pass
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls_p = getattr(pgc, _PGC[method])

        def pytorch_grad_cam(x: torch.Tensor) -> Any:
            with cls_p(model=model, target_layers=[module]) as cam:
                return cam(input_tensor=x[None], targets=[ClassifierOutputTarget(TARGET)])

        out["pytorch-grad-cam"] = pytorch_grad_cam
    except ImportError:
        pass
    return out


def _bounds(model: torch.nn.Module, layer: str) -> dict[str, Callable[[torch.Tensor], Any]]:
    module = model.get_submodule(layer)

    def forward(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return model(x[None])

    def forward_backward(x: torch.Tensor) -> Any:
        store: dict[str, torch.Tensor] = {}
        handle = module.register_forward_hook(lambda m, a, o: store.__setitem__("a", o))
        try:
            scores = model(x[None])
        finally:
            handle.remove()
        return torch.autograd.grad(scores[0, TARGET], store["a"])[0]

    return {"forward": forward, "forward_backward": forward_backward}


def run(model_name: str, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    layer = "layer4"
    images = [torch.rand(3, 224, 224) for _ in range(rounds + 1)]
    out: dict[str, Any] = {"model": model_name, "layer": layer, "size": 224, "methods": {}}
    for method in METHODS:
        def ours(x: torch.Tensor, m: str = method) -> Any:
            return camwidgets.Explainer(model, x, target=TARGET, layers=[layer]).explain(m).map

        impls = {"camwidgets": ours, **_peers(model, layer, method), **_bounds(model, layer)}
        wall: dict[str, list[float]] = {k: [] for k in impls}
        cpu: dict[str, list[float]] = {k: [] for k in impls}
        for fn in impls.values():  # warm-up
            fn(images[0])
        for r in range(rounds):
            order = list(impls)
            order = order[r % len(order):] + order[: r % len(order)]  # round-robin start
            for name in order:
                c0, t0 = time.process_time(), time.perf_counter()
                impls[name](images[r + 1])
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in wall.items()}
        peers = [k for k in impls if k not in ("camwidgets", "forward", "forward_backward")]
        fastest = min(peers, key=lambda k: med[k]) if peers else None
        out["methods"][method] = {
            "wall_median_s": {k: round(v, 4) for k, v in med.items()},
            "wall_range_s": {k: [round(min(v), 4), round(max(v), 4)] for k, v in wall.items()},
            "cpu_median_s": {k: round(statistics.median(v), 4) for k, v in cpu.items()},
            "fastest_peer": fastest,
            "ratio_to_fastest_peer": None if fastest is None else round(med["camwidgets"] / med[fastest], 3),
            "ratio_to_forward_backward": round(med["camwidgets"] / med["forward_backward"], 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "single_image", "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "threads": args.threads, "rounds": args.rounds,
        "loadavg_before": os.getloadavg(), "results": [run(m, args.rounds) for m in args.models],
    }
    result["loadavg_after"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

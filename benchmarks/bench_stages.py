"""Per-stage cost of Fusion-CAM and I-CAM through :class:`camwidgets.Explainer`. Prints JSON.

Each row times one call on a fresh or warmed explainer and counts the model's forward
calls (a forward-pre-hook), so the numbers show what an interactive change costs:

* ``construct``: the capture (one forward + backward over every candidate layer);
* ``scorecam``: the region map (masked forwards in batches);
* ``fusioncam_first`` / ``fusioncam_theta``: first Fusion-CAM after Score-CAM, then a new θ;
* ``icam_first``: the perturbation stage (one batched forward + backward of n images)
  plus scoring, selection and per-layer maps; ``icam_threshold`` / ``icam_bias`` /
  ``icam_alpha``: what a change of that parameter alone costs.

Models: the trained demo model (128 px, falls back to random weights if the weights are
missing) and ResNet-50 (random weights, 224 px).

Usage::

    python benchmarks/bench_stages.py            # demo + ResNet-50
    python benchmarks/bench_stages.py --quick    # demo only, n=4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class _Counter:
    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.calls += 1


def _stage(rows: dict[str, Any], name: str, counter: _Counter, fn: Callable[[], Any]) -> Any:
    before = counter.calls
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rows[name] = {"seconds": round(time.perf_counter() - t, 4), "forwards": counter.calls - before}
    return out


def bench(model: nn.Module, image: torch.Tensor, preprocess: Any, n: int) -> dict[str, Any]:
    from camwidgets.core import Explainer

    counter = _Counter(model)
    rows: dict[str, Any] = {}
    try:
        exp = _stage(rows, "construct", counter, lambda: Explainer(model, image, preprocess=preprocess))
        _stage(rows, "gradcam", counter, exp.gradcam)
        _stage(rows, "scorecam", counter, exp.scorecam)
        _stage(rows, "fusioncam_first", counter, lambda: exp.fusioncam(theta=10))
        _stage(rows, "fusioncam_theta", counter, lambda: exp.fusioncam(theta=20))
        _stage(rows, "fusioncam_cached", counter, lambda: exp.fusioncam(theta=20))
        _stage(rows, "unioncam_first", counter, lambda: exp.unioncam(theta=10))
        _stage(rows, "unioncam_theta", counter, lambda: exp.unioncam(theta=20))
        _stage(rows, "icam_first", counter, lambda: exp.icam(n=n))
        _stage(rows, "icam_threshold", counter, lambda: exp.icam(n=n, threshold=0.7))
        _stage(rows, "icam_bias", counter, lambda: exp.icam(n=n, threshold=0.7, bias="none"))
        _stage(rows, "icam_alpha", counter, lambda: exp.icam(n=n, alpha=0.2))
        rows["candidate_layers"] = len(exp.candidate_layers)
    finally:
        counter.handle.remove()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo model only, n=4")
    parser.add_argument("--n", type=int, default=8, help="I-CAM perturbations")
    args = parser.parse_args(argv)
    n = 4 if args.quick else args.n

    from camwidgets.datasets import Shapes
    from camwidgets.models import DemoNet, demo_preprocess, load_demo_model

    try:
        demo, pre, _ = load_demo_model()
        trained = True
    except FileNotFoundError:
        torch.manual_seed(0)
        demo, pre, trained = DemoNet().eval(), demo_preprocess(), False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    image = Shapes(4, seed=2)[0]["image"]
    report: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0],
                              "threads": torch.get_num_threads(), "device": str(device), "n": n,
                              "demo": {"trained": trained, **bench(demo.to(device), image, pre, n)}}
    if not args.quick:
        from torchvision.models import resnet50

        from camwidgets.core.preprocess import Preprocess

        torch.manual_seed(0)
        r50 = resnet50().eval().to(device)
        pre50 = Preprocess(size=224, resize=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        report["resnet50"] = bench(r50, image, pre50, n)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

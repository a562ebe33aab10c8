"""Score-CAM speed: camwidgets vs pytorch-grad-cam, and the forward-pass bound. Prints JSON.

For each model (random weights, 224x224, last block of ``layer4``) both implementations
compute the channel weights for the same input in the same process, side by side:

* ``peer_s``: pytorch-grad-cam 1.5 ``ScoreCAM.get_cam_weights`` (its default batch of 16,
  and with ``batch_size`` set like ours), given the activations;
* ``ours_s``: :func:`camwidgets.core.region.scorecam_weights` (inference mode, in the
  memory format chosen below);
* ``bound_s``: channels x the best per-image forward time (a batch of ``batch_size``
  images under ``torch.inference_mode``, best of ``repeats`` and of the memory formats
  camwidgets can use, divided by the batch size),
  i.e. what the masked forward passes alone cost.

Goals: ``ours_s / peer_s <= 1.0`` and ``ours_s / bound_s <= 1.15``.

It also measures whether ``torch.inference_mode`` (vs ``no_grad``) and
``channels_last`` speed up the forward pass, and, on the trained demo model, the
fraction of all-zero channels whose passes Score-CAM skips.

Usage::

    python benchmarks/bench_scorecam.py              # full run (minutes on a CPU)
    python benchmarks/bench_scorecam.py --quick      # ResNet-18 at 64 px, one repeat: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from camwidgets.core._hooks import capture
from camwidgets.core.region import scorecam_weights


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def _forward_modes(model: nn.Module, x: torch.Tensor, batch: int, repeats: int) -> dict[str, float]:
    """Best time of one forward of a ``batch``-image batch per (grad mode, memory format).

    ``input_channels_last`` converts only the input (what camwidgets may do: it never
    changes the user's model); ``model_channels_last`` converts a copy of the model too,
    for reference. The cases run round-robin, ``repeats`` rounds, so a change of machine
    load affects them alike.
    """
    xb = x.expand(batch, -1, -1, -1).contiguous()
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cases = []
    for mode_name, mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        cases += [(f"{mode_name}+contiguous", mode, model, xb),
                  (f"{mode_name}+input_channels_last", mode, model,
                   xb.contiguous(memory_format=torch.channels_last)),
                  (f"{mode_name}+model_channels_last", mode, cl_model,
                   xb.contiguous(memory_format=torch.channels_last))]
    out = {name: float("inf") for name, *_ in cases}
    for _, mode, m, inp in cases:  # warm-up
        with mode():
            m(inp)
    for _ in range(repeats):
        for name, mode, m, inp in cases:
            with mode():
                out[name] = min(out[name], _best(lambda m=m, inp=inp: m(inp), 1))
    return out


def _peer(model: nn.Module, layer: nn.Module, x: torch.Tensor, acts: torch.Tensor, target: int,
          batch_size: int | None) -> None:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = ScoreCAM(model, [layer])
    if batch_size is not None:
        cam.batch_size = batch_size
    try:
        with open("/dev/null", "w") as devnull, contextlib.redirect_stderr(devnull):  # its tqdm bars
            cam.get_cam_weights(x, layer, [ClassifierOutputTarget(target)], acts.cpu().numpy(), None)
    finally:
        cam.activations_and_grads.release()


def bench_model(name: str, size: int, batch_size: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = getattr(tvm, name)().eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    layer_name = f"layer4.{len(model.layer4) - 1}"
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    cap = capture(model, x, [layer_name], None, gradients=False)
    acts, target = cap.activations[layer_name], int(cap.targets[0])
    channels = int(acts.shape[1])

    modes = _forward_modes(model, x, batch_size, repeats)
    per_image = min(v for k, v in modes.items() if "model_channels_last" not in k) / batch_size
    bound = channels * per_image

    # Ours (both memory formats) and the peer (its default batch of 16 and ours), round-robin.
    runs: dict[str, Callable[[], Any]] = {
        "ours_contiguous": lambda: scorecam_weights(model, x, acts[0], target, batch_size=batch_size,
                                                    channels_last=False),
        "ours_input_channels_last": lambda: scorecam_weights(model, x, acts[0], target,
                                                             batch_size=batch_size, channels_last=True),
        "peer_batch16": lambda: _peer(model, model.get_submodule(layer_name), x, acts, target, None),
        f"peer_batch{batch_size}": lambda: _peer(model, model.get_submodule(layer_name), x, acts, target,
                                                 batch_size),
    }
    times = {label: float("inf") for label in runs}
    for _ in range(repeats):
        for label, fn in runs.items():
            times[label] = min(times[label], _best(fn, 1))
    ours = {label[5:]: v for label, v in times.items() if label.startswith("ours_")}
    peer_default, peer_same = times["peer_batch16"], times[f"peer_batch{batch_size}"]
    best_ours = min(ours.values())
    return {
        "model": name, "layer": layer_name, "size": size, "channels": channels, "batch_size": batch_size,
        "device": str(device), "forward_batch_s": modes, "bound_s": bound,
        "ours_s": ours, "peer_batch16_s (its default)": peer_default, f"peer_batch{batch_size}_s": peer_same,
        "ratio_vs_peer": best_ours / min(peer_default, peer_same),
        "ratio_vs_bound": best_ours / bound,
        "goal": "ratio_vs_peer <= 1.0 and ratio_vs_bound <= 1.15",
    }


def bench_demo_skips(n_images: int) -> dict[str, Any]:
    """Fraction of all-zero channels (skipped passes) on the trained demo model, per layer."""
    from camwidgets.datasets import Shapes
    from camwidgets.models import load_demo_model

    try:
        model, pre, _ = load_demo_model()
    except FileNotFoundError as err:
        return {"skipped": str(err)}
    data = Shapes(n_images, seed=2)
    fractions: dict[str, list[float]] = {}
    times: list[float] = []
    for i in range(n_images):
        x = pre(data[i]["image"])[None]
        layers = [f"layer{s}.1" for s in (3, 4)]
        cap = capture(model, x, layers, None, gradients=False)
        for ln in layers:
            a = cap.activations[ln][0]
            t = time.perf_counter()
            rw = scorecam_weights(model, x, a, int(cap.targets[0]))
            times.append(time.perf_counter() - t)
            fractions.setdefault(ln, []).append(float(rw.skipped.float().mean()))
    return {"images": n_images,
            "fraction_skipped_mean": {k: sum(v) / len(v) for k, v in fractions.items()},
            "scorecam_s_mean": sum(times) / len(times)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at 64 px, one repeat")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet18,resnet50", help="comma-separated torchvision names")
    args = parser.parse_args(argv)
    if args.quick:
        runs = [("resnet18", 64)]
        repeats, n_demo = 1, 2
    else:
        runs = [(m, 224) for m in args.models.split(",") if m]
        repeats, n_demo = args.repeats, 16
    report = {
        "torch": torch.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
        "threads": torch.get_num_threads(), "quick": args.quick,
        "models": [bench_model(m, s, args.batch_size, repeats) for m, s in runs],
        "demo_zero_channels": bench_demo_skips(n_demo),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

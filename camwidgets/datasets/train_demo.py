"""Retrain the embedded demo model from scratch.

Usage::

    python -m camwidgets.datasets.train_demo                 # writes camwidgets/data/demo_model.pt
    python -m camwidgets.datasets.train_demo --out my.pt --epochs 8

Training images get flips, 90-degree rotations and, for half of each batch, I-CAM's
own perturbation (Gaussian noise plus pixel dropout, strength up to 0.6) so that the
model, like an ImageNet model, keeps its prediction under the perturbations the
explainers use. Deterministic: the data come from fixed seeds, the initialisation and the
shuffling from ``torch.manual_seed``, and ``torch.use_deterministic_algorithms``
is on; with the same torch build and thread count (``--threads``, default 2) the
weights are bitwise identical. It prints one JSON line with the held-out accuracy
(2,000 items from :data:`EVAL_SEED`, never used in training), the training time
and the weight file's size. On a 2-core CPU it takes about 10 minutes.

Seeds used by camwidgets (keep them apart): :data:`TRAIN_SEED` and
:data:`TRAIN_MULTI_SEED` for training, :data:`EVAL_SEED` for this report, the test
suite uses seeds 2-99, and the benchmarks use seeds from 1000 on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.demo import DemoNet, demo_preprocess
from .shapes import Shapes

__all__ = ["EVAL_SEED", "TRAIN_MULTI_SEED", "TRAIN_SEED", "evaluate_accuracy", "main", "train"]

TRAIN_SEED = 0
TRAIN_MULTI_SEED = 100
EVAL_SEED = 1


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Label-preserving flips and 90-degree rotations, one draw per image."""
    flips = torch.randint(0, 2, (x.shape[0], 2), generator=gen)
    rots = torch.randint(0, 4, (x.shape[0],), generator=gen)
    out = []
    for img, (fh, fv), k in zip(x, flips.tolist(), rots.tolist(), strict=True):
        if fh:
            img = img.flip(-1)
        if fv:
            img = img.flip(-2)
        out.append(torch.rot90(img, k, dims=(-2, -1)))
    return torch.stack(out)


def _perturb(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, max_alpha: float = 0.6) -> torch.Tensor:
    """I-CAM-style perturbations (Integrative CAM, Singh et al. 2024, eq. 4) on a random half of the batch.

    For a chosen image, ``alpha ~ U(0, max_alpha)``, then ``clip((x + alpha N) * M, 0, 1)``
    with ``N ~ N(0, 1)`` and a keep-mask ``M ~ Bernoulli(1 - alpha)`` shared by the
    channels. A model trained on clean images alone flips its prediction under such
    noise (every MDS is then 0 and I-CAM has nothing to weigh layers by); ImageNet models
    are robust to it, and the demo model should behave like them.
    """
    n = x.shape[0]
    chosen = (torch.rand(n, generator=gen) < p).view(n, 1, 1, 1)
    alpha = (torch.rand(n, generator=gen) * max_alpha).view(n, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen)
    keep = (torch.rand((n, 1, *x.shape[-2:]), generator=gen) >= alpha).to(x.dtype)
    perturbed = ((x + alpha * noise) * keep).clamp(0.0, 1.0)
    return torch.where(chosen, perturbed, x)


@torch.inference_mode()
def evaluate_accuracy(model: torch.nn.Module, dataset: Shapes, batch_size: int = 100) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``dataset``, in [0, 1]."""
    pre = demo_preprocess()
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.tensors(range(start, min(start + batch_size, len(dataset))))
        correct += int((model(pre(x)).argmax(1) == y).sum())
    return correct / max(1, len(dataset))


def train(epochs: int = 7, n_train: int = 12000, n_multi: int = 3000, batch_size: int = 64,
          lr: float = 0.2, threads: int = 2, log: bool = True) -> DemoNet:
    """Train a fresh :class:`DemoNet` on Shapes; returns it in eval mode.

    Torch's global settings (thread count, deterministic algorithms, the global RNG)
    are set for the run and restored afterwards.
    """
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_rng = torch.get_rng_state()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(epochs, n_train, n_multi, batch_size, lr, log)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        torch.set_rng_state(prev_rng)


def _train(epochs: int, n_train: int, n_multi: int, batch_size: int, lr: float, log: bool) -> DemoNet:
    gen = torch.Generator().manual_seed(0)
    pre = demo_preprocess()
    t0 = time.perf_counter()
    xs, ys = Shapes(n_train, TRAIN_SEED).tensors()
    xm, ym = Shapes(n_multi, TRAIN_MULTI_SEED, multi_instance=True).tensors()
    x_all, y_all = torch.cat([xs, xm]), torch.cat([ys, ym])
    if log:
        print(f"generated {len(y_all)} training images in {time.perf_counter() - t0:.1f}s", flush=True)
    model = DemoNet().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * math.ceil(len(y_all) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(y_all), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            x = pre(_perturb(_augment(x_all[idx], gen), gen)).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        if log:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model


def main(argv: list[str] | None = None) -> dict[str, float | int | str]:
    default_out = Path(__file__).resolve().parent.parent / "data" / "demo_model.pt"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=default_out, help="where to write the weights")
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--n-multi", type=int, default=3000)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model = train(epochs=args.epochs, n_train=args.n_train, n_multi=args.n_multi, threads=args.threads)
    train_s = time.perf_counter() - t0
    acc = evaluate_accuracy(model, Shapes(2000, EVAL_SEED))
    acc_multi = evaluate_accuracy(model, Shapes(500, EVAL_SEED, multi_instance=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    report: dict[str, float | int | str] = {
        "accuracy_2000_eval_seed": round(acc, 4),
        "accuracy_500_multi_instance": round(acc_multi, 4),
        "train_seconds": round(train_s, 1),
        "weights_bytes": os.path.getsize(args.out),
        "out": str(args.out),
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()

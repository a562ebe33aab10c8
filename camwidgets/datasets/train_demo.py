"""Retrain the embedded demo model from scratch.

Usage::

    python -m camwidgets.datasets.train_demo                 # writes camwidgets/data/demo_model.pt
    python -m camwidgets.datasets.train_demo --out my.pt --epochs 8 --threads 1

The model learns from three scenes of :class:`~camwidgets.datasets.Shapes`: single
objects, 2-3 objects of one class, and pairs of two different classes. A single or
multi image has a one-hot target; a pair's target is split between its two classes,
halfway between an even split and the split by mask area::

    w_larger = (0.5 + area_larger / (area_larger + area_smaller)) / 2,   w_smaller = 1 - w_larger

(cross-entropy with these soft targets, plus 5 % label smoothing). Area matters because
the model ends in global average pooling and one linear layer: a class's logit is the
mean of its evidence map over the image, so it grows with the area its object covers,
and the larger object becomes the prediction, the ``label`` of a pair item. The halving
towards 0.5 keeps the smaller object's class at 0.25 or more even when it covers a
tenth of the larger's area, far above the six absent classes, which is what lets a
user switch the explained class from one object to the other.

Training images get flips, 90-degree rotations and, for half of each batch, I-CAM's
own perturbation (Gaussian noise plus pixel dropout, strength up to 0.6) so that the
model, like an ImageNet model, keeps its prediction under the perturbations the
explainers use.

Deterministic: the data come from fixed seeds, the initialisation and the shuffling from
``torch.manual_seed``, and ``torch.use_deterministic_algorithms`` is on; with the same
torch build, thread count (``--threads``, default 2) and precision (``--precision``) the
weights are bitwise identical (the shipped weights: torch 2.14.1, 2 threads, float32).
``--precision auto`` (the default) trains the convolutions in bfloat16 autocast where the CPU
computes bfloat16 natively (oneDNN reports it: AMX or AVX512-BF16), about twice as fast as
float32, and in float32 elsewhere; the JSON line says which was used. On an idle 2-core CPU
the shipped recipe took 12.1 minutes with 2 threads (724 s; one thread: 1,283 s of CPU). On a
machine busy with other work pass ``--threads 1``: two threads then wait for each other
(measured 3-4 times slower per step under a load of 9), but the weights differ from the
2-thread ones.

The shipped weights report 99.5 % top-1 on single objects, 99.2 % on 2-3 instances, and on
pairs the two classes present are the two most probable in 98.4 % of the images (the larger
object is the top class in 73.8 %).

It prints one JSON line: top-1 accuracy on 2,000 single objects and 500 multi-object
images of :data:`EVAL_SEED` (never used in training), on 1,000 pairs of :data:`EVAL_SEED`
the fraction whose two largest probabilities are the two classes present (and the
fraction whose top class is the larger object), the wall-clock and CPU seconds of
the training, the load average around it, and the weight file's size.

Seeds used by camwidgets (keep them apart): :data:`TRAIN_SEED`, :data:`TRAIN_MULTI_SEED`
and :data:`TRAIN_PAIR_SEED` for training, :data:`EVAL_SEED` for this report (all three
scenes), the bundled samples 7-8, the test suite 2-99, and the benchmarks from 1000 on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models.demo import DemoNet, demo_preprocess
from .shapes import CLASSES, Shapes

__all__ = ["EVAL_SEED", "TRAIN_MULTI_SEED", "TRAIN_PAIR_SEED", "TRAIN_SEED", "evaluate_accuracy",
           "evaluate_pairs", "main", "pair_target", "train"]

TRAIN_SEED = 0
TRAIN_MULTI_SEED = 100
TRAIN_PAIR_SEED = 200
EVAL_SEED = 1

# Recipe of the shipped weights (the defaults of train() and of the command line).
_EPOCHS, _N_TRAIN, _N_MULTI, _N_PAIR, _BATCH, _LR = 6, 8000, 1500, 4500, 64, 0.2


def pair_target(item: dict, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """Soft target ``(num_classes,)`` of a Shapes item: one-hot, or a pair's split.

    A pair's weights lie halfway between 0.5 / 0.5 and the split by mask area (see the
    module docstring); they sum to 1.
    """
    t = torch.zeros(num_classes)
    if "labels" not in item:
        t[item["label"]] = 1.0
        return t
    big, small = item["labels"]
    a_big, a_small = float(item["masks"][big].sum()), float(item["masks"][small].sum())
    w_big = 0.5 * (0.5 + a_big / (a_big + a_small))
    t[big], t[small] = w_big, 1.0 - w_big
    return t


def _load(dataset: Shapes) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``(N, 3, H, W)`` (a quarter of float32's memory) and soft targets."""
    images = torch.empty(len(dataset), 3, dataset.size, dataset.size, dtype=torch.uint8)
    targets = torch.empty(len(dataset), len(CLASSES))
    for i in range(len(dataset)):
        item = dataset[i]
        images[i] = (item["image"] * 255.0).round_().to(torch.uint8)
        targets[i] = pair_target(item)
    return images, targets


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
def _probabilities(model: torch.nn.Module, dataset: Shapes, batch_size: int = 100) -> tuple[torch.Tensor, list]:
    pre = demo_preprocess()
    model.eval()
    probs: list[torch.Tensor] = []
    items: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([it["image"] for it in batch])
        probs.append(model(pre(x)).softmax(-1))
        items.extend({k: v for k, v in it.items() if k in ("label", "labels")} for it in batch)
    return (torch.cat(probs) if probs else torch.zeros(0, len(CLASSES))), items


@torch.inference_mode()
def evaluate_accuracy(model: torch.nn.Module, dataset: Shapes, batch_size: int = 100) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``dataset``, in [0, 1] (pairs: the larger object)."""
    probs, items = _probabilities(model, dataset, batch_size)
    correct = sum(int(p.argmax()) == it["label"] for p, it in zip(probs, items, strict=True))
    return correct / max(1, len(dataset))


@torch.inference_mode()
def evaluate_pairs(model: torch.nn.Module, dataset: Shapes, batch_size: int = 100) -> dict[str, float]:
    """On a ``scene="pair"`` dataset: ``top2``, the fraction of images whose two largest
    probabilities are the two classes present, and ``top1_larger``, the fraction whose
    top class is the larger object's."""
    if dataset.scene != "pair":
        raise ValueError(f"evaluate_pairs needs a scene='pair' dataset, got scene={dataset.scene!r}.")
    probs, items = _probabilities(model, dataset, batch_size)
    top2 = top1 = 0
    for p, it in zip(probs, items, strict=True):
        best = p.topk(2).indices.tolist()
        top2 += set(best) == set(it["labels"])
        top1 += best[0] == it["label"]
    n = max(1, len(dataset))
    return {"top2": top2 / n, "top1_larger": top1 / n}


def _resolve_precision(precision: str) -> str:
    if precision == "auto":
        native = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
        return "bf16" if native else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}.")
    return precision


def train(epochs: int = _EPOCHS, n_train: int = _N_TRAIN, n_multi: int = _N_MULTI, n_pair: int = _N_PAIR,
          batch_size: int = _BATCH, lr: float = _LR, threads: int = 2, precision: str = "auto",
          log: bool = True) -> DemoNet:
    """Train a fresh :class:`DemoNet` on Shapes (single, multi and pair scenes); returns it in eval mode.

    ``precision`` is ``"fp32"``, ``"bf16"`` (bfloat16 autocast) or ``"auto"`` (bf16 where
    the CPU has it natively). Torch's global settings (thread count, deterministic
    algorithms, the global RNG) are set for the run and restored afterwards.
    """
    prec = _resolve_precision(precision)
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_rng = torch.get_rng_state()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(epochs, n_train, n_multi, n_pair, batch_size, lr, prec, log)
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        torch.set_rng_state(prev_rng)


def _train(epochs: int, n_train: int, n_multi: int, n_pair: int, batch_size: int, lr: float,
           precision: str, log: bool) -> DemoNet:
    gen = torch.Generator().manual_seed(0)
    pre = demo_preprocess()
    t0 = time.perf_counter()
    parts = [_load(Shapes(n_train, TRAIN_SEED)),
             _load(Shapes(n_multi, TRAIN_MULTI_SEED, scene="multi")),
             _load(Shapes(n_pair, TRAIN_PAIR_SEED, scene="pair"))]
    x_all = torch.cat([p[0] for p in parts])
    t_all = torch.cat([p[1] for p in parts])
    if log:
        print(f"generated {len(t_all)} training images in {time.perf_counter() - t0:.1f}s", flush=True)
    model = DemoNet().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * math.ceil(len(t_all) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(t_all), generator=gen)
        total, seen = 0.0, 0
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            x = x_all[idx].float().div_(255.0)
            x = pre(_perturb(_augment(x, gen), gen)).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), t_all[idx], label_smoothing=0.05)
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
    ap.add_argument("--epochs", type=int, default=_EPOCHS)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (2: the shipped weights; 1 on a busy machine, other weights)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    ap.add_argument("--n-train", type=int, default=_N_TRAIN, help="single-object images")
    ap.add_argument("--n-multi", type=int, default=_N_MULTI, help="images of 2-3 objects of one class")
    ap.add_argument("--n-pair", type=int, default=_N_PAIR, help="images of two objects of two classes")
    args = ap.parse_args(argv)
    precision = _resolve_precision(args.precision)
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    model = train(epochs=args.epochs, n_train=args.n_train, n_multi=args.n_multi, n_pair=args.n_pair,
                  threads=args.threads, precision=precision)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    load_after = os.getloadavg()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        acc = evaluate_accuracy(model, Shapes(2000, EVAL_SEED))
        acc_multi = evaluate_accuracy(model, Shapes(500, EVAL_SEED, scene="multi"))
        pairs = evaluate_pairs(model, Shapes(1000, EVAL_SEED, scene="pair"))
    finally:
        torch.set_num_threads(prev_threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    report: dict[str, float | int | str] = {
        "accuracy_2000_eval_seed": round(acc, 4),
        "accuracy_500_multi_instance": round(acc_multi, 4),
        "pair_top2_1000": round(pairs["top2"], 4),
        "pair_top1_larger_1000": round(pairs["top1_larger"], 4),
        "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(cpu_s, 1),
        "load_average_1min_before_after": f"{load_before[0]:.1f} / {load_after[0]:.1f}",
        "cpus": os.cpu_count() or 0,
        "threads": args.threads,
        "precision": precision,
        "torch": torch.__version__,
        "weights_bytes": os.path.getsize(args.out),
        "out": str(args.out),
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()

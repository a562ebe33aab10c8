"""The sanity-check tables of docs/sanity.md: cascading randomisation and random logit on one sample.

Demo model, ``shapes-star``, ``seed=0``, one torch thread. Prints the two Markdown tables
(the cascade at selected steps and the mean of its last ten, and the random-logit means over all
7 other classes) and a JSON line with the settings and timings.

Usage::

    python benchmarks/bench_sanity_table.py
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from camwidgets.datasets import load_sample
from camwidgets.models.demo import load_demo_model
from camwidgets.sanity import parameter_randomisation, random_logit

METHODS = ("gradcam", "gradcampp", "layercam", "scorecam", "eigencam")
STEPS = (0, 1, 2, 3, 6, 11, 21, 31, 41)


def main() -> int:
    torch.set_num_threads(1)
    model, pre, names = load_demo_model()
    image = load_sample("shapes-star")["image"]
    t0 = time.perf_counter()
    casc = parameter_randomisation(model, image, methods=METHODS, preprocess=pre, mode="cascading", seed=0)
    t1 = time.perf_counter()
    logit = random_logit(model, image, methods=METHODS, preprocess=pre, n=len(names) - 1, seed=0)
    t2 = time.perf_counter()
    steps = casc.steps
    head = " | ".join(f"{i}: {steps[i]}" for i in STEPS)
    lines = [f"| method | measure | {head} | mean of steps 32–41 |", "|---" * (len(STEPS) + 3) + "|"]
    for m in METHODS:
        for k in ("spearman_abs", "ssim"):
            sim = casc.similarity[m][k]
            cells = " | ".join(f"{sim[i]:.2f}" for i in STEPS)
            lines.append(f"| {m} | {k} | {cells} | {np.mean(sim[32:42]):.2f} |")
    print(f"target {casc.target} ({names[casc.target]})\n")
    print("\n".join(lines) + "\n")
    means = logit.mean()
    print("| method | spearman_abs | ssim |\n|---|---|---|")
    for m in METHODS:
        print(f"| {m} | {means[m]['spearman_abs']:.2f} | {means[m]['ssim']:.2f} |")
    print(json.dumps({"target": casc.target, "layers": len(casc.layers), "cascade_seconds": round(t1 - t0, 1),
                      "random_logit_seconds": round(t2 - t1, 1), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The metrics table: every registered CAM method × every registered metric on fresh Shapes images.

Evaluates every method of the registry (``camwidgets.methods()``), and Fusion-CAM with the
Recipro-CAM and Group-CAM region maps, with the embedded demo model on ``--n`` images (default 500) of fresh
:class:`camwidgets.datasets.Shapes` sets the model never saw:

- ``single``: one object per image (seed 1000), explained for its class;
- ``pair``: two objects of two classes per image (seed 1002), each image explained once for
  each of its two classes (:func:`camwidgets.datasets.each_class`), so the class-discrimination
  columns say whether a class's map sits on that class's object and not on the other;
- ``multi`` (not run by default): 2-3 instances of one class per image (seed 1001).

These seeds were fixed before any result was seen and no default is tuned on them (the demo
model trains on seeds 0/100/200, its report uses seed 1, the tests use 2-99).

Columns: Average Drop (%, lower is better), Increase in Confidence (%), insertion AUC,
deletion AUC (lower is better), over-all (insertion − deletion), ADCC, energy pointing
game, pointing-game hit rate, IoU and F1 of the map thresholded at 0.5 against the
object mask, on pairs the class discrimination (energy on the explained class's object minus
energy on the other object), the energy on the other object and how often the maximum lies on
it, and seconds per image per method (wall clock: the item's shared forward/backward
``capture_seconds`` plus the method's own stages ``seconds``; methods run in the registry's
order on one explainer per image, so a method reusing an earlier one's stage, e.g. Fusion-CAM
after Score-CAM, shows only its own part). Cells are
``mean ± half-width of the 95 % Student-t interval`` over the images (pairs: over the
image × class items).

The sanity-check summary (``--sanity-images``, default 4 of the single-object images) runs the
cascading model-parameter randomisation test (:func:`camwidgets.sanity.parameter_randomisation`)
over the demo model's convolutions and its linear head, top first, and the random-logit test
(:func:`camwidgets.sanity.random_logit`, 5 other classes) per method, and reports the mean
Spearman rank correlation of absolute values and SSIM between the trained model's map and the
map after the last block (``fc`` and ``layer4``) is randomised, after every layer is, and the
map of a random other class. Low values mean the map depends on the model's weights (on the
class): the method passes.

Writes, under ``--out`` (default ``benchmarks/results/metrics_table``):

- ``single/``, ``pair/`` (and ``multi/``): the resumable per-row files of :func:`camwidgets.evaluate`
  (re-running the script continues where an interrupted run stopped);
- ``metrics_table.json``: settings, environment, the summaries, paired differences and the
  sanity summary;
- ``metrics_table.md``: the Markdown tables.

Usage::

    python benchmarks/bench_metrics_table.py              # the full table (slow: run on a quiet machine)
    python benchmarks/bench_metrics_table.py --n 4 --sanity-images 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import camwidgets
from camwidgets.core.evaluate import EvaluationResult, evaluate
from camwidgets.datasets import Shapes, each_class
from camwidgets.models.demo import load_demo_model

# Every registered method (the registry's order and labels), and Fusion-CAM with each fast region map.
METHODS: dict[str, str] = {m.name: m.label for m in camwidgets.methods()}
VARIANTS: dict[str, dict[str, Any]] = {
    "fusioncam_reciprocam": {"method": "fusioncam", "region": "reciprocam"},
    "fusioncam_groupcam": {"method": "fusioncam", "region": "groupcam"},
}
LABELS: dict[str, str] = {**METHODS, "fusioncam_reciprocam": "Fusion-CAM (Recipro-CAM region)",
                          "fusioncam_groupcam": "Fusion-CAM (Group-CAM region)"}
METRICS = ["average_drop", "increase_in_confidence", "insertion", "deletion", "over_all", "adcc",
           "energy_pointing_game", "pointing_game", "localisation", "discrimination"]
# (summary column, table header)
COLUMNS: list[tuple[str, str]] = [
    ("average_drop", "AD % ↓"),
    ("increase_in_confidence", "IC % ↑"),
    ("insertion", "Insertion ↑"),
    ("deletion", "Deletion ↓"),
    ("over_all", "Over-all ↑"),
    ("adcc", "ADCC ↑"),
    ("energy_pointing_game", "Energy PG ↑"),
    ("pointing_game", "PG hit ↑"),
    ("iou", "IoU ↑"),
    ("f1", "F1 ↑"),
    ("total_seconds", "s / image"),
]
# the class-discrimination columns, shown for the pair run
PAIR_COLUMNS: list[tuple[str, str]] = [
    ("discrimination", "Discrim. ↑"),
    ("energy_other", "Energy other ↓"),
    ("pointing_other", "PG other ↓"),
]
RUNS: dict[str, dict[str, Any]] = {
    "single": {"seed": 1000, "scene": "single"},
    "pair": {"seed": 1002, "scene": "pair"},
    "multi": {"seed": 1001, "scene": "multi"},
}
TITLES = {"single": "Single object", "pair": "Pairs, each class explained", "multi": "2-3 instances"}


def markdown(result: EvaluationResult, title: str, digits: int = 3,
             columns: list[tuple[str, str]] | None = None) -> str:
    columns = COLUMNS if columns is None else columns
    lines = [f"### {title}", "", "| method | " + " | ".join(h for _, h in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for key, name in LABELS.items():
        if not any(s["method"] == key for s in result.summary):
            continue
        cells = []
        for col, _ in columns:
            s = result.get(key, col)
            if s["mean"] is None:
                cells.append("n/a")
            elif s["ci_high"] is None:
                cells.append(f"{s['mean']:.{digits}f}")
            else:
                cells.append(f"{s['mean']:.{digits}f} ± {(s['ci_high'] - s['ci_low']) / 2:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# (method, against): the orderings the papers claim, tested on paired per-image differences
PAIRS = [("fusioncam", "scorecam"), ("fusioncam", "unioncam"), ("fusioncam", "gradcam"),
         ("unioncam", "scorecam"), ("icam", "layercam"), ("fusioncam_reciprocam", "fusioncam"),
         ("fusioncam_groupcam", "fusioncam"), ("reciprocam", "scorecam"), ("groupcam", "scorecam")]
PAIRED_COLUMNS = ["average_drop", "increase_in_confidence", "over_all", "adcc", "iou"]
PAIRED_COLUMNS_PAIR = [*PAIRED_COLUMNS, "discrimination"]


def paired(result: EvaluationResult, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Mean per-image difference (method − against) with its 95 % Student-t interval."""
    from camwidgets.core.evaluate import summarize

    columns = PAIRED_COLUMNS if columns is None else columns
    by = {(r["index"], r["method"]): r for r in result.rows}
    out = []
    for a, b in PAIRS:
        diffs = []
        for (index, m), row in by.items():
            other = by.get((index, b))
            if m == a and other is not None:
                diffs.append({"method": f"{a} - {b}", **{c: (None if row.get(c) is None or other.get(c) is None
                                                           else row[c] - other[c]) for c in columns}})
        if diffs:
            out.extend(summarize(diffs, [f"{a} - {b}"], columns))
    return out


def paired_markdown(entries: list[dict[str, Any]], digits: int = 3, columns: list[str] | None = None) -> str:
    columns = PAIRED_COLUMNS if columns is None else columns
    names = list(dict.fromkeys(e["method"] for e in entries))
    lines = ["| paired difference | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for n in names:
        cells = []
        for c in columns:
            e = next(x for x in entries if x["method"] == n and x["metric"] == c)
            cells.append("n/a" if e["mean"] is None or e["ci_low"] is None else
                         f"{e['mean']:+.{digits}f} [{e['ci_low']:+.{digits}f}, {e['ci_high']:+.{digits}f}]")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SANITY_MEASURES = ("spearman_abs", "ssim")


def sanity_summary(model: torch.nn.Module, preprocess: Any, methods: list[str], images: list[Any],
                   progress: bool = True) -> list[dict[str, Any]]:
    """Per method: mean similarity to the trained model's map after the top block and after every
    layer is randomised (cascading), and to a random other class's map (random logit)."""
    from camwidgets.sanity import parameter_randomisation, random_logit

    layers = [name for name, m in model.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][::-1]  # top first
    top_block = max(i for i, name in enumerate(layers, start=1) if name == "fc" or name.startswith("layer4"))
    out = []
    for method in methods:
        t0 = time.perf_counter()
        acc: dict[str, list[float]] = {}
        for image in images:
            casc = parameter_randomisation(model, image, [method], preprocess=preprocess, layers=layers)
            logit = random_logit(model, image, [method], preprocess=preprocess, n=5)
            for k in SANITY_MEASURES:
                sim = casc.similarity[method][k]
                acc.setdefault(f"top_block_{k}", []).append(float(sim[top_block]))
                acc.setdefault(f"all_layers_{k}", []).append(float(sim[-1]))
                acc.setdefault(f"random_logit_{k}", []).append(float(logit.mean()[method][k]))
        entry: dict[str, Any] = {"method": method, "images": len(images), "seconds": time.perf_counter() - t0}
        for k, v in acc.items():
            # a constant map (all zero after randomisation) has no rank correlation: NaN, left out of the mean
            finite = [x for x in v if x == x]
            entry[k] = float(sum(finite) / len(finite)) if finite else None
            entry[f"{k}_undefined"] = len(v) - len(finite)
        out.append(entry)
        if progress:
            print(f"sanity {method}: {entry['seconds']:.1f} s", file=sys.stderr)
    return out


def sanity_markdown(entries: list[dict[str, Any]], n_layers: int, digits: int = 2) -> str:
    cols = [("top_block", "after fc + layer4"), ("all_layers", f"after all {n_layers} layers"),
            ("random_logit", "random other class")]
    lines = ["| method | " + " | ".join(f"{h}: Spearman \\|.\\| / SSIM" for _, h in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    def cell(e: dict[str, Any], key: str) -> str:
        value, undefined = e[key], e.get(f"{key}_undefined", 0)
        text = "n/a" if value is None else f"{value:.{digits}f}"
        return text + (f" ({e['images'] - undefined}/{e['images']})" if undefined else "")

    for e in entries:
        cells = [f"{cell(e, f'{c}_spearman_abs')} / {cell(e, f'{c}_ssim')}" for c, _ in cols]
        lines.append(f"| {LABELS.get(e['method'], e['method'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(k/n): the mean over the k of n images whose randomised map was not constant (a " \
        "constant map, e.g. all zero, has no rank correlation).\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images per run (default 500; pairs: each explained twice)")
    ap.add_argument("--steps", type=int, default=224,
                    help="insertion/deletion steps (default 224, the evaluation setting)")
    ap.add_argument("--batch-size", type=int, default=64, help="metric forward-pass batch size")
    ap.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS),
                    help="row names: registered methods and the Fusion-CAM region variants (default: all)")
    ap.add_argument("--runs", nargs="+", default=["single", "pair"], choices=list(RUNS))
    ap.add_argument("--sanity-images", type=int, default=4,
                    help="single-object images of the sanity-check summary (0: none)")
    ap.add_argument("--sanity-methods", nargs="+", default=None, choices=list(METHODS),
                    help="methods of the sanity-check summary (default: the registered ones among --methods)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics_table"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fresh", action="store_true", help="discard earlier rows instead of resuming")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--ray-workers", type=int, default=0,
                    help="evaluate on a local Ray cluster with this many 1-CPU workers (same rows; "
                         "needs camwidgets[ray]); 0: in this process")
    ap.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                    help="skip: record failing image x method pairs in the JSON and go on "
                         "(a re-run retries them)")
    args = ap.parse_args(argv)

    model, preprocess, _ = load_demo_model(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "settings": {"n": args.n, "steps": args.steps, "batch_size": args.batch_size, "methods": args.methods,
                     "metrics": METRICS, "target": "label", "runs": {k: RUNS[k] for k in args.runs},
                     "threshold": 0.5, "deletion_baseline": "black", "insertion_baseline": "blur (sigma 5)",
                     "sanity_images": args.sanity_images},
        "environment": {"camwidgets": camwidgets.__version__, "torch": torch.__version__,
                        "python": platform.python_version(), "platform": platform.platform(),
                        "device": str(args.device), "threads": torch.get_num_threads()},
        "runs": {},
    }
    md = [f"## CAM metrics on Shapes (demo model, n = {args.n} images per run, {args.steps} insertion/deletion "
          "steps)\n", "Cells: mean ± 95 % Student-t half-width over images.\n"]
    from camwidgets.core.evaluate import summarize

    for run in args.runs:
        cfg = RUNS[run]
        shapes = Shapes(args.n, seed=cfg["seed"], scene=cfg["scene"])
        data: Any = each_class(shapes) if cfg["scene"] == "pair" else shapes
        t0 = time.perf_counter()
        specs = {name: dict(VARIANTS.get(name, {"method": name})) for name in args.methods}
        res = evaluate(model, data, specs, METRICS, preprocess=preprocess, target="label",
                       steps=args.steps, batch_size=args.batch_size, out_dir=args.out / run,
                       resume=not args.fresh, progress=not args.no_progress, on_error=args.on_error,
                       executor=camwidgets.RayExecutor(workers=args.ray_workers) if args.ray_workers else "local")
        wall = time.perf_counter() - t0

        for r in res.rows:  # the method's cost on its image: the shared pass + its own stages
            r["total_seconds"] = r["seconds"] + r.get("capture_seconds", 0.0)
        res.summary.extend(summarize(res.rows, list(specs), ["total_seconds"]))
        correct = {r["index"]: r["predicted"] == r["label"] for r in res.rows}
        accuracy = sum(correct.values()) / max(len(correct), 1)
        report["runs"][run] = {"dataset": repr(data), "wall_seconds_this_call": wall,
                               "rows_computed_this_call": res.computed, "rows": len(res.rows),
                               "model_accuracy": accuracy, "summary": res.summary, "errors": res.errors}
        if run == "pair":
            # accuracy over items is "the explained class is the top class": half the items at most
            images = len({r["index"] // 2 for r in res.rows})
            title = (f"{TITLES[run]} (Shapes seed {cfg['seed']}, {images} images, {len(correct)} image × class "
                     f"items; the explained class is the top-1 class in {accuracy:.1%} of the items)")
            columns = [*COLUMNS[:-1], *PAIR_COLUMNS, COLUMNS[-1]]
            paired_columns = PAIRED_COLUMNS_PAIR
        else:
            title = f"{TITLES[run]} (Shapes seed {cfg['seed']}, model accuracy {accuracy:.1%})"
            columns, paired_columns = COLUMNS, PAIRED_COLUMNS
        md.append(markdown(res, title, columns=columns))
        pairs = paired(res, paired_columns)
        report["runs"][run]["paired_differences"] = pairs
        md.append("Paired per-image differences, mean [95 % Student-t interval]:\n\n"
                  + paired_markdown(pairs, columns=paired_columns))
        print(f"{run}: {len(res.rows)} rows ({res.computed} computed, {len(res.errors)} failed) "
              f"in {wall:.1f} s", file=sys.stderr)
        for err in res.errors[:10]:
            print(f"  failed: image {err['index']} {err['method']}: {err['error']}", file=sys.stderr)

    if args.sanity_images > 0:
        methods = args.sanity_methods or [m for m in args.methods if m in METHODS]
        images = [Shapes(args.sanity_images, seed=RUNS["single"]["seed"])[i]["image"]
                  for i in range(args.sanity_images)]
        t0 = time.perf_counter()
        entries = sanity_summary(model, preprocess, methods, images, progress=not args.no_progress)
        n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
        report["sanity"] = {"images": args.sanity_images, "layers": n_layers, "seconds": time.perf_counter() - t0,
                            "methods": entries}
        md.append(f"### Sanity checks (first {args.sanity_images} single-object images, cascading randomisation "
                  f"of the {n_layers} convolutions and linear layers, top first; random logit: 5 other classes)\n\n"
                  "Mean similarity between the trained model's map and the map after randomisation (or the map "
                  "of another class): lower means the map depends on what is randomised.\n\n"
                  + sanity_markdown(entries, n_layers))

    (args.out / "metrics_table.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "metrics_table.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

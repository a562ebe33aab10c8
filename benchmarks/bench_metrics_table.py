"""The metrics table: every registered CAM method × every registered metric on fresh Shapes images.

Evaluates every method of the registry (``camwidgets.methods()``), and Fusion-CAM with the
Recipro-CAM and Group-CAM region maps, with the embedded demo model on ``--n`` images (default 500) of two fresh
:class:`camwidgets.datasets.Shapes` sets the model never saw: single objects (seed 1000)
and 2-3 instances per image (seed 1001). Each image is explained for its ground-truth
class (``target="label"``).

Columns: Average Drop (%, lower is better), Increase in Confidence (%), insertion AUC,
deletion AUC (lower is better), over-all (insertion − deletion), ADCC, energy pointing
game, pointing-game hit rate, IoU and F1 of the map thresholded at 0.5 against the
object mask, and seconds per image per method (wall clock: the item's shared forward/backward
``capture_seconds`` plus the method's own stages ``seconds``; methods run in the registry's
order on one explainer per image, so a method reusing an earlier one's stage, e.g. Fusion-CAM
after Score-CAM, shows only its own part). Cells are
``mean ± half-width of the 95 % Student-t interval`` over the images.

Writes, under ``--out`` (default ``benchmarks/results/metrics_table``):

- ``single/`` and ``multi/``: the resumable per-row files of :func:`camwidgets.evaluate`
  (re-running the script continues where an interrupted run stopped);
- ``metrics_table.json``: settings, environment and the summary of both runs;
- ``metrics_table.md``: the two Markdown tables.

Usage::

    python benchmarks/bench_metrics_table.py              # the full table (slow: run on a quiet machine)
    python benchmarks/bench_metrics_table.py --n 4        # a smoke run
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
from camwidgets.datasets.shapes import Shapes
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
           "energy_pointing_game", "pointing_game", "localisation"]
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
RUNS: dict[str, dict[str, Any]] = {
    "single": {"seed": 1000, "multi_instance": False},
    "multi": {"seed": 1001, "multi_instance": True},
}


def markdown(result: EvaluationResult, title: str, digits: int = 3) -> str:
    lines = [f"### {title}", "", "| method | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for key, name in LABELS.items():
        if not any(s["method"] == key for s in result.summary):
            continue
        cells = []
        for col, _ in COLUMNS:
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


def paired(result: EvaluationResult) -> list[dict[str, Any]]:
    """Mean per-image difference (method − against) with its 95 % Student-t interval."""
    from camwidgets.core.evaluate import summarize

    by = {(r["index"], r["method"]): r for r in result.rows}
    out = []
    for a, b in PAIRS:
        diffs = []
        for (index, m), row in by.items():
            other = by.get((index, b))
            if m == a and other is not None:
                diffs.append({"method": f"{a} - {b}", **{c: (None if row.get(c) is None or other.get(c) is None
                                                           else row[c] - other[c]) for c in PAIRED_COLUMNS}})
        out.extend(summarize(diffs, [f"{a} - {b}"], PAIRED_COLUMNS))
    return out


def paired_markdown(entries: list[dict[str, Any]], digits: int = 3) -> str:
    names = list(dict.fromkeys(e["method"] for e in entries))
    lines = ["| paired difference | " + " | ".join(PAIRED_COLUMNS) + " |", "|---" * (len(PAIRED_COLUMNS) + 1) + "|"]
    for n in names:
        cells = []
        for c in PAIRED_COLUMNS:
            e = next(x for x in entries if x["method"] == n and x["metric"] == c)
            cells.append("n/a" if e["mean"] is None else
                         f"{e['mean']:+.{digits}f} [{e['ci_low']:+.{digits}f}, {e['ci_high']:+.{digits}f}]")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images per run (default 500)")
    ap.add_argument("--steps", type=int, default=224,
                    help="insertion/deletion steps (default 224, the evaluation setting)")
    ap.add_argument("--batch-size", type=int, default=64, help="metric forward-pass batch size")
    ap.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS),
                    help="row names: registered methods and the Fusion-CAM region variants (default: all)")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
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
                     "threshold": 0.5, "deletion_baseline": "black", "insertion_baseline": "blur (sigma 5)"},
        "environment": {"camwidgets": camwidgets.__version__, "torch": torch.__version__,
                        "python": platform.python_version(), "platform": platform.platform(),
                        "device": str(args.device), "threads": torch.get_num_threads()},
        "runs": {},
    }
    md = [f"## CAM metrics on Shapes (demo model, n = {args.n} per run, {args.steps} insertion/deletion "
          "steps)\n", "Cells: mean ± 95 % Student-t half-width over images.\n"]
    for run in args.runs:
        cfg = RUNS[run]
        data = Shapes(args.n, seed=cfg["seed"], multi_instance=cfg["multi_instance"])
        t0 = time.perf_counter()
        specs = {name: dict(VARIANTS.get(name, {"method": name})) for name in args.methods}
        res = evaluate(model, data, specs, METRICS, preprocess=preprocess, target="label",
                       steps=args.steps, batch_size=args.batch_size, out_dir=args.out / run,
                       resume=not args.fresh, progress=not args.no_progress, on_error=args.on_error,
                       executor=camwidgets.RayExecutor(workers=args.ray_workers) if args.ray_workers else "local")
        wall = time.perf_counter() - t0
        from camwidgets.core.evaluate import summarize

        for r in res.rows:  # the method's cost on its image: the shared pass + its own stages
            r["total_seconds"] = r["seconds"] + r.get("capture_seconds", 0.0)
        res.summary.extend(summarize(res.rows, list(specs), ["total_seconds"]))
        correct = {r["index"]: r["predicted"] == r["label"] for r in res.rows}
        accuracy = sum(correct.values()) / max(len(correct), 1)
        report["runs"][run] = {"dataset": repr(data), "wall_seconds_this_call": wall,
                               "rows_computed_this_call": res.computed, "rows": len(res.rows),
                               "model_accuracy": accuracy, "summary": res.summary, "errors": res.errors}
        title = (f"{'Single object' if run == 'single' else '2-3 instances'} "
                 f"(Shapes seed {cfg['seed']}, model accuracy {accuracy:.1%})")
        md.append(markdown(res, title))
        pairs = paired(res)
        report["runs"][run]["paired_differences"] = pairs
        md.append("Paired per-image differences, mean [95 % Student-t interval]:\n\n" + paired_markdown(pairs))
        print(f"{run}: {len(res.rows)} rows ({res.computed} computed, {len(res.errors)} failed) "
              f"in {wall:.1f} s", file=sys.stderr)
        for err in res.errors[:10]:
            print(f"  failed: image {err['index']} {err['method']}: {err['error']}", file=sys.stderr)

    (args.out / "metrics_table.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "metrics_table.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

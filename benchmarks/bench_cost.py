"""What one map, one evaluation row, the explorer and the import cost, beside the peers. Prints JSON.

Runs, each in a fresh subprocess of this interpreter and ``--repeats`` times over (so every
figure comes as the range over repeated runs, not a single best):

- ``bench_single_image.py``: one map per gradient method on ResNet-18 and ResNet-50 at 224 px,
  camwidgets beside torchcam, Captum and pytorch-grad-cam interleaved round-robin, with the
  forward and forward + backward bounds (wall and CPU time);
- ``bench_evaluate_row.py``: an ``evaluate`` row (Grad-CAM + Average Drop / IC) against one
  forward + backward and the masked forward, demo model and ResNet-50, with 8 images per
  call run as a batch (``image_batch=8``) and one by one;
- ``bench_explorer_timeline.py``: ``CAMExplorer`` on ResNet-50, from construction to every
  metric shown;
- ``bench_import.py``: ``import camwidgets``, ``camwidgets.core``, import + ``CAMExplorer()``
  on the demo model, beside ``import torch``.

The machine's load average is recorded before and after every part. ``--markdown FILE``
prints the tables docs/benchmarks.md is written from, given this script's JSON output.

Usage::

    python benchmarks/bench_cost.py > cost.json                 # 2 repeats, about 20 min on 2 cores
    python benchmarks/bench_cost.py --repeats 1 --rounds 3      # quicker
    python benchmarks/bench_cost.py --markdown cost.json        # the tables
    python benchmarks/bench_cost.py --parts evaluate_row        # some parts only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _part(script: str, *args: str) -> dict[str, Any]:
    load = os.getloadavg()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=False)
    record: dict[str, Any] = {"script": script, "args": list(args), "load_before": load,
                              "load_after": os.getloadavg(), "wall_s": round(time.perf_counter() - t0, 1)}
    if out.returncode != 0:
        record["error"] = out.stderr[-2000:]
        return record
    record["result"] = json.loads(out.stdout)
    return record


PARTS = ("single_image", "evaluate_row", "explorer_timeline", "import")


def measure(repeats: int, rounds: int, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    import torch

    args = {"single_image": ("bench_single_image.py", "--rounds", str(rounds)),
            "evaluate_row": ("bench_evaluate_row.py", "--rounds", str(rounds)),
            "explorer_timeline": ("bench_explorer_timeline.py", "--timeout", "300"),
            "import": ("bench_import.py", "--repeats", "3")}
    runs = []
    for _ in range(repeats):
        runs.append({part: _part(*args[part]) for part in parts})
    return {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "platform": platform.platform(), "cpus": os.cpu_count()},
            "repeats": repeats, "rounds": rounds, "runs": runs}


def _span(values: list[float], fmt: str = "{:.3g}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    lines = [f"torch {report['machine']['torch']}, {report['machine']['cpus']} CPUs, {report['repeats']} repeated "
             f"runs of `python benchmarks/bench_cost.py` (ranges over the runs; each run's figure is a median "
             f"of {report['rounds']} interleaved rounds).", ""]
    # single image
    single = [r["single_image"]["result"] for r in runs if "result" in r.get("single_image", {})]
    if single:
        lines += ["### One map: camwidgets, the peers and the bounds (ms, 224 px, random weights, 2 threads)", "",
                  "| model | method | camwidgets | torchcam | Captum | pytorch-grad-cam | forward | forward + backward "
                  "| ours ÷ fastest peer |", "|---|---|---|---|---|---|---|---|---|"]
        for mi, model in enumerate(single[0]["results"]):
            for method in model["methods"]:
                def cell(impl: str, mi: int = mi, method: str = method) -> str:
                    vals = [s["results"][mi]["methods"][method]["wall_median_s"].get(impl) for s in single]
                    vals = [v * 1000 for v in vals if v is not None]
                    return _span(vals, "{:.0f}") if vals else "–"
                ratios = [s["results"][mi]["methods"][method]["ratio_to_fastest_peer"] for s in single]
                ratios = [r for r in ratios if r is not None]
                lines.append(f"| {model['model']} | {method} | {cell('camwidgets')} | {cell('torchcam')} | "
                             f"{cell('captum')} | {cell('pytorch-grad-cam')} | {cell('forward')} | "
                             f"{cell('forward_backward')} | {_span(ratios, '{:.2f}') if ratios else '–'} |")
        lines.append("")
    rows = [r["evaluate_row"]["result"] for r in runs if "result" in r.get("evaluate_row", {})]
    if rows and "bound_batched" in rows[0]["results"][0]["median_s_per_row"]:
        n = rows[0]["results"][0]["images_per_call"]
        lines += [f"### One `evaluate` row (Grad-CAM + Average Drop / IC) against its passes (ms per row, "
                  f"{n} images per call)", "",
                  f"| model | evaluate (`image_batch={n}`) | evaluate (`image_batch=1`) | bound: each image's "
                  "forward + backward, masked forward | the same passes batched by hand | evaluate ÷ bound | "
                  "evaluate ÷ batched bound |", "|---|---|---|---|---|---|---|"]
        for i, m in enumerate(rows[0]["results"]):
            def ms(key: str, i: int = i) -> str:
                return _span([r["results"][i]["median_s_per_row"][key] * 1000 for r in rows], "{:.1f}")

            def ratio(key: str, i: int = i) -> str:
                return _span([r["results"][i][key] for r in rows], "{:.2f}")

            lines.append(f"| {m['model']} | {ms('evaluate')} | {ms('evaluate_one_by_one')} | {ms('bound')} | "
                         f"{ms('bound_batched')} | {ratio('ratio_evaluate_to_bound')} | "
                         f"{ratio('ratio_evaluate_to_bound_batched')} |")
        lines.append("")
    elif rows:  # reports from before evaluate batched images
        lines += ["### One `evaluate` row (Grad-CAM + Average Drop / IC) against its passes (ms per row)", "",
                  "| model | evaluate | bound (forward + backward, masked forward) | ratio |", "|---|---|---|---|"]
        for i, m in enumerate(rows[0]["results"]):
            ev = [r["results"][i]["median_s_per_row"]["evaluate"] * 1000 for r in rows]
            bd = [r["results"][i]["median_s_per_row"]["bound"] * 1000 for r in rows]
            ra = [r["results"][i]["ratio_evaluate_to_bound"] for r in rows]
            lines.append(f"| {m['model']} | {_span(ev, '{:.1f}')} | {_span(bd, '{:.1f}')} | {_span(ra, '{:.2f}')} |")
        lines.append("")
    tl = [r["explorer_timeline"]["result"]["result"] for r in runs if "result" in r.get("explorer_timeline", {})]
    if tl:
        lines += ["### The explorer on ResNet-50 (s after construction began)", "",
                  "| constructed | maps | AD / IC | curves | ADCC (everything shown) |", "|---|---|---|---|---|"]
        keys = ("constructed", "maps", "ad_ic", "curves", "adcc")
        lines.append("| " + " | ".join(_span([t["seconds"][k] for t in tl if k in t["seconds"]], "{:.1f}")
                                       for k in keys) + " |")
        lines.append("")
    imp = [r["import"]["result"] for r in runs if "result" in r.get("import", {})]
    if imp:
        lines += ["### Import (s, fresh process)", "", "| case | median per run |", "|---|---|"]
        for case in imp[0]["wall_s"]:
            vals = [i["wall_s"][case]["median"] for i in imp if case in i["wall_s"]]
            lines.append(f"| {case} | {_span(vals, '{:.2f}')} |")
        lines.append("")
    loads = [p["load_before"][0] for r in runs for p in r.values()] + [p["load_after"][0] for r in runs
                                                                        for p in r.values()]
    lines.append(f"Load average (1 min) around the parts: {min(loads):.2f}–{max(loads):.2f}, median "
                 f"{statistics.median(loads):.2f}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--markdown", type=Path, help="print the tables of a saved JSON report instead")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    print(json.dumps(measure(args.repeats, args.rounds, tuple(args.parts)), indent=1, ensure_ascii=False,
                     default=str))


if __name__ == "__main__":
    main()

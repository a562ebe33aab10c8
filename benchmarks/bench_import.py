"""Start-up cost: ``import camwidgets``, ``import camwidgets.core`` and building a CAMExplorer.

Usage::

    python benchmarks/bench_import.py [--repeats 5] [--python PATH] [--out FILE]

Every measurement runs in a fresh interpreter (``--python``, by default the one running this
script: run it with the project's venv python), so nothing is imported twice. The wall time of
a case runs from starting the subprocess to the child's report line (interpreter start-up
included, its tear-down not: the child leaves with ``os._exit`` right after reporting).

Cases:

* ``torch``: ``import torch``, the floor under everything else;
* ``camwidgets``: ``import camwidgets`` (lazy: loads no torch, plotly or ipywidgets);
* ``camwidgets.core``: ``import camwidgets.core`` (lazy as well);
* ``explorer``: ``from camwidgets import CAMExplorer; CAMExplorer()`` on the embedded demo model,
  until the constructor returns (the maps are then being computed on the worker thread);
* ``explorer_first_maps``: the same until the first maps are drawn (the explorer's
  ``map_updates`` counter moved; the metrics that follow are not waited for).

The child also reports, for the explorer cases, its own split (``import_s``: from its first
line to the class imported; ``construct_s``; ``first_maps_s``) and which of the expensive
third-party modules it loaded. Prints one JSON object: median, min and max wall seconds per
case, the splits' medians, the modules, and the load average before and after (the numbers
are only comparable between runs at a similar load).

Where the explorer's time goes (``python -X importtime``, and cProfile of the constructor): torch
(about 1.6-2 s on a 2-core machine, most of what is left), ipywidgets, plotly and the widget
tree (a few hundred ms), loading the demo weights and the bundled sample (under 0.2 s); then,
on the worker thread, the first maps themselves (the default methods' forward and backward
passes, I-CAM's perturbations and its SSIM, which imports ``scipy.ndimage``). torchvision is no
longer imported: the demo model has its own ``BasicBlock`` (torchvision's, rewritten) and the
layer finder looks for torchvision's blocks only when torchvision is already imported;
importing it cost about 2 s more, since ``torchvision.ops`` imports ``torch._dynamo`` (and
sympy). Until the explorer drew its panes as plain figures, Plotly's ``FigureWidget`` added
about 2 s more: ``plotly.basewidget`` imports ``plotly.io._renderers``, which imports
``nbformat``, which imports ``jsonschema``, whose format checkers import ``rfc3987_syntax``
(JupyterLab brings it), which compiles some 20 Lark grammars when imported.

The issue's target (``TARGET_S``): ``import camwidgets`` plus building the explorer on the
demo model within 2 s. The JSON's ``target`` reports the ``explorer`` case's median against it,
and how much of it is ``import torch`` alone (``torch_share``, the floor no change here removes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

#: ``import camwidgets`` plus ``CAMExplorer()`` on the demo model, in seconds (issue 18, item 4).
TARGET_S = 2.0

#: Third-party modules whose presence in ``sys.modules`` the children report.
WATCHED = ("torch", "torchvision", "torch._dynamo", "scipy.ndimage", "ipywidgets", "plotly", "plotly.basewidget",
           "anywidget", "nbformat", "jsonschema", "rfc3987_syntax")

_PRELUDE = "import time; _t0 = time.perf_counter()\nimport json, os, sys\n"
_REPORT = (
    f"print(json.dumps({{'split': _split, 'modules': [m for m in {WATCHED!r} if m in sys.modules]}}), flush=True)\n"
    "os._exit(0)\n"
)

CASES: dict[str, str] = {
    "torch": "import torch\n_split = {}\n",
    "camwidgets": "import camwidgets\n_split = {}\n",
    "camwidgets.core": "import camwidgets.core\n_split = {}\n",
    "explorer": (
        "from camwidgets import CAMExplorer\n"
        "_t1 = time.perf_counter()\n"
        "e = CAMExplorer()\n"
        "_t2 = time.perf_counter()\n"
        "_split = {'import_s': _t1 - _t0, 'construct_s': _t2 - _t1}\n"
    ),
    "explorer_first_maps": (
        "from camwidgets import CAMExplorer\n"
        "_t1 = time.perf_counter()\n"
        "e = CAMExplorer()\n"
        "_t2 = time.perf_counter()\n"
        "while e.map_updates < 1 and not e.message and time.perf_counter() - _t2 < 600:\n"
        "    time.sleep(0.002)\n"
        "_t3 = time.perf_counter()\n"
        "if e.message: raise SystemExit('explorer error: ' + e.message)\n"
        "_split = {'import_s': _t1 - _t0, 'construct_s': _t2 - _t1, 'first_maps_s': _t3 - _t2}\n"
    ),
}


def run_once(python: str, code: str, timeout: float = 900.0) -> tuple[float, dict]:
    """Wall seconds from starting ``python -c code`` to its report line, and the report."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-c", _PRELUDE + code + _REPORT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    wall = time.perf_counter() - t0
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not line.strip():
        raise RuntimeError(f"the child reported nothing (exit {proc.returncode}):\n{err[-2000:]}")
    return wall, json.loads(line)


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": [round(v, 3) for v in values]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh interpreters per case (at least 5 for ranges)")
    ap.add_argument("--python", default=sys.executable, help="interpreter to measure (the project's venv)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {unknown}")

    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {n: [] for n in names}
    splits: dict[str, list[dict]] = {n: [] for n in names}
    modules: dict[str, list[str]] = {}
    # Interleaved (case after case, round after round): a change in the machine's load hits every case alike.
    for _ in range(args.repeats):
        for n in names:
            wall, report = run_once(args.python, CASES[n])
            walls[n].append(wall)
            splits[n].append(report["split"])
            modules[n] = report["modules"]
    load_after = os.getloadavg()

    result: dict = {
        "python": args.python,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "wall_s": {n: _summary(walls[n]) for n in names},
        "split_median_s": {n: {k: round(statistics.median(s[k] for s in splits[n]), 3) for k in splits[n][0]}
                           for n in names if splits[n] and splits[n][0]},
        "modules": modules,
    }
    if "explorer" in walls:
        median = statistics.median(walls["explorer"])
        target: dict[str, Any] = {"target_s": TARGET_S, "explorer_median_s": round(median, 3),
                                  "met": median <= TARGET_S}
        if "torch" in walls:
            torch_median = statistics.median(walls["torch"])
            target["torch_median_s"] = round(torch_median, 3)
            target["above_torch_s"] = round(median - torch_median, 3)
            target["torch_share"] = round(torch_median / median, 3)
        result["target"] = target
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()

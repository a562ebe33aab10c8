"""The explorer on a real-size model: from construction to every metric shown. Prints JSON.

Builds ``CAMExplorer(model=<torchvision model with random weights>)`` on the bundled photo
with its default methods and metrics, then polls the explorer until its status line is final,
recording when each thing appeared: construction returned, each method's map (``map:<method>``),
all maps drawn, AD / IC, the
insertion / deletion curves, ADCC, and the status texts the user saw on the way (with the
second they appeared). CPU time of the process and the machine's load average before and
after are printed beside the wall times.

Usage::

    python benchmarks/bench_explorer_timeline.py                    # ResNet-50, 224 px
    python benchmarks/bench_explorer_timeline.py --model resnet18 --timeout 120
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from typing import Any

import torch
import torchvision


def run(name: str, timeout: float) -> dict[str, Any]:
    import camwidgets
    from camwidgets.widgets import CAMExplorer
    from camwidgets.widgets.controller import METRIC_COLUMN as COL

    model, preprocess, classes = camwidgets.load_torchvision(name, weights=None)
    t0, c0 = time.perf_counter(), time.process_time()
    ex = CAMExplorer(model=model, image="chelsea", preprocess=preprocess, class_names=classes)
    events: dict[str, float] = {"constructed": time.perf_counter() - t0}

    def seen(event: str) -> None:  # each method's map pane, the moment its result arrives
        if event == "map":
            for m in ex.controller.results:
                events.setdefault(f"map:{m}", time.perf_counter() - t0)

    ex.controller.subscribe(seen)
    statuses: list[tuple[float, str]] = []
    last = ""
    try:
        while time.perf_counter() - t0 < timeout:
            now = time.perf_counter() - t0
            text = re.sub(r"<[^>]+>", "", ex.status.value)
            if text != last:
                statuses.append((round(now, 2), text))
                last = text
            if ex.map_updates >= 1:
                events.setdefault("maps", now)
            rows = ex.metric_values
            if rows and all(r.get(COL["average_drop"]) is not None for r in rows.values()):
                events.setdefault("ad_ic", now)
            if rows and all(r.get(COL["insertion"]) is not None for r in rows.values()):
                events.setdefault("curves", now)
            if rows and all(r.get(COL["adcc"]) is not None for r in rows.values()):
                events.setdefault("adcc", now)
            if ex.progress.value >= 1 and "maps" in events:
                events.setdefault("final", now)
                break
            time.sleep(0.05)
        fusion = ex.results.get("fusioncam")
        return {
            "model": name, "methods": list(ex.methods),
            "fusioncam_region": getattr(fusion, "params", {}).get("region") if fusion is not None else None,
            "seconds": {k: round(v, 2) for k, v in events.items()},
            "cpu_seconds": round(time.process_time() - c0, 2),
            "timings": {k: round(v, 2) for k, v in ex.timings.items()},
            "metric_values": ex.metric_values,
            "statuses": statuses, "timed_out": "final" not in events, "message": ex.message,
        }
    finally:
        ex.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                    "torchvision": torchvision.__version__, "platform": platform.platform(),
                    "cpus": os.cpu_count(), "threads": args.threads},
        "load_before": os.getloadavg(),
        "result": run(args.model, args.timeout),
        "load_after": os.getloadavg(),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()

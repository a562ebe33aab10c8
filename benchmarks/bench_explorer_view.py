"""The explorer's view cost on the demo model: construction, first picture, and each slider move.

Prints one JSON object:

* ``import_and_build_s``: ``import camwidgets`` + ``CAMExplorer()`` returning (the maps are computed on
  the worker after that), in a fresh interpreter, and ``first_maps_s``: until every map pane is drawn.
* per control (``threshold``, ``theta``, ``alpha``): the median / max seconds from setting the trait to
  every pane redrawn (maps only: ``metrics=False``; the computation included), the part of it spent
  building figures and their JSON (``draw_s``), the panes redrawn per move and the bytes they send.
* ``state_bytes``: the widget state of every pane after the moves (what a saved notebook stores).

Run: ``.venv/bin/python benchmarks/bench_explorer_view.py [--moves 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FIRST_MAPS = """
import time, json, threading
t0 = time.perf_counter()
import camwidgets as cw
seen = threading.Event()
ex = cw.CAMExplorer(metrics=False)
built = time.perf_counter() - t0
def check(event):
    if event == "maps":
        seen.set()
ex.controller.subscribe(check)
seen.wait(300)
print(json.dumps({"import_and_build_s": built, "first_maps_s": time.perf_counter() - t0}))
ex.close()
"""


def _fresh(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moves", type=int, default=10, help="moves per control")
    args = ap.parse_args()

    import torch

    import camwidgets as cw
    from camwidgets.widgets.panes import PaneView

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    fresh = [_fresh(FIRST_MAPS) for _ in range(2)]
    draw_time = [0.0]
    sent = [0, 0]
    real_draw = PaneView.draw

    def timed_draw(self: PaneView, ctx, force=False):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        drew = real_draw(self, ctx, force)
        draw_time[0] += time.perf_counter() - t
        if drew:
            sent[0] += 1
            sent[1] += len(json.dumps(self.outputs))
        return drew

    PaneView.draw = timed_draw  # type: ignore[method-assign]
    ex = cw.CAMExplorer(background=False, metrics=False)
    values = {"threshold": [0.95 - 0.01 * i for i in range(1, args.moves + 1)],
              "theta": [10.0 + 2 * i for i in range(1, args.moves + 1)],
              "alpha": [0.4 + 0.05 * i for i in range(1, args.moves + 1)]}
    moves: dict[str, dict] = {}
    for name, vals in values.items():
        totals, draws, panes, sizes = [], [], [], []
        for v in vals:
            draw_time[0], sent[0], sent[1] = 0.0, 0, 0
            t = time.perf_counter()
            setattr(ex, name, v)
            totals.append(time.perf_counter() - t)
            draws.append(draw_time[0])
            panes.append(sent[0])
            sizes.append(sent[1])
        moves[name] = {"median_s": statistics.median(totals), "max_s": max(totals),
                       "draw_median_s": statistics.median(draws), "panes_redrawn_median": statistics.median(panes),
                       "bytes_sent_median": int(statistics.median(sizes))}
    state = sum(len(json.dumps(p.get_state())) for p in ex.panes.values())
    ex.close()
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_before": os.getloadavg()[0],
        "import_and_build_s": [round(f["import_and_build_s"], 2) for f in fresh],
        "first_maps_s": [round(f["first_maps_s"], 2) for f in fresh],
        "moves": moves, "state_bytes": state, "load_after": os.getloadavg()[0],
    }, indent=1))


if __name__ == "__main__":
    main()

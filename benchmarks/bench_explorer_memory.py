"""Resident memory of a CAMExplorer over many slider moves: the explainer's cache is bounded.

Usage::

    python benchmarks/bench_explorer_memory.py [--moves 200] [--no-metrics] [--threads 1] [--out FILE]

Builds ``CAMExplorer(background=False)`` on the embedded demo model and its sample image
(the default methods; metrics and curves on unless ``--no-metrics``), reads the process's
resident set size (``VmRSS`` of ``/proc/self/status``) after the first picture, then makes
``--moves`` moves cycling α, T and θ (α, T, θ, α, ...), every move a value that slider has
not had before, each computed synchronously (``background=False``), and reads it again.
Both readings follow a ``gc.collect()``. Prints one JSON object: ``rss_first_mb``,
``rss_after_<moves>_mb`` (after all the moves), ``delta_mb``, ``peak_rss_mb`` (``VmHWM``),
``moves``, ``seconds`` (of the moves), the torch version, and the entries held per stage
kind with their limits (``Explainer.cache_info()`` of every live explainer;
``camwidgets.core.explainer.STAGE_LIMITS``). The goal: ``delta_mb`` under 100.

Only the explorer's trait API drives it (``alpha``, ``threshold``, ``theta``, ``wait()``,
``close()``); the explainers are found among the live objects.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any

GOAL_DELTA_MB = 100.0


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _rss_mb() -> float:
    gc.collect()
    return _status_mb("VmRSS")


def _values(moves: int) -> dict[str, list[float]]:
    """Distinct values per slider, enough for ``moves`` moves cycling the three, inside each range."""
    k = (moves + 2) // 3
    span = max(1, k - 1)
    return {"alpha": [round(0.05 + 0.9 * i / span, 6) for i in range(k)],
            "threshold": [round(0.99 - 0.48 * i / span, 6) for i in range(k)],
            "theta": [round(1.0 + 48.0 * i / span, 6) for i in range(k)]}


def _cache_entries() -> dict[str, Any]:
    from camwidgets.core import Explainer

    live = [o for o in gc.get_objects() if type(o) is Explainer]
    kinds: dict[str, list[Any]] = {}
    for exp in live:
        if hasattr(exp, "cache_info"):
            info = exp.cache_info()
        else:  # a camwidgets from before the bounded cache (one flat dict): entries counted, no limit
            from collections import Counter

            counts = Counter(f"result:{k[1]}" if k[0] == "result" else str(k[0]) for k in exp._cache)
            info = {k: (n, None) for k, n in counts.items()}
        for kind, (n, limit) in info.items():
            entry = kinds.setdefault(kind, [0, limit])
            entry[0] += n
    return {"explainers": len(live),
            "per_kind": {k: {"entries": n, "limit": lim} for k, (n, lim) in sorted(kinds.items())}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=200)
    ap.add_argument("--no-metrics", action="store_true", help="maps only (no AD / IC, curves, ADCC)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from camwidgets import CAMExplorer

    metrics = not args.no_metrics
    t0 = time.perf_counter()
    ex = CAMExplorer(background=False, metrics=metrics, curves=metrics)
    ex.wait()
    first_s = time.perf_counter() - t0
    rss_first = _rss_mb()
    values = _values(args.moves)
    order = ("alpha", "threshold", "theta")
    t1 = time.perf_counter()
    for i in range(args.moves):
        trait = order[i % 3]
        setattr(ex, trait, values[trait][i // 3])
        ex.wait()
    seconds = time.perf_counter() - t1
    rss_after = _rss_mb()
    out = {
        "rss_first_mb": round(rss_first, 1),
        f"rss_after_{args.moves}_mb": round(rss_after, 1),
        "delta_mb": round(rss_after - rss_first, 1),
        "goal_delta_mb": GOAL_DELTA_MB,
        "peak_rss_mb": round(_status_mb("VmHWM"), 1),
        "moves": args.moves,
        "seconds": round(seconds, 1),
        "first_picture_seconds": round(first_s, 1),
        "metrics": metrics,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cache": _cache_entries(),
    }
    ex.close()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return out


if __name__ == "__main__":
    main()

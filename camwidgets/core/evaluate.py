r"""Evaluate CAM methods with the faithfulness and localisation metrics over a dataset, resumably.

:func:`evaluate` runs every method on every image through :class:`camwidgets.Explainer`,
scores each map with :mod:`camwidgets.core.metrics` and returns one row per
image × method plus a summary (mean and 95 % confidence interval per method × metric).

With an output location (``out_dir=`` or ``path=``) each row is appended to a JSON-lines
file (flushed and fsynced) the moment it is finished, so an interrupted run (Ctrl-C, a
crash, a closed notebook) loses at most the row being computed; running the same call
again with the same output location reads those rows back and computes only the missing
image × method pairs. CSV and JSON copies of the rows and of the summary are written
at the end.

Resuming never mixes results silently: the settings file holds a fingerprint of the model
(its weights) and of the dataset (length and first items) next to the settings, and a call
whose model, dataset or settings differ is refused; a damaged rows or settings file is an
error naming the file and line; a lock file keeps a second process off the same output.
docs/evaluate.md describes the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import itertools
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import methods as _methods
from . import metric_registry as _metric_registry
from . import metrics as M
from .image import load_image
from .metric_registry import MetricContext
from .preprocess import Preprocess, PreprocessLike

__all__ = ["DEFAULT_METHODS", "DEFAULT_METRICS", "METRIC_COLUMNS", "EvaluationResult", "LocalExecutor",
           "evaluate", "summarize", "t_quantile_975"]

#: Methods evaluated by default: the registry's entries marked ``in_evaluate``.
DEFAULT_METHODS: tuple[str, ...] = tuple(m.name for m in _methods.methods() if m.in_evaluate)
#: Metrics evaluated by default: the registered metrics marked ``default`` (all but ROAD and ARCC).
DEFAULT_METRICS: tuple[str, ...] = tuple(m.name for m in _metric_registry.list_metrics() if m.default)
#: Row columns each metric name produces (from the metric registry).
METRIC_COLUMNS: Mapping[str, tuple[str, ...]] = {m.name: m.column_names for m in _metric_registry.list_metrics()}
_META_COLUMNS = ("index", "method", "label", "target", "predicted", "probability", "seconds",
                 "capture_seconds", "metric_seconds")
_SUMMARY_SKIP = {"index", "method", "label", "target", "predicted"}

ExplainerFactory = Callable[..., Any]

# Student t quantiles t_{0.975, df} for df = 1..30 (scipy.stats.t.ppf(0.975, df), 10 decimals).
_T975 = (12.7062047362, 4.3026527297, 3.1824463053, 2.7764451052, 2.5705818356, 2.4469118511,
         2.3646242516, 2.3060041352, 2.2621571628, 2.228138852, 2.2009851601, 2.1788128297,
         2.1603686565, 2.1447866879, 2.1314495456, 2.1199052992, 2.1098155778, 2.1009220402,
         2.0930240544, 2.0859634473, 2.0796138447, 2.0738730679, 2.0686576104, 2.0638985616,
         2.0595385528, 2.0555294386, 2.0518305165, 2.0484071418, 2.0452296421, 2.0422724563)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student t quantile ``t_{0.975, df}``.

    Exact (table) for ``df <= 30``; above, the Cornish-Fisher expansion to ``1/df^4``
    (error below ``1e-6``), tending to the normal quantile 1.959964.

    Parameters
    ----------
    df : int
        Degrees of freedom, ``>= 1``.
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}.")
    if df <= 30:
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


# ----------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    rows : list of dict
        One per image × method: ``index`` (position in the dataset), ``method``,
        ``label`` (None if the item has none), ``target`` (the explained class),
        ``predicted``, ``probability`` (``Y_target`` of the unmasked image), ``seconds``
        (wall time of the method's own stages), ``capture_seconds`` (wall time of the
        item's one forward pass and backward to the layer, shared by all its methods),
        ``metric_seconds`` (wall time of the metrics), then the metric columns
        (:data:`METRIC_COLUMNS`). A metric that needs a ground truth the item lacks is None.
    summary : list of dict
        One per method × column: ``method``, ``metric``, ``n`` (non-missing values),
        ``mean``, ``std`` (sample, ddof 1), ``ci_low``, ``ci_high`` (95 % Student t
        interval ``mean ± t_{0.975, n-1} · std / sqrt(n)``; None when ``n < 2``).
    errors : list of dict
        The pairs of this call that failed with ``on_error="skip"``: ``index``,
        ``method``, ``stage`` ("item": loading or preparing the image failed, so every
        method of the item failed alike; "method": this method's map or metrics failed),
        ``error`` (type and message) and ``attempts`` (calls on this output location in
        which the pair failed, this one included). They have no row, so a re-run retries
        them; with an output location they are also in the errors file.
    paths : dict of str -> Path
        Files written (``rows_jsonl``, ``rows_csv``, ``summary_json``, ``summary_csv``,
        ``config``, and ``errors_jsonl`` when pairs failed); empty without an output
        location.
    config : dict
        The run's settings, as saved in the config file, with the ``fingerprint`` of the
        model and dataset when there is an output location.
    computed : int
        Rows computed by this call (the rest were read back from the rows file).
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    errors: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    computed: int = 0

    def get(self, method: str, metric: str) -> dict[str, Any]:
        """The summary entry of one method × metric column."""
        for s in self.summary:
            if s["method"] == method and s["metric"] == metric:
                return s
        raise KeyError(f"No summary for method {method!r} and metric {metric!r}.")

    def to_markdown(self, columns: Sequence[str] | None = None, digits: int = 3) -> str:
        """A Markdown table: one line per method, ``mean ± CI half-width`` per column."""
        methods = list(dict.fromkeys(s["method"] for s in self.summary))
        cols = (list(columns) if columns is not None
                else list(dict.fromkeys(s["metric"] for s in self.summary)))
        lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in methods:
            cells = []
            for c in cols:
                try:
                    s = self.get(m, c)
                except KeyError:
                    cells.append("")
                    continue
                cells.append(_format_cell(s, digits))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _format_cell(s: Mapping[str, Any], digits: int) -> str:
    if s["mean"] is None:
        return "n/a"
    if s["ci_high"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {(s['ci_high'] - s['ci_low']) / 2:.{digits}f}"


def summarize(rows: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None,
              columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    r"""Mean and 95 % confidence interval per method × column.

    .. math:: \bar v \pm t_{0.975,\,n-1} \, \frac{s}{\sqrt n}

    with ``s`` the sample standard deviation (ddof 1) of the ``n`` non-missing values
    (None and NaN are left out). The interval is None when ``n < 2``.

    Parameters
    ----------
    rows : sequence of dict
        Rows as :func:`evaluate` produces them.
    methods, columns : sequences of str, optional
        Order (and selection) of methods and numeric columns; by default in order of
        appearance, every numeric column but the identifiers.
    """
    if methods is None:
        methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            for k, v in r.items():
                if k not in _SUMMARY_SKIP and (v is None or isinstance(v, (int, float))):
                    seen.setdefault(k, None)
        columns = list(seen)
    out = []
    for m in methods:
        mrows = [r for r in rows if r["method"] == m]
        for c in columns:
            vals = np.array([float(r[c]) for r in mrows if r.get(c) is not None and not _isnan(r[c])])
            n = int(vals.size)
            entry: dict[str, Any] = {"method": m, "metric": c, "n": n, "mean": None, "std": None,
                                     "ci_low": None, "ci_high": None}
            if n:
                mean = float(vals.mean())
                entry["mean"] = mean
            if n >= 2:
                std = float(vals.std(ddof=1))
                half = t_quantile_975(n - 1) * std / math.sqrt(n)
                entry.update(std=std, ci_low=mean - half, ci_high=mean + half)
            out.append(entry)
    return out


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# ----------------------------------------------------------------------------------------
# Dataset items
# ----------------------------------------------------------------------------------------
@dataclass
class _Item:
    image: Any
    label: int | None
    mask: Any
    box: Any
    masks: Mapping[Any, Any] | None = None
    boxes: Mapping[Any, Any] | None = None
    other_masks: Sequence[Any] | None = None

    def truth_for(self, target: int) -> tuple[Any, Any, list[Any] | None]:
        """Mask, box and the other objects' masks for the explained class ``target``.

        An item with per-class ``masks`` (a pair scene) is scored against the explained
        class's own object, the others being the rest; without them (or when ``target`` has
        no object in the image) against its ``mask`` / ``box``, the others being
        ``other_masks``.
        """
        others = None if self.other_masks is None else list(self.other_masks)
        if self.masks is not None and target in self.masks:
            box = self.boxes.get(target) if self.boxes is not None else None
            rest = [m for c, m in self.masks.items() if c != target]
            return self.masks[target], box, (rest or None) if others is None else others
        return self.mask, self.box, others


def _as_item(raw: Any, index: int) -> _Item:
    if isinstance(raw, Mapping):
        if "image" not in raw:
            raise ValueError(f"Dataset item {index} is a dict without an 'image' key (keys: {sorted(raw)}).")
        label = raw.get("target", raw.get("label"))
        masks, boxes, others = raw.get("masks"), raw.get("boxes"), raw.get("other_masks")
        if masks is not None and not isinstance(masks, Mapping):
            raise ValueError(f"Dataset item {index}: 'masks' must be a dict {{class index: mask}}, "
                             f"got {type(masks).__name__}.")
        if boxes is not None and not isinstance(boxes, Mapping):
            boxes = None  # a list of per-object boxes of one class (multi-object scenes): not per class
        if others is not None and (isinstance(others, Mapping) or not isinstance(others, Sequence)):
            raise ValueError(f"Dataset item {index}: 'other_masks' must be a list of masks, "
                             f"got {type(others).__name__}.")
        return _Item(raw["image"], _as_label(label, index), raw.get("mask"), raw.get("box"), masks, boxes, others)
    if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[1], (int, np.integer, torch.Tensor)):
        return _Item(raw[0], _as_label(raw[1], index), None, None)  # torchvision-style (image, label)
    return _Item(raw, None, None, None)


def _as_label(label: Any, index: int) -> int | None:
    if label is None:
        return None
    if isinstance(label, torch.Tensor):
        if label.numel() != 1:
            raise ValueError(
                f"Dataset item {index}: the label must be one class index, got shape {tuple(label.shape)}."
            )
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"Dataset item {index}: the label must be an int class index, got {label!r}.")
    return int(label)


def _indexable(dataset: Any) -> bool:
    """Whether items can be loaded by position (``len`` and indexing), not only by iterating."""
    return hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__") and not isinstance(dataset, Mapping)


def _iterate(dataset: Any) -> Iterator[tuple[int, Callable[[], Any]]]:
    """``(index, load)`` pairs; for sequences an item is only loaded when needed."""
    def indexed(i: int) -> Callable[[], Any]:
        return lambda: dataset[i]

    def given(raw: Any) -> Callable[[], Any]:
        return lambda: raw

    if _indexable(dataset):
        for i in range(len(dataset)):
            yield i, indexed(i)
    else:
        for i, raw in enumerate(dataset):
            yield i, given(raw)


def _mask_at(raw: Any, hw: tuple[int, int], source_hw: tuple[int, int], preprocess: Preprocess | None
             ) -> np.ndarray:
    m = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    m = np.squeeze(m).astype(bool)
    if m.shape == hw:
        return m
    if m.shape == source_hw and preprocess is not None:
        return _warp_mask(m, preprocess)
    raise ValueError(f"The mask has shape {m.shape}; expected the image's {source_hw} or the preprocessed {hw}.")


def _ground_truth_at(item: _Item, target: int, hw: tuple[int, int], source_hw: tuple[int, int],
                     preprocess: Preprocess | None
                     ) -> tuple[np.ndarray | None, tuple[int, int, int, int] | None, np.ndarray | None]:
    """The explained class's mask and box, and the other objects' union mask, on the preprocessed grid ``hw``."""
    raw_mask, raw_box, raw_others = item.truth_for(target)
    mask = box = other = None
    if raw_mask is not None:
        mask = _mask_at(raw_mask, hw, source_hw, preprocess)
    if raw_others:
        other = np.logical_or.reduce([_mask_at(m, hw, source_hw, preprocess) for m in raw_others])
    if raw_box is not None:
        b = tuple(round(float(v)) for v in np.asarray(raw_box).reshape(-1))
        if len(b) != 4:
            raise ValueError(f"A box must be (x0, y0, x1, y1), got {raw_box!r}.")
        if source_hw == hw and (preprocess is None or _warp_is_identity(preprocess, hw)):
            box = (b[0], b[1], b[2], b[3])
        else:  # rasterise, move with the geometry, take the tight box again
            bm = np.zeros(source_hw, dtype=bool)
            bm[max(b[1], 0):b[3] + 1, max(b[0], 0):b[2] + 1] = True
            warped = _warp_mask(bm, preprocess) if preprocess is not None else bm
            box = M._mask_box(warped)
    return mask, box, other


def _warp_is_identity(preprocess: Preprocess, hw: tuple[int, int]) -> bool:
    n = hw[0] * hw[1]
    probe = torch.arange(n, dtype=torch.float32).reshape(1, *hw).expand(3, -1, -1) / n
    out = preprocess.geometry(probe)
    return tuple(out.shape[-2:]) == hw and bool(torch.allclose(out, probe))


def _warp_mask(mask: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    t = torch.from_numpy(mask.astype(np.float32))[None].expand(3, -1, -1)
    return (preprocess.geometry(t)[0] >= 0.5).numpy()


# ----------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------
def _output_paths(out_dir: str | os.PathLike[str] | None, path: str | os.PathLike[str] | None
                  ) -> dict[str, Path]:
    """The output files, plus ``errors_jsonl`` (written only when pairs fail) and ``lock``."""
    if out_dir is not None and path is not None:
        raise ValueError("Pass out_dir= (a folder) or path= (a file name), not both.")
    if out_dir is not None:
        d = Path(out_dir)
        if d.exists() and not d.is_dir():
            raise ValueError(f"out_dir {str(d)!r} is a file; pass a folder, or use path= for a file name.")
        return {"rows_jsonl": d / "rows.jsonl", "rows_csv": d / "rows.csv",
                "summary_json": d / "summary.json", "summary_csv": d / "summary.csv",
                "config": d / "config.json", "errors_jsonl": d / "errors.jsonl", "lock": d / ".lock"}
    if path is not None:
        p = Path(path)
        stem = p.with_suffix("") if p.suffix in (".jsonl", ".json", ".csv") else p
        return {"rows_jsonl": stem.with_name(stem.name + ".jsonl"),
                "rows_csv": stem.with_name(stem.name + ".csv"),
                "summary_json": stem.with_name(stem.name + ".summary.json"),
                "summary_csv": stem.with_name(stem.name + ".summary.csv"),
                "config": stem.with_name(stem.name + ".config.json"),
                "errors_jsonl": stem.with_name(stem.name + ".errors.jsonl"),
                "lock": stem.with_name(stem.name + ".lock")}
    return {}


def _json_value(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _json_value(x) for k, x in v.items()}
    return v


_START_OVER = "pass overwrite=True to discard the old rows and start over, or use a new out_dir/path"


def _read_jsonl(path: Path, what: str, keys: Mapping[str, type]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file written by :class:`_JsonlWriter`.

    A torn last line (no newline: the process was killed while writing it) is dropped and
    cut off the file, so its pair is computed again. Any other line that is not valid UTF-8
    JSON, or not an object with ``keys`` of the right types, is an error naming the file
    and the line: nothing is dropped silently. Blank lines are skipped.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        problem = None
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            problem = f"byte {err.start + 1} of the line is not UTF-8 ({err.reason})"
        except json.JSONDecodeError as err:
            problem = f"not valid JSON: {err.msg} (column {err.colno})"
        else:
            if not isinstance(rec, dict):
                problem = f"a JSON {type(rec).__name__}, not an object"
            else:
                for key, typ in keys.items():
                    if not isinstance(rec.get(key), typ) or isinstance(rec.get(key), bool):
                        problem = f"its {key!r} is {rec.get(key)!r}, not {typ.__name__}"
                        break
        if problem is not None:
            text = raw[:80].decode("utf-8", "replace") + ("…" if len(raw) > 80 else "")
            raise ValueError(
                f"{path}:{number}: this line is not {what} written by evaluate: {problem}: {text!r}. The file is "
                f"damaged (only a torn last line, from a process killed while writing it, is repaired "
                f"automatically). Delete or repair line {number} (a deleted row is computed again), or "
                f"{_START_OVER}."
            )
        records.append(rec)
    if torn:
        cut = len(data) - len(torn)
        with path.open("r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
    return records


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of the rows file (see :func:`_read_jsonl`)."""
    return _read_jsonl(path, "a row", {"index": int, "method": str})


def _read_errors(path: Path) -> dict[tuple[int, str], dict[str, Any]]:
    """The failed pairs recorded in the errors file, the last record of each pair."""
    return {(e["index"], e["method"]): e for e in _read_jsonl(path, "an error record", {"index": int, "method": str})}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
        config = json.loads(text)
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 ({err.reason}); the settings file of the rows beside it is damaged. Restore "
            f"it, or {_START_OVER}."
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}:{err.lineno}: not valid JSON: {err.msg} (column {err.colno}); the settings file of the rows "
            f"beside it is damaged. Restore it, or {_START_OVER}."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}:1: a JSON {type(config).__name__}, not the settings object evaluate writes. Restore it, or "
            f"{_START_OVER}."
        )
    return config


class _JsonlWriter:
    """Appends one record per line, flushed and fsynced, so a crash loses at most the line being written."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def append(self, row: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(_json_value(row), allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in _json_value(dict(r)).items()})
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_value(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


_CONFIG_MUST_MATCH = ("metrics", "steps", "metric_params", "target", "layers", "preprocess")


def _check_config(old: Mapping[str, Any], new: Mapping[str, Any], config_path: Path) -> dict[str, Any]:
    """The merged settings (old methods kept, new ones added), or a ValueError naming every difference.

    ``new["fingerprint"]`` (model and dataset) must match the old one too; a folder written
    before fingerprints existed gets a warning and this call's fingerprint.
    """
    folder = str(config_path.parent)
    changes = []
    old_fp, new_fp = old.get("fingerprint"), new.get("fingerprint")
    if isinstance(old_fp, Mapping) and isinstance(new_fp, Mapping):
        changes += _fingerprint_changes(old_fp, new_fp)
    elif new_fp is not None:
        warnings.warn(
            f"{config_path} has no fingerprint of the model and dataset (it was written by an older camwidgets), "
            f"so this call cannot check that the rows in {folder!r} come from the same model and dataset; it "
            "resumes them and stores this call's fingerprint. If in doubt, pass overwrite=True.",
            UserWarning, stacklevel=4,
        )
    for key in _CONFIG_MUST_MATCH:
        if old.get(key) != new.get(key):
            changes.append(f"setting {key}={old.get(key)!r} then, this call asks for {key}={new.get(key)!r}")
    methods = dict(old.get("methods", {}))
    for name, spec in new["methods"].items():
        if name in methods and methods[name] != spec:
            changes.append(f"Method {name!r} was run with {methods[name]!r}, this call asks for {spec!r} (or give "
                           "the variant another name)")
        methods[name] = spec
    if changes:
        raise ValueError(
            f"The rows in {folder!r} were computed with something else than this call asks for:\n"
            + "".join(f"  - {c}\n" for c in changes)
            + "Resuming would mix them into wrong results. Use a new out_dir/path, or pass overwrite=True to "
            "discard the old rows."
        )
    return {**dict(new), "methods": methods}


# ----------------------------------------------------------------------------------------
# Fingerprints of the model and the dataset
# ----------------------------------------------------------------------------------------
#: A state_dict up to this many bytes is hashed whole; a larger one is sampled.
_FULL_HASH_BYTES = 16 * 2**20
#: Values hashed per tensor of a sampled state_dict: all of a smaller tensor, a strided sample of a larger one.
_SAMPLE_VALUES = 16384
#: Dataset items hashed, from the start (the rows of an item are keyed by its position).
_FINGERPRINT_ITEMS = 3


def _flat_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's values as a flat uint8 tensor (on its device)."""
    flat = t.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.view(torch.uint8)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return bytes(_flat_bytes(t).cpu().numpy().data)


def _bits_sum(b: torch.Tensor) -> int:
    """The exact sum of a flat uint8 tensor read as int32 (int16, uint8) words: any changed value changes it.

    Integer sums do not depend on the summation order, so it is the same on any device
    and with any number of threads (unlike a float sum).
    """
    n = b.numel()
    if b.device.type == "cpu":
        np_dtype = np.int32 if n % 4 == 0 else np.int16 if n % 2 == 0 else np.uint8
        return int(b.numpy().view(np_dtype).sum(dtype=np.int64))
    dtype = torch.int32 if n % 4 == 0 else torch.int16 if n % 2 == 0 else torch.uint8
    return int(b.view(dtype).sum(dtype=torch.int64).item())


def _model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """A hash of the model's state_dict: names, dtypes, shapes and values.

    Every byte when the state_dict holds at most 16 MiB. A larger one is sampled: per
    tensor, the exact integer sum of its bit patterns (so any changed value changes the
    hash), plus every value of a tensor with at most 16384 values and an evenly strided
    sample of 16384 values of a larger one (so do most rearrangements). A ResNet-50 takes
    about 25 ms. Deterministic: the same weights give the same hash in any process, with
    any number of threads, on any device.
    """
    state = model.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    sampled = total > _FULL_HASH_BYTES
    h = hashlib.sha1(usedforsecurity=False)
    for key, value in state.items():
        key = key.removeprefix("_orig_mod.")  # torch.compile's wrapper: the same weights
        if not isinstance(value, torch.Tensor):
            h.update(f"{key}|{type(value).__qualname__}|{value!r}\n".encode())
            continue
        h.update(f"{key}|{value.dtype}|{tuple(value.shape)}\n".encode())
        try:
            flat = value.detach().reshape(-1)
            if sampled and flat.numel() > _SAMPLE_VALUES:
                h.update(f"{_bits_sum(_flat_bytes(flat))}|".encode())
                flat = flat[::flat.numel() // _SAMPLE_VALUES][:_SAMPLE_VALUES]
            h.update(_tensor_bytes(flat))
        except (RuntimeError, TypeError):  # a quantized, sparse or meta tensor: its name, dtype and shape only
            h.update(b"?")
    return {"hash": h.hexdigest(), "tensors": len(tensors), "values": sum(t.numel() for t in tensors.values()),
            "sampled": sampled}


def _digest(h: Any, obj: Any, depth: int = 0) -> None:
    """Feed a dataset item (image, label, mask, box, nested dicts/tuples) into the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(_tensor_bytes(obj))
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes() if obj.dtype != object else repr(obj).encode())
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        h.update(b"B" + bytes(obj))
    elif isinstance(obj, (str, os.PathLike)):
        name = os.fspath(obj)
        h.update(f"S{name!r}".encode())
        if isinstance(name, str) and len(name) < 4096 and os.path.isfile(name):  # an image file: its bytes
            with open(name, "rb") as fh:
                for chunk in iter(lambda: fh.read(2**20), b""):
                    h.update(chunk)
    elif obj is None or isinstance(obj, (bool, int, float, np.generic)):
        h.update(f"V{obj!r}".encode())
    elif isinstance(obj, Mapping) and depth < 4:
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(f"{k!s}:".encode())
            _digest(h, obj[k], depth + 1)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)) and depth < 4:
        h.update(b"[")
        for x in obj:
            _digest(h, x, depth + 1)
        h.update(b"]")
    elif callable(getattr(obj, "tobytes", None)) and hasattr(obj, "mode") and hasattr(obj, "size"):  # PIL
        h.update(f"P{obj.mode}{obj.size}".encode())
        h.update(obj.tobytes())
    else:
        h.update(f"O{type(obj).__qualname__}".encode())


def _raw_digest(raw: Any) -> str:
    h = hashlib.sha1(usedforsecurity=False)
    _digest(h, raw)
    return h.hexdigest()


def _item_digest(load: Callable[[], Any]) -> str | None:
    """The item's hash; None for an item that fails to load (the run records or raises that)."""
    try:
        raw = load()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        return None
    return _raw_digest(raw)


def _dataset_fingerprint(dataset: Iterable[Any]) -> tuple[Iterable[Any], dict[str, Any]]:
    """The dataset to run (an iterator's first items are put back in front) and its fingerprint.

    The fingerprint holds the length (None for an iterator) and a hash of each of the
    first three items (everything in them: image bytes or pixels, label, mask, box, other
    keys; None for an item that fails to load, which is not compared). The first item of
    an indexable dataset is loaded twice: if the two differ (random transforms), only the
    length can be compared (``items`` is None), and a warning says so.
    """
    if _indexable(dataset):
        n = len(dataset)  # type: ignore[arg-type]
        loads = [load for _, load in itertools.islice(_iterate(dataset), _FINGERPRINT_ITEMS)]
        digests = [_item_digest(load) for load in loads]
        if loads and _item_digest(loads[0]) != digests[0]:
            warnings.warn(
                "The dataset's item 0 differs each time it is loaded (random transforms?), so evaluate cannot "
                "check on resume that the rows come from the same dataset, and rows computed at different times "
                "come from different random draws. Use deterministic transforms for an evaluation.",
                UserWarning, stacklevel=3,
            )
            return dataset, {"length": n, "items": None}
        return dataset, {"length": n, "items": digests}
    it = iter(dataset)
    first = list(itertools.islice(it, _FINGERPRINT_ITEMS))
    return itertools.chain(first, it), {"length": None, "items": [_raw_digest(raw) for raw in first]}


def _fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words."""
    out = []
    om, nm = old.get("model") or {}, new.get("model") or {}
    if om.get("hash") != nm.get("hash"):
        def describe(m: Mapping[str, Any]) -> str:
            return f"{m.get('tensors')} tensors, {m.get('values')} values, weights hash {str(m.get('hash'))[:12]}"
        out.append(f"model: another model or other weights (then: {describe(om)}; now: {describe(nm)})")
    od, nd = old.get("dataset") or {}, new.get("dataset") or {}
    oi, ni = od.get("items"), nd.get("items")
    if od.get("length") != nd.get("length"):
        out.append(f"dataset: {od.get('length')} items then, {nd.get('length')} now (rows are keyed by the "
                   "item's position, so they may belong to other images)")
    elif isinstance(oi, list) and isinstance(ni, list):
        pairs = enumerate(zip(oi, ni, strict=False))
        differ = [i for i, (a, b) in pairs if a is not None and b is not None and a != b]
        if len(oi) != len(ni):  # an iterator of another length
            differ.append(min(len(oi), len(ni)))
        if differ:
            which = f"items {', '.join(map(str, differ))} differ" if len(differ) > 1 else f"item {differ[0]} differs"
            out.append(f"dataset: {which} (other images, labels, masks or boxes, or another order)")
    return out


# ----------------------------------------------------------------------------------------
# One run per output location
# ----------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell a reused pid; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True  # cannot tell: treat as running
    return True


class _OutputLock:
    """``<out_dir>/.lock``: one evaluate per output location at a time.

    Created with ``O_CREAT | O_EXCL`` (atomic), holding the pid, host and start time of the
    process; removed when the run ends, also on an error or KeyboardInterrupt. A lock
    whose process no longer runs on this host (killed) is taken over with a warning; any
    other lock refuses the call.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text: str | None = None

    def acquire(self) -> None:
        pid, host = os.getpid(), socket.gethostname()
        text = json.dumps({"pid": pid, "host": host, "process_start": _process_start(pid),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S%z"), "token": os.urandom(8).hex()})
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale(host)
                continue
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            except BaseException:  # e.g. Ctrl-C right now: leave no lock that names nobody
                self.path.unlink(missing_ok=True)
                raise
            self.text = text + "\n"
            return
        raise RuntimeError(f"Could not create the lock file {self.path}: other processes keep taking it.")

    def _take_over_if_stale(self, host: str) -> None:
        try:
            held = self.path.read_text(encoding="utf-8", errors="replace")
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            info = json.loads(held)
            owner_pid, owner_host = int(info["pid"]), str(info["host"])
            owner_start, since = info.get("process_start"), info.get("since")
        except (ValueError, KeyError, TypeError):
            if age < 10:  # being written right now
                time.sleep(0.2)
                return
            raise RuntimeError(
                f"{self.path} exists but does not say which process holds it ({held[:80]!r}). If no evaluate runs "
                "on this output any more, delete that file and call again."
            ) from None
        stale = owner_host == host and (
            not _pid_alive(owner_pid)
            or (owner_start is not None and _process_start(owner_pid) not in (None, owner_start)))
        if not stale:
            where = "this machine" if owner_host == host else f"host {owner_host!r}"
            raise RuntimeError(
                f"Another evaluate (process {owner_pid} on {where}, since {since}) is writing to "
                f"{str(self.path.parent)!r}: its lock file {self.path} exists. Two runs on one output would "
                "compute the same rows twice and mix their files. Wait for it to finish, or use another "
                "out_dir/path; if that process is gone (e.g. a machine that was switched off), delete the lock "
                "file and call again."
            )
        moved = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # another process took it over first
        if moved.read_text(encoding="utf-8", errors="replace") != held:  # a new owner's lock: put it back
            with contextlib.suppress(OSError):
                os.link(moved, self.path)
            moved.unlink()
            return
        moved.unlink()
        warnings.warn(
            f"Took over the lock {self.path} of process {owner_pid} (since {since}), which no longer runs on this "
            "machine: that run was killed. Its saved rows are kept and resumed.",
            UserWarning, stacklevel=4,
        )

    def release(self) -> None:
        if self.text is None:
            return
        with contextlib.suppress(OSError):
            if self.path.read_text(encoding="utf-8") == self.text:  # still ours
                self.path.unlink()
        self.text = None


# ----------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------
def _method_specs(methods: Sequence[str] | Mapping[str, Mapping[str, Any]],
                  registered: bool = True) -> dict[str, dict[str, Any]]:
    """``{row name: {"method": method name, "params": {...}}}``.

    With ``registered`` (the default explainer), an unknown method, an unknown parameter or a
    value out of range raises a ValueError before any image is loaded (the registry's
    :meth:`~camwidgets.core.methods.Method.resolve`); a custom explainer factory's method
    names are its own business.
    """
    if isinstance(methods, str):
        methods = [methods]
    specs: dict[str, dict[str, Any]] = {}
    if isinstance(methods, Mapping):
        for name, params in methods.items():
            p = dict(params or {})
            specs[str(name)] = {"method": str(p.pop("method", name)), "params": p}
    else:
        for name in methods:
            if not isinstance(name, str):
                raise ValueError(f"methods must be names of registered methods (camwidgets.methods()), got {name!r}.")
            specs[name] = {"method": name, "params": {}}
    if not specs:
        raise ValueError("methods is empty; name at least one method, e.g. 'gradcam' "
                         "(camwidgets.methods() lists them).")
    for name, spec in specs.items():
        if not registered:
            break
        try:
            _methods.get(spec["method"]).resolve(spec["params"])
        except ValueError as err:
            raise ValueError(f"methods[{name!r}]: {err}") from None
    return specs


def _default_factory() -> ExplainerFactory:
    from .explainer import Explainer

    return Explainer


def _describe(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(x) for x in obj]
    if isinstance(obj, Mapping):
        return {str(k): _describe(v) for k, v in obj.items()}
    return repr(obj)


def evaluate(
    model: nn.Module,
    dataset: Iterable[Any],
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = DEFAULT_METHODS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    preprocess: PreprocessLike = None,
    target: Literal["label", "predicted"] | int = "label",
    layers: str | Sequence[Any] = "auto",
    steps: int = 50,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 32,
    image_batch: int = 8,
    out_dir: str | os.PathLike[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    on_error: Literal["raise", "skip"] = "raise",
    explainer_factory: ExplainerFactory | None = None,
    executor: Literal["local", "ray"] | Any = "local",
) -> EvaluationResult:
    r"""Run CAM methods × metrics over a dataset, with a progress bar and resumable output.

    For each image the model's prediction is computed once; then for each method an
    :class:`~camwidgets.Explainer` is built on the image (its construction is part of
    the method's time) and the method's map is scored with the requested metrics.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits ``(N, C)``; its train/eval state is restored.
    dataset : iterable
        Items are dicts with ``"image"`` (anything ``load_image`` accepts) and optional
        ``"target"`` or ``"label"`` (int), ``"mask"`` (bool ``(H, W)``, on the image or on
        the preprocessed image) and ``"box"`` (``(x0, y0, x1, y1)``, inclusive pixel
        indices); for scenes with objects of several classes also ``"masks"`` (and
        ``"boxes"``): ``{class index: mask}``, the explained class's entry then being the
        ground truth and the others "the other objects" of the ``discrimination`` metric
        (:func:`camwidgets.datasets.each_class` explains every class of such a dataset), or
        ``"other_masks"``, a list of the other objects' masks; ``(image, label)`` tuples; or
        bare images. A sequence (``len`` and
        indexing, e.g. :class:`camwidgets.datasets.Shapes`) is indexed lazily, so a resumed
        run loads only its first three items (for the fingerprint) and the unfinished ones.
        Row ``index`` is the item's position.
    methods : sequence of str or mapping, default :data:`DEFAULT_METHODS`
        Names of registered methods (``camwidgets.methods()`` lists them with their
        parameters), or ``{name: params}`` with the method's keyword arguments; a
        ``"method"`` entry lets a name stand for a variant, e.g.
        ``{"scorecam-paper": {"method": "scorecam", "variant": "paper"}}``. Every name and
        parameter is checked before any work starts.
    metrics : sequence of str, default :data:`DEFAULT_METRICS`
        Names of registered metrics (:func:`camwidgets.core.metric_registry.list_metrics`;
        :data:`METRIC_COLUMNS` gives the row columns each one writes). Ground-truth
        metrics give None for items without a mask/box (a box alone is used as the
        mask; with a mask, ``box_iou`` uses the item's box, else the mask's tight box).
        The default leaves out the metrics registered with ``default=False``, ROAD and
        ARCC (costlier than insertion and deletion together: a sparse solve per
        percentile, order and map); ask for them by name, e.g.
        ``metrics=[*DEFAULT_METRICS, "road", "arcc"]``, with their settings in
        ``metric_params={"road": {"percentiles": ..., "noise": ..., "seed": ...}}``.
    preprocess : Preprocess or None
        The model's preprocessing (maps live on ``preprocess.geometry``'s output).
    target : "label", "predicted" or int, default "label"
        Class explained and scored: the item's label (the predicted class for items
        without one), always the predicted class, or a fixed class.
    layers : "auto" or list
        Passed to the Explainer.
    steps : int, default 50
        Insertion/deletion steps (224 for evaluation).
    metric_params : mapping, optional
        Extra keyword arguments per metric, e.g. ``{"deletion": {"baseline": "blur"},
        "insertion": {"sigma": 3.0}, "localisation": {"threshold": 0.4},
        "pointing_game": {"tolerance": 15}}``.
    batch_size : int, default 32
        Forward-pass batch size of the metrics (insertion and deletion steps, masked images).
    image_batch : int, default 8
        Dataset items evaluated together, as a batch: their explainers come from one
        batched forward pass (and one backward pass down to the default layer), and for
        each method the metrics' own passes (Average Drop and Increase in Confidence's
        masked images, the insertion and deletion curves, ADCC's re-explained images) run
        over the group's maps together. Rows equal those of ``image_batch=1`` up to
        floating-point summation order (a batched convolution may add in another order).
        Larger groups hold more activations at once (about 22 MB per ResNet-50 image at
        224 px while its group runs); 1 evaluates one item at a time.
    out_dir, path : path, optional
        Where to write: a folder (``rows.jsonl``, ``rows.csv``, ``summary.json``,
        ``summary.csv``, ``config.json``, and ``errors.jsonl`` when pairs failed) or a
        file stem (``run`` or ``run.jsonl`` gives ``run.jsonl``, ``run.csv``,
        ``run.summary.json``, ``run.summary.csv``, ``run.config.json``,
        ``run.errors.jsonl``). Rows are appended to the JSON-lines file as they finish.
        While the call runs, a lock file (``.lock`` in the folder, ``run.lock`` beside a
        stem) holds its process id and host: a second call on the same output, from any
        process, raises a RuntimeError; the lock of a killed process on this machine is
        taken over with a warning.
    resume : bool, default True
        Reuse the rows already in the output's JSON-lines file and compute only the
        missing image × method pairs; new methods may be added. The rows must come from
        the same model (a fingerprint of its weights), the same dataset (its length and
        first three items) and the same metric settings, else ``ValueError`` naming what
        changed. Pairs that failed with ``on_error="skip"`` have no row and are retried.
        A damaged rows, errors or settings file is a ``ValueError`` naming the file and
        line; only a torn last line (a process killed while writing it) is cut off and
        its row computed again. False is the same as ``overwrite=True``.
    overwrite : bool, default False
        Discard the previous output at this location (rows, errors, settings) and start
        over.
    progress : bool, default True
        Show a ``tqdm.auto`` progress bar (a widget in notebooks, text elsewhere).
    on_error : {"raise", "skip"}, default "raise"
        "skip" records a failure in ``errors`` (and the errors file) and goes on: a
        failing image × method pair, or an item that cannot be loaded or prepared (the
        dataset raising, an image that does not decode, a label out of range, a mask of
        the wrong shape), which fails every method of that item. Settings that fail on
        every item (a fixed ``target`` out of range) still raise.
    explainer_factory : callable, optional
        ``factory(model, image, target=..., layers=..., preprocess=...)`` returning an
        object with the method names; default :class:`camwidgets.Explainer`.
    executor : "local", "ray" or an executor object, default "local"
        Where the items are evaluated. ``"local"``: here, one after the other
        (:class:`LocalExecutor`). ``"ray"``: on a Ray cluster with the default settings of
        :class:`camwidgets.RayExecutor` (needs the ``camwidgets[ray]`` extra); pass
        ``RayExecutor(workers=..., num_cpus=..., num_gpus=..., address=...)`` to choose.
        Every executor gives the same rows (up to floating-point summation order), the
        same files and the same resume rules; with Ray, rows are saved as each shard of
        images comes back.

    Returns
    -------
    EvaluationResult
        ``rows``, ``summary`` (mean and 95 % Student-t CI per method × metric column),
        ``errors``, ``paths``, ``config``, ``computed``.

    Notes
    -----
    ADCC's coherency re-runs the same method (same parameters, same factory) on
    ``x ⊙ E``, the preprocessed pixel image times its map, with normalisation only.
    Each item gets one forward pass, the explainer's, run batched with the other items of
    its group (``image_batch``): it gives the prediction, the unmasked probability the
    confidence metrics and the curves use, and the captures every method of the item
    shares (methods run in the order given, and one that reuses a stage an earlier method
    computed, e.g. Fusion-CAM after Score-CAM, costs only its own part). ``seconds`` is the
    wall time of the method's own stages, ``capture_seconds`` the item's share of the
    batched construction pass and ``metric_seconds`` its own metric work plus its share of
    the batched metric passes, on the calling machine.
    """
    specs = _method_specs(methods, registered=explainer_factory is None)
    metric_list = list(dict.fromkeys(metrics))
    unknown = [m for m in metric_list if m not in METRIC_COLUMNS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {list(METRIC_COLUMNS)}.")
    if not (target in ("label", "predicted") or (isinstance(target, int) and not isinstance(target, bool))):
        raise ValueError(f"target must be 'label', 'predicted' or an int class, got {target!r}.")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    params = {k: dict(v) for k, v in (metric_params or {}).items()}
    bad = [k for k in params if k not in METRIC_COLUMNS]
    if bad:
        raise ValueError(f"metric_params has unknown metric(s) {bad}; choose from {list(METRIC_COLUMNS)}.")
    steps = M._check_steps(steps)
    M._check_batch_size(batch_size)
    if isinstance(image_batch, bool) or not isinstance(image_batch, int) or image_batch < 1:
        raise ValueError(f"image_batch must be a positive int (dataset items evaluated together), got "
                         f"{image_batch!r}; 1 evaluates one item at a time.")
    preprocess = M._check_preprocess(preprocess)  # a torchvision transform becomes a Preprocess
    factory = explainer_factory if explainer_factory is not None else _default_factory()
    runner = _executor(executor)

    columns = [c for m in metric_list for c in METRIC_COLUMNS[m]]
    config: dict[str, Any] = {
        "methods": specs, "metrics": metric_list, "steps": steps, "metric_params": _describe(params),
        "target": target, "layers": _describe(layers), "preprocess": _describe(preprocess),
    }
    paths = _output_paths(out_dir, path)
    lock = None
    if paths:
        paths["rows_jsonl"].parent.mkdir(parents=True, exist_ok=True)
        lock = _OutputLock(paths.pop("lock"))
        lock.acquire()  # before anything in the folder is read or deleted
    try:
        total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
        done: dict[tuple[int, str], dict[str, Any]] = {}
        old_errors: dict[tuple[int, str], dict[str, Any]] = {}
        if paths:
            dataset, dataset_fp = _dataset_fingerprint(dataset)
            config["fingerprint"] = {"model": _model_fingerprint(model), "dataset": dataset_fp}
            if overwrite or not resume:
                for p in paths.values():
                    p.unlink(missing_ok=True)
            config, done, old_errors = _previous_output(paths, config)
            _write_json(paths["config"], config)
        writer = _JsonlWriter(paths.get("rows_jsonl"))
        error_log = _JsonlWriter(paths.get("errors_jsonl"))

        norm_only = Preprocess(mean=preprocess.mean, std=preprocess.std) if preprocess is not None else None
        task = _Task(model=model, specs=specs, metric_list=metric_list, params=params, preprocess=preprocess,
                     norm_only=norm_only, target=target, layers=layers, steps=steps, batch_size=batch_size,
                     factory=factory, on_error=on_error, image_batch=image_batch)
        by_index: dict[int, None] = {}
        errors: list[dict[str, Any]] = []
        computed = 0

        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress)
        try:
            for index, new_rows, new_errors in runner.run(task, dataset, done, writer.append, bar):
                for r in new_rows:
                    done[(index, str(r["method"]))] = r
                computed += len(new_rows)
                for e in new_errors:
                    before = old_errors.get((index, str(e["method"])))
                    record = {**e, "attempts": int(before.get("attempts", 1)) + 1 if before else 1}
                    error_log.append(record)  # at once: an interrupted run keeps its failures too
                    errors.append(record)
                by_index[index] = None
                bar.update(1)
        finally:
            bar.close()
        rows = [done[(index, name)] for index in sorted(by_index) for name in specs if (index, name) in done]
        errors.sort(key=lambda e: (e["index"], list(specs).index(e["method"])))

        summary = summarize(rows, list(specs), [*_META_COLUMNS[5:], *columns])
        if paths:
            all_columns = [*_META_COLUMNS, *columns]
            _write_csv(paths["rows_csv"], rows, all_columns)
            _write_csv(paths["summary_csv"], summary,
                       ["method", "metric", "n", "mean", "std", "ci_low", "ci_high"])
            _write_json(paths["summary_json"], {"config": config, "summary": summary, "errors": errors,
                                                "n_rows": len(rows)})
            # the errors file: this call's failures, and those of pairs this call did not ask for
            kept = [e for k, e in old_errors.items() if not (k[0] in by_index and k[1] in specs)]
            errors_path = paths.pop("errors_jsonl")
            if kept or errors:
                _write_jsonl(errors_path, [*kept, *errors])
                paths["errors_jsonl"] = errors_path
            else:
                errors_path.unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.release()
    return EvaluationResult(rows=rows, summary=summary, errors=errors, paths=paths, config=config,
                            computed=computed)


def _previous_output(paths: Mapping[str, Path], config: dict[str, Any]
                     ) -> tuple[dict[str, Any], dict[tuple[int, str], dict[str, Any]],
                                dict[tuple[int, str], dict[str, Any]]]:
    """The settings to save, the rows to reuse and the failed pairs recorded by earlier calls.

    Refuses (ValueError) rows of another model, dataset or settings, rows without their
    settings file, and damaged files. Failed pairs have no row, so they are tried again.
    """
    rows_path, config_path = paths["rows_jsonl"], paths["config"]
    if not (rows_path.exists() and rows_path.stat().st_size > 0):
        paths["errors_jsonl"].unlink(missing_ok=True)  # nothing to resume
        return config, {}, {}
    if not config_path.exists():
        raise ValueError(
            f"{rows_path} holds rows, but their settings file {config_path} is missing, so nothing says which "
            f"model, dataset and settings they come from. Restore it, or {_START_OVER}."
        )
    config = _check_config(_read_config(config_path), json.loads(json.dumps(_json_value(config))), config_path)
    done = {(int(r["index"]), str(r["method"])): r for r in _read_rows(rows_path)}
    return config, done, _read_errors(paths["errors_jsonl"])


def _write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(_json_value(r), allow_nan=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


class _SettingError(ValueError):
    """A failure of the call's settings, not of one item: raised even with ``on_error="skip"``."""


@dataclass
class _Prepared:
    """One dataset item, loaded and checked, with the model's prediction on it.

    ``logits`` are the unmasked image's logits ``(1, C)`` from the one forward pass the item
    gets: the explainer's when the default factory builds it here (``explainer``, with
    ``capture_seconds`` its forward/backward), else a plain pass; Average Drop and Increase in
    Confidence reuse them.
    """

    item: _Item
    geo: torch.Tensor
    predicted: int
    target: int
    probability: float
    mask: np.ndarray | None
    box: tuple[int, int, int, int] | None
    logits: torch.Tensor
    explainer: Any = None
    capture_seconds: float = 0.0
    other_mask: np.ndarray | None = None
    index: int = -1


@dataclass
class _Loaded:
    """One dataset item loaded, with its pixel image after the geometry, before any model pass."""

    index: int
    item: _Item
    pixels: torch.Tensor
    geo: torch.Tensor
    asked: int | None


@dataclass(frozen=True, eq=False)
class _Task:
    """Everything needed to evaluate one dataset item: what :func:`evaluate` hands an executor.

    It pickles (with the model and the factory), so a Ray actor receives it once and then
    evaluates the items of many shards with it.
    """

    model: nn.Module
    specs: Mapping[str, Mapping[str, Any]]
    metric_list: Sequence[str]
    params: Mapping[str, Mapping[str, Any]]
    preprocess: Preprocess | None
    norm_only: Preprocess | None
    target: Any
    layers: Any
    steps: int
    batch_size: int
    factory: ExplainerFactory
    on_error: str
    image_batch: int = 1

    def todo(self, index: int, done: Mapping[tuple[int, str], Any]) -> list[str]:
        """The methods of item ``index`` that have no row yet."""
        return [name for name in self.specs if (index, name) not in done]

    def _range_error(self, scorer: M._Scorer, geo: torch.Tensor, tgt: int) -> None:
        """A fixed ``target=<class>`` out of the model's range fails on every item: a setting error."""
        with M._eval_mode(self.model), torch.inference_mode():
            logits = scorer.logits(geo[None])
        try:
            M._resolve_targets(tgt, logits)
        except ValueError as err:
            raise _SettingError(str(err)) from None

    def _load(self, index: int, load: Callable[[], Any]) -> _Loaded:
        """Load item ``index`` (``load()``) and apply the geometry: no model pass."""
        item = _as_item(load(), index)
        pixels = load_image(item.image)
        geo = self.preprocess.geometry(pixels) if self.preprocess is not None else pixels
        # the class asked for: a fixed one, the item's label, or None (the predicted class)
        asked: int | None = self.target if isinstance(self.target, int) else (
            item.label if self.target == "label" else None)
        return _Loaded(index, item, pixels, geo, asked)

    def _prepare(self, ld: _Loaded, explainer: Any = None, seconds: float = 0.0) -> _Prepared:
        """Item ``ld`` checked, with the model's prediction on it (one forward pass).

        With the default factory the pass is the explainer's own (``explainer`` when a batched
        pass built it already, else built here), shared by every method of the item; a custom
        factory's explainer is built at the first method, after a plain forward pass for the
        prediction.
        """
        from .explainer import Explainer

        model, item, geo, asked = self.model, ld.item, ld.geo, ld.asked
        hw = (int(geo.shape[-2]), int(geo.shape[-1]))
        scorer = M._Scorer(model, self.norm_only, self.batch_size)
        if self.factory is Explainer:
            if explainer is None:
                t0 = time.perf_counter()
                try:
                    # the resized image with normalisation only: the geometry is not applied twice
                    explainer = Explainer(model, geo, target=asked, layers=self.layers, preprocess=self.norm_only)
                except ValueError:
                    if isinstance(self.target, int):
                        self._range_error(scorer, geo, self.target)
                    raise
                seconds = time.perf_counter() - t0
            logits = explainer.logits_tensor.detach().float().cpu()[None]
            tgt = explainer.target
        else:
            with M._eval_mode(model), torch.inference_mode():
                logits = scorer.logits(geo[None])
            if isinstance(self.target, int) and self.target >= logits.shape[1]:
                self._range_error(scorer, geo, self.target)
            tgt = int(M._resolve_targets(asked, logits)[0])  # None: the argmax; else a range check
        predicted = int(logits.argmax(dim=1)[0])
        prob = float(torch.softmax(logits, dim=1)[0, tgt])
        needs_truth = any(_metric_registry.get_metric(m).needs_ground_truth for m in self.metric_list)
        mask, box, other = (
            _ground_truth_at(item, tgt, hw, (int(ld.pixels.shape[-2]), int(ld.pixels.shape[-1])), self.preprocess)
            if needs_truth else (None, None, None))
        return _Prepared(item, geo, predicted, tgt, prob, mask, box, logits, explainer, seconds, other, ld.index)

    def _explain_many(self, spec: Mapping[str, Any]) -> Callable[[torch.Tensor, Sequence[int]], list[Any]] | None:
        """The method re-run on many masked images through one batched pass (default factory only)."""
        from .explainer import Explainer

        if self.factory is not Explainer:
            return None
        model, layers, norm_only = self.model, self.layers, self.norm_only

        def explain_many(masked: torch.Tensor, targets: Sequence[int]) -> list[Any]:
            explainers = Explainer.batch(model, masked, list(targets), layers=layers, preprocess=norm_only)
            return [getattr(ex, spec["method"])(**spec["params"]) for ex in explainers]

        return explain_many

    def run_group(self, entries: Sequence[tuple[int, Callable[[], Any], Sequence[str]]],
                  on_row: Callable[[dict[str, Any]], None] | None = None,
                  note: Callable[[str], None] | None = None
                  ) -> list[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]:
        """``(index, rows, errors)`` for each ``(index, load, todo)`` of a group of items, in order.

        The group's items run as a batch: with the default factory one
        :meth:`~camwidgets.core.explainer.Explainer.batch` pass gives every item its
        explainer (its prediction, unmasked probability and captures), and for each method
        the metrics' shared passes (the masked images of Average Drop and Increase in
        Confidence, the insertion and deletion curves, the re-explained masked images of
        ADCC) run over all the items' maps at once (:func:`~camwidgets.core.metric_registry.prefetch`).
        A batched step that fails is done again item by item, so each failure is recorded
        against its own item. ``capture_seconds`` and ``metric_seconds`` then hold the item's
        share of the batched passes (their time divided by the items in them).

        With ``on_error="skip"`` a failure to load or prepare an item (the dataset raising, an
        image that does not decode, a label out of range, a mask of the wrong shape, the model
        failing on it) is an error of every method in its ``todo`` with ``stage`` "item"; a
        failure of one method's map or metrics is an error of that method, ``stage``
        "method". ``on_row`` sees each row the moment it is finished (the local run appends it
        to the rows file there); ``note`` is told which item and method start.
        """
        from .explainer import Explainer

        out: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {i: ([], []) for i, _, _ in entries}
        todos = {index: list(todo) for index, _, todo in entries}

        def attempt(index: int, stage: str, names: Sequence[str], fn: Callable[[], Any]) -> Any:
            """``fn()``; with on_error="skip" a failure is recorded for ``names`` and None returned."""
            try:
                return fn()
            except (KeyboardInterrupt, SystemExit, _SettingError):
                raise
            except Exception as err:
                if self.on_error == "raise":
                    raise
                out[index][1].extend({"index": index, "method": name, "stage": stage,
                                      "error": f"{type(err).__name__}: {err}"} for name in names)
                return None

        loaded: list[_Loaded] = [
            ld for index, load, _ in entries
            if (ld := attempt(index, "item", todos[index], functools.partial(self._load, index, load))) is not None]
        built: dict[int, tuple[Any, float]] = {}
        if self.factory is Explainer and len(loaded) > 1:
            t0 = time.perf_counter()
            try:
                explainers = Explainer.batch(self.model, [ld.geo for ld in loaded], [ld.asked for ld in loaded],
                                             layers=self.layers, preprocess=self.norm_only)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception:
                explainers = []  # each item alone below, so a failure names its own item
            share = (time.perf_counter() - t0) / len(loaded)
            built = {ld.index: (ex, share) for ld, ex in zip(loaded, explainers, strict=False)}
        prepared: list[_Prepared] = [
            p for ld in loaded
            if (p := attempt(ld.index, "item", todos[ld.index],
                             functools.partial(self._prepare, ld, *built.get(ld.index, (None, 0.0))))) is not None]

        explainers_of: dict[int, Any] = {p.index: p.explainer for p in prepared}
        capture_of: dict[int, float] = {p.index: p.capture_seconds for p in prepared}
        for name, spec in self.specs.items():
            scored: list[tuple[_Prepared, MetricContext, float]] = []
            explain_many = self._explain_many(spec)
            for p in prepared:
                if name not in todos[p.index]:
                    continue
                if note is not None:
                    note(f"{p.index}:{name}")
                made = attempt(p.index, "method", [name],
                               functools.partial(self._map, p, name, spec, explainers_of, capture_of))
                if made is not None:
                    scored.append((p, self._context(p, made[0], spec, explain_many), made[1]))
            if not scored:
                continue
            t1 = time.perf_counter()
            if len(scored) > 1:
                try:
                    _metric_registry.prefetch([ctx for _, ctx, _ in scored], self.metric_list)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception:
                    pass  # scored one by one below, where the failing item raises its own error
            share = (time.perf_counter() - t1) / len(scored)
            for p, ctx, seconds in scored:
                t1 = time.perf_counter()
                values = attempt(p.index, "method", [name], functools.partial(self._metric_values, ctx))
                if values is None:
                    continue
                metric_seconds = share + time.perf_counter() - t1
                row = _json_value({"index": p.index, "method": name, "label": p.item.label, "target": p.target,
                                   "predicted": p.predicted, "probability": p.probability, "seconds": seconds,
                                   "capture_seconds": capture_of[p.index], "metric_seconds": metric_seconds,
                                   **values})
                if on_row is not None:
                    on_row(row)
                out[p.index][0].append(row)
        return [(index, *out[index]) for index, _, _ in entries]

    def _map(self, p: _Prepared, name: str, spec: Mapping[str, Any], explainers: dict[int, Any],
             capture_seconds: dict[int, float]) -> tuple[np.ndarray, float]:
        """Item ``p``'s map by method ``name`` and the seconds it took; a custom factory's explainer is
        built at the item's first method (kept in ``explainers``, its time in ``capture_seconds``)."""
        if explainers[p.index] is None:
            t0 = time.perf_counter()
            explainers[p.index] = self.factory(self.model, p.item.image, target=p.target, layers=self.layers,
                                               preprocess=self.preprocess)
            capture_seconds[p.index] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = getattr(explainers[p.index], spec["method"])(**spec["params"])
        emap = M._map_array(result, f"The map of {name}")
        return emap, time.perf_counter() - t0

    def _metric_values(self, ctx: MetricContext) -> dict[str, Any]:
        """Every requested metric of one map, through the metric registry."""
        values: dict[str, Any] = {}
        for metric in self.metric_list:
            values.update(_metric_registry.get_metric(metric).compute(ctx))
        return values

    def _context(self, p: _Prepared, emap: np.ndarray, spec: Mapping[str, Any],
                 explain_many: Callable[[torch.Tensor, Sequence[int]], list[Any]] | None) -> MetricContext:
        """What the metrics see of one item's map (see :class:`~camwidgets.core.metric_registry.MetricContext`)."""
        model, factory, layers, norm_only = self.model, self.factory, self.layers, self.norm_only

        def explain_fn(masked: torch.Tensor, t: int) -> Any:
            ex = factory(model, masked, target=t, layers=layers, preprocess=norm_only)
            return getattr(ex, spec["method"])(**spec["params"])

        return MetricContext(model=model, pixels=p.geo, saliency_map=emap, target=p.target, preprocess=norm_only,
                         steps=self.steps, batch_size=self.batch_size, mask=p.mask, box=p.box,
                         explain_fn=explain_fn, params=self.params, logits=p.logits, other_mask=p.other_mask,
                         explain_many=explain_many)


class LocalExecutor:
    """Evaluate the items in this process, ``image_batch`` items at a time (the default executor).

    Each group of items with work left runs as a batch (:meth:`_Task.run_group`); each row
    is appended to the rows file the moment it is finished.
    """

    def run(self, task: _Task, dataset: Iterable[Any], done: Mapping[tuple[int, str], Any],
            on_row: Callable[[dict[str, Any]], None], bar: Any
            ) -> Iterator[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]:
        """``(index, new rows, errors)`` per dataset item, in dataset order."""
        def note(text: str) -> None:
            bar.set_postfix_str(text, refresh=False)

        waiting: list[tuple[int, Callable[[], Any], list[str]]] = []  # items in dataset order; empty todo: done

        def flush() -> Iterator[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]:
            work = [entry for entry in waiting if entry[2]]
            results = {index: (rows, errors) for index, rows, errors in
                       (task.run_group(work, on_row=on_row, note=note) if work else [])}
            for index, _, _ in waiting:
                yield index, *results.get(index, ([], []))
            waiting.clear()

        for index, load in _iterate(dataset):
            todo = task.todo(index, done)
            waiting.append((index, load, todo))
            if sum(1 for entry in waiting if entry[2]) >= task.image_batch or (not todo and len(waiting) == 1):
                yield from flush()
        yield from flush()


def _executor(executor: Any) -> Any:
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "ray":
        from .executors import RayExecutor

        return RayExecutor()
    if callable(getattr(executor, "run", None)):
        return executor
    raise ValueError(
        f"executor must be 'local', 'ray', or an executor object such as camwidgets.RayExecutor(workers=4), "
        f"got {executor!r}."
    )

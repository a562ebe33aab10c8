"""The metric registry: one entry per metric, read by :func:`camwidgets.evaluate`, the explorer and the docs.

An entry names the metric, the row columns it produces (each with a label and whether
higher or lower is better), whether it needs a ground-truth mask or box and whether it
runs the model, and the function that scores one map. Adding a metric is one function
and one :class:`Metric` entry in this file (and its tests); no other list of metric
names exists.

The compute functions share work through :class:`MetricContext`: Average Drop, Increase
in Confidence and ADCC use one masked forward pass (``ctx.shared("confidence", ...)``),
over-all reuses the insertion and deletion curves, ADCC and ARCC share coherency
(``ctx.shared("coherency", ...)``), ROAD and ARCC share the imputed images' pass.

A metric names the shared passes it reads (:attr:`Metric.shares`). :func:`prefetch`
computes those passes for many contexts at once (several images' maps scored by one
method), as batched forward passes, so :func:`camwidgets.evaluate` runs a batch of
images as a batch; each context then finds its value already shared.

>>> [m.name for m in list_metrics() if m.needs_ground_truth][:2]
['energy_pointing_game', 'pointing_game']
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from . import metrics as M
from . import road as _road_mod
from .preprocess import Preprocess

__all__ = ["METRICS", "PASS_COST", "SHARED_PASSES", "Column", "Metric", "MetricContext", "get_metric",
           "list_metrics", "prefetch"]

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Column:
    """One value a metric writes per image × method row.

    Attributes
    ----------
    name : str
        The row column (and CSV header).
    label : str
        Short display label, e.g. ``"AD %"``.
    direction : {"higher", "lower"} or None
        Which way is better (None: descriptive only, e.g. a complexity term).
    """

    name: str
    label: str
    direction: Direction | None

    @property
    def arrow(self) -> str:
        """``"↑"``, ``"↓"`` or ``""``."""
        return {"higher": "↑", "lower": "↓", None: ""}[self.direction]


@dataclass
class MetricContext:
    """What a metric's compute function sees for one image × method.

    Attributes
    ----------
    model : nn.Module
    pixels : Tensor (3, H, W)
        The preprocessed pixel image in ``[0, 1]``.
    saliency_map : ndarray (H, W)
        The method's map ``E`` in ``[0, 1]``.
    target : int
        The explained class.
    preprocess : Preprocess or None
        Normalisation only (the geometry is already applied to ``pixels``).
    steps, batch_size : int
        Insertion / deletion steps and images per forward pass.
    mask, box : ground truth or None
        Boolean ``(H, W)`` mask / inclusive ``(x0, y0, x1, y1)`` box at the map's resolution.
    explain_fn : callable or None
        ``explain_fn(masked_pixels, target) -> map``: the same method re-run (ADCC's coherency).
    params : mapping
        ``{metric name: {keyword: value}}``: each metric's own settings (e.g. insertion's ``blur``).
    logits : Tensor (1, num_classes) or None
        The unmasked image's logits, when the caller already ran that pass (the explainer's
        forward): Average Drop and Increase in Confidence then run only the masked image.
    other_mask : bool ndarray (H, W) or None
        The objects of the other classes in the image (their union), at the map's resolution;
        None for a single-class image (class-discriminativeness then has no value).
    explain_many : callable or None
        ``explain_many(masked_pixel_images (N, 3, H, W), targets) -> N maps``: the same
        method re-run on many masked images at once; :func:`prefetch` uses it for the
        coherency of a batch (``explain_fn`` stays the per-image way).
    """

    model: nn.Module
    pixels: torch.Tensor
    saliency_map: np.ndarray
    target: int
    preprocess: Preprocess | None = None
    steps: int = 224
    batch_size: int = 32
    mask: np.ndarray | None = None
    box: tuple[int, int, int, int] | None = None
    explain_fn: Callable[[torch.Tensor, int], Any] | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    other_mask: np.ndarray | None = None
    explain_many: Callable[[torch.Tensor, Sequence[int]], Sequence[Any]] | None = None
    _shared: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def shared(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """A value several metrics need (a forward pass, a curve), computed once per context."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    @property
    def truth(self) -> Any:
        """The mask if there is one, else the box, else None."""
        return self.mask if self.mask is not None else self.box


Values = dict[str, float | None]


@dataclass(frozen=True)
class Metric:
    """One metric of the registry.

    Attributes
    ----------
    name : str
        What :func:`camwidgets.evaluate` takes in ``metrics=``.
    label : str
        Display name.
    columns : tuple of Column
        The row columns it writes.
    needs_ground_truth : bool
        Scored against a mask or box (None where the item has none).
    needs_model : bool
        Runs the model (forward passes of masked images).
    compute : callable
        ``compute(ctx) -> {column: value}``; its settings are ``ctx.params[name]``.
    summary, reference : str
        One sentence, and the paper (title, authors, year, arXiv id, equation).
    in_explorer : bool
        Shown in the explorer's metrics table (its first column), computed live in the order
        of :attr:`cost`; a ground-truth metric shows a value only on an image that has one
        (a bundled sample, for a class present in it).
    default : bool
        Computed by :func:`camwidgets.evaluate` when ``metrics=`` is not given
        (:data:`camwidgets.core.evaluate.DEFAULT_METRICS`). False for the costly ones (ROAD,
        ARCC: one sparse solve per percentile, order and image), which run only when asked
        for by name, e.g. ``metrics=[..., "road"]``.
    shares : tuple of str
        The shared passes (:data:`SHARED_PASSES`) ``compute`` reads through ``ctx.shared``:
        what :func:`prefetch` runs batched for many images before ``compute`` is called.
    """

    name: str
    label: str
    columns: tuple[Column, ...]
    needs_ground_truth: bool
    needs_model: bool
    compute: Callable[..., Values]
    summary: str
    reference: str
    in_explorer: bool = False
    default: bool = True
    shares: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """The names of :attr:`columns`."""
        return tuple(c.name for c in self.columns)

    @property
    def cost(self) -> int:
        """How much model work one value costs, from what it runs: 0 none (map and ground truth
        only), else the dearest of its shared passes (:data:`PASS_COST`; 1 for a metric that runs
        the model through no shared pass). The explorer computes cheaper metrics first."""
        if not self.needs_model:
            return 0
        return max((PASS_COST[s] for s in self.shares), default=1)


# ----------------------------------------------------------------------------------------
# compute functions
# ----------------------------------------------------------------------------------------
def _shared_pass(ctx: MetricContext, key: str) -> Any:
    """The value of shared pass ``key`` for this context: computed once, as a batch of one
    (:data:`SHARED_PASSES`, the same code :func:`prefetch` runs for many contexts)."""
    def alone() -> Any:
        values = SHARED_PASSES[key]([ctx])
        assert values is not None  # None only declines a group of several
        return values[0]

    return ctx.shared(key, alone)


def _confidence(ctx: MetricContext) -> M.ConfidenceChange:
    return _shared_pass(ctx, "confidence")


def _average_drop(ctx: MetricContext) -> Values:
    cc = _confidence(ctx)
    return {"average_drop": float(M._ad(np.array([cc.original]), np.array([cc.masked]))[0])}


def _increase_in_confidence(ctx: MetricContext) -> Values:
    cc = _confidence(ctx)
    return {"increase_in_confidence": float(M._ic(np.array([cc.original]), np.array([cc.masked]))[0])}


def _curve(ctx: MetricContext, kind: str) -> float:
    return float(_shared_pass(ctx, kind).auc)


def _insertion(ctx: MetricContext) -> Values:
    return {"insertion": _curve(ctx, "insertion")}


def _deletion(ctx: MetricContext) -> Values:
    return {"deletion": _curve(ctx, "deletion")}


def _over_all(ctx: MetricContext) -> Values:
    """Insertion − deletion, each curve with its own metric's settings (shared with those metrics)."""
    ins, dele = _curve(ctx, "insertion"), _curve(ctx, "deletion")
    return {"over_all": float(M.over_all(ins, dele))}


def _coherency(ctx: MetricContext) -> float:
    """Coherency of the map, computed once for ADCC and ARCC."""
    if ctx.explain_fn is None and ctx.explain_many is None:
        raise ValueError("ADCC and ARCC re-run the method on the masked image: give an explain_fn.")
    return float(_shared_pass(ctx, "coherency"))


def _adcc(ctx: MetricContext) -> Values:
    coh = _coherency(ctx)
    ad = _average_drop(ctx)["average_drop"]
    cx = float(M.complexity(ctx.saliency_map))
    value = float(M._adcc_formula(np.array([coh]), np.array([cx]), np.array([ad]))[0])
    return {"adcc": value, "coherency": coh, "complexity": cx}


def _road_result(ctx: MetricContext, settings: Mapping[str, Any]) -> _road_mod.ROADCombinedResult:
    """ROAD's MoRF and LeRF passes, shared by every metric asking with the same settings."""
    key = ("road", repr(sorted((k, tuple(v) if isinstance(v, (list, np.ndarray)) else v)
                               for k, v in settings.items())))
    return ctx.shared(key, lambda: _road_mod.road_combined(
        ctx.model, ctx.pixels, ctx.saliency_map, ctx.target, ctx.preprocess,
        **{"batch_size": ctx.batch_size, "logits": ctx.logits, **settings}))


def _road(ctx: MetricContext) -> Values:
    res = _road_result(ctx, ctx.params.get("road", {}))
    return {"road_morf": float(res.morf.mean), "road_lerf": float(res.lerf.mean), "road": float(res.combined)}


def _arcc(ctx: MetricContext) -> Values:
    """ARCC with ROAD's settings (``metric_params["road"]``, overridden by ``["arcc"]``): one shared pass."""
    coh = _coherency(ctx)
    res = _road_result(ctx, {**ctx.params.get("road", {}), **ctx.params.get("arcc", {})})
    cx = float(M.complexity(ctx.saliency_map))
    return {"arcc": float(_road_mod.arcc_formula(coh, cx, float(res.combined)))}


def _against_truth(name: str) -> Callable[..., Values]:
    fn = getattr(M, name)

    def compute(ctx: MetricContext) -> Values:
        params = ctx.params.get(name, {})
        return {name: None if ctx.truth is None else float(fn(ctx.saliency_map, ctx.truth, **params))}

    compute.__name__ = f"_{name}"
    return compute


def _localisation(ctx: MetricContext) -> Values:
    if ctx.truth is None:
        return dict.fromkeys(("iou", "precision", "recall", "f1", "box_iou"))
    loc = M.localisation(ctx.saliency_map, ctx.truth, box=ctx.box, **ctx.params.get("localisation", {}))
    return {"iou": float(loc.iou), "precision": float(loc.precision), "recall": float(loc.recall),
            "f1": float(loc.f1), "box_iou": float(loc.box_iou)}


def _discrimination(ctx: MetricContext) -> Values:
    cols = ("discrimination", "energy_other", "pointing_other")
    if ctx.truth is None or ctx.other_mask is None:
        return dict.fromkeys(cols)
    res = M.class_discrimination(ctx.saliency_map, ctx.truth, ctx.other_mask)
    return {c: float(getattr(res, c)) for c in cols}


# ----------------------------------------------------------------------------------------
# the shared passes, batched over many contexts (prefetch)
# ----------------------------------------------------------------------------------------
def _stacked(group: Sequence[MetricContext]) -> tuple[torch.Tensor, np.ndarray, list[int], torch.Tensor | None]:
    """The group's pixel images, maps, classes and (when every context has them) unmasked logits."""
    pixels = torch.stack([c.pixels for c in group])
    maps = np.stack([np.asarray(c.saliency_map) for c in group])
    logits = None if any(c.logits is None for c in group) else torch.cat(
        [c.logits.detach().float().cpu().reshape(1, -1) for c in group])  # type: ignore[union-attr]
    return pixels, maps, [int(c.target) for c in group], logits


def _batched_confidence(group: Sequence[MetricContext]) -> list[Any]:
    c0 = group[0]
    pixels, maps, targets, logits = _stacked(group)
    cc = M.confidence_change(c0.model, pixels, maps, targets, c0.preprocess, batch_size=c0.batch_size,
                             logits=logits)
    y, o, t = np.asarray(cc.original), np.asarray(cc.masked), np.asarray(cc.target)
    return [M.ConfidenceChange(float(y[i]), float(o[i]), int(t[i])) for i in range(len(group))]


def _batched_curve(kind: str) -> Callable[[Sequence[MetricContext]], list[Any]]:
    def compute(group: Sequence[MetricContext]) -> list[Any]:
        c0 = group[0]
        fn = M.insertion if kind == "insertion" else M.deletion
        pixels, maps, targets, logits = _stacked(group)
        res = fn(c0.model, pixels, maps, targets, c0.preprocess,
                 **{"steps": c0.steps, "batch_size": c0.batch_size, "logits": logits, **c0.params.get(kind, {})})
        auc, t = np.asarray(res.auc), np.asarray(res.target)
        return [M.CurveResult(auc=float(auc[i]), curve=res.curve[i], fractions=res.fractions, target=int(t[i]),
                              kind=kind) for i in range(len(group))]

    return compute


def _batched_coherency(group: Sequence[MetricContext]) -> list[Any] | None:
    c0 = group[0]
    if c0.explain_many is None and len(group) > 1:
        return None  # each context's own explain_fn re-runs its map
    pixels, maps, targets, logits = _stacked(group)
    values = M.coherency(c0.model, pixels, maps, targets, c0.preprocess, batch_size=c0.batch_size,
                         logits=logits, explain_fn=c0.explain_fn, explain_many=c0.explain_many)
    return [float(v) for v in np.asarray(values)]


#: What each shared pass costs, in the explorer's order: one masked forward pass (1), a curve of
#: ``steps + 1`` passes (2), the method re-run on the masked image (3).
PASS_COST: Mapping[str, int] = {"confidence": 1, "insertion": 2, "deletion": 2, "coherency": 3}

#: The passes metrics share (:attr:`Metric.shares`), each with its batched computation over many
#: contexts: ``compute(contexts) -> one value per context`` (None: not possible for this group).
#: A context alone runs the same function on a group of one.
SHARED_PASSES: Mapping[str, Callable[[Sequence[MetricContext]], list[Any] | None]] = {
    "confidence": _batched_confidence,
    "insertion": _batched_curve("insertion"),
    "deletion": _batched_curve("deletion"),
    "coherency": _batched_coherency,
}


def prefetch(contexts: Sequence[MetricContext], metrics: Sequence[str]) -> None:
    """Run the shared passes of ``metrics`` for all ``contexts`` at once (batched forward passes).

    The contexts are one method's maps of several images, with the same model,
    preprocessing, steps, batch size and metric settings (what :func:`camwidgets.evaluate`
    builds); images of the same size run together. Each context's value is stored as if its
    own ``ctx.shared`` had computed it, so the metrics' ``compute`` functions then run no
    pass of their own for it; the values equal the per-image ones up to floating-point
    summation order. A context whose value is already there is left as it is. Coherency is
    batched only when the contexts have ``explain_many``.

    Raises whatever a pass raises (a bad map, a class out of range): the caller may then
    score each context alone, which names the image whose input failed.
    """
    wanted = list(dict.fromkeys(key for name in metrics for key in get_metric(name).shares))
    groups: dict[tuple[int, ...], list[MetricContext]] = {}
    for ctx in contexts:
        groups.setdefault(tuple(ctx.pixels.shape), []).append(ctx)
    for key in wanted:
        for group in groups.values():
            todo = [c for c in group if key not in c._shared]
            if len(todo) < 2:
                continue  # one image: its own compute runs the same pass
            values = SHARED_PASSES[key](todo)
            if values is None:
                continue
            for ctx, value in zip(todo, values, strict=True):
                ctx._shared[key] = value


# ----------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------
_RISE = ("Petsiuk et al., 'RISE: Randomized Input Sampling for Explanation of Black-box Models', BMVC 2018, "
         "arXiv:1806.07421 (insertion / deletion).")
_GRADCAMPP = ("Chattopadhay et al., 'Grad-CAM++', WACV 2018, arXiv:1710.11063 (Average Drop, Increase in "
              "Confidence).")
_POPPI = ("Poppi et al., 'Revisiting The Evaluation of Class Activation Mapping for Explainability: A Novel "
          "Metric and Experimental Analysis', CVPR-W 2021, arXiv:2104.10252.")
_ROAD = ("Rong et al., 'A Consistent and Efficient Evaluation Strategy for Attribution Methods', ICML 2022, "
         "arXiv:2202.00449.")
_ENTRIES: tuple[Metric, ...] = (
    Metric("average_drop", "Average Drop", (Column("average_drop", "AD %", "lower"),), False, True,
           _average_drop,
           "how much of the class probability is lost when only the map's evidence is kept: "
           "100 · max(0, y − o) / y.", _GRADCAMPP, in_explorer=True, shares=("confidence",)),
    Metric("increase_in_confidence", "Increase in Confidence",
           (Column("increase_in_confidence", "IC %", "higher"),), False, True,
           _increase_in_confidence,
           "whether the class probability rises when only the map's evidence is kept: 100 · 1[o > y] "
           "(also called Average Increase).", _GRADCAMPP, in_explorer=True, shares=("confidence",)),
    Metric("insertion", "Insertion AUC", (Column("insertion", "insertion", "higher"),), False, True, _insertion,
           "area under the class probability as pixels are revealed in the map's order from a blurred image.",
           _RISE, in_explorer=True, shares=("insertion",)),
    Metric("deletion", "Deletion AUC", (Column("deletion", "deletion", "lower"),), False, True, _deletion,
           "area under the class probability as pixels are removed in the map's order.", _RISE, in_explorer=True,
           shares=("deletion",)),
    Metric("over_all", "Over-all", (Column("over_all", "over-all", "higher"),), False, True, _over_all,
           "insertion AUC − deletion AUC.",
           "Zhang et al., 'Group-CAM', 2021, arXiv:2103.13859 (over-all score).", shares=("insertion", "deletion")),
    Metric("adcc", "ADCC", (Column("adcc", "ADCC", "higher"), Column("coherency", "coherency", "higher"),
                            Column("complexity", "complexity", "lower")), False, True,
           _adcc,
           "harmonic mean of coherency (the method's map of the masked image matches), 1 − complexity and "
           "1 − AD.",
           _POPPI, in_explorer=True, shares=("confidence", "coherency")),
    Metric("road", "ROAD", (Column("road_morf", "ROAD MoRF", "lower"), Column("road_lerf", "ROAD LeRF", "higher"),
                            Column("road", "ROAD", "higher")), False, True, _road,
           "class probability after removing 10 %, 20 %, …, 90 % of the pixels, most (MoRF) or least (LeRF) "
           "relevant first, filled by noisy linear imputation (each removed pixel the weighted mean of its 8 "
           "neighbours, plus noise of std 0.01), averaged over the percentiles; ROAD = (LeRF − MoRF) / 2, in "
           "[-0.5, 0.5], as pytorch-grad-cam's ROADCombined. Not computed by default (metrics=[..., 'road']).",
           _ROAD, default=False),
    Metric("arcc", "ARCC", (Column("arcc", "ARCC", "higher"),), False, True, _arcc,
           "harmonic mean of coherency, 1 − complexity and clip(2 · ROAD, 0, 1) (pytorch-grad-cam's ARCC); "
           "not comparable with ADCC, whose third term is 1 − AD. Not computed by default.",
           "'How to Evaluate and Refine your CAM', 2026, arXiv:2605.14641 (ARCC), as pytorch-grad-cam 1.5 "
           "implements it; ROAD: " + _ROAD, default=False, shares=("coherency",)),
    Metric("energy_pointing_game", "Energy pointing game", (Column("energy_pointing_game", "energy PG", "higher"),),
           True, False, _against_truth("energy_pointing_game"),
           "share of the map's energy inside the ground truth.",
           "Wang et al., 'Score-CAM', CVPR-W 2020, arXiv:1910.01279 (energy-based pointing game).",
           in_explorer=True),
    Metric("pointing_game", "Pointing game", (Column("pointing_game", "PG hit", "higher"),), True, False,
           _against_truth("pointing_game"), "whether the map's maximum lies inside the ground truth.",
           "Zhang et al., 'Top-down Neural Attention by Excitation Backprop', ECCV 2016, arXiv:1608.00507."),
    Metric("saliency_score", "Saliency score", (Column("saliency_score", "saliency", "higher"),), True, False,
           _against_truth("saliency_score"), "the map's mass inside the ground truth over its total (I-CAM eq. 32).",
           "Singh et al., 'Integrative CAM', 2024, arXiv:2412.01354, eq. 32."),
    Metric("localisation", "Localisation",
           (Column("iou", "IoU", "higher"), Column("precision", "precision", "higher"),
            Column("recall", "recall", "higher"), Column("f1", "F1", "higher"),
            Column("box_iou", "box IoU", "higher")), True, False, _localisation,
           "IoU, precision, recall and F1 of the thresholded map against the mask; IoU of the largest "
           "component's box against the ground-truth box.",
           "Zhou et al., 'Learning Deep Features for Discriminative Localization', CVPR 2016, arXiv:1512.04150 "
           "(box localisation)."),
    Metric("discrimination", "Class discrimination",
           (Column("discrimination", "discrim.", "higher"), Column("energy_other", "energy other", "lower"),
            Column("pointing_other", "PG other", "lower")), True, False, _discrimination,
           "on an image with objects of several classes: the map's energy inside the explained class's object "
           "minus its energy inside the other objects (in [-1, 1]), and whether its maximum lies on another "
           "object; no value for single-class images.",
           "Selvaraju et al., 'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
           "Localization', ICCV 2017, arXiv:1610.02391 (class-discriminative maps).", in_explorer=True),
)

#: Every registered metric by name, in the order rows and tables list them.
METRICS: Mapping[str, Metric] = {m.name: m for m in _ENTRIES}


def list_metrics() -> tuple[Metric, ...]:
    """The registered metrics, in order."""
    return tuple(METRICS.values())


def get_metric(name: str) -> Metric:
    """The registry entry of ``name``; a ValueError listing the metrics otherwise."""
    if isinstance(name, str) and name in METRICS:
        return METRICS[name]
    raise ValueError(f"Unknown metric {name!r}; choose from {', '.join(METRICS)}.")

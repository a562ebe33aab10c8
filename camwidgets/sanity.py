"""Sanity checks for saliency maps: does the map depend on the model's parameters, and on the class?

Two tests (docs/sanity.md explains how to read them):

* :func:`parameter_randomisation`: the model-parameter randomisation test of Adebayo et al.,
  "Sanity Checks for Saliency Maps", NeurIPS 2018, arXiv:1810.03292. The layers of a deep copy of
  the model are re-initialised from the top (logits) down, cumulatively (``"cascading"``) or one at
  a time (``"independent"``); after each step every method's map is compared with the map of the
  trained model. A map that stays similar while the weights it should explain are destroyed does
  not explain the model.
* :func:`random_logit`: the random-logit test of Sixt et al., "When Explanations Lie: Why Many
  Modified BP Attributions Fail", ICML 2020, arXiv:1912.09818. The map of the explained class is
  compared with the maps of randomly drawn other classes; a map that does not depend on the class
  scores high.

Similarity measures (every camwidgets map lies in ``[0, 1]``, see :class:`~camwidgets.core.results.CAMResult`):

``spearman_abs``
    Spearman rank correlation of the absolute values of the two maps' pixels (the paper's measure),
    in ``[-1, 1]``.
``ssim``
    scikit-image's ``structural_similarity`` of the two ``(H, W)`` maps with ``data_range=1``
    (default 7x7 window), in ``[-1, 1]``.
``spearman``
    Spearman rank correlation without the absolute value, in ``[-1, 1]``. camwidgets maps are
    non-negative, so it equals ``spearman_abs`` for every registered method; it is reported for
    parity with the paper's signed variant and for maps that carry a sign.

Two maps that are equal give exactly 1 for every measure. A Spearman correlation with a constant
map (e.g. an all-zero Grad-CAM of a randomised network) is undefined and reported as ``nan``.

This module is part of the compute core's import rule: torch, numpy and scikit-image (and scipy,
which scikit-image depends on) only, no plotly or ipywidgets; :mod:`camwidgets.viz.sanity` draws
the results.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .core.image import ImageLike
from .core.preprocess import PreprocessLike

__all__ = [
    "MEASURES",
    "RandomLogitResult",
    "SanityResult",
    "default_layers",
    "default_methods",
    "parameter_randomisation",
    "random_logit",
    "reinitialise",
    "similarity",
]

#: The similarity measures computed by both tests, in the order of the table's columns.
MEASURES: tuple[str, ...] = ("spearman_abs", "ssim", "spearman")

MethodsLike = Sequence[str] | Mapping[str, Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------- similarity

def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import rankdata  # scikit-image's dependency; imported only when a test runs

    ra = rankdata(a.ravel()).astype(np.float64)
    rb = rankdata(b.ravel()).astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denom == 0.0:  # a constant map: the rank correlation is undefined
        return math.nan
    return float(np.clip((ra @ rb) / denom, -1.0, 1.0))


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The three :data:`MEASURES` of two maps ``(H, W)`` of the same shape.

    Equal maps give exactly 1.0 for each (also a constant map with itself); otherwise a Spearman
    correlation with a constant map is ``nan``.
    """
    from skimage.metrics import structural_similarity

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"similarity needs two maps (H, W) of the same shape, got {a.shape} and {b.shape}.")
    if np.array_equal(a, b):
        return dict.fromkeys(MEASURES, 1.0)
    return {
        "spearman_abs": _spearman(np.abs(a), np.abs(b)),
        "ssim": float(structural_similarity(a, b, data_range=1.0)),
        "spearman": _spearman(a, b),
    }


# ---------------------------------------------------------------------------------------------- layers

def default_layers(model: nn.Module) -> list[str]:
    """The layers :func:`parameter_randomisation` re-initialises when ``layers=None``, top first.

    Every submodule that owns parameters directly (``parameters(recurse=False)``: convolutions,
    linear layers, affine norms, ...), by dotted name, in the reverse of ``model.named_modules()``
    order (registration order, which is the forward order of torchvision-style models). The root
    module itself is left out (pass ``layers=`` to name modules explicitly).
    """
    return [name for name, m in model.named_modules()
            if name and next(m.parameters(recurse=False), None) is not None][::-1]


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module``'s own parameters in place, reproducibly from ``seed``.

    Under ``torch.manual_seed(seed)`` (inside :func:`torch.random.fork_rng`, so the caller's global
    random state is left as it was): ``module.reset_parameters()`` where the module has it (PyTorch's
    own initialisation: Kaiming-uniform weights for convolutions and linear layers, ones and zeros
    and reset running statistics for batch norms); otherwise every parameter the module owns
    directly is drawn from ``N(0, 1 / fan_in)`` (``fan_in`` = elements per output row for tensors
    of 2 or more dimensions, else the number of elements).
    """
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for p in module.parameters(recurse=False):
            fan_in = p[0].numel() if p.dim() >= 2 else p.numel()
            p.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)))


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        names = default_layers(model)
        if not names:
            raise ValueError("The model has no submodule with parameters to randomise; pass layers=[...].")
        return names
    if isinstance(layers, str):
        raise ValueError(f"layers must be a list of dotted module names, got the string {layers!r}.")
    names = list(layers)
    if not names:
        raise ValueError("layers is empty; pass None for every parameterised module or at least one name.")
    known = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str) or name not in known:
            raise ValueError(f"Unknown layer {name!r}; some of the model's parameterised modules: "
                             f"{', '.join(default_layers(model)[:8])}.")
        m = known[name]
        if not callable(getattr(m, "reset_parameters", None)) and next(m.parameters(recurse=False), None) is None:
            raise ValueError(f"Layer {name!r} ({type(m).__name__}) has neither parameters nor reset_parameters().")
    if len(set(names)) != len(names):
        raise ValueError(f"layers names a module twice: {names}.")
    return names


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy taken while no camwidgets pass of another thread has hooks on the model (the
    explorer's workers): a copy taken meanwhile would carry those transient hooks."""
    from .core._hooks import model_lock

    with model_lock(model):
        return copy.deepcopy(model)


def default_methods() -> tuple[str, ...]:
    """The methods tested when none are given: the registry's gradient-family methods that
    :func:`camwidgets.evaluate` runs by default (Grad-CAM, Grad-CAM++ and LayerCAM today): one
    capture per step each, seconds for a whole cascade of the demo model."""
    from .core.methods import methods as registered

    return tuple(m.name for m in registered() if m.family == "gradient" and m.in_evaluate)


def _methods(methods: MethodsLike | None) -> dict[str, dict[str, Any]]:
    if methods is None:
        methods = default_methods()
    if isinstance(methods, str):
        methods = (methods,)
    if isinstance(methods, Mapping):
        out = {str(k): dict(v) for k, v in methods.items()}
    else:
        out = {str(m): {} for m in methods}
    if not out:
        raise ValueError("methods is empty.")
    from .core.methods import get

    for name in out:
        get(name)  # an unknown method raises here, with the valid names, before any model work
    return out


def _map(model: nn.Module, image: ImageLike, target: int | None, preprocess: PreprocessLike,
         methods: Mapping[str, Mapping[str, Any]]) -> tuple[int, dict[str, np.ndarray]]:
    from .core.explainer import Explainer

    exp = Explainer(model, image, target=target, preprocess=preprocess)
    maps = {m: np.array(exp.explain(m, **params).map, dtype=np.float64) for m, params in methods.items()}
    return exp.target, maps


# ---------------------------------------------------------------------------------------------- results

@dataclass(frozen=True)
class SanityResult:
    """Result of :func:`parameter_randomisation`.

    Attributes
    ----------
    mode : "cascading" or "independent"
    target : int
        The explained class (the original model's prediction unless given).
    layers : tuple of str
        The re-initialised layers, in the order of the steps (top first).
    methods : tuple of str
    similarity : dict method -> dict measure -> ndarray (len(layers) + 1,)
        Entry ``[0]`` is step 0 (nothing randomised: exactly 1); entry ``[i]`` the map after step
        ``i``: layers ``1..i`` re-initialised (cascading) or only layer ``i`` (independent).
    original : dict method -> ndarray (H, W)
        The trained model's maps.
    seed : int
        Step ``i`` re-initialised its layer under ``torch.manual_seed(seed + i)``.
    """

    mode: str
    target: int
    layers: tuple[str, ...]
    methods: tuple[str, ...]
    similarity: dict[str, dict[str, np.ndarray]]
    original: dict[str, np.ndarray] = field(repr=False)
    seed: int = 0

    @property
    def steps(self) -> tuple[str, ...]:
        """Step labels: ``"original"``, then the layer re-initialised at each step."""
        return ("original", *self.layers)

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (method, step): ``method``, ``step``, ``layer``, and one column per measure."""
        rows = []
        for m in self.methods:
            for i, layer in enumerate(self.steps):
                row: dict[str, Any] = {"method": m, "step": i, "layer": layer}
                row.update({k: float(self.similarity[m][k][i]) for k in MEASURES})
                rows.append(row)
        return rows


@dataclass(frozen=True)
class RandomLogitResult:
    """Result of :func:`random_logit`.

    Attributes
    ----------
    target : int
        The explained class.
    classes : ndarray (n,) int
        The other classes drawn (distinct, without the target), in the order drawn.
    methods : tuple of str
    similarity : dict method -> dict measure -> ndarray (n,)
        The similarity of the target's map with each drawn class's map, every value in ``[-1, 1]``
        (``nan`` for a Spearman correlation with a constant map).
    original : dict method -> ndarray (H, W)
        The target's maps.
    seed : int
    """

    target: int
    classes: np.ndarray
    methods: tuple[str, ...]
    similarity: dict[str, dict[str, np.ndarray]]
    original: dict[str, np.ndarray] = field(repr=False)
    seed: int = 0

    def mean(self) -> dict[str, dict[str, float]]:
        """The similarity averaged over the drawn classes (``nan`` entries left out)."""
        return {m: {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in d.items()}
                for m, d in self.similarity.items()}

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (method, drawn class): ``method``, ``target``, ``class``, and one column per measure."""
        rows = []
        for m in self.methods:
            for j, c in enumerate(self.classes):
                row: dict[str, Any] = {"method": m, "target": self.target, "class": int(c)}
                row.update({k: float(self.similarity[m][k][j]) for k in MEASURES})
                rows.append(row)
        return rows


# ---------------------------------------------------------------------------------------------- the tests

def parameter_randomisation(
    model: nn.Module,
    image: ImageLike,
    methods: MethodsLike | None = None,
    preprocess: PreprocessLike = None,
    target: int | None = None,
    mode: Literal["cascading", "independent"] = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    callback: Callable[[int, str, nn.Module], None] | None = None,
) -> SanityResult:
    """Model-parameter randomisation test (Adebayo et al., 2018, arXiv:1810.03292).

    Parameters
    ----------
    model : torch.nn.Module
        The classifier. It is never changed: the test runs on ``copy.deepcopy(model)``.
    image : image-like
        One image (as :class:`~camwidgets.core.explainer.Explainer` takes it).
    methods : sequence of str, or mapping name -> parameters, optional
        camwidgets methods (``camwidgets.methods()``), with default parameters or the given ones;
        None: :func:`default_methods`.
    preprocess : Preprocess or None
        Passed to :class:`~camwidgets.core.explainer.Explainer`.
    target : int or None
        The class explained at every step; None: the class the original model predicts.
    mode : "cascading" or "independent"
        Cascading: step ``i`` re-initialises layer ``i`` on top of steps ``1..i-1`` (the paper's
        cascading randomisation). Independent: the copy is restored to the trained parameters
        (and buffers) before each step, so step ``i`` differs from the model in layer ``i`` only.
    layers : sequence of str or None
        Dotted module names in the order to randomise them (first = step 1). None:
        :func:`default_layers` (every module with parameters of its own, top down).
    seed : int
        Step ``i`` (1-based) re-initialises its layer with :func:`reinitialise` under
        ``torch.manual_seed(seed + i)``; the global random state is restored afterwards.
    callback : callable or None
        Called as ``callback(i, layer, model_copy)`` after step ``i``'s re-initialisation and
        before its maps (for inspection; it must not change the copy).

    Returns
    -------
    SanityResult

    Notes
    -----
    Cost: one :class:`~camwidgets.core.explainer.Explainer` (a forward and a partial backward
    pass) plus each method's own passes, for the original and after each of the ``len(layers)``
    steps. The gradient CAMs of the default ``methods`` need nothing beyond the explainer's
    capture (about 6 s for the demo model's 41 layers on one thread of a shared CPU); a region method such
    as ``"scorecam"`` adds ``K`` masked forwards per step (about 40 s in all for the demo model).
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}.")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    spec = _methods(methods)
    names = _resolve_layers(model, layers)

    work = _copy(model)
    trained = {k: v.detach().clone() for k, v in work.state_dict().items()} if mode == "independent" else None
    tgt, original = _map(work, image, target, preprocess, spec)

    sims: dict[str, dict[str, list[float]]] = {m: {k: [1.0] for k in MEASURES} for m in spec}
    for i, name in enumerate(names, start=1):
        if trained is not None and i > 1:
            work.load_state_dict(trained)
        reinitialise(work.get_submodule(name), seed + i)
        if callback is not None:
            callback(i, name, work)
        _, maps = _map(work, image, tgt, preprocess, spec)
        for m in spec:
            for k, v in similarity(original[m], maps[m]).items():
                sims[m][k].append(v)
    return SanityResult(
        mode=mode, target=tgt, layers=tuple(names), methods=tuple(spec),
        similarity={m: {k: np.asarray(v, dtype=np.float64) for k, v in d.items()} for m, d in sims.items()},
        original=original, seed=seed,
    )


def random_logit(
    model: nn.Module,
    image: ImageLike,
    methods: MethodsLike | None = None,
    preprocess: PreprocessLike = None,
    target: int | None = None,
    n: int = 5,
    seed: int = 0,
) -> RandomLogitResult:
    """Random-logit test (Sixt et al., 2020, arXiv:1912.09818).

    The map of ``target`` (default: the predicted class) is compared with the maps of ``n`` other
    classes drawn without replacement, uniformly among all classes but the target, by
    ``numpy.random.default_rng(seed).choice``; ``n`` is capped at ``num_classes - 1``. The model is
    not changed (the explainer never modifies it). High similarity means the map does not depend
    on the class.

    Returns
    -------
    RandomLogitResult
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    spec = _methods(methods)
    from .core.explainer import Explainer

    exp = Explainer(model, image, target=target, preprocess=preprocess)
    tgt = exp.target
    original = {m: np.array(exp.explain(m, **p).map, dtype=np.float64) for m, p in spec.items()}
    num_classes = int(exp.logits.shape[-1])
    if num_classes < 2:
        raise ValueError("The random-logit test needs a model with at least two classes.")
    others = np.array([c for c in range(num_classes) if c != tgt], dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes = rng.choice(others, size=min(n, len(others)), replace=False)

    sims: dict[str, dict[str, list[float]]] = {m: {k: [] for k in MEASURES} for m in spec}
    for c in classes:
        _, maps = _map(model, image, int(c), preprocess, spec)
        for m in spec:
            for k, v in similarity(original[m], maps[m]).items():
                sims[m][k].append(v)
    return RandomLogitResult(
        target=tgt, classes=classes.astype(np.int64), methods=tuple(spec),
        similarity={m: {k: np.asarray(v, dtype=np.float64) for k, v in d.items()} for m, d in sims.items()},
        original=original, seed=seed,
    )

"""The explorer's controller: image → explainer → results → metrics, with no widget in it.

:class:`ExplorerController` holds the explorer's parameters as traits (α, T, θ, the bias,
n, the class, the methods shown), the explainers it built (one per image and class, in a
small LRU), the results of the last update, their metrics, and two workers on which the
computations run: one computation at a time each, the latest request wins
(:class:`~camwidgets.widgets._runner.LatestRunner`). It knows nothing of ipywidgets or
Plotly: it tells its listeners *that* something changed (:meth:`subscribe`), and the view
(:class:`~camwidgets.widgets.CAMExplorer`) reads what it needs and redraws. Scripts and
tests drive it directly::

    ctrl = ExplorerController(background=False)   # the demo model and a bundled sample
    ctrl.start()
    ctrl.threshold = 0.7                            # re-selects I-CAM's layers (no model pass)
    ctrl.results["icam"].kept_layers

Events a listener receives (one string each, on the worker's thread): ``"image"`` (a new
image and its class options), ``"map"`` (one method's result arrived: ``results`` grows
while an update runs), ``"maps"`` (every shown method's result is in), ``"metrics"`` (the
metric rows changed), ``"curves"`` (the insertion / deletion curves changed), ``"status"``.
"""

from __future__ import annotations

import atexit
import html
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from weakref import WeakKeyDictionary, WeakSet

import numpy as np
import torch
from traitlets import Enum, Float, HasTraits, Int, List, TraitError, Unicode, observe, validate

from ..core import Cancelled, cancel_when
from ..core import methods as _registry
from ..core import metric_registry as _metric_registry
from ..core import metrics as M
from ..core.explainer import Explainer
from ..core.image import load_image
from ..core.preprocess import Preprocess, PreprocessLike, as_preprocess
from ..datasets.samples import list_samples, load_sample
from ._runner import LatestRunner

__all__ = ["CURVE_STEPS", "DEFAULT_METHODS", "EXPLORER_METRICS", "FAST_ABOVE_CHANNELS", "LARGE_MODEL_CURVE_STEPS",
           "METHOD_LABELS", "METRIC_COLUMN", "METRIC_COLUMNS", "ExplorerController"]

#: The bundled sample the explorer opens on with the demo model: two objects of two classes, so
#: that moving the class dropdown from one to the other moves the maps from one object to the other.
DEMO_IMAGE = "pair-crescent-triangle"

#: Display names of the methods, from the method registry (registry order).
METHOD_LABELS: dict[str, str] = {m.name: m.label for m in _registry.methods()}
#: Methods shown when none are given: the registry's entries marked ``in_explorer``.
DEFAULT_METHODS: tuple[str, ...] = tuple(m.name for m in _registry.methods() if m.in_explorer)
#: Parameters every method that has them shares with the explorer's own controls (trait name).
SHARED_PARAMS = {"alpha": "alpha", "threshold": "threshold", "theta": "theta", "bias": "bias", "n": "n_perturbations"}
#: Explainers kept (one per image and class): going back to a recent image or class costs no pass.
EXPLAINER_CACHE = 4
#: Above this many channels at the default layer, a parameter whose default runs one forward pass
#: per channel (Score-CAM as a region map) takes its registry's fast default, unless the user set it.
FAST_ABOVE_CHANNELS = 512
#: Steps of the live insertion / deletion curves (each step is one forward pass per curve), on a
#: small model and on a large one (more than FAST_ABOVE_CHANNELS channels at the default layer).
CURVE_STEPS, LARGE_MODEL_CURVE_STEPS = 50, 16
#: The metrics of the live table: the registry's entries marked ``in_explorer`` (registry order).
EXPLORER_METRICS: tuple[_metric_registry.Metric, ...] = tuple(
    m for m in _metric_registry.list_metrics() if m.in_explorer)
#: Columns of the live metrics table: each metric's first column, its label and which way is better.
METRIC_COLUMNS: tuple[str, ...] = tuple(f"{m.columns[0].label} {m.columns[0].arrow}".strip()
                                        for m in EXPLORER_METRICS)
#: The column of each metric in the table (and in ``metric_values``): metric name -> column.
METRIC_COLUMN: dict[str, str] = dict(zip((m.name for m in EXPLORER_METRICS), METRIC_COLUMNS, strict=True))
#: What the status line calls the time of each cost class of metrics (Metric.cost).
_COST_TIMINGS = {0: "ground truth", 1: "metrics", 2: "curves", 3: "adcc"}
#: Seconds close() waits for a running computation to stop (it stops at the core's next checkpoint).
CLOSE_TIMEOUT = 30.0

# Every controller not yet closed. At interpreter exit they are closed (their workers stopped at
# the core's next checkpoint) before Python tears down: a worker thread still inside a torch
# operation then would abort the process ("terminate called without an active exception").
_LIVE: WeakSet[ExplorerController] = WeakSet()


@atexit.register
def _close_all() -> None:
    for controller in list(_LIVE):
        controller.close()


def _default_layer_channels(model: torch.nn.Module) -> tuple[int | None, str | None]:
    """Channels of the model's default layer (the last candidate): those of the last conv or norm
    registered up to the end of that layer (the layer itself may be an activation after them).

    No forward pass: a cost estimate for choosing fast defaults, (None, None) when unknown.
    """
    from ..core.layers import candidate_layers, unwrap_model

    try:
        name = candidate_layers(model)[-1]
    except (ValueError, IndexError):
        return None, None
    channels, inside = None, False
    for sub_name, sub in unwrap_model(model).named_modules():
        within = sub_name == name or sub_name.startswith(name + ".")
        if inside and not within:
            break
        inside = inside or within
        if isinstance(sub, torch.nn.modules.conv._ConvNd):
            channels = int(sub.out_channels)
        elif isinstance(sub, torch.nn.modules.batchnorm._NormBase):
            channels = int(sub.num_features)
        elif isinstance(sub, torch.nn.LayerNorm):  # a transformer's tokens (the channels are last)
            channels = int(sub.normalized_shape[-1])
        elif isinstance(sub, torch.nn.Linear):
            channels = int(sub.out_features)
    return channels, name


class ExplorerController(HasTraits):
    """What the explorer computes and shows, without widgets (see the module docstring).

    Parameters are those of :class:`~camwidgets.widgets.CAMExplorer` (model, image, target,
    methods, preprocess, class_names, metrics, curves, curve_steps, background, the slider
    values, method_params); ``start`` (default True) makes the first request at once, False
    waits for :meth:`start` (the view subscribes first).

    Attributes
    ----------
    results : dict str -> result
        The core's result object for each shown method (the last update).
    metric_values : dict str -> {column: value or None}
        The metrics of those results (None: not computed yet).
    curves : dict str -> {"insertion": (fractions, values), "deletion": (...)}
    timings : dict
        Seconds the last update took: ``"maps"``, ``"metrics"`` (AD and IC), ``"curves"``, ``"adcc"``.
    status, progress, level
        The status line's HTML, the progress (0-1) and its style ("info", "success", "danger").
    image, image_key, image_label
        The image shown (``(3, H, W)`` in [0, 1], as the explainer sees it), its cache key and name.
    target_options : list of (label, class or None)
        The class choices for the shown image: "predicted", the top 5, then every class.
    """

    alpha = Float(0.4, help="I-CAM perturbation strength α in [0, 1]")
    threshold = Float(0.95, help="I-CAM layer threshold T in [0.5, 1]")
    theta = Float(10.0, help="Fusion-CAM / UnionCAM denoise percentile θ in [0, 50]")
    bias = Enum(("channel", "spatial", "none"), default_value="channel", help="I-CAM bias")
    n_perturbations = Int(8, help="number of I-CAM perturbations (1-32)")
    target = Int(None, allow_none=True, help="explained class; None = the predicted class")
    methods = List(Unicode(), help="methods shown")
    message = Unicode("", help="the last error shown in the status line ('' if none)")

    def __init__(self, model: torch.nn.Module | None = None, image: Any = None, target: int | None = None,
                 methods: Sequence[str] | None = None, *, preprocess: PreprocessLike = None,
                 class_names: Sequence[str] | None = None, metrics: bool = True, curves: bool = True,
                 curve_steps: int | None = None, background: bool = True, alpha: float = 0.4,
                 threshold: float = 0.95, theta: float = 10.0, bias: str = "channel",
                 n_perturbations: int = 8, method_params: Mapping[str, Mapping[str, Any]] | None = None,
                 start: bool = True) -> None:
        self._closed = False
        self._started = False
        super().__init__()
        _LIVE.add(self)
        if model is None:
            from ..models.demo import load_demo_model

            model, demo_pre, demo_names = load_demo_model()
            preprocess = preprocess or demo_pre
            class_names = class_names or demo_names
            image = DEMO_IMAGE if image is None else image
        elif image is None:
            image = "chelsea"
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
        self.model = model
        self.preprocess = as_preprocess(preprocess)
        # Every method's own parameters (not the shared sliders), checked against the registry now.
        self.method_params: dict[str, dict[str, Any]] = {}
        for name, values in (method_params or {}).items():
            spec = _registry.get(name)
            shared = [k for k in values if k in SHARED_PARAMS]
            if shared:
                raise ValueError(f"method_params[{name!r}]: {shared} are the explorer's shared controls; pass "
                                 f"them as CAMExplorer({', '.join(f'{SHARED_PARAMS[k]}=...' for k in shared)}).")
            spec.resolve(values)  # unknown names or values out of range: a ValueError now
            self.method_params[name] = dict(values)
        #: {(method, parameter): value} chosen instead of the registry default (a large model).
        self.auto_params: dict[tuple[str, str], Any] = {}
        self.channels, self.auto_layer = _default_layer_channels(model)
        self.large = self.channels is not None and self.channels > FAST_ABOVE_CHANNELS
        if self.large:
            for spec in _registry.methods():
                for prm in spec.params:
                    if prm.fast_default is not None and prm.name not in self.method_params.get(spec.name, {}):
                        self.method_params.setdefault(spec.name, {})[prm.name] = prm.fast_default
                        self.auto_params[(spec.name, prm.name)] = prm.fast_default
        self.class_names = list(class_names) if class_names is not None else None
        if curve_steps is None:
            curve_steps = LARGE_MODEL_CURVE_STEPS if self.large else CURVE_STEPS
        if int(curve_steps) < 1:
            raise ValueError(f"curve_steps must be a positive integer, got {curve_steps!r}.")
        self.compute_metrics, self.compute_curves, self.curve_steps = metrics, curves, int(curve_steps)

        self.results: dict[str, Any] = {}
        self.metric_values: dict[str, dict[str, float | None]] = {}
        self.curves: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        #: Updates whose maps were all shown.
        self.map_updates = 0
        self.status, self.progress, self.level = "", 0.0, "info"
        self.target_options: list[tuple[str, int | None]] = [("predicted class", None)]
        self._listeners: list[Callable[[str], None]] = []
        self._metrics_cache: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()
        self._explainers: OrderedDict[Hashable, Explainer] = OrderedDict()
        self._runner = LatestRunner(on_error=self.show_error, background=background)
        # Metrics run on their own worker so that maps never wait for them.
        self._metrics_runner = LatestRunner(on_error=self.show_error, background=background)
        # Map requests made so far: the metrics of an update are stale once a newer request exists.
        self._generation = 0
        self._last_icam: Any = None
        #: The model-parameter randomisation test of the shown image and class (run_sanity), or None.
        self.sanity: Any = None
        self._sanity_key: Hashable | None = None
        self._sanity_runner = LatestRunner(on_error=self.show_error, background=background)

        # The image first: a bad one fails here, before any work.
        img, key, self.image_label = self._load(image)
        # (image, cache key) in one attribute: the worker must never pair one's image with another's key.
        self._current: tuple[torch.Tensor, Hashable] = (img, key)
        self.image: torch.Tensor = img
        self.image_key: Hashable | None = None
        with self.hold_trait_notifications():
            self.alpha, self.threshold, self.theta = alpha, threshold, theta
            self.bias, self.n_perturbations, self.target = bias, n_perturbations, target
            self.methods = list(methods) if methods is not None else list(DEFAULT_METHODS)
        if start:
            self.start()

    # -- validation -----------------------------------------------------------------------
    @validate("alpha")
    def _v_alpha(self, p: dict[str, Any]) -> float:
        return min(1.0, max(0.0, float(p["value"])))

    @validate("threshold")
    def _v_threshold(self, p: dict[str, Any]) -> float:
        return min(1.0, max(0.5, float(p["value"])))

    @validate("theta")
    def _v_theta(self, p: dict[str, Any]) -> float:
        return min(50.0, max(0.0, float(p["value"])))

    @validate("n_perturbations")
    def _v_n(self, p: dict[str, Any]) -> int:
        return min(32, max(1, int(p["value"])))

    @validate("methods")
    def _v_methods(self, p: dict[str, Any]) -> list[str]:
        unknown = [m for m in p["value"] if m not in METHOD_LABELS]
        if unknown:
            raise TraitError(f"Unknown method(s) {unknown}; choose from {list(METHOD_LABELS)}.")
        return list(dict.fromkeys(p["value"]))

    @validate("target")
    def _v_target(self, p: dict[str, Any]) -> int | None:
        t = p["value"]
        n = self.num_classes()
        if t is not None and n is not None and not 0 <= int(t) < n:
            raise TraitError(f"Target class {t} is out of range: the model has {n} classes (0-{n - 1}).")
        return t

    def num_classes(self) -> int | None:
        """The model's number of classes (from the class names, else the last explainer), or None."""
        if self.class_names is not None:
            return len(self.class_names)
        exp = next(reversed(self._explainers.values()), None) if getattr(self, "_explainers", None) else None
        return None if exp is None else int(exp.probabilities.shape[-1])

    # -- listeners --------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(event)`` on every event (see the module docstring); on the worker's thread."""
        self._listeners.append(listener)

    def _emit(self, event: str) -> None:
        for listener in list(self._listeners):
            listener(event)

    # -- requests ---------------------------------------------------------------------------
    def start(self) -> None:
        """Make the first request (once); later ones follow every parameter change."""
        if not self._started and not self._closed:
            self._started = True
            self.request()

    @observe("alpha", "threshold", "theta", "bias", "n_perturbations", "target", "methods")
    def _on_param(self, change: dict[str, Any]) -> None:
        if self._started:
            self.request()

    def set_method_param(self, method: str, name: str, value: Any) -> None:
        """Set one of ``method``'s own parameters (checked against its registry entry) and recompute."""
        if name in SHARED_PARAMS:
            raise ValueError(f"{name!r} is one of the explorer's shared controls: set ``{SHARED_PARAMS[name]}``.")
        values = {**self.method_params.get(method, {}), name: value}
        _registry.get(method).resolve(values)
        self.method_params[method] = values
        if self._started:
            self.request()

    def request(self) -> None:
        """Recompute for the current parameters (on the map worker; a waiting request is replaced)."""
        if self._closed:
            return
        self._set_status(self.status, 0.05, "info")
        self._generation += 1
        self._runner.submit(self._run_update)

    def set_image(self, image: Any, label: str | None = None) -> bool:
        """Show a new image (sample name, path, bytes, PIL, array or tensor); the class goes back
        to the predicted one.

        A bad image shows its error in the status line and leaves everything as it was; returns
        whether the image was accepted (a closed controller accepts none).
        """
        if self._closed:
            return False
        try:
            img, key, auto_label = self._load(image)
        except ValueError as err:
            self.show_error(err)
            return False
        self._current = (img, key)
        self.image_label = label or auto_label
        self.message = ""
        with self.hold_trait_notifications():
            self.target = None
        self.request()
        return True

    def wait(self, timeout: float | None = 600) -> bool:
        """Block until pending computations have finished and listeners were told."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            for runner in (self._runner, self._metrics_runner, self._sanity_runner):
                left = None if deadline is None else max(0.0, deadline - time.perf_counter())
                if not runner.wait(left):
                    return False
            if not (self._runner.busy or self._metrics_runner.busy or self._sanity_runner.busy):
                return True

    @property
    def busy(self) -> bool:
        return self._runner.busy or self._metrics_runner.busy or self._sanity_runner.busy

    def close(self) -> None:
        """Stop the workers (a running computation stops at the core's next checkpoint, waiting ones
        are dropped) and release the explainers, results and listeners. Closing again is fine."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        _LIVE.discard(self)
        self._generation = getattr(self, "_generation", 0) + 1  # running metrics are stale now
        for name in ("_runner", "_metrics_runner", "_sanity_runner"):
            runner = getattr(self, name, None)
            if runner is not None:
                runner.close(CLOSE_TIMEOUT)
        self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def _release(self) -> None:
        for name in ("_explainers", "_metrics_cache"):
            cache = getattr(self, name, None)
            if cache is not None:
                cache.clear()
        self._listeners = []
        self._last_icam = None
        self.sanity = None
        self.results, self.metric_values, self.curves = {}, {}, {}

    @property
    def explainer(self) -> Explainer | None:
        """The core :class:`~camwidgets.core.Explainer` behind the current image and class."""
        return self._explainers.get((self._current[1], self.target))

    def method_params_for(self, method: str) -> dict[str, Any]:
        """The parameters ``method`` runs with: the shared sliders (α, T, θ, bias, n) where the
        method has such a parameter, then the values of its own controls (registry defaults)."""
        spec = _registry.get(method)
        params = {p: getattr(self, t) for p, t in SHARED_PARAMS.items() if p in spec.param_names}
        params.update(self.method_params.get(method, {}))
        return params

    def auto_note(self) -> str:
        """Why a shown method does not run with its registry default (a large model), as HTML."""
        shown = [(m, p, v) for (m, p), v in self.auto_params.items()
                 if m in self.methods and self.method_params.get(m, {}).get(p) == v]
        if not shown:
            return ""
        parts = []
        for m, p, v in shown:
            default = _registry.get(m).param(p).default
            what = f"{METHOD_LABELS[m]}'s {p} map" if p == "region" else f"{METHOD_LABELS[m]}'s {p}"
            parts.append(f"{html.escape(what)}: <b>{html.escape(METHOD_LABELS.get(v, str(v)))}</b> instead of "
                         f"{html.escape(METHOD_LABELS.get(default, str(default)))}")
        return (f"<small>On this model ({self.channels} channels at {html.escape(str(self.auto_layer))}) "
                + "; ".join(parts) + f": the default would run {self.channels} forward passes per map. "
                "Pick it in the menu above to use it anyway.</small>")

    def sanity_methods(self) -> list[str]:
        """The methods :meth:`run_sanity` tests: the shown ones that need one capture per step (the
        gradient and activation families, without noise samples), else the sanity module's default."""
        from ..sanity import default_methods

        cheap = [m for m in self.methods if _registry.get(m).family in ("gradient", "activation")
                 and "samples" not in _registry.get(m).param_names]
        return cheap or list(default_methods())

    def run_sanity(self) -> None:
        """Run the cascading model-parameter randomisation test (Adebayo et al. 2018) of the shown
        image and class on a worker: :attr:`sanity` holds the result, the "sanity" event says so.

        It works on a deep copy of the model (the model is never changed); a new image or class
        stops it at the core's next checkpoint and clears the result.
        """
        if self._closed:
            return
        (image, key), methods = self._current, self.sanity_methods()
        exp = self._explainer_for(key, image, self.target)
        job_key = (key, exp.target)
        label = html.escape(self.class_names[exp.target] if self.class_names else f"class {exp.target}")

        def job() -> None:
            from ..sanity import parameter_randomisation

            t0 = time.perf_counter()
            names = ", ".join(METHOD_LABELS[m] for m in methods)
            self._set_status(f"{label}: sanity check of {html.escape(names)}: randomising the model's layers "
                             "from the top…", 0.5)
            try:
                with cancel_when(lambda: self._closed or self._current[1] != key or self.target not in (
                        None, exp.target)):
                    result = parameter_randomisation(self.model, exp.image, methods=methods,
                                                     preprocess=self.preprocess, target=exp.target)
            except Cancelled:
                return
            if self._closed or self._current[1] != key:
                return
            self.sanity, self._sanity_key = result, job_key
            self._emit("sanity")
            last = {m: float(result.similarity[m]["spearman_abs"][-1]) for m in methods}
            summary = ", ".join(f"{METHOD_LABELS[m]} {v:.2f}" for m, v in last.items())
            self._set_status(f"{label}: sanity check in {time.perf_counter() - t0:.1f} s; similarity to the trained "
                             f"model's map with every layer randomised (Spearman): {html.escape(summary)}", 1.0)

        self._sanity_runner.submit(job)

    # -- status -------------------------------------------------------------------------------
    def show_error(self, err: BaseException) -> None:
        text = str(err) or type(err).__name__
        self.message = text
        self._set_status(f"<span style='color:#c0392b'>⚠ {html.escape(text)}</span>", 1.0, "danger")

    def _set_status(self, text: str, progress: float, level: str | None = None) -> None:
        self.status, self.progress = text, progress
        self.level = level or ("success" if progress >= 1 else "info")
        self._emit("status")

    # -- computation (on the workers' threads) ---------------------------------------------------
    def _load(self, image: Any) -> tuple[torch.Tensor, Hashable, str]:
        if isinstance(image, str) and image in list_samples():
            return load_sample(image)["image"], ("sample", image), image
        img = load_image(image)
        key = ("tensor", hash(img.numpy().tobytes()), tuple(img.shape))
        label = Path(image).name if isinstance(image, (str, Path)) else f"{type(image).__name__} image"
        return img, key, label

    def _explainer_for(self, key: Hashable, image: torch.Tensor, target: int | None) -> Explainer:
        k = (key, target)
        if k in self._explainers:
            self._explainers.move_to_end(k)
            return self._explainers[k]
        exp = Explainer(self.model, image, target=target, preprocess=self.preprocess)
        self._explainers[k] = exp
        while len(self._explainers) > EXPLAINER_CACHE:
            self._explainers.popitem(last=False)
        return exp

    def _targets_for(self, exp: Explainer) -> list[tuple[str, int | None]]:
        probs = exp.probabilities
        names = self.class_names or [f"class {i}" for i in range(len(probs))]
        top = [int(i) for i in probs.argsort()[::-1][:5]]
        options: list[tuple[str, int | None]] = [(f"predicted: {names[top[0]]} ({probs[top[0]]:.1%})", None)]
        options += [(f"{names[i]} ({probs[i]:.1%})", i) for i in top]
        options += [(f"{names[i]}", i) for i in range(len(probs)) if i not in top]
        return options

    def _run_update(self) -> None:
        """The map worker's job: :meth:`_update`, stopped at the core's next checkpoint by close()."""
        try:
            with cancel_when(lambda: self._closed):
                if not self._closed:
                    self._update()
        except Cancelled:
            pass
        finally:
            if self._closed:  # closed while it ran: nothing kept
                self._release()

    def _same_layers_note(self, icam: Any) -> str:
        """' · T = … keeps the same layers' when only T moved and I-CAM kept the layers it had."""
        old, self._last_icam = self._last_icam, icam
        if old is None or old is icam or tuple(old.kept_layers) != tuple(icam.kept_layers):
            return ""
        po, pn = dict(old.params), dict(icam.params)
        if po.get("threshold") == pn.get("threshold") or {k: v for k, v in po.items() if k != "threshold"} != {
                k: v for k, v in pn.items() if k != "threshold"}:
            return ""
        if old.map.shape != icam.map.shape:
            return ""
        k = len(icam.kept_layers)
        return (f"; T = {pn['threshold']:.2f} keeps the same {k} layer{'s' if k != 1 else ''} as "
                f"T = {po['threshold']:.2f}: I-CAM's map is unchanged")

    def _update(self) -> None:
        gen = self._generation  # first: a request made after this line makes this update's metrics stale
        t0 = time.perf_counter()
        self._set_status("computing…", 0.1)
        (image, key), target, methods = self._current, self.target, list(self.methods)
        exp = self._explainer_for(key, image, target)
        if self.sanity is not None and self._sanity_key != (key, exp.target):
            self.sanity = None  # another image or class: the test said nothing about it
            self._emit("sanity")
        if key != self.image_key:
            self.image, self.image_key = exp.image, key
            self.target_options = self._targets_for(exp)
            self.results = {}
            self._last_icam = None
            self._emit("image")
        results: dict[str, Any] = {}
        for i, m in enumerate(methods):
            if len(methods) > 1:  # which map the progress bar waits for (seconds each on a large model)
                self._set_status(f"computing {html.escape(METHOD_LABELS[m])} ({i + 1}/{len(methods)})…",
                                 0.1 + 0.6 * i / len(methods))
            results[m] = exp.explain(m, **self.method_params_for(m))
            self.results = {**self.results, m: results[m]}
            self.progress = 0.1 + 0.6 * (i + 1) / max(1, len(methods))
            self._emit("map")
        # The multi-layer method (I-CAM): a T step that keeps its layers is said in the status line.
        multi = next((r for m, r in results.items() if _registry.get(m).family == "multi-layer"), None)
        note = self._same_layers_note(multi) if multi is not None else ""
        self.results = results
        self.message = ""
        self.timings = {"maps": time.perf_counter() - t0}
        self.map_updates += 1
        label = html.escape(self.class_names[exp.target] if self.class_names else f"class {exp.target}")
        self._set_status(f"{label}: maps in {self.timings['maps'] * 1000:.0f} ms" + note
                         + (", metrics…" if self.compute_metrics and results else ""),
                         0.75 if self.compute_metrics and results else 1.0)
        self._emit("maps")
        if self.compute_metrics and results:
            self._metrics_runner.submit(lambda: self._metrics(exp, results, gen, label, note))

    def _stale(self, generation: int) -> bool:
        """A newer map request exists (its update waits or runs): metrics for ``generation`` are no
        longer wanted."""
        return generation != self._generation

    def _metrics(self, exp: Explainer, results: dict[str, Any], generation: int, label: str, note: str) -> None:
        """AD and IC, then insertion / deletion, then ADCC, for the maps of one update.

        Runs on its own worker, so the maps of the next slider move never wait for it; once a
        newer update exists it publishes nothing and stops within one batch of model passes
        (the core's checkpoints). Values are cached per result object: a method whose map did
        not change is not measured again; a stopped measurement leaves no value behind.
        """
        try:
            with cancel_when(lambda: self._stale(generation) or self._closed):
                self._measure(exp, results, generation, label, note)
        except Cancelled:
            pass

    def _measure(self, exp: Explainer, results: dict[str, Any], generation: int, label: str, note: str) -> None:
        """The metrics of the registry marked ``in_explorer``, cheapest first (:attr:`Metric.cost`).

        Ground-truth metrics (no model pass) first, then AD and IC (one masked pass per map),
        then the curves (``curve_steps`` steps), then ADCC, which re-runs each method on the
        masked image, as costly as the method itself (a region map: one pass per channel or
        position). The status line says what runs; a newer update stops it at the core's next
        checkpoint. A value that cannot exist (a ground-truth metric on an image without one)
        is NaN, shown as "–".
        """
        model, tgt = self.model, exp.target
        caches = {m: self._metrics_cache.setdefault(r, {}) for m, r in results.items()}
        rows = {m: {k: caches[m].get(k) for k in METRIC_COLUMNS} for m in results}
        columns = METRIC_COLUMN
        maps_ms = f"maps in {self.timings.get('maps', 0.0) * 1000:.0f} ms"
        truth: list[tuple[Any, Any]] = []  # the explained object's mask and the others', looked up once if needed
        norm = Preprocess(mean=self.preprocess.mean, std=self.preprocess.std) if self.preprocess is not None else None

        def context(m: str, r: Any) -> _metric_registry.MetricContext:
            # One per result object (one image and class): the metrics of one map share its passes (AD,
            # IC and ADCC one masked pass), also across updates that keep the result.
            if "context" not in caches[m]:
                if not truth:
                    truth.append(self._ground_truth(exp))
                mask, other = truth[0]
                caches[m]["context"] = _metric_registry.MetricContext(
                    model=model, pixels=exp.image, saliency_map=M._map_array(r, f"The map of {m}"), target=tgt,
                    preprocess=norm, steps=self.curve_steps, mask=mask, other_mask=other,
                    explain_fn=M._explain_fn_from_result(r, model, self.preprocess),
                    logits=exp.logits_tensor[None])
            return caches[m]["context"]

        def publish(event: str = "metrics") -> bool:
            if self._stale(generation) or self._closed:
                return False
            self.metric_values = {m: dict(v) for m, v in rows.items()}
            self._emit(event)
            return True

        if not publish():
            return
        for cost in sorted({mt.cost for mt in EXPLORER_METRICS}):
            if cost == 2 and not self.compute_curves:
                continue
            t1 = time.perf_counter()
            metrics = [mt for mt in EXPLORER_METRICS if mt.cost == cost]
            for i, (m, r) in enumerate(results.items()):
                cached = caches[m]
                todo = [mt for mt in metrics if columns[mt.name] not in cached]
                if todo:
                    if self._stale(generation):
                        return
                    what = html.escape(METHOD_LABELS[m])
                    if cost == 2:
                        self._set_status(f"{label}: {maps_ms}; {' / '.join(mt.label for mt in todo)} of {what} "
                                         f"({self.curve_steps} steps)…", 0.8 + 0.1 * i / max(1, len(results)))
                    elif cost == 3:
                        self._set_status(f"{label}: {maps_ms}; {' / '.join(mt.label for mt in todo)} re-runs "
                                         f"{what} on the masked image ({i + 1}/{len(results)})…",
                                         0.9 + 0.1 * i / max(1, len(results)))
                    ctx = context(m, r)
                    for mt in todo:
                        value = mt.compute(ctx)[mt.columns[0].name]
                        cached[columns[mt.name]] = float("nan") if value is None else float(value)
                    if cost == 2:
                        cached["curves"] = {kind: (ctx.shared(kind, lambda: None).fractions,
                                                   ctx.shared(kind, lambda: None).curve)
                                            for kind in ("insertion", "deletion")}
                rows[m].update({columns[mt.name]: cached[columns[mt.name]] for mt in metrics})
                if cost == 3 and not publish():
                    return
            if cost == 2:
                if self._stale(generation) or self._closed:
                    return
                self.curves = {m: caches[m]["curves"] for m in results}
                if not publish("curves"):
                    return
            elif cost != 3 and not publish():
                return
            self.timings[_COST_TIMINGS.get(cost, f"cost {cost}")] = time.perf_counter() - t1
        if not self._stale(generation):
            parts = [maps_ms, f"AD / IC in {self.timings['metrics'] * 1000:.0f} ms"]
            if "curves" in self.timings:
                parts.append(f"curves in {self.timings['curves'] * 1000:.0f} ms")
            parts.append(f"ADCC in {self.timings['adcc'] * 1000:.0f} ms")
            self._set_status(f"{label}: " + ", ".join(parts) + note, 1.0)

    def _ground_truth(self, exp: Explainer) -> tuple[Any, Any]:
        """The explained class's object mask and the other objects' union, on the explained image.

        Only a bundled sample has them, and only for a class drawn in it (named by the model's
        class names): (None, None) otherwise, and the other objects None on a one-class image.
        """
        source: Any = next((cast(tuple, k)[0] for k, e in self._explainers.items() if e is exp), None)
        if not (isinstance(source, tuple) and source[0] == "sample" and self.class_names):
            return None, None
        sample = load_sample(source[1])
        masks = dict(sample.get("masks") or {})
        if not masks and sample.get("mask") is not None and sample.get("label") is not None:
            masks = {sample["label"]: sample["mask"]}
        name = self.class_names[exp.target] if exp.target < len(self.class_names) else None
        if name not in masks:
            return None, None
        from ..core.evaluate import _mask_at

        hw = exp.size
        source_hw = tuple(int(v) for v in sample["image"].shape[-2:])

        def at(m: Any) -> Any:
            return _mask_at(m, hw, source_hw, self.preprocess)  # type: ignore[arg-type]

        others = [at(m) for n, m in masks.items() if n != name]
        return at(masks[name]), (np.logical_or.reduce(others) if others else None)

"""CAMExplorer: sliders for α, T and θ over live Grad-CAM / LayerCAM / I-CAM / Fusion-CAM panes."""

from __future__ import annotations

import copy
import html
import json
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import ipywidgets as widgets
import torch
from traitlets import Enum, Float, Int, List, TraitError, Unicode, observe, validate

from ..core import Cancelled, cancel_when
from ..core import methods as _registry
from ..core import metrics as M
from ..core.explainer import Explainer
from ..core.image import load_image
from ..core.preprocess import PreprocessLike, as_preprocess
from ..datasets.samples import list_samples, load_sample
from ..viz.cam import COLORSCALES
from ._runner import LatestRunner
from .panes import METHOD_LABELS, FusionPanel, LayerPanel, MapPane, MetricsPanel, close_widgets

__all__ = ["DEFAULT_METHODS", "CAMExplorer"]

#: Methods shown when none are given.
DEFAULT_METHODS: tuple[str, ...] = tuple(m.name for m in _registry.methods() if m.in_explorer)
#: Parameters every method that has them shares with the explorer's own controls (trait name).
_SHARED_PARAMS = {"alpha": "alpha", "threshold": "threshold", "theta": "theta", "bias": "bias", "n": "n_perturbations"}
_EXPLAINER_CACHE = 4
#: Above this many channels at the default layer, a parameter whose default runs one forward pass
#: per channel (Score-CAM as a region map) takes its registry's fast default, unless the user set it.
FAST_ABOVE_CHANNELS = 512
#: Steps of the live insertion / deletion curves (each step is one forward pass per curve), on a
#: small model and on a large one (more than FAST_ABOVE_CHANNELS channels at the default layer).
CURVE_STEPS, LARGE_MODEL_CURVE_STEPS = 50, 16
#: Seconds close() waits for a running computation to stop (it stops at the core's next checkpoint).
_CLOSE_TIMEOUT = 30.0
_PANE_TITLES = {"icam_scores": "I-CAM layer scores", "icam_maps": "I-CAM per-layer maps",
                "perturbations": "I-CAM perturbations", "fusion": "Fusion-CAM components",
                "metrics": "Metrics", "curves": "Insertion / deletion"}


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
    return channels, name


class CAMExplorer(widgets.VBox):
    """Explore CAMs of a model on an image with sliders, in JupyterLab or Notebook 7.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The CNN to explain. None opens on the embedded demo model
        (:func:`camwidgets.load_demo_model`) and a bundled sample image.
    image : sample name, path, bytes, PIL image, array or tensor, optional
        The image; a name from :func:`camwidgets.list_samples` picks a bundled one.
    target : int, optional
        Class to explain; None explains the predicted class.
    methods : sequence of str, optional
        Methods shown: any names from ``camwidgets.methods()`` (each has a toggle); by default
        the registry's entries marked ``in_explorer`` (:data:`DEFAULT_METHODS`).
    preprocess : Preprocess or torchvision transform, optional
        The model's preprocessing (required with a user model unless the model takes
        ``[0, 1]`` pixels as they are).
    class_names : sequence of str, optional
        Names of the model's classes (for the target dropdown).
    metrics : bool, default True
        Compute AD and IC, the curves, then ADCC after every update, on a second worker once
        the maps are drawn (the next slider move does not wait for them; stale metrics are
        dropped). ADCC comes last: it re-runs each method on the masked image.
    curves : bool, default True
        Compute insertion / deletion AUC and curves with ``curve_steps`` steps.
    curve_steps : int, optional
        Steps of the live curves (one forward pass each per curve and method): by default
        :data:`CURVE_STEPS` (50), or :data:`LARGE_MODEL_CURVE_STEPS` (16) on a large model, few
        enough for seconds on a CPU. The 224-step evaluation setting is
        :func:`camwidgets.evaluate`'s ``steps``.
    method_params : {method: {parameter: value}}, optional
        Values of the methods' own parameters (e.g. ``{"fusioncam": {"region": "scorecam"}}``);
        each shown method gets a control for every parameter its registry entry marks as a
        control. On a model whose default layer has more than :data:`FAST_ABOVE_CHANNELS`
        channels, a parameter not given here whose registry entry has a fast default takes it
        (Fusion-CAM's and UnionCAM's region map: Recipro-CAM instead of Score-CAM, which runs
        one forward pass per channel); a note under the controls says so (:attr:`auto_params`).
        α, T, θ, the bias and n are the explorer's shared sliders instead: every method
        with a parameter of that name (``alpha``, ``threshold``, ``theta``, ``bias``, ``n``) uses them.
    background : bool, default True
        Compute on a worker thread (one computation at a time, the latest value wins).
        False computes synchronously in the trait change (scripts, debugging).

    Traits
    ------
    alpha (0-1), threshold (0.5-1), theta (0-50), bias, n_perturbations, target, methods,
    opacity, colorscale: each linked to its control; set them from code to drive the
    explorer, then call :meth:`wait`.

    Attributes
    ----------
    figures : dict str -> FigureWidget
        Every pane: one per method (by method name), ``"icam_scores"``, ``"icam_maps"``,
        ``"perturbations"``, ``"fusion"``, ``"metrics"``, ``"curves"``.
    results : dict str -> result
        The core's result object for each shown method.
    timings : dict
        Seconds the last update took: ``"maps"``, ``"metrics"`` (AD and IC), ``"curves"``,
        ``"adcc"``.

    :meth:`close` closes every widget of the explorer, stops its workers and releases its
    explainers; a closed explorer computes nothing more.
    """

    alpha = Float(0.4, help="I-CAM perturbation strength α in [0, 1]")
    threshold = Float(0.95, help="I-CAM layer threshold T in [0.5, 1]")
    theta = Float(10.0, help="Fusion-CAM / UnionCAM denoise percentile θ in [0, 50]")
    bias = Enum(("channel", "spatial", "none"), default_value="channel", help="I-CAM bias")
    n_perturbations = Int(8, help="number of I-CAM perturbations (1-32)")
    target = Int(None, allow_none=True, help="explained class; None = the predicted class")
    methods = List(Unicode(), help="methods shown")
    opacity = Float(0.5, help="overlay opacity in [0, 1]")
    colorscale = Unicode("Jet", help="heatmap colour scale")
    message = Unicode("", help="the last error shown in the status line ('' if none)")

    def __init__(self, model: torch.nn.Module | None = None, image: Any = None, target: int | None = None,
                 methods: Sequence[str] | None = None, *, preprocess: PreprocessLike = None,
                 class_names: Sequence[str] | None = None, metrics: bool = True, curves: bool = True,
                 curve_steps: int | None = None, background: bool = True, alpha: float = 0.4,
                 threshold: float = 0.95, theta: float = 10.0, bias: str = "channel",
                 n_perturbations: int = 8, method_params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        # First: close() (also run by ipywidgets' __del__) must work on an explorer whose construction failed.
        self._closed = False
        self._links: list[Any] = []
        if model is None:
            from ..models.demo import load_demo_model

            model, demo_pre, demo_names = load_demo_model()
            preprocess = preprocess or demo_pre
            class_names = class_names or demo_names
            image = "shapes-star" if image is None else image
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
            shared = [k for k in values if k in _SHARED_PARAMS]
            if shared:
                raise ValueError(f"method_params[{name!r}]: {shared} are the explorer's shared controls; pass "
                                 f"them as CAMExplorer({', '.join(f'{_SHARED_PARAMS[k]}=...' for k in shared)}).")
            spec.resolve(values)  # unknown names or values out of range: a ValueError now
            self.method_params[name] = dict(values)
        #: {(method, parameter): value} the explorer chose instead of the registry default (large model).
        self.auto_params: dict[tuple[str, str], Any] = {}
        self._channels, self._auto_layer = _default_layer_channels(model)
        large = self._channels is not None and self._channels > FAST_ABOVE_CHANNELS
        if large:
            for spec in _registry.methods():
                for prm in spec.params:
                    if prm.fast_default is not None and prm.name not in self.method_params.get(spec.name, {}):
                        self.method_params.setdefault(spec.name, {})[prm.name] = prm.fast_default
                        self.auto_params[(spec.name, prm.name)] = prm.fast_default
        self.class_names = list(class_names) if class_names is not None else None
        if curve_steps is None:
            curve_steps = LARGE_MODEL_CURVE_STEPS if large else CURVE_STEPS
        if int(curve_steps) < 1:
            raise ValueError(f"curve_steps must be a positive integer, got {curve_steps!r}.")
        self.compute_metrics, self.compute_curves, self.curve_steps = metrics, curves, int(curve_steps)
        self.figures: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.metric_values: dict[str, dict[str, float | None]] = {}
        self.timings: dict[str, float] = {}
        #: Times the panes were redrawn with new maps (the status line shows the last duration).
        self.map_updates = 0
        self._metrics_cache: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()
        self._explainers: OrderedDict[Hashable, Explainer] = OrderedDict()
        self._runner = LatestRunner(on_error=self._show_error, background=background)
        # Metrics run on their own worker so that maps never wait for them.
        self._metrics_runner = LatestRunner(on_error=self._show_error, background=background)
        # Map requests made so far: the metrics of an update are stale once a newer request exists.
        self._generation = 0
        self._shown_image_key: Hashable | None = None
        self._syncing_toggles = False
        self._syncing_picker = False
        self._ready = False

        # The image first: a bad one fails here, before any widget exists.
        img, key, self._image_label = self._load(image)
        # (image, cache key) in one attribute: the worker must never pair one's image with another's key.
        self._current: tuple[torch.Tensor, Hashable] = (img, key)
        super().__init__()
        with self.hold_trait_notifications():
            self.alpha, self.threshold, self.theta = alpha, threshold, theta
            self.bias, self.n_perturbations, self.target = bias, n_perturbations, target
            self.methods = list(methods) if methods is not None else list(DEFAULT_METHODS)
        self._build()
        self._ready = True
        self._request()

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

    @validate("opacity")
    def _v_opacity(self, p: dict[str, Any]) -> float:
        return min(1.0, max(0.0, float(p["value"])))

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
        n = self._num_classes()
        if t is not None and n is not None and not 0 <= int(t) < n:
            raise TraitError(f"Target class {t} is out of range: the model has {n} classes (0-{n - 1}).")
        return t

    def _num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        exp = next(reversed(self._explainers.values()), None) if self._explainers else None
        return None if exp is None else int(exp.probabilities.shape[-1])

    # -- building the widget (once) ---------------------------------------------------------
    def _slider(self, trait: str, lo: float, hi: float, step: float, label: str) -> widgets.FloatSlider:
        s = widgets.FloatSlider(value=getattr(self, trait), min=lo, max=hi, step=step, description=label,
                                continuous_update=True, readout_format=".2f" if step < 1 else ".0f",
                                style={"description_width": "initial"},
                                layout=widgets.Layout(width="300px"))
        self._link(s, trait)
        return s

    def _link(self, control: widgets.Widget, trait: str) -> None:
        """Link ``control.value`` to the trait (kept, so that close() can unlink it)."""
        self._links.append(widgets.link((control, "value"), (self, trait)))

    def _build(self) -> None:
        samples = list_samples()
        self.image_picker = widgets.Dropdown(
            options=[*samples, "(uploaded)"] if self._image_label not in samples else samples,
            value=self._image_label if self._image_label in samples else None,
            description="image", layout=widgets.Layout(width="230px"))
        self.image_picker.observe(self._on_pick, "value")
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload image",
                                         layout=widgets.Layout(width="auto"))
        self.upload.observe(self._on_upload, "value")
        # index=0, not value=None: a Dropdown shows value None as no selection (a blank box).
        self.target_picker = widgets.Dropdown(options=[("predicted class", None)], index=0,
                                              description="class", layout=widgets.Layout(width="300px"))
        self.target_picker.observe(self._on_target_pick, "value")
        self.method_toggles = {
            m: widgets.ToggleButton(value=m in self.methods, description=label,
                                    layout=widgets.Layout(width="auto"))
            for m, label in METHOD_LABELS.items()
        }
        for b in self.method_toggles.values():
            b.observe(self._on_toggle, "value")
        self.sliders = {
            "alpha": self._slider("alpha", 0.0, 1.0, 0.05, "α (I-CAM)"),
            "threshold": self._slider("threshold", 0.5, 1.0, 0.01, "T (I-CAM)"),
            "theta": self._slider("theta", 0.0, 50.0, 1.0, "θ (Fusion-CAM)"),
            "opacity": self._slider("opacity", 0.0, 1.0, 0.05, "opacity"),
        }
        self.n_slider = widgets.IntSlider(value=self.n_perturbations, min=1, max=32, description="n (I-CAM)",
                                          continuous_update=False, layout=widgets.Layout(width="300px"))
        self._link(self.n_slider, "n_perturbations")
        # ipywidgets 8 draws a ToggleButtons description above the buttons: a Label beside them instead.
        self.bias_picker = widgets.ToggleButtons(options=["channel", "spatial", "none"], value=self.bias,
                                                 style={"button_width": "84px"}, layout=widgets.Layout(width="auto"))
        self._link(self.bias_picker, "bias")
        self.colorscale_picker = widgets.Dropdown(options=list(COLORSCALES), value=self.colorscale,
                                                  description="colours", layout=widgets.Layout(width="200px"))
        self._link(self.colorscale_picker, "colorscale")
        self.export_folder = widgets.Text(value="camwidgets-export", description="export to",
                                          layout=widgets.Layout(width="300px"))
        self.export_buttons = {k: widgets.Button(description=label, icon="download",
                                                 layout=widgets.Layout(width="auto"))
                               for k, label in (("png", "PNG"), ("html", "HTML"), ("json", "JSON"))}
        for k, b in self.export_buttons.items():
            b.on_click(lambda _b, kind=k: self._export(kind))
        self.status = widgets.HTML(value="")
        self.progress = widgets.FloatProgress(value=0, min=0, max=1, layout=widgets.Layout(width="120px"))

        # Map panes are made when their method is first shown: each FigureWidget carries its own
        # copy of plotly.js (about 5 MB) to the browser, so unused ones are not built.
        self.panes: dict[str, MapPane] = {}
        self._pixels = self._current[0]
        self.layer_panel = LayerPanel()
        self.fusion_panel = FusionPanel()
        self.metrics_panel = MetricsPanel()
        self.maps_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        # Each shown method's own parameters (from the method registry), e.g. Fusion-CAM's region map.
        self.param_controls: dict[str, dict[str, widgets.Widget]] = {}
        self.options_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.options_note = widgets.HTML(value="")
        self._refresh_visible()
        self.icam_box = widgets.VBox([widgets.HTML("<b>I-CAM: layers and perturbations</b>"), self.layer_panel])
        self.fusion_box = widgets.VBox([widgets.HTML("<b>Fusion-CAM: components</b>"), self.fusion_panel])
        self.metrics_box = widgets.VBox([widgets.HTML("<b>Metrics</b>"), self.metrics_panel])
        controls = widgets.VBox([
            widgets.HBox([self.image_picker, self.upload, self.target_picker]),
            widgets.HBox(list(self.method_toggles.values()), layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.sliders["alpha"], self.sliders["threshold"], self.sliders["theta"]]),
            widgets.HBox([widgets.Label("bias (I-CAM)"), self.bias_picker, self.n_slider]),
            self.options_box,
            self.options_note,
            widgets.HBox([self.sliders["opacity"], self.colorscale_picker]),
            widgets.HBox([self.export_folder, *self.export_buttons.values()]),
            widgets.HBox([self.progress, self.status]),
        ])
        self.children = [controls, self.maps_box, self.icam_box, self.fusion_box, self.metrics_box]
        self._collect_figures()

    def _collect_figures(self) -> None:
        figs = {m: p.figure for m, p in self.panes.items()}
        figs.update(icam_scores=self.layer_panel.scores, icam_maps=self.layer_panel.maps,
                    perturbations=self.layer_panel.perturbations, fusion=self.fusion_panel.figure,
                    metrics=self.metrics_panel.table, curves=self.metrics_panel.curves)
        self.figures.clear()
        self.figures.update(figs)

    def _pane(self, method: str) -> MapPane:
        """The map pane of ``method``, built on first use with the image shown now."""
        if method not in self.panes:
            self.panes[method] = MapPane(method, self._pixels, self.opacity, self.colorscale)
            if hasattr(self, "layer_panel"):
                self._collect_figures()
        return self.panes[method]

    def _param_control(self, method: str, param: _registry.Param) -> widgets.Widget:
        """A control for one registry parameter (slider, dropdown or checkbox), built from its entry."""
        label = f"{param.name} ({METHOD_LABELS[method]})"
        value = self.method_params.get(method, {}).get(param.name, param.default)
        common: dict[str, Any] = {"description": label, "style": {"description_width": "initial"},
                                  "tooltip": param.help}
        w: widgets.Widget
        if param.kind == "choice":
            w = widgets.Dropdown(options=list(param.allowed()), value=value, layout=widgets.Layout(width="260px"),
                                 **common)
        elif param.kind == "bool":
            w = widgets.Checkbox(value=bool(value), indent=False, **common)
        else:
            cls = widgets.IntSlider if param.kind == "int" else widgets.FloatSlider
            lo = param.low if param.low is not None else 0
            hi = param.high if param.high is not None else max(10 * abs(float(value)), 1)
            w = cls(value=value, min=lo, max=hi, step=param.step or (1 if param.kind == "int" else 0.01),
                    continuous_update=False, layout=widgets.Layout(width="300px"), **common)

        def changed(change: dict[str, Any], m: str = method, p: str = param.name) -> None:
            if not self._ready:
                return
            self.method_params.setdefault(m, {})[p] = change["new"]
            self.options_note.value = self._auto_note()
            self._request()

        w.observe(changed, "value")
        return w

    def _options_for(self, method: str) -> list[widgets.Widget]:
        """The controls of ``method``'s own parameters (built once; none for the shared ones)."""
        if method not in self.param_controls:
            self.param_controls[method] = {
                p.name: self._param_control(method, p) for p in _registry.get(method).params
                if p.control and p.kind != "layer" and p.name not in _SHARED_PARAMS}
        return list(self.param_controls[method].values())

    def _auto_note(self) -> str:
        """Why a shown method does not run with its registry default (a large model), in words."""
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
        return (f"<small>On this model ({self._channels} channels at {html.escape(str(self._auto_layer))}) "
                + "; ".join(parts) + f": the default would run {self._channels} forward passes per map. "
                "Pick it in the menu above to use it anyway.</small>")

    def _refresh_visible(self) -> None:
        self.maps_box.children = [self._pane(m) for m in METHOD_LABELS if m in self.methods]
        if hasattr(self, "options_note"):
            self.options_note.value = self._auto_note()
        if hasattr(self, "options_box"):
            self.options_box.children = [w for m in METHOD_LABELS if m in self.methods for w in self._options_for(m)]
        if hasattr(self, "icam_box"):
            self.icam_box.layout.display = None if "icam" in self.methods else "none"
            self.fusion_box.layout.display = None if "fusioncam" in self.methods else "none"

    # -- events -------------------------------------------------------------------------------
    @observe("alpha", "threshold", "theta", "bias", "n_perturbations", "target", "methods")
    def _on_param(self, change: dict[str, Any]) -> None:
        if not self._ready:
            return
        if change["name"] == "methods":
            self._syncing_toggles = True  # the toggles follow the trait, not the other way round
            try:
                for m, b in self.method_toggles.items():
                    b.value = m in self.methods
            finally:
                self._syncing_toggles = False
            self._refresh_visible()
        if change["name"] == "target":
            self._show_target()
        self._request()

    @observe("opacity", "colorscale")
    def _on_style(self, change: dict[str, Any]) -> None:
        if not self._ready:
            return
        for pane in self.panes.values():
            pane.style(opacity=self.opacity, colorscale=self.colorscale)

    def _on_toggle(self, change: dict[str, Any]) -> None:
        if self._syncing_toggles:
            return
        chosen = [m for m, b in self.method_toggles.items() if b.value]
        if chosen != self.methods:
            self.methods = chosen

    def _on_target_pick(self, change: dict[str, Any]) -> None:
        if change["new"] != self.target:
            self._guard(lambda: setattr(self, "target", change["new"]))

    def _show_target(self) -> None:
        """Select the current target in the class dropdown, by index: its "predicted" option has the
        value None, and a Dropdown set to value None shows no selection (a blank box)."""
        values = [v for _, v in self.target_picker.options]
        if self.target in values and self.target_picker.index != values.index(self.target):
            if self.target is None:
                # A change of value *to* None clears the selection: make it first, then select.
                self.target_picker.value = None
            self.target_picker.index = values.index(self.target)

    def _on_pick(self, change: dict[str, Any]) -> None:
        if self._syncing_picker:
            return
        if change["new"] and change["new"] != "(uploaded)" and change["new"] != self._image_label:
            self.set_image(change["new"])

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        content = f["content"] if isinstance(f, dict) else f.content
        name = f["name"] if isinstance(f, dict) else f.name
        # Empty the control first, so that uploading the same file again is a change too.
        self.upload.value = ()
        self.set_image(bytes(content), label=f"upload: {name}")

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except (TraitError, ValueError) as err:
            self._show_error(err)

    # -- public ---------------------------------------------------------------------------------
    def set_image(self, image: Any, label: str | None = None) -> bool:
        """Show a new image (sample name, path, bytes, PIL, array or tensor).

        A bad image shows its error in the status line and leaves the explorer as it was;
        returns whether the image was accepted (a closed explorer accepts none).
        """
        if self._closed:
            return False
        try:
            img, key, auto_label = self._load(image)
        except ValueError as err:
            self._show_error(err)
            return False
        self._current = (img, key)
        self._image_label = label or auto_label
        # New options re-select the first one (ipywidgets), which is no pick of the user's: without
        # the guard, _on_pick would load that sample over the image being set.
        self._syncing_picker = True
        try:
            if self._image_label not in self.image_picker.options:
                self.image_picker.options = [o for o in self.image_picker.options if o != "(uploaded)"] + ["(uploaded)"]
                self.image_picker.value = "(uploaded)"
            else:
                self.image_picker.value = self._image_label
        finally:
            self._syncing_picker = False
        self.message = ""
        with self.hold_trait_notifications():
            self.target = None
        self._request()
        return True

    def wait(self, timeout: float | None = 600) -> bool:
        """Block until pending computations have finished and the panes are updated."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            for runner in (self._runner, self._metrics_runner):
                left = None if deadline is None else max(0.0, deadline - time.perf_counter())
                if not runner.wait(left):
                    return False
            if not (self._runner.busy or self._metrics_runner.busy):
                return True

    def close(self) -> None:
        """Close the explorer: every widget in it, its links and workers; release its explainers.

        Every widget of the explorer (controls, panes, Plotly figures, layouts and styles, also
        those held only as attributes) leaves ipywidgets' registry and closes its comm; the
        sliders' links are unlinked; a computation still running stops at the core's next
        checkpoint, waiting ones are dropped and both worker threads end; the explainers (the
        model's cached activations and gradients) and results are released. The model is not
        touched. From then on trait changes compute nothing. Closing again is fine.
        """
        if getattr(self, "_closed", True):  # closed already, or construction failed before __init__ began
            return
        self._closed = True
        self._ready = False  # trait observers return at once
        # Running metrics are stale now: they stop at the core's next checkpoint.
        self._generation = getattr(self, "_generation", 0) + 1
        for runner in (getattr(self, "_runner", None), getattr(self, "_metrics_runner", None)):
            if runner is not None:
                runner.close(_CLOSE_TIMEOUT)
        for link in self._links:
            link.unlink()
        self._links.clear()
        close_widgets(self, owner=self)
        self._release()

    def _release(self) -> None:
        """Drop what a closed explorer no longer needs: explainers, results, metric caches."""
        for name in ("_explainers", "_metrics_cache"):
            cache = getattr(self, name, None)
            if cache is not None:
                cache.clear()
        self.results = {}  # a new dict: one the caller holds stays as it was

    @property
    def explainer(self) -> Explainer | None:
        """The core :class:`~camwidgets.core.Explainer` behind the current image and class."""
        return self._explainers.get((self._current[1], self.target))

    def export_png(self, folder: str | Path, scale: float = 2.0) -> list[Path]:
        """Save every visible figure as ``<folder>/<pane>.png`` (Plotly's static export).

        Needs the ``kaleido`` package (``pip install "camwidgets[export]"``) and a Chrome or
        Chromium browser on the machine, which kaleido drives headless.
        """
        try:
            import kaleido  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "PNG export needs the kaleido package: pip install \"camwidgets[export]\" "
                "(HTML export needs nothing more: use export_html)."
            ) from None
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, fig in self._visible_figures().items():
            try:
                data = fig.to_image(format="png", scale=scale)
            except Exception as err:  # kaleido reports a missing browser in several ways
                raise RuntimeError(
                    f"PNG export failed ({type(err).__name__}: {err}). kaleido needs Chrome or Chromium: "
                    "install one (e.g. apt-get install chromium) or run plotly_get_chrome; "
                    "export_html works without a browser."
                ) from None
            path = folder / f"{name}.png"
            path.write_bytes(data)
            paths.append(path)
        return paths

    def _export(self, kind: str) -> None:
        folder = Path(self.export_folder.value or "camwidgets-export")
        try:
            if kind == "png":
                out: Any = self.export_png(folder)
                where = f"{len(out)} PNG files in {folder}"
            elif kind == "html":
                folder.mkdir(parents=True, exist_ok=True)
                where = str(self.export_html(folder / "camwidgets.html"))
            else:
                folder.mkdir(parents=True, exist_ok=True)
                self.export_json(folder / "camwidgets.json")
                where = str(folder / "camwidgets.json")
        except (OSError, RuntimeError) as err:
            self._show_error(err)
            return
        self.status.value = f"saved {html.escape(where)}"

    def export_html(self, path: str | Path) -> Path:
        """Save every visible figure in one standalone HTML file (plotly.js inlined: works offline)."""
        path = Path(path)
        parts = [f"<h2>camwidgets: {html.escape(self._image_label)}</h2>"]
        for i, (name, fig) in enumerate(self._visible_figures().items()):
            parts.append(f"<h3>{html.escape(METHOD_LABELS.get(name, _PANE_TITLES.get(name, name)))}</h3>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
        path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                        + "\n".join(parts) + "</body></html>", encoding="utf-8")
        return path

    def export_json(self, path: str | Path | None = None) -> dict[str, Any]:
        """The parameters, results (maps as nested lists) and metrics as JSON (and to ``path``)."""
        exp = self.explainer
        doc: dict[str, Any] = {
            "image": self._image_label,
            "target": None if exp is None else exp.target,
            "target_name": None if exp is None or self.class_names is None else self.class_names[exp.target],
            "params": {"alpha": self.alpha, "threshold": self.threshold, "theta": self.theta, "bias": self.bias,
                       "n_perturbations": self.n_perturbations},
            "results": {m: {"params": dict(r.params), "layer": r.layer, "map": r.map.tolist()}
                        for m, r in self.results.items()},
            "metrics": self.metric_values,
        }
        if path is not None:
            Path(path).write_text(json.dumps(doc), encoding="utf-8")
        return doc

    def _visible_figures(self) -> dict[str, Any]:
        names = [m for m in METHOD_LABELS if m in self.methods]
        if "icam" in self.methods:
            names += ["icam_scores", "icam_maps", "perturbations"]
        if "fusioncam" in self.methods:
            names.append("fusion")
        names += ["metrics", "curves"]
        return {n: self.figures[n] for n in names}

    # -- computation (on the runner's thread) --------------------------------------------------
    def _load(self, image: Any) -> tuple[torch.Tensor, Hashable, str]:
        if isinstance(image, str) and image in list_samples():
            return load_sample(image)["image"], ("sample", image), image
        img = load_image(image)
        key = ("tensor", hash(img.numpy().tobytes()), tuple(img.shape))
        label = Path(image).name if isinstance(image, (str, Path)) else f"{type(image).__name__} image"
        return img, key, label

    def _request(self) -> None:
        self.progress.value = 0.05
        self.progress.bar_style = "info"
        self._generation += 1
        self._runner.submit(self._run_update)

    def _show_error(self, err: BaseException) -> None:
        text = str(err) or type(err).__name__
        self.message = text
        if hasattr(self, "status"):
            self.status.value = f"<span style='color:#c0392b'>⚠ {html.escape(text)}</span>"
            self.progress.value, self.progress.bar_style = 1, "danger"

    def _set_status(self, text: str, progress: float) -> None:
        self.status.value = text
        self.progress.value = progress
        self.progress.bar_style = "success" if progress >= 1 else "info"

    def _explainer_for(self, key: Hashable, image: torch.Tensor, target: int | None) -> Explainer:
        k = (key, target)
        if k in self._explainers:
            self._explainers.move_to_end(k)
            return self._explainers[k]
        exp = Explainer(self.model, image, target=target, preprocess=self.preprocess)
        self._explainers[k] = exp
        while len(self._explainers) > _EXPLAINER_CACHE:
            self._explainers.popitem(last=False)
        return exp

    def _method_params(self, method: str) -> dict[str, Any]:
        """The parameters ``method`` runs with: the shared sliders (α, T, θ, bias, n) where the
        method has such a parameter, then the values of its own controls (registry defaults)."""
        spec = _registry.get(method)
        params = {p: getattr(self, t) for p, t in _SHARED_PARAMS.items() if p in spec.param_names}
        params.update(self.method_params.get(method, {}))
        return params

    def _run_method(self, exp: Explainer, method: str) -> Any:
        return exp.explain(method, **self._method_params(method))

    def _update_targets(self, exp: Explainer) -> None:
        probs = exp.probabilities
        names = self.class_names or [f"class {i}" for i in range(len(probs))]
        top = [int(i) for i in probs.argsort()[::-1][:5]]
        options: list[tuple[str, int | None]] = [(f"predicted: {names[top[0]]} ({probs[top[0]]:.1%})", None)]
        options += [(f"{names[i]} ({probs[i]:.1%})", i) for i in top]
        options += [(f"{names[i]}", i) for i in range(len(probs)) if i not in top]
        self.target_picker.options = options
        self._show_target()

    def _run_update(self) -> None:
        """The map worker's job: :meth:`_update`, stopped at the core's next checkpoint by close()."""
        try:
            with cancel_when(lambda: self._closed):
                if not self._closed:
                    self._update()
                # Then, unless a newer move waits (never submitted as a job: it would replace that move's):
                # a reloaded page shows these maps.
                if not self._closed and not self._runner.superseded():
                    self._sync_state(self._map_figures())
        except Cancelled:
            pass
        finally:
            if self._closed:  # closed while it ran (close() did not wait long enough): nothing kept
                self._release()

    def _update(self) -> None:
        gen = self._generation  # first: a request made after this line makes this update's metrics stale
        t0 = time.perf_counter()
        self._set_status("computing…", 0.1)
        (image, key), target, methods = self._current, self.target, list(self.methods)
        exp = self._explainer_for(key, image, target)
        new_image = key != self._shown_image_key
        if new_image:
            self._pixels = exp.image
            for pane in self.panes.values():
                pane.set_image(self._pixels)
            self._update_targets(exp)
            self._shown_image_key = key
        results: dict[str, Any] = {}
        for i, m in enumerate(methods):
            results[m] = self._run_method(exp, m)
            self._pane(m).update(results[m])
            self.progress.value = 0.1 + 0.6 * (i + 1) / max(1, len(methods))
        if "icam" in results:
            self.layer_panel.update(results["icam"])
        if "fusioncam" in results:
            self.fusion_panel.update(results["fusioncam"])
        self._collect_figures()
        self.results = results
        self.message = ""
        self.timings = {"maps": time.perf_counter() - t0}
        self.map_updates += 1
        label = html.escape(self.class_names[exp.target] if self.class_names else f"class {exp.target}")
        self._set_status(f"{label}: maps in {self.timings['maps'] * 1000:.0f} ms"
                         + (", metrics…" if self.compute_metrics else ""), 0.75 if self.compute_metrics else 1.0)
        if self.compute_metrics:
            self._metrics_runner.submit(lambda: self._metrics(exp, results, gen, label))

    def _map_figures(self) -> list[Any]:
        return [p.figure for p in list(self.panes.values())] + [
            self.layer_panel.scores, self.layer_panel.maps, self.layer_panel.perturbations, self.fusion_panel.figure]

    def _sync_state(self, figures: Sequence[Any]) -> None:
        """Make each FigureWidget's synced state (what a new view of it is built from) its current figure.

        Updates reach open views as deltas, while ``_widget_data`` / ``_widget_layout`` keep the
        figure as first displayed: a reloaded page or a second tab would draw the first maps
        (empty panes). Plotly refreshes that state only when a figure itself is displayed, which a
        figure inside a box never is, so the explorer refreshes it at the end of each update on the
        same worker, unless a newer move already waits. Open views ignore the change.
        """
        if self._closed:
            return
        for fig in figures:
            if hasattr(fig, "_widget_data"):
                fig._widget_layout = copy.deepcopy(fig._layout_obj._props)
                fig._widget_data = copy.deepcopy(fig._data)

    def _stale(self, generation: int) -> bool:
        """A newer map request exists (its update waits or runs): metrics for ``generation`` are no
        longer wanted. (Not "the map runner is busy": it still is while the update that submitted
        these metrics returns, and the metrics of the last update were then dropped for good.)"""
        return generation != self._generation

    def _metrics(self, exp: Explainer, results: dict[str, Any], generation: int, label: str) -> None:
        """AD and IC, then insertion / deletion, then ADCC, for the maps of one update.

        Runs on its own worker, so the maps of the next slider move never wait for it; once a
        newer update exists it publishes nothing and stops within one batch of model passes
        (the core's checkpoints). The map worker's plain passes run beside its passes; a map
        pass that registers hooks (a capture) waits for at most that batch (the model's gate,
        :func:`camwidgets.core.model_lock`). Values are cached per result object: a method whose
        map did not change is not measured again; a stopped measurement leaves no value behind.
        """
        try:
            with cancel_when(lambda: self._stale(generation)):
                self._measure(exp, results, generation, label)
        except Cancelled:
            pass

    def _measure(self, exp: Explainer, results: dict[str, Any], generation: int, label: str) -> None:
        """AD and IC (one masked pass per map), then the curves (``curve_steps`` steps), then ADCC.

        ADCC runs last: its coherency re-runs each method on the masked image, as costly as the
        method itself (a region map: one pass per channel or position). The status line says
        which method it re-runs; a newer update stops it at the core's next checkpoint.
        """
        t0 = time.perf_counter()
        model, pre, img, tgt = self.model, self.preprocess, exp.image, exp.target
        columns = ("AD ↓", "IC ↑", "ADCC ↑", "insertion ↑", "deletion ↓")
        caches = {m: self._metrics_cache.setdefault(r, {}) for m, r in results.items()}
        rows = {m: {k: caches[m].get(k) for k in columns} for m in results}
        self.metrics_panel.update_rows(rows)

        def publish() -> bool:
            if self._stale(generation):
                return False
            self.metric_values = {m: dict(v) for m, v in rows.items()}
            self.metrics_panel.update_rows(rows)
            return True

        for m, r in results.items():
            cached = caches[m]
            if "AD ↓" not in cached:
                if self._stale(generation):
                    return
                cc = M.confidence_change(model, img, r, target=tgt, preprocess=pre, logits=exp.logits_tensor[None])
                cached.update({"AD ↓": float(cc.average_drop), "IC ↑": float(cc.increase_in_confidence)})
            rows[m].update({k: cached[k] for k in ("AD ↓", "IC ↑")})
        if not publish():
            return
        self.timings["metrics"] = time.perf_counter() - t0
        if self.compute_curves:
            t1 = time.perf_counter()
            curves: dict[str, dict[str, Any]] = {}
            for i, (m, r) in enumerate(results.items()):
                cached = caches[m]
                if "curves" not in cached:
                    if self._stale(generation):
                        return
                    self._set_status(f"{label}: maps in {self.timings['maps'] * 1000:.0f} ms; insertion / "
                                     f"deletion of {html.escape(METHOD_LABELS[m])} ({self.curve_steps} steps)…",
                                     0.8 + 0.1 * i / max(1, len(results)))
                    ins = M.insertion(model, img, r, target=tgt, preprocess=pre, steps=self.curve_steps)
                    dele = M.deletion(model, img, r, target=tgt, preprocess=pre, steps=self.curve_steps)
                    cached["insertion ↑"], cached["deletion ↓"] = float(ins.auc), float(dele.auc)
                    cached["curves"] = {"insertion": (ins.fractions, ins.curve),
                                        "deletion": (dele.fractions, dele.curve)}
                rows[m]["insertion ↑"], rows[m]["deletion ↓"] = cached["insertion ↑"], cached["deletion ↓"]
                curves[m] = cached["curves"]
            if not publish():
                return
            self.metrics_panel.update_curves(curves)
            self.timings["curves"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        for i, (m, r) in enumerate(results.items()):
            cached = caches[m]
            if "ADCC ↑" not in cached:
                if self._stale(generation):
                    return
                self._set_status(f"{label}: ADCC re-runs {html.escape(METHOD_LABELS[m])} on the masked image "
                                 f"({i + 1}/{len(results)})…", 0.9 + 0.1 * i / max(1, len(results)))
                cached["ADCC ↑"] = float(M.adcc(model, img, r, target=tgt, preprocess=pre).adcc)
            rows[m]["ADCC ↑"] = cached["ADCC ↑"]
            if not publish():
                return
        self.timings["adcc"] = time.perf_counter() - t2
        if not self._stale(generation):
            parts = [f"maps in {self.timings['maps'] * 1000:.0f} ms",
                     f"AD / IC in {self.timings['metrics'] * 1000:.0f} ms"]
            if "curves" in self.timings:
                parts.append(f"curves in {self.timings['curves'] * 1000:.0f} ms")
            parts.append(f"ADCC in {self.timings['adcc'] * 1000:.0f} ms")
            self._set_status(f"{label}: " + ", ".join(parts), 1.0)
            self._sync_state([self.metrics_panel.table, self.metrics_panel.curves])

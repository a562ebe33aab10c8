"""CAMExplorer: sliders for α, T and θ over live Grad-CAM / LayerCAM / I-CAM / Fusion-CAM panes.

The explorer is a thin view over an :class:`~camwidgets.widgets.controller.ExplorerController`
(the parameters, the explainers, the workers, the results and metrics: no widget in it).
It builds its controls from the method registry and its panes from the pane registry
(:mod:`camwidgets.widgets.panes`), and redraws a pane when the controller says something
it shows has changed.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import torch
from traitlets import Float, TraitError, Unicode, observe, validate

from ..core import methods as _registry
from ..core.explainer import Explainer
from ..core.preprocess import PreprocessLike
from ..datasets.samples import list_samples
from ..viz.cam import COLORSCALES
from .controller import (
    CURVE_STEPS,
    DEFAULT_METHODS,
    FAST_ABOVE_CHANNELS,
    LARGE_MODEL_CURVE_STEPS,
    METHOD_LABELS,
    SHARED_PARAMS,
    ExplorerController,
)
from .panes import PaneContext, PaneSpec, PaneView, pane_specs

__all__ = ["CURVE_STEPS", "DEFAULT_METHODS", "FAST_ABOVE_CHANNELS", "LARGE_MODEL_CURVE_STEPS", "CAMExplorer",
           "close_widgets", "widgets_under"]

_DISPLAY_TAB = "Display / export"


def _held_widgets(value: Any, depth: int = 3) -> Iterator[widgets.Widget]:
    """Widgets in ``value`` or in its dicts, lists and tuples (``depth`` levels down)."""
    if isinstance(value, widgets.Widget):
        yield value
    elif depth > 0 and isinstance(value, (dict, list, tuple)):
        for item in value.values() if isinstance(value, dict) else value:
            yield from _held_widgets(item, depth - 1)


def _ours(obj: object) -> bool:
    return any(c.__module__.startswith("camwidgets.") for c in type(obj).__mro__)


def widgets_under(root: widgets.Widget) -> list[widgets.Widget]:
    """``root`` and every widget it holds: its widget-valued traits (children, layout, style),
    recursively, and, for camwidgets' own widgets, the widgets held as attributes (also in
    dicts, lists and tuples), which need not be in the children tree now."""
    found: dict[int, widgets.Widget] = {}
    stack: list[widgets.Widget] = [root]
    while stack:
        w = stack.pop()
        if id(w) in found:
            continue
        found[id(w)] = w
        for name in w.keys:
            try:
                value = getattr(w, name)
            except Exception:  # a trait that cannot be read holds no widget of ours
                continue
            stack.extend(_held_widgets(value, 1))
        if _ours(w):
            stack.extend(_held_widgets(list(vars(w).values())))
    return list(found.values())


def close_widgets(root: widgets.Widget, owner: object | None = None) -> None:
    """Close ``root`` and every widget it holds (see :func:`widgets_under`).

    Each one leaves ipywidgets' registry and closes its comm. Buttons forget their click
    callbacks, and observers that are methods of ``owner`` are removed, so that a closed widget
    someone still holds keeps nothing of ``owner`` alive; panes drop the figure they showed.
    Closing again is fine.
    """
    for w in widgets_under(root):
        if owner is not None:
            for name, by_type in list(w._trait_notifiers.items()):
                for kind, handlers in list(by_type.items()):
                    for handler in list(handlers):
                        if getattr(handler, "__self__", None) is owner:
                            w.unobserve(handler, names=name, type=kind)
        if isinstance(w, widgets.Button):
            for callback in list(w._click_handlers.callbacks):
                w.on_click(callback, remove=True)
        if isinstance(w, PaneView):
            w.forget()
        widgets.Widget.close(w)


def _delegate(name: str, doc: str) -> property:
    def get(self: CAMExplorer) -> Any:
        return getattr(self.controller, name)

    def set_(self: CAMExplorer, value: Any) -> None:
        setattr(self.controller, name, value)

    return property(get, set_, doc=doc)


class CAMExplorer(widgets.VBox):
    """Explore CAMs of a model on an image with sliders, in JupyterLab or Notebook 7.

    Parameters
    ----------
    model : torch.nn.Module, optional
        The CNN to explain. None opens on the embedded demo model
        (:func:`camwidgets.load_demo_model`) and a bundled sample image.
    image : sample name, path, bytes, PIL image, array or tensor, optional
        The image; a name from :func:`camwidgets.list_samples` picks a bundled one. Default: with
        the demo model, a scene of two objects of two classes (``"pair-crescent-triangle"``), where the
        class dropdown moves the maps from one object to the other; with another model, a photo.
    target : int, optional
        Class to explain; None explains the predicted class.
    methods : sequence of str, optional
        Methods shown: any names from ``camwidgets.methods()`` (each has a toggle); by default
        the registry's entries marked ``in_explorer`` (:data:`DEFAULT_METHODS`).
    preprocess : Preprocess or torchvision transform, optional
        The model's preprocessing (required with a user model unless the model takes
        ``[0, 1]`` pixels as they are).
    class_names : sequence of str, optional
        Names of the model's classes (for the class dropdown).
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
        Compute on worker threads (one computation at a time, the latest value wins).
        False computes synchronously in the change (scripts, debugging).

    Parameters you can set from code (then call :meth:`wait`): ``alpha`` (0-1), ``threshold``
    (0.5-1), ``theta`` (0-50), ``bias``, ``n_perturbations``, ``target``, ``methods`` are the
    controller's traits (observe them on :attr:`controller`); ``opacity`` and ``colorscale``
    are the view's own traits (no recomputation).

    Attributes
    ----------
    controller : ExplorerController
        Everything computed (results, metrics, timings, the explainers), with no widget.
    panes : dict str -> PaneView
        Every pane built so far, by name: one per shown method (its map), ``"icam_scores"``,
        ``"icam_maps"``, ``"perturbations"``, ``"fusion"``, ``"metrics"``, ``"curves"``.
    figures : dict str -> plotly Figure
        The figure each shown pane draws now.
    results, metric_values, timings, map_updates, message, auto_params, curve_steps
        The controller's (see :class:`ExplorerController`).

    :meth:`close` closes every widget of the explorer, stops its workers and releases its
    explainers; a closed explorer computes nothing more.
    """

    opacity = Float(0.5, help="overlay opacity in [0, 1]")
    colorscale = Unicode("Jet", help="heatmap colour scale")

    alpha = _delegate("alpha", "I-CAM perturbation strength α in [0, 1]")
    threshold = _delegate("threshold", "I-CAM layer threshold T in [0.5, 1]")
    theta = _delegate("theta", "Fusion-CAM / UnionCAM denoise percentile θ in [0, 50]")
    bias = _delegate("bias", "I-CAM bias: 'channel', 'spatial' or 'none'")
    n_perturbations = _delegate("n_perturbations", "number of I-CAM perturbations (1-32)")
    target = _delegate("target", "explained class; None = the predicted class")
    methods = _delegate("methods", "methods shown (names from camwidgets.methods())")
    message = _delegate("message", "the last error shown in the status line ('' if none)")

    def __init__(self, model: torch.nn.Module | None = None, image: Any = None, target: int | None = None,
                 methods: Sequence[str] | None = None, *, preprocess: PreprocessLike = None,
                 class_names: Sequence[str] | None = None, metrics: bool = True, curves: bool = True,
                 curve_steps: int | None = None, background: bool = True, alpha: float = 0.4,
                 threshold: float = 0.95, theta: float = 10.0, bias: str = "channel",
                 n_perturbations: int = 8, method_params: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        # First: close() (also run by ipywidgets' __del__) must work on an explorer whose construction failed.
        self._closed = False
        self._links: list[Any] = []
        # Every argument is checked (a bad image, model, method or value fails) before any widget exists.
        self.controller = ExplorerController(
            model, image, target, methods, preprocess=preprocess, class_names=class_names, metrics=metrics,
            curves=curves, curve_steps=curve_steps, background=background, alpha=alpha, threshold=threshold,
            theta=theta, bias=bias, n_perturbations=n_perturbations, method_params=method_params, start=False)
        self.panes: dict[str, PaneView] = {}
        self._draw_lock = threading.RLock()
        self._syncing = False
        super().__init__()
        self._build()
        self.controller.subscribe(self._on_event)
        self.controller.observe(self._on_controller_param, names=["methods", "target"])
        self.controller.start()

    # -- the controller's state, read through --------------------------------------------------
    model = property(lambda self: self.controller.model)
    preprocess = property(lambda self: self.controller.preprocess)
    class_names = property(lambda self: self.controller.class_names)
    results = property(lambda self: self.controller.results)
    metric_values = property(lambda self: self.controller.metric_values)
    timings = property(lambda self: self.controller.timings)
    map_updates = property(lambda self: self.controller.map_updates)
    auto_params = property(lambda self: self.controller.auto_params)
    method_params = property(lambda self: self.controller.method_params)
    curve_steps = property(lambda self: self.controller.curve_steps)
    explainer = property(lambda self: self.controller.explainer,
                         doc="The core Explainer behind the current image and class.")

    @property
    def figures(self) -> dict[str, Any]:
        """The figure each shown pane draws now, by pane name."""
        shown = {spec.name for spec in pane_specs(self.controller)}
        return {n: p.figure for n, p in self.panes.items() if p.figure is not None and n in shown}

    @validate("opacity")
    def _v_opacity(self, p: dict[str, Any]) -> float:
        return min(1.0, max(0.0, float(p["value"])))

    # -- building the widget (once) ---------------------------------------------------------
    def _slider(self, trait: str, lo: float, hi: float, step: float, label: str, owner: Any,
                width: str = "300px") -> widgets.FloatSlider:
        s = widgets.FloatSlider(value=getattr(owner, trait), min=lo, max=hi, step=step, description=label,
                                continuous_update=True, readout_format=".2f" if step < 1 else ".0f",
                                style={"description_width": "initial"}, layout=widgets.Layout(width=width))
        self._links.append(widgets.link((s, "value"), (owner, trait)))
        return s

    def _build(self) -> None:
        c = self.controller
        samples = list_samples()
        self.image_picker = widgets.Dropdown(
            options=[*samples, "(uploaded)"] if c.image_label not in samples else samples,
            value=c.image_label if c.image_label in samples else None,
            description="image", layout=widgets.Layout(width="260px"))  # "pair-crescent-triangle" in full
        self.image_picker.observe(self._on_pick, "value")
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload",
                                         layout=widgets.Layout(width="auto"))
        self.upload.observe(self._on_upload, "value")
        # index=0, not value=None: a Dropdown shows value None as no selection (a blank box).
        self.target_picker = widgets.Dropdown(options=c.target_options, index=0, description="class",
                                              layout=widgets.Layout(width="300px"))
        self.target_picker.observe(self._on_target_pick, "value")
        self.method_toggles = {
            m: widgets.ToggleButton(value=m in c.methods, description=label, tooltip=_registry.get(m).reference,
                                    layout=widgets.Layout(width="auto", height="26px"))
            for m, label in METHOD_LABELS.items()
        }
        for b in self.method_toggles.values():
            b.observe(self._on_toggle, "value")
        self.sliders = {
            "alpha": self._slider("alpha", 0.0, 1.0, 0.05, "α (I-CAM)", c),
            "threshold": self._slider("threshold", 0.5, 1.0, 0.01, "T (I-CAM)", c),
            "theta": self._slider("theta", 0.0, 50.0, 1.0, "θ (Fusion-CAM)", c),
            "opacity": self._slider("opacity", 0.0, 1.0, 0.05, "opacity", self),
        }
        self.n_slider = widgets.IntSlider(value=c.n_perturbations, min=1, max=32, description="n (I-CAM)",
                                          continuous_update=False, layout=widgets.Layout(width="260px"))
        self._links.append(widgets.link((self.n_slider, "value"), (c, "n_perturbations")))
        # ipywidgets 8 draws a ToggleButtons description above the buttons: a Label beside them instead.
        self.bias_picker = widgets.ToggleButtons(options=["channel", "spatial", "none"], value=c.bias,
                                                 style={"button_width": "80px"}, layout=widgets.Layout(width="auto"))
        self._links.append(widgets.link((self.bias_picker, "value"), (c, "bias")))
        self.colorscale_picker = widgets.Dropdown(options=list(COLORSCALES), value=self.colorscale,
                                                  description="colours", layout=widgets.Layout(width="200px"))
        self._links.append(widgets.link((self.colorscale_picker, "value"), (self, "colorscale")))
        self.export_folder = widgets.Text(value="camwidgets-export", description="export to",
                                          layout=widgets.Layout(width="300px"))
        self.export_buttons = {k: widgets.Button(description=label, icon="download",
                                                 layout=widgets.Layout(width="auto"))
                               for k, label in (("png", "PNG"), ("html", "HTML"), ("json", "JSON"))}
        for k, b in self.export_buttons.items():
            b.on_click(lambda _b, kind=k: self._export(kind))
        self.status = widgets.HTML(value="")
        self.progress = widgets.FloatProgress(value=0, min=0, max=1, layout=widgets.Layout(width="100px"))
        # Each shown method's own parameters (from the method registry), e.g. Fusion-CAM's region map.
        self.param_controls: dict[str, dict[str, widgets.Widget]] = {}
        self.options_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.options_note = widgets.HTML(value="")
        self.maps_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.details = widgets.Tab()
        self._tab_boxes: dict[str, widgets.VBox] = {}
        self.sanity_button = widgets.Button(description="sanity check", icon="flask",
                                            tooltip="model-parameter randomisation test of the shown maps",
                                            layout=widgets.Layout(width="auto"))
        self.sanity_button.on_click(lambda _b: self.controller.run_sanity())
        self.display_box = widgets.VBox([
            widgets.HBox([self.sliders["opacity"], self.colorscale_picker]),
            widgets.HBox([self.export_folder, *self.export_buttons.values()]),
            widgets.HBox([self.sanity_button, widgets.HTML(
                "<small>Re-initialises a copy of the model layer by layer from the top and compares each map "
                "with the trained model's (Adebayo et al., Sanity Checks for Saliency Maps, 2018): a map that "
                "stays the same does not explain the model. A few seconds on the demo model.</small>")],
                layout=widgets.Layout(align_items="center")),
        ])
        controls = widgets.VBox([
            widgets.HBox([self.image_picker, self.upload, self.target_picker, self.progress, self.status],
                         layout=widgets.Layout(align_items="center", flex_flow="row wrap")),
            widgets.HBox(list(self.method_toggles.values()), layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.sliders["alpha"], self.sliders["threshold"], self.sliders["theta"]],
                         layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([widgets.Label("bias (I-CAM)"), self.bias_picker, self.n_slider, self.options_box],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
            self.options_note,
        ])
        self.children = [controls, self.maps_box, self.details]
        self._refresh_layout()

    def _pane(self, spec: PaneSpec) -> PaneView:
        """The view of a pane, built on first use (a pane's figure is drawn when it has inputs)."""
        if spec.name not in self.panes:
            self.panes[spec.name] = PaneView(spec)
        pane = self.panes[spec.name]
        pane.spec = spec
        return pane

    def _param_control(self, method: str, param: _registry.Param) -> widgets.Widget:
        """A control for one registry parameter (slider, dropdown or checkbox), built from its entry."""
        label = f"{param.name} ({METHOD_LABELS[method]})"
        value = self.controller.method_params.get(method, {}).get(param.name, param.default)
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
            try:
                self.controller.set_method_param(m, p, change["new"])
            except ValueError as err:
                self.controller.show_error(err)
            self.options_note.value = self.controller.auto_note()

        w.observe(changed, "value")
        return w

    def _options_for(self, method: str) -> list[widgets.Widget]:
        """The controls of ``method``'s own parameters (built once; none for the shared ones)."""
        if method not in self.param_controls:
            self.param_controls[method] = {
                p.name: self._param_control(method, p) for p in _registry.get(method).params
                if p.control and p.kind != "layer" and p.name not in SHARED_PARAMS}
        return list(self.param_controls[method].values())

    def _refresh_layout(self) -> None:
        """Place the shown panes: maps in the row, the others in their tabs (after a methods change)."""
        c = self.controller
        specs = pane_specs(c)
        self.maps_box.children = [self._pane(s) for s in specs if s.tab is None]
        tabs: dict[str, list[widgets.Widget]] = {}
        for s in specs:
            if s.tab is not None:
                tabs.setdefault(s.tab, []).append(self._pane(s))
        boxes = []
        for title, panes in tabs.items():
            box = self._tab_boxes.get(title)
            if box is None:
                box = self._tab_boxes[title] = widgets.VBox(
                    layout=widgets.Layout(flex_flow="row wrap" if title == "Metrics" else "column"))
            box.children = panes
            boxes.append((title, box))
        boxes.append((_DISPLAY_TAB, self.display_box))
        old_titles, selected = self.details.titles, self.details.selected_index
        current = old_titles[selected] if selected is not None and selected < len(old_titles) else None
        titles = [t for t, _ in boxes]
        self.details.children = [b for _, b in boxes]
        self.details.titles = tuple(titles)
        self.details.selected_index = titles.index(current) if current in titles else 0
        self.options_note.value = c.auto_note()
        self.options_box.children = [w for m in METHOD_LABELS if m in c.methods for w in self._options_for(m)]

    # -- drawing --------------------------------------------------------------------------------
    def _context(self) -> PaneContext:
        return PaneContext(self.controller, self.opacity, self.colorscale)

    def _draw(self) -> None:
        """Redraw every shown pane whose inputs changed (from either worker: one at a time)."""
        with self._draw_lock:
            if self._closed:
                return
            ctx = self._context()
            for spec in pane_specs(self.controller):
                self._pane(spec).draw(ctx)

    def _on_event(self, event: str) -> None:
        if self._closed:
            return
        if event == "status":
            c = self.controller
            self.status.value = c.status
            self.progress.value = c.progress
            self.progress.bar_style = c.level  # the controller's levels are the progress bar's styles
            return
        if event == "image":
            self._syncing = True
            try:
                self.target_picker.options = self.controller.target_options
                self._show_target()
            finally:
                self._syncing = False
        if event == "sanity":  # its tab comes or goes with the result
            self._refresh_layout()
            if self.controller.sanity is not None and "Sanity check" in self.details.titles:
                self.details.selected_index = self.details.titles.index("Sanity check")
        if event in ("map", "maps", "metrics", "curves", "image", "sanity"):
            self._draw()

    @observe("opacity", "colorscale")
    def _on_style(self, change: dict[str, Any]) -> None:
        if hasattr(self, "controller") and not self._closed:
            self._draw()

    def _on_controller_param(self, change: dict[str, Any]) -> None:
        if self._closed:
            return
        if change["name"] == "methods":
            self._syncing = True  # the toggles follow the trait, not the other way round
            try:
                for m, b in self.method_toggles.items():
                    b.value = m in self.controller.methods
            finally:
                self._syncing = False
            self._refresh_layout()
            self._draw()
        else:
            self._show_target()

    def _on_toggle(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        chosen = [m for m, b in self.method_toggles.items() if b.value]
        if chosen != self.controller.methods:
            self.controller.methods = chosen

    def _on_target_pick(self, change: dict[str, Any]) -> None:
        if self._syncing or change["new"] == self.controller.target:
            return
        try:
            self.controller.target = change["new"]
        except (TraitError, ValueError) as err:
            self.controller.show_error(err)

    def _show_target(self) -> None:
        """Select the current target in the class dropdown, by index: its "predicted" option has the
        value None, and a Dropdown set to value None shows no selection (a blank box)."""
        target = self.controller.target
        values = [v for _, v in self.target_picker.options]
        if target in values and self.target_picker.index != values.index(target):
            syncing, self._syncing = self._syncing, True
            try:
                if target is None:
                    # A change of value *to* None clears the selection: make it first, then select.
                    self.target_picker.value = None
                self.target_picker.index = values.index(target)
            finally:
                self._syncing = syncing

    def _on_pick(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        if change["new"] and change["new"] != "(uploaded)" and change["new"] != self.controller.image_label:
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

    # -- public ---------------------------------------------------------------------------------
    def set_image(self, image: Any, label: str | None = None) -> bool:
        """Show a new image (sample name, path, bytes, PIL, array or tensor).

        A bad image shows its error in the status line and leaves the explorer as it was;
        returns whether the image was accepted (a closed explorer accepts none).
        """
        if self._closed:
            return False
        # The picker first (guarded: new options re-select the first one, which is no pick of the user's).
        ok = self.controller.set_image(image, label=label)
        if ok:
            name = self.controller.image_label
            self._syncing = True
            try:
                if name not in self.image_picker.options:
                    self.image_picker.options = [o for o in self.image_picker.options if o != "(uploaded)"] + [
                        "(uploaded)"]
                    self.image_picker.value = "(uploaded)"
                else:
                    self.image_picker.value = name
            finally:
                self._syncing = False
        return ok

    def wait(self, timeout: float | None = 600) -> bool:
        """Block until pending computations have finished and the panes are drawn."""
        return self.controller.wait(timeout)

    def close(self) -> None:
        """Close the explorer: every widget in it, its links and workers; release its explainers.

        Every widget of the explorer (controls, panes, tabs, layouts and styles, also those held
        only as attributes) leaves ipywidgets' registry and closes its comm; the sliders' links
        are unlinked; a computation still running stops at the core's next checkpoint, waiting
        ones are dropped and both worker threads end; the explainers (the model's cached
        activations and gradients), results and figures are released. The model is not
        touched. Closing again is fine.
        """
        if getattr(self, "_closed", True):  # closed already, or construction failed before __init__ began
            return
        self._closed = True
        controller = getattr(self, "controller", None)
        if controller is not None:
            controller.close()
            controller.unobserve_all()
        for link in self._links:
            link.unlink()
        self._links.clear()
        close_widgets(self, owner=self)

    # -- export -----------------------------------------------------------------------------------
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
        for name, fig in self.figures.items():
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
            self.controller.show_error(err)
            return
        self.status.value = f"saved {html.escape(where)}"

    def export_html(self, path: str | Path) -> Path:
        """Save every visible figure in one standalone HTML file (plotly.js inlined: works offline)."""
        path = Path(path)
        parts = [f"<h2>camwidgets: {html.escape(self.controller.image_label)}</h2>"]
        for i, (name, fig) in enumerate(self.figures.items()):
            parts.append(f"<h3>{html.escape(self.panes[name].spec.title)}</h3>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
        path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                        + "\n".join(parts) + "</body></html>", encoding="utf-8")
        return path

    def export_json(self, path: str | Path | None = None) -> dict[str, Any]:
        """The parameters, results (maps as nested lists) and metrics as JSON (and to ``path``)."""
        c = self.controller
        exp: Explainer | None = c.explainer
        doc: dict[str, Any] = {
            "image": c.image_label,
            "target": None if exp is None else exp.target,
            "target_name": None if exp is None or c.class_names is None else c.class_names[exp.target],
            "params": {"alpha": c.alpha, "threshold": c.threshold, "theta": c.theta, "bias": c.bias,
                       "n_perturbations": c.n_perturbations},
            "results": {m: {"params": dict(r.params), "layer": r.layer, "map": r.map.tolist()}
                        for m, r in c.results.items()},
            "metrics": c.metric_values,
        }
        if path is not None:
            Path(path).write_text(json.dumps(doc), encoding="utf-8")
        return doc

"""Capture activations and gradients of many layers in one forward and one backward pass.

Design (what the tests check):

* Hooks live only inside a ``with`` block and are removed on exit, also when the
  forward pass raises. The model is put in eval mode for the pass and every module's
  ``training`` flag is restored afterwards; parameters' ``requires_grad`` flags are
  never touched.
* Gradients are taken with :func:`torch.autograd.grad` with respect to the captured
  activations and the input, never with ``.backward()``: nothing accumulates in the
  parameters' ``.grad``, frozen parameters do not matter (the input is made to require
  grad), and the pass works inside ``torch.no_grad()`` and ``torch.inference_mode()``
  because it re-enables both.
* A later in-place operation on a captured output (a ``ReLU(inplace=True)`` after a
  hooked conv or BatchNorm, ``out += identity``) would overwrite what was captured and
  change which tensor the gradient is taken of. :func:`capture` records each output's
  version counter when its hook fires and, if any changed by the end of the forward pass,
  runs the pass again with hooks that store the output and hand a *clone* on to the rest
  of the network. Most models (torchvision's blocks) never modify a block's output, so
  they pay for no copy; the others pay for a second forward pass, never for a wrong map.
* Threads share a model safely: plain passes of a model already in eval mode run side by
  side (:func:`eval_mode` holds the model's gate *shared*), while a block that registers
  hooks (:func:`forward_hooks`, Ablation-CAM's channel hook) or changes modes (a model
  left in train mode) holds it *exclusively* (:func:`model_lock`). So no pass of one
  thread goes through another thread's hooks, no thread records another's "eval" as the
  model's own mode, and the explorer's map worker never waits for the metrics worker's
  plain passes. A thread that holds the gate shared and asks for it exclusively (ADCC
  re-explaining inside its own block) gives up its shared hold while it waits, so two
  such threads cannot deadlock; it gets it back when the exclusive block ends.
* A compiled model runs its original modules whenever hooks are registered: a
  ``torch.compile(model)`` wrapper (``OptimizedModule``) is unwrapped to ``model._orig_mod``
  (:func:`unwrap_model`; the same modules and parameters, so results equal the uncompiled
  model's), and inside :func:`forward_hooks` modules compiled in place
  (``Module.compile()``) and compiled submodules run their eager code. A compiled graph
  neither sees hooks registered after it was traced nor keeps a hook's output on the
  autograd path, which gave all-zero gradients. Plain passes (:func:`batch_logits`) still
  run the compiled model.
* A captured layer that no gradient reaches (its output is not on the autograd path to
  the logits) raises ``ValueError`` naming the layer; a zero gradient is never made up.
* Vision transformers: with ``reshape="auto"`` (what the explainer passes) a layer's token
  sequence ``(N, T, C)`` or channels-last map ``(N, H', W', C)`` is folded to ``(N, C, h, w)``
  (:mod:`camwidgets.core.tokens`), and its gradient, taken with respect to the layer's own
  output, is folded by the same function; a user's ``reshape`` callable is applied the same way.
* Long loops call :func:`checkpoint` between batches: inside :func:`cancel_when`, a
  computation that is no longer wanted raises :class:`Cancelled` there, with its hooks
  removed and modes restored like any other exception.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from .tokens import Layout, Reshape, check_folded, infer_layout

__all__ = ["Cancelled", "Capture", "ReshapeSpec", "batch_logits", "cancel_when", "capture", "checkpoint", "eval_mode",
           "forward_hooks", "model_device", "model_dtype", "model_lock", "target_scores", "unwrap_model"]

_ORIG = "_orig_mod"  # where torch.compile's OptimizedModule keeps the module it wraps


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile(model)`` wrapper compiles (``model._orig_mod``); other models as they are.

    ``torch.compile`` returns an ``OptimizedModule`` whose only child is the original module:
    the same submodules, parameters and buffers, so running it gives the uncompiled
    model's results. camwidgets registers its hooks and runs its hooked passes on it, and
    names layers relative to it (``"layer4.1"``, not ``"_orig_mod.layer4.1"``).
    """
    while isinstance(model._modules.get(_ORIG), nn.Module) and type(model).__name__ == "OptimizedModule":
        model = model._modules[_ORIG]  # type: ignore[assignment]
    return model


def strip_compiled_prefix(model: nn.Module, name: str) -> str:
    """``name`` relative to :func:`unwrap_model` ``(model)``: leading ``"_orig_mod."`` parts (the
    names a ``torch.compile`` wrapper's ``named_modules()`` gives) removed."""
    base = unwrap_model(model)
    if _ORIG not in base._modules:
        while name.startswith(_ORIG + "."):
            name = name[len(_ORIG) + 1:]
    return name


@contextmanager
def _eager(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s compiled parts eagerly inside the block (the caller holds the model's gate).

    A module compiled in place (``Module.compile()``) gets its plain ``__call__`` back, and a
    ``torch.compile`` wrapper held as a submodule is replaced by the module it wraps in its
    parent (the same module objects, so hooks registered on them fire). Both are restored on
    exit, also on error.
    """
    compiled = [m for m in model.modules() if m.__dict__.get("_compiled_call_impl") is not None]
    wrapped = [(parent, key, child) for parent in model.modules() for key, child in parent._modules.items()
               if child is not None and unwrap_model(child) is not child]
    saved = [(m, m.__dict__["_compiled_call_impl"]) for m in compiled]
    try:
        for m in compiled:
            m.__dict__["_compiled_call_impl"] = None
        for parent, key, child in wrapped:
            parent._modules[key] = unwrap_model(child)
        yield
    finally:
        for parent, key, child in reversed(wrapped):
            parent._modules[key] = child
        for m, impl in saved:
            m.__dict__["_compiled_call_impl"] = impl


class _Gate:
    """A reader/writer lock for one model: re-entrant, writers preferred, shared holds given up
    (and taken back) around an exclusive hold of the same thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread id -> shared holds
        self._writer: int | None = None
        self._depth = 0
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._writer != me and not self._readers.get(me):
                self._cond.wait_for(lambda: self._writer is None and not self._writers_waiting)
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        held = 0
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                held = self._readers.pop(me, 0)  # waiting while holding it shared could deadlock
                self._cond.notify_all()
                self._writers_waiting += 1
                try:
                    self._cond.wait_for(lambda: self._writer is None and not self._readers)
                finally:
                    self._writers_waiting -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    if held:
                        self._readers[me] = held
                self._cond.notify_all()


_GATES: weakref.WeakKeyDictionary[nn.Module, _Gate] = weakref.WeakKeyDictionary()
_GATES_GUARD = threading.Lock()


def _gate(model: nn.Module) -> _Gate:
    model = unwrap_model(model)  # a torch.compile wrapper shares its module's gate
    with _GATES_GUARD:
        gate = _GATES.get(model)
        if gate is None:
            gate = _GATES[model] = _Gate()
        return gate


def model_lock(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Exclusive use of ``model`` for the ``with`` block: no camwidgets pass of another thread
    runs meanwhile (re-entrant; one gate per model object).

    camwidgets holds it while hooks are registered on the model or its modes are changed;
    plain passes of a model in eval mode share the gate. Code of your own that hooks or
    trains the same model while camwidgets works on it on another thread can hold it too:
    ``with model_lock(model): ...``.
    """
    return _gate(model).exclusive()


class Cancelled(Exception):
    """A computation stopped at a :func:`checkpoint` because its :func:`cancel_when` predicate held."""


_CANCEL = threading.local()


@contextmanager
def cancel_when(predicate: Callable[[], bool]) -> Iterator[None]:
    """Inside the block, on this thread, :func:`checkpoint` raises :class:`Cancelled` once
    ``predicate()`` is true. The core checks between batches of model passes, so a long
    computation (Score-CAM's masked passes, insertion and deletion curves, ADCC) stops
    within one batch of the predicate turning true. Blocks nest; the inner predicate and
    every outer one are checked.
    """
    outer = getattr(_CANCEL, "predicates", ())
    _CANCEL.predicates = (*outer, predicate)
    try:
        yield
    finally:
        _CANCEL.predicates = outer


def checkpoint() -> None:
    """Raise :class:`Cancelled` if a :func:`cancel_when` predicate of this thread holds."""
    for predicate in getattr(_CANCEL, "predicates", ()):
        if predicate():
            raise Cancelled("stopped: the computation is no longer wanted")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 if it has none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode; restore each module's own ``training`` flag on exit.

    A model already in eval mode is left untouched and its gate held shared (other threads'
    plain passes run alongside); otherwise the modes change, and the gate is held
    exclusively (modes are per model, not per thread)."""
    gate = _gate(model)
    with gate.shared():
        if not any(m.training for m in model.modules()):
            yield model
            return
    with gate.exclusive():
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield model
        finally:
            for m, flag in flags:
                m.training = flag


@contextmanager
def forward_hooks(model: nn.Module, layers: Sequence[str], *, clone: bool = True,
                  drop_reused: bool = False, versions: dict[str, int] | None = None
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` (dotted names) during the forward passes inside the block.

    Yields a dict ``name -> output`` filled by each forward pass. With ``clone=True`` the
    network continues with a copy of each output, so in-place operations downstream
    leave the recorded tensor (and its gradient) intact. ``versions``, if given, receives
    each recorded output's version counter at the moment it was recorded: an output whose
    counter differs after the pass was changed in place downstream.

    A layer that runs more than once per forward pass (a shared module) has no single
    activation: by default the block raises ``ValueError`` when it ends; with
    ``drop_reused=True`` such layers are removed from the dict instead (for layers chosen
    automatically, not by the user), unless every layer ran more than once.

    A ``torch.compile`` wrapper is unwrapped (:func:`unwrap_model`): the hooks go on the
    original modules, so run ``unwrap_model(model)`` inside the block (the wrapper's
    compiled graph would not keep the hooks' outputs on the autograd path). Modules
    compiled in place (``Module.compile()``) and compiled submodules run eagerly while the
    block lasts. Names may carry the wrapper's ``"_orig_mod."`` prefix or not.
    """
    store: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []
    base = unwrap_model(model)

    def make_hook(name: str) -> Callable[[nn.Module, object, object], object]:
        def hook(module: nn.Module, args: object, output: object) -> object:
            calls[name] = calls.get(name, 0) + 1
            if not isinstance(output, torch.Tensor):
                store[name] = output  # type: ignore[assignment]  # checked by the caller
                return None
            store[name] = output
            if versions is not None:
                versions[name] = output._version
            return output.clone() if clone else None

        return hook

    # Hooks fire for every thread's passes of the model: no other thread may run one meanwhile.
    with model_lock(base):
        # Looked up before _eager swaps compiled submodules out of their parents (names may pass through them).
        modules = [(name, base.get_submodule(strip_compiled_prefix(base, name))) for name in layers]
        with _eager(base):
            try:
                for name, module in modules:
                    handles.append(module.register_forward_hook(make_hook(name)))
                yield store
                again = [n for n, c in calls.items() if c > 1]
                if again and drop_reused and len(again) < len(calls):
                    for n in again:
                        store.pop(n, None)
                elif again:
                    raise ValueError(
                        f"Layer(s) {again} ran more than once in one forward pass (a shared module, e.g. the "
                        "ReLU a torchvision BasicBlock calls twice, or one nn.ReLU used after every conv), "
                        "so their activation is ambiguous. Pick the enclosing block or a module that runs once."
                    )
            finally:
                for h in handles:
                    h.remove()
                calls.clear()


@dataclass(frozen=True, eq=False)
class Capture:
    """What one forward + backward pass recorded (all tensors detached, on the model's device).

    Attributes
    ----------
    logits : Tensor (N, C)
        ``S``, the model's output.
    targets : Tensor (N,) long
        The class ``c_i`` explained for each image.
    activations : dict name -> Tensor (N, K, h, w)
        ``A`` at each layer.
    gradients : dict name -> Tensor (N, K, h, w)
        ``g = dS_c/dA`` at each layer (empty if no gradients were asked for).
    input_grad : Tensor (N, 3, H, W) or None
        ``dS_c/dx`` with respect to the normalised model input.
    layouts : dict name -> Layout
        How each layer's output was folded into ``(N, K, h, w)`` (``reshape`` given; a
        ``"nchw"`` layout for outputs used as they are). Without ``reshape`` it is empty and
        activations are the layers' outputs as they are.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    input_grad: torch.Tensor | None
    layouts: dict[str, Layout] = field(default_factory=dict)


#: What :func:`capture` does with a layer's output: None keeps it as it is, ``"auto"`` folds token
#: sequences and channels-last maps (:func:`camwidgets.core.tokens.infer_layout`), a callable is the
#: user's fold (tokens in, ``(N, C, h, w)`` out).
ReshapeSpec = Literal["auto"] | Reshape | None


def _folds(reshape: ReshapeSpec, outputs: Mapping[str, torch.Tensor], size: Sequence[int],
           model: nn.Module) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Layout]]:
    """The fold of every layer output that ``reshape`` turns into a feature map, and its layout."""
    folds: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Layout]] = {}
    if reshape is None:
        return folds
    for name, t in outputs.items():
        shape = tuple(int(s) for s in t.shape[1:])
        if callable(reshape):
            user = reshape

            def fold(u: torch.Tensor, name: str = name, user: Reshape = user) -> torch.Tensor:
                return check_folded(name, u, user(u))

            folds[name] = (fold, Layout("custom", shape, (0, 0)))  # the grid is known once folded
        elif reshape == "auto":
            layout = infer_layout(t.shape, size, model)
            if layout is not None:
                folds[name] = (layout.fold, layout)
        else:
            raise ValueError(f"reshape must be None, 'auto' or a callable, got {reshape!r}.")
    return folds


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``S[i, c_i]`` for each row: shape ``(N,)``."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def _targets(logits: torch.Tensor, target: int | Sequence[int | None] | torch.Tensor | None) -> torch.Tensor:
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, (list, tuple)) and any(v is None for v in target):
        # one target per image, None for that image's predicted class
        if len(target) != n:
            raise ValueError(f"Got {len(target)} targets for a batch of {n} images; "
                             "pass one target or one per image.")
        top = logits.argmax(dim=1).tolist()
        target = [top[i] if v is None else v for i, v in enumerate(target)]
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"Got {t.numel()} targets for a batch of {n} images; "
                         "pass one target or one per image.")
    bad = [int(v) for v in t.tolist() if not 0 <= v < num_classes]
    if bad:
        raise ValueError(
            f"Target class {bad[0]} is out of range: the model has {num_classes} classes "
            f"(valid indices 0..{num_classes - 1}). Pass target=None for the predicted class."
        )
    return t.clone()


def _unreachable(what: str) -> str:
    return (
        f"No gradient of the target score reaches {what}: it is not on the autograd path from the "
        "model's input to its logits, so its gradient is undefined (not zero). Likely causes: the model "
        "is compiled or traced in a way camwidgets cannot undo (torch.jit.trace / script, torch.fx or "
        "torch.export graphs; torch.compile wrappers and Module.compile() are undone automatically), "
        "so the hooked output is not the one the graph uses; the model computes it under "
        "torch.no_grad() or detaches it (.detach(), .item(), numpy) in its forward; or it does not "
        "feed the output at all (an auxiliary branch). Fix: explain the original nn.Module, remove the "
        "no_grad / detach from the forward pass, or pick a layer the logits depend on."
    )


def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str],
            target: int | Sequence[int | None] | torch.Tensor | None = None, *,
            gradients: bool | Callable[[Mapping[str, torch.Tensor]], Sequence[str]] = True,
            input_grad: bool = False,
            check_target: bool = True, drop_reused: bool = False, reshape: ReshapeSpec = None) -> Capture:
    """One forward and (if asked) one backward pass recording ``A`` and ``dS_c/dA`` at ``layers``.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode for the pass; its modes are restored afterwards, its parameters
        and their ``.grad`` are left untouched. A ``torch.compile`` wrapper is unwrapped
        (:func:`unwrap_model`): the pass runs the original modules, so activations,
        gradients and logits equal those of the uncompiled model.
    x : Tensor (N, 3, H, W)
        Normalised model input (moved to the model's device and dtype).
    layers : sequence of str
        Dotted names of the layers to record (relative to the unwrapped model; a leading
        ``"_orig_mod."`` is accepted).
    target : int, sequence of N ints (or None), Tensor (N,) or None
        Class per image; None means the predicted class of each image (a None in the
        sequence: of that image). Out-of-range
        indices raise ``ValueError`` after the forward pass and before the backward.
    gradients : bool or callable
        Also compute ``g = dS_c/dA`` (one :func:`torch.autograd.grad` call for
        ``sum_i S[i, c_i]``; images do not interact in eval mode, so row ``i`` of each
        gradient is that image's own). A callable receives the recorded activations
        ``{name: A}`` after the forward pass and returns the names whose gradient is
        wanted: the backward pass then stops at the deepest of them (autograd runs only
        the part of the graph between the score and the requested tensors; no parameter
        gradient is computed).
    input_grad : bool
        Also return ``dS_c/dx``.
    drop_reused : bool
        Leave out layers that ran more than once in the pass instead of raising
        ``ValueError`` (for automatically chosen layers, e.g.
        :func:`~camwidgets.core.layers.candidate_layers`; a layer the user named should
        raise). Every layer running more than once still raises.
    reshape : None, "auto" or callable
        None records the layers' outputs as they are. ``"auto"`` folds token sequences
        ``(N, T, C)`` and channels-last maps ``(N, H', W', C)`` into ``(N, C, h, w)``
        (:func:`camwidgets.core.tokens.infer_layout`, with this input's size); outputs it
        does not recognise are kept as they are. A callable (tokens in, ``(N, C, h, w)``
        out, like pytorch-grad-cam's ``reshape_transform``) folds every layer. Gradients
        are taken with respect to the layer's output and folded by the same function;
        ``gradients``' callable sees the folded activations.

    Returns
    -------
    Capture
        Detached tensors; layers whose output is not a tensor are omitted.

    Raises
    ------
    ValueError
        A layer ran more than once (see ``drop_reused``); or a gradient was asked for and
        no gradient reaches a recorded tensor layer (or the input) from the target score,
        e.g. a layer computed under ``torch.no_grad()`` or detached inside the model: the
        message names the layers. A zero gradient is never substituted.
    """
    checkpoint()
    model = unwrap_model(model)
    device = model_device(model)
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        xin = x.detach().to(device=device, dtype=model_dtype(model)).clone()
        need_grad = bool(gradients) or input_grad
        if need_grad:
            xin.requires_grad_(True)
        versions: dict[str, int] = {}
        with forward_hooks(model, layers, clone=False, drop_reused=drop_reused, versions=versions) as store:
            logits = model(xin)
        if any(isinstance(t, torch.Tensor) and t._version != versions.get(n) for n, t in store.items()):
            # A later in-place operation changed a recorded output: run again, the network continuing
            # with copies, so each recorded tensor keeps its value and its own gradient.
            with forward_hooks(model, layers, clone=True, drop_reused=drop_reused) as store:
                logits = model(xin)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ValueError(
                "The model's output must be a logits tensor of shape (N, num_classes); got "
                f"{type(logits).__name__}{tuple(logits.shape) if isinstance(logits, torch.Tensor) else ''}. "
                "Wrap the model so that it returns the class scores."
            )
        targets = _targets(logits.detach(), target) if check_target else logits.argmax(1)
        raw = {n: t for n, t in store.items() if isinstance(t, torch.Tensor)}
        folds = _folds(reshape, raw, xin.shape[-2:], model)

        def folded(name: str, t: torch.Tensor) -> torch.Tensor:
            return folds[name][0](t) if name in folds else t

        acts = {n: folded(n, t.detach()) for n, t in raw.items()}
        grads: dict[str, torch.Tensor] = {}
        xgrad = None
        if need_grad:
            score = target_scores(logits, targets).sum()
            if callable(gradients):
                wanted = set(gradients(acts))
                names = [n for n in acts if n in wanted]
            else:
                names = list(acts) if gradients else []
            inputs = [raw[n] for n in names] + ([xin] if input_grad else [])
            # A tensor outside the graph (no requires_grad) gets None like an unused one.
            linked = [i for i, t in enumerate(inputs) if t.requires_grad]
            out: list[torch.Tensor | None] = [None] * len(inputs)
            if linked and score.requires_grad:
                got = torch.autograd.grad(score, [inputs[i] for i in linked], allow_unused=True)
                for i, g in zip(linked, got, strict=True):
                    out[i] = g
            missing = [n for n, g in zip(names, out, strict=False) if g is None]
            if missing:
                raise ValueError(f"Layer(s) {missing}: " + _unreachable("them"))
            if input_grad and out[-1] is None:
                raise ValueError(_unreachable("the model input"))
            found = [g.detach() for g in out if g is not None]  # all of them, checked above
            grads = {n: folded(n, g) for n, g in zip(names, found, strict=False)}
            if input_grad:
                xgrad = found[-1]
        result = Capture(
            logits=logits.detach(),
            targets=targets.detach(),
            activations=acts,
            gradients=grads,
            input_grad=xgrad,
            layouts={n: layout if layout.kind != "custom" else
                     replace(layout, grid=(int(acts[n].shape[-2]), int(acts[n].shape[-1])))
                     for n, (_, layout) in folds.items() if n in acts},
        )
        store.clear()
        raw.clear()
    return result


def batch_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of one batch ``(N, 3, H, W)`` without autograd, in eval mode: ``(N, C)``."""
    checkpoint()
    with torch.inference_mode(), eval_mode(model):
        out = model(x.to(device=model_device(model), dtype=model_dtype(model)))
    return out.clone()  # a normal (non-inference) tensor


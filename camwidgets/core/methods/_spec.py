"""What a registry entry is: :class:`Param` (one parameter) and :class:`Method` (one CAM method).

An entry carries everything the rest of camwidgets needs to know about a method without
running it: its name and label, its family, its parameters (type, range, default, help:
enough for :func:`camwidgets.evaluate` to validate a call before any work starts and for
the explorer to build a control), whether it needs gradients, which cached stage it
lives in, its references and the function that computes it.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FAMILIES", "Family", "Method", "Param", "ParamKind"]

#: The method families, in the order the docs and the explorer list them.
FAMILIES: tuple[str, ...] = ("gradient", "activation", "region", "fusion", "multi-layer", "perturbation")
Family = Literal["gradient", "activation", "region", "fusion", "multi-layer", "perturbation"]
ParamKind = Literal["float", "int", "choice", "layer", "bool"]


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    Attributes
    ----------
    name : str
        The keyword argument's name.
    kind : {"float", "int", "choice", "layer", "bool"}
        ``"layer"`` is a layer name or submodule (None: the explainer's default layer);
        it is resolved against the model, not here.
    default : Any
        The value used when the caller gives none.
    low, high : float or None
        Inclusive range of a number (None: unbounded on that side).
    choices : tuple or callable
        The allowed values of a ``"choice"``; a callable returning them is evaluated on
        use (e.g. "any method of the region family", which grows as methods are added).
    step : float or None
        The natural step of a control (a slider's step).
    help : str
        One line for a tooltip and the docs.
    control : bool
        Whether the explorer offers a control for it (False for settings that do not
        change the map, such as a batch size).
    exclusive_low : bool
        The range excludes ``low`` (e.g. ``sigma > 0``).
    fast_default : Any
        A cheaper value to use instead of ``default`` where the default's cost grows with the
        layer's channel count (Score-CAM runs one forward pass per channel): the explorer's
        choice on a large model, unless the user set the parameter. None: no such value.
    """

    name: str
    kind: ParamKind
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | Callable[[], Sequence[Any]] = ()
    step: float | None = None
    help: str = ""
    control: bool = True
    exclusive_low: bool = False
    fast_default: Any = None

    def allowed(self) -> tuple[Any, ...]:
        """The allowed values of a ``"choice"`` parameter (empty for other kinds)."""
        c = self.choices
        return tuple(c() if callable(c) else c)

    def describe(self) -> str:
        """The allowed values in words, e.g. ``"float in [0, 100]"``."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.allowed())
        if self.kind == "layer":
            return "a layer name or submodule (None: the default layer)"
        if self.kind == "bool":
            return "True or False"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{self.kind} in {'(' if self.exclusive_low or self.low is None else '['}{lo}, {hi}" \
               f"{')' if self.high is None else ']'}"

    def validate(self, value: Any, method: str = "") -> Any:
        """``value`` checked and converted (``int``/``float``/…); ValueError naming the range otherwise."""
        where = f"{method}: " if method else ""

        def bad() -> ValueError:
            return ValueError(f"{where}{self.name} must be {self.describe()}, got {value!r}.")

        if self.kind == "layer":
            return value
        if self.kind == "choice":
            if value not in self.allowed():
                raise bad()
            return value
        if self.kind == "bool":
            if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
                raise bad()
            return bool(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad()
        if self.kind == "int":
            if not isinstance(value, numbers.Integral) and not (isinstance(value, float) and value.is_integer()):
                raise bad()
            v: float | int = int(value)
        else:
            v = float(value)
            if math.isnan(v):
                raise bad()
        if self.low is not None and (v < self.low or (self.exclusive_low and v == self.low)):
            raise bad()
        if self.high is not None and v > self.high:
            raise bad()
        return v


@dataclass(frozen=True)
class Method:
    """One CAM method of the registry.

    Attributes
    ----------
    name : str
        What :meth:`Explainer.explain` and :func:`camwidgets.evaluate` take, e.g. ``"gradcam"``.
    label : str
        Its display name, e.g. ``"Grad-CAM"``.
    family : str
        ``"gradient"`` (channel weights from ``dS_c/dA``), ``"activation"`` (no gradient:
        CAM, EigenCAM), ``"region"`` (weights from forward passes of masked inputs or
        features), ``"fusion"`` (combines a gradient and a region map), ``"multi-layer"``
        (I-CAM) or ``"perturbation"`` (model-agnostic: LIME, KernelSHAP).
    params : tuple of Param
    compute : callable
        ``compute(explainer, **params) -> CAMResult`` with every parameter validated and
        the layer resolved to its dotted name. The explainer caches the result per
        parameters; ``compute`` caches its own intermediate stages with
        ``explainer.stage(key, fn)``.
    summary : str
        One sentence: what the method does.
    formula : str
        The map in one line (plain text / unicode).
    reference : str
        Paper (title, authors, year, arXiv id) and equation.
    implementation : str
        The reference implementation the tests compare against, and the tolerance.
    needs_gradients : bool
        Whether the method uses ``dS_c/dA`` (False: forward passes only).
    stage : str
        What the method's cost is cached in, and what a parameter change re-runs.
    notes : str
        Conventions where camwidgets departs from the paper or the reference, and by how much.
    in_explorer, in_evaluate : bool
        Shown by :class:`~camwidgets.CAMExplorer` / run by :func:`~camwidgets.evaluate` by default.
    """

    name: str
    label: str
    family: Family
    params: tuple[Param, ...]
    compute: Callable[..., Any]
    summary: str
    formula: str
    reference: str
    implementation: str
    needs_gradients: bool
    stage: str
    notes: str = ""
    in_explorer: bool = False
    in_evaluate: bool = False
    _by_name: Mapping[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {p.name: p for p in self.params})

    @property
    def param_names(self) -> tuple[str, ...]:
        """The parameters' names, in order."""
        return tuple(p.name for p in self.params)

    @property
    def layered(self) -> bool:
        """Whether the method explains one chosen layer (it has a ``layer`` parameter)."""
        return "layer" in self._by_name

    @property
    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` of every parameter."""
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        """The parameter called ``name`` (KeyError naming the valid ones otherwise)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no parameter {name!r}; its parameters are "
                           f"{list(self.param_names)}.") from None

    def resolve(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter's value: the defaults updated with ``params``, each validated.

        Raises
        ------
        ValueError
            An unknown parameter name (with the valid ones) or a value out of range
            (with the range), before any work starts.
        """
        params = dict(params or {})
        unknown = [k for k in params if k not in self._by_name]
        if unknown:
            raise ValueError(f"{self.name} has no parameter(s) {unknown}; its parameters are "
                             f"{list(self.param_names)}.")
        out = {}
        for p in self.params:
            out[p.name] = p.validate(params[p.name], self.name) if p.name in params else p.default
        return out

    def signature(self) -> inspect.Signature:
        """The call signature ``(params...)`` with their defaults (for ``help()`` and tab completion)."""
        return inspect.Signature([inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default)
                                  for p in self.params])

    def docstring(self) -> str:
        """A docstring for ``Explainer.<name>``, built from the entry."""
        lines = [f"{self.label}: {self.summary}", "", f"    {self.formula}", "", "Parameters", "----------"]
        for p in self.params:
            lines += [f"{p.name} : {p.describe()}, default {p.default!r}", f"    {p.help}"]
        lines += ["", "Returns", "-------", "CAMResult", "    ``map`` (H, W) in [0, 1] and the method's intermediates.",
                  "", "References", "----------", self.reference, "", f"Tested against: {self.implementation}"]
        if self.notes:
            lines += ["", "Notes", "-----", self.notes]
        return "\n".join(lines)

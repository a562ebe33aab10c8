"""The method registry: one entry per CAM method, read by everything that lists methods.

:class:`~camwidgets.core.explainer.Explainer` (``explain(name, **params)`` and
``exp.<name>(...)``), :func:`camwidgets.evaluate`, the explorer's method toggles and
parameter controls, and ``docs/methods.md`` all read :data:`REGISTRY`; no other list of
method names exists. Adding a method is one compute function and one :class:`Method`
entry beside it, in one family module of this package (and its tests); a new module's
``ENTRIES`` are added to :data:`REGISTRY` below.

>>> [m.name for m in methods(family="fusion")]
['unioncam', 'fusioncam']
>>> get("fusioncam").resolve({"theta": 20})["region"]
'scorecam'
"""

from __future__ import annotations

from collections.abc import Mapping

from . import activation as _activation
from . import fast_region as _fast_region
from . import fusion as _fusion
from . import gradient as _gradient
from . import icam as _icam
from . import perturbation as _perturbation
from . import region as _region
from . import smoothed as _smoothed
from ._spec import FAMILIES, Family, Method, Param, ParamKind

__all__ = ["FAMILIES", "REGISTRY", "Family", "Method", "Param", "ParamKind", "get", "methods", "names"]


def names(family: str | None = None) -> tuple[str, ...]:
    """Names of the registered methods (of one family), in registry order."""
    return tuple(m.name for m in methods(family))


def methods(family: str | None = None) -> tuple[Method, ...]:
    """The registered methods (of one family), in registry order."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"Unknown method family {family!r}; the families are {list(FAMILIES)}.")
    return tuple(m for m in REGISTRY.values() if family is None or m.family == family)


def get(name: str) -> Method:
    """The registry entry of ``name``; a ValueError listing the methods otherwise."""
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    raise ValueError(f"Unknown method {name!r}; choose from {', '.join(REGISTRY)} "
                     "(camwidgets.methods() lists them with their parameters).")


# ----------------------------------------------------------------------------------------
# The registry: each family module declares its entries beside their compute functions.
# ----------------------------------------------------------------------------------------
_ENTRIES: tuple[Method, ...] = (
    *_gradient.ENTRIES, *_activation.ENTRIES, *_region.ENTRIES, *_fast_region.ENTRIES, *_smoothed.ENTRIES,
    *_fusion.ENTRIES, *_icam.ENTRIES, *_perturbation.ENTRIES,
)

#: Every registered method by name, in the order the docs and the explorer list them.
REGISTRY: Mapping[str, Method] = {m.name: m for m in _ENTRIES}


def _check_registry() -> None:
    """Every entry's compute function takes exactly its parameters (catches a forgotten entry edit)."""
    import inspect

    for m in _ENTRIES:
        params = [p for p in inspect.signature(m.compute).parameters if p != "exp"]
        if sorted(params) != sorted(m.param_names):
            raise RuntimeError(f"registry entry {m.name!r}: compute takes {params}, entry declares "
                               f"{list(m.param_names)}.")


_check_registry()

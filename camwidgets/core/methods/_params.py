"""Parameters shared by several methods' registry entries, and the families' choices."""

from __future__ import annotations

from ._spec import Param

__all__ = ["BATCH_SIZE", "LAYER", "PGC", "THETA", "baseline", "family_choice"]

#: The reference implementation of the classic gradient and region methods.
PGC = "pytorch-grad-cam 1.5 (PyPI grad-cam)"

LAYER = Param("layer", "layer", None, help="The explained layer (dotted name or submodule); None: the last "
              "candidate layer.", control=False)
BATCH_SIZE = Param("batch_size", "int", 32, low=1, help="Inputs per forward pass (does not change the map).",
                   control=False)
THETA = Param("theta", "float", 10.0, low=0, high=100, step=1,
              help="θ: denoise percentile (values of the gradient map below it become 0).")


def baseline(default: str) -> Param:
    """The contribution baseline parameter (UnionCAM, Fusion-CAM, Score-CAM's paper variant)."""
    return Param("baseline", "choice", default, choices=("black", "zeros"),
                 help="Contribution baseline: a black image in pixel space, or zeros in model-input space.")


def family_choice(name: str, family: str, default: str, fast: str | None = None) -> Param:
    """A parameter naming any method of ``family`` (the choices grow as methods are registered).

    ``fast`` is the member to use on a large model instead of ``default`` (:attr:`Param.fast_default`).
    """
    def choices() -> tuple[str, ...]:
        from . import names

        return names(family)

    return Param(name, "choice", default, choices=choices,
                 help=f"The {family} map: any method of the {family} family.", fast_default=fast)

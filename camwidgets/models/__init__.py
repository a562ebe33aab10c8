"""Models camwidgets can explain out of the box: the embedded demo model and torchvision's.

torchvision's models (:mod:`camwidgets.models.zoo`) are imported on first use: importing
torchvision takes seconds (its ``ops`` import ``torch._dynamo``), which the demo model does
not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .demo import DEMO_MEAN, DEMO_SIZE, DEMO_STD, DemoNet, demo_preprocess, load_demo_model

if TYPE_CHECKING:
    from .zoo import WeightsUnavailableError, classification_models, load_torchvision

__all__ = [
    "DEMO_MEAN",
    "DEMO_SIZE",
    "DEMO_STD",
    "DemoNet",
    "WeightsUnavailableError",
    "classification_models",
    "demo_preprocess",
    "load_demo_model",
    "load_torchvision",
]

_ZOO = frozenset({"WeightsUnavailableError", "classification_models", "load_torchvision"})


def __getattr__(name: str) -> Any:
    if name in _ZOO:
        value = getattr(importlib.import_module(".zoo", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

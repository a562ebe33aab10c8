"""camwidgets: Jupyter widgets for Class Activation Maps of PyTorch CNNs.

The compute core (``camwidgets.core``) needs only torch, numpy and scikit-image;
the widgets (``camwidgets.widgets``) and figures (``camwidgets.viz``) are imported
lazily, on first use, so scripts and batch evaluation never load ipywidgets or plotly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_EXPORTS: dict[str, str] = {
    "load_image": "camwidgets.core.image",
    "Preprocess": "camwidgets.core.preprocess",
    "Explainer": "camwidgets.core.explainer",
    "methods": "camwidgets.core.methods",
    "load_demo_model": "camwidgets.models",
    "load_torchvision": "camwidgets.models",
    "Shapes": "camwidgets.datasets",
    "list_samples": "camwidgets.datasets",
    "load_sample": "camwidgets.datasets",
    "evaluate": "camwidgets.core.evaluate",
    "RayExecutor": "camwidgets.core.executors",
    "CAMExplorer": "camwidgets.widgets",
}
_SUBMODULES = {"core", "datasets", "models", "metrics", "sanity", "viz", "widgets"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"camwidgets.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'camwidgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

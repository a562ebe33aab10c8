"""camwidgets' compute core: captures, CAM methods, result objects, metrics.

Imports torch, numpy and scikit-image only (never ipywidgets or plotly). The entry
point is :class:`Explainer`; the pure functions of each method family live in
:mod:`~camwidgets.core.gradient`, :mod:`~camwidgets.core.icam`,
:mod:`~camwidgets.core.fusion` and :mod:`~camwidgets.core.region`.

Names are imported on first access (PEP 562), so importing one submodule, e.g.
``camwidgets.core.image``, does not load the others. The public functions of
:mod:`~camwidgets.core.gradient`, :mod:`~camwidgets.core.icam` and
:mod:`~camwidgets.core.fusion` are re-exported here, except ``combine``, which both
:mod:`~camwidgets.core.icam` (eq. 21) and :mod:`~camwidgets.core.fusion` (step 3) define:
use ``camwidgets.core.icam.combine`` / ``camwidgets.core.fusion.combine``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule defining it
_EXPORTS: dict[str, str] = {
    # entry point
    "Explainer": "explainer",
    "explain_batch": "explainer",
    # results
    "CAMResult": "results",
    "RegionCAMResult": "results",
    "ICAMResult": "results",
    "UnionCAMResult": "results",
    "FusionCAMResult": "results",
    # capture and layers
    "Capture": "_hooks",
    "capture": "_hooks",
    # threads: one at a time per model, and cooperative cancellation
    "model_lock": "_hooks",
    "cancel_when": "_hooks",
    "Cancelled": "_hooks",
    "candidate_layers": "layers",
    "default_layer": "layers",
    "resolve_layer": "layers",
    "resolve_layers": "layers",
    # region-based weights
    "RegionWeights": "region",
    "scorecam_weights": "region",
    "scorecam_masks": "region",
    "ablationcam_weights": "region",
    "region_map": "region",
    # input
    "load_image": "image",
    "Preprocess": "preprocess",
    "PreprocessLike": "preprocess",
    "as_preprocess": "preprocess",
    # the method families' pure functions (``combine`` exists in both icam and fusion: use the submodules)
    # gradient
    "GRADCAMPP_EPS": "gradient",
    "XGRADCAM_EPS": "gradient",
    "gradcam_weights": "gradient",
    "gradcampp_weights": "gradient",
    "layercam_map": "gradient",
    "weighted_map": "gradient",
    "xgradcam_weights": "gradient",
    # icam
    "MDS_PROB_FLOOR": "icam",
    "Bias": "icam",
    "icam_alpha": "icam",
    "icam_bias": "icam",
    "icam_layer_map": "icam",
    "icam_weights": "icam",
    "input_saliency": "icam",
    "layer_phi": "icam",
    "layer_scores": "icam",
    "mds": "icam",
    "perturb": "icam",
    "perturbation_weights": "icam",
    "select_layers": "icam",
    "softmax_derivatives": "icam",
    "svim": "icam",
    # fusion
    "FusionCAMSteps": "fusion",
    "UnionCAMSteps": "fusion",
    "contributions": "fusion",
    "denoise_gradients": "fusion",
    "denoise_map": "fusion",
    "fuse": "fusion",
    "fusion_weights": "fusion",
    "run_fusioncam": "fusion",
    "run_unioncam": "fusion",
    "similarity": "fusion",
    "union_map": "fusion",
    "union_select": "fusion",
    "unioncam_denoised_map": "fusion",
    # _ops
    "normalize": "_ops",
    "upsample": "_ops",
    # metrics and evaluation (``evaluate`` here is the submodule; ``camwidgets.evaluate`` the function)
    # metrics
    "ADCCResult": "metrics",
    "ConfidenceChange": "metrics",
    "CurveResult": "metrics",
    "LocalisationResult": "metrics",
    "adcc": "metrics",
    "average_drop": "metrics",
    "coherency": "metrics",
    "complexity": "metrics",
    "confidence_change": "metrics",
    "deletion": "metrics",
    "energy_pointing_game": "metrics",
    "increase_in_confidence": "metrics",
    "insertion": "metrics",
    "localisation": "metrics",
    "over_all": "metrics",
    "pointing_game": "metrics",
    "saliency_score": "metrics",
    # evaluate
    "EvaluationResult": "evaluate",
    "summarize": "evaluate",
    # executors of evaluate (Ray is imported only when a RayExecutor is made)
    "LocalExecutor": "executors",
    "RayExecutor": "executors",
}
_SUBMODULES = ("explainer", "methods", "results", "layers", "region", "image", "preprocess", "gradient", "icam",
               "fusion", "metrics", "evaluate", "executors")

__all__ = [
    "GRADCAMPP_EPS",
    "MDS_PROB_FLOOR",
    "XGRADCAM_EPS",
    "ADCCResult",
    "Bias",
    "CAMResult",
    "Cancelled",
    "Capture",
    "ConfidenceChange",
    "CurveResult",
    "EvaluationResult",
    "Explainer",
    "FusionCAMResult",
    "FusionCAMSteps",
    "ICAMResult",
    "LocalExecutor",
    "LocalisationResult",
    "Preprocess",
    "PreprocessLike",
    "RayExecutor",
    "RegionCAMResult",
    "RegionWeights",
    "UnionCAMResult",
    "UnionCAMSteps",
    "ablationcam_weights",
    "adcc",
    "as_preprocess",
    "average_drop",
    "cancel_when",
    "candidate_layers",
    "capture",
    "coherency",
    "complexity",
    "confidence_change",
    "contributions",
    "default_layer",
    "deletion",
    "denoise_gradients",
    "denoise_map",
    "energy_pointing_game",
    "evaluate",
    "executors",
    "explain_batch",
    "explainer",
    "fuse",
    "fusion",
    "fusion_weights",
    "gradcam_weights",
    "gradcampp_weights",
    "gradient",
    "icam",
    "icam_alpha",
    "icam_bias",
    "icam_layer_map",
    "icam_weights",
    "image",
    "increase_in_confidence",
    "input_saliency",
    "insertion",
    "layer_phi",
    "layer_scores",
    "layercam_map",
    "layers",
    "load_image",
    "localisation",
    "mds",
    "methods",
    "metrics",
    "model_lock",
    "normalize",
    "over_all",
    "perturb",
    "perturbation_weights",
    "pointing_game",
    "preprocess",
    "region",
    "region_map",
    "resolve_layer",
    "resolve_layers",
    "results",
    "run_fusioncam",
    "run_unioncam",
    "saliency_score",
    "scorecam_masks",
    "scorecam_weights",
    "select_layers",
    "similarity",
    "softmax_derivatives",
    "summarize",
    "svim",
    "union_map",
    "union_select",
    "unioncam_denoised_map",
    "upsample",
    "weighted_map",
    "xgradcam_weights",
]

if TYPE_CHECKING:
    from ._hooks import Cancelled, Capture, cancel_when, capture, model_lock
    from ._ops import (
        normalize,
        upsample,
    )
    from .evaluate import EvaluationResult, summarize
    from .executors import LocalExecutor, RayExecutor
    from .explainer import Explainer, explain_batch
    from .fusion import (
        FusionCAMSteps,
        UnionCAMSteps,
        contributions,
        denoise_gradients,
        denoise_map,
        fuse,
        fusion_weights,
        run_fusioncam,
        run_unioncam,
        similarity,
        union_map,
        union_select,
        unioncam_denoised_map,
    )
    from .gradient import (
        GRADCAMPP_EPS,
        XGRADCAM_EPS,
        gradcam_weights,
        gradcampp_weights,
        layercam_map,
        weighted_map,
        xgradcam_weights,
    )
    from .icam import (
        MDS_PROB_FLOOR,
        Bias,
        icam_alpha,
        icam_bias,
        icam_layer_map,
        icam_weights,
        input_saliency,
        layer_phi,
        layer_scores,
        mds,
        perturb,
        perturbation_weights,
        select_layers,
        softmax_derivatives,
        svim,
    )
    from .image import load_image
    from .layers import candidate_layers, default_layer, resolve_layer, resolve_layers
    from .metrics import (
        ADCCResult,
        ConfidenceChange,
        CurveResult,
        LocalisationResult,
        adcc,
        average_drop,
        coherency,
        complexity,
        confidence_change,
        deletion,
        energy_pointing_game,
        increase_in_confidence,
        insertion,
        localisation,
        over_all,
        pointing_game,
        saliency_score,
    )
    from .preprocess import Preprocess, PreprocessLike, as_preprocess
    from .region import RegionWeights, ablationcam_weights, region_map, scorecam_masks, scorecam_weights
    from .results import CAMResult, FusionCAMResult, ICAMResult, RegionCAMResult, UnionCAMResult


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"camwidgets.core.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"camwidgets.core.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'camwidgets.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

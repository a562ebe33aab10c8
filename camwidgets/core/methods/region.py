"""Region-family methods: channel (or position) weights from forward passes of masked inputs or features.

Each function takes an :class:`~camwidgets.core.explainer.Explainer` and the method's
validated parameters. Their forward passes are cached as a stage of the explainer (per
layer and the parameters that change the scores), so a method that serves as
Fusion-CAM's or UnionCAM's region map is computed once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..region import ablationcam_weights, region_map, scorecam_weights
from ..results import RegionCAMResult, freeze_array

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["ablationcam", "scorecam"]


def scorecam(exp: Explainer, *, layer: str, batch_size: int, variant: str, baseline: str) -> RegionCAMResult:
    """Score-CAM, masked inputs in batches of ``batch_size``; all-zero channels are not run (exact)."""
    paper = variant == "paper"

    def stage() -> Any:
        base = exp.baseline_probability(baseline) if paper else 0.0
        return scorecam_weights(exp.model, exp.input_tensor, exp.activation(layer), exp.target,
                                batch_size=batch_size, variant=variant, baseline_probability=base)

    rw = exp.stage(("scorecam-weights", layer, variant, baseline if paper else None), stage)
    raw = region_map(exp.activation(layer), rw.weights)
    return RegionCAMResult(
        method="scorecam", layer=layer, target=exp.target,
        params={"layer": layer, "batch_size": batch_size, "variant": variant, "baseline": baseline},
        map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=rw.weights,
        scores=freeze_array(rw.scores), skipped=freeze_array(rw.skipped), forward_passes=rw.forward_passes)


def ablationcam(exp: Explainer, *, layer: str, batch_size: int) -> RegionCAMResult:
    """Ablation-CAM: ``w_k = (y − y_k) / y`` on the target logit, ablated channels in batches."""
    def stage() -> Any:
        y = float(exp.logits_tensor[exp.target])
        return ablationcam_weights(exp.model, exp.input_tensor, layer, exp.activation(layer), exp.target, y,
                                   batch_size=batch_size)

    rw = exp.stage(("ablationcam-weights", layer), stage)
    raw = region_map(exp.activation(layer), rw.weights)
    return RegionCAMResult(
        method="ablationcam", layer=layer, target=exp.target, params={"layer": layer, "batch_size": batch_size},
        map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=rw.weights,
        scores=freeze_array(rw.scores), skipped=freeze_array(rw.skipped), forward_passes=rw.forward_passes)

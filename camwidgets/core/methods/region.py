"""Region-family methods: channel (or position) weights from forward passes of masked inputs or features.

Each function takes an :class:`~camwidgets.core.explainer.Explainer` and the method's
validated parameters. Their forward passes are cached as a stage of the explainer (per
layer and the parameters that change the scores), so a method that serves as
Fusion-CAM's or UnionCAM's region map is computed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..region import ablationcam_weights, region_map, scorecam_weights
from ..results import RegionCAMResult, freeze_array
from ._params import BATCH_SIZE, LAYER, PGC, baseline
from ._spec import Method, Param

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["ablation_value_rule", "ablationcam", "scorecam", "substitution_unfold"]


def substitution_unfold(exp: Explainer, layer: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """What puts substituted feature maps back into ``layer``'s own output layout (None: already ``(N, K, h, w)``).

    A layer folded by the user's ``reshape`` cannot be un-folded: ``ValueError``."""
    layout = exp.layout(layer)
    if not layout.folded:
        return None
    if layout.kind == "custom":
        raise ValueError(
            f"Layer {layer!r} was folded by the explainer's reshape= callable, which camwidgets cannot invert, but "
            "this method replaces the layer's output with modified feature maps. Use the automatic fold "
            "(reshape=None) or a method that only reads the layer (gradcam, scorecam, ...).")
    return layout.unfold


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


def ablation_value_rule(exp: Explainer, layer: str, ablation: str) -> str:
    """The rule :func:`~camwidgets.core.region.ablationcam_weights` applies: ``"auto"`` resolved.

    ``"auto"`` is ``"zero"`` on a transformer layer (tokens, channels-last: folded by the
    capture), where ``min(A) − 1e7`` saturates the network and makes the ablated logits
    independent of the image (:mod:`camwidgets.core.region`), and ``"gradcam"`` elsewhere.
    """
    if ablation == "auto":
        return "zero" if exp.layout(layer).folded else "gradcam"
    return ablation


def ablationcam(exp: Explainer, *, layer: str, batch_size: int, ablation: str) -> RegionCAMResult:
    """Ablation-CAM: ``w_k = (y − y_k) / y`` on the target logit, ablated channels in batches."""
    rule = ablation_value_rule(exp, layer, ablation)

    def stage() -> Any:
        y = float(exp.logits_tensor[exp.target])
        return ablationcam_weights(exp.model, exp.input_tensor, layer, exp.activation(layer), exp.target, y,
                                   batch_size=batch_size, ablation=rule, unfold=substitution_unfold(exp, layer))

    rw = exp.stage(("ablationcam-weights", layer, rule), stage)
    raw = region_map(exp.activation(layer), rw.weights)
    return RegionCAMResult(
        method="ablationcam", layer=layer, target=exp.target,
        params={"layer": layer, "batch_size": batch_size, "ablation": ablation},
        map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=rw.weights,
        scores=freeze_array(rw.scores), skipped=freeze_array(rw.skipped), forward_passes=rw.forward_passes)


#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="scorecam", label="Score-CAM", family="region",
        params=(LAYER, BATCH_SIZE,
                Param("variant", "choice", "gradcam", choices=("gradcam", "paper"),
                      help="'gradcam': w = softmax_k S_c(x ⊙ m_k) (pytorch-grad-cam); 'paper': "
                           "w_k = Y_c(x ⊙ m_k) − Y_c(baseline)."),
                baseline("zeros")),
        compute=scorecam,
        summary="each channel, upsampled and min-max normalised, masks the input; its score weighs it.",
        formula="m_k = normalise(up(A_k));  w = softmax_k S_c(x ⊙ m_k);  L = ReLU(sum_k w_k A_k)",
        reference="Wang et al., 'Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural "
                  "Networks', CVPR-W 2020, arXiv:1910.01279, eq. 5-8.",
        implementation=f"{PGC} ScoreCAM (variant 'gradcam'); max abs difference <= 1e-4 after normalisation.",
        needs_gradients=False,
        stage="per (layer, variant, baseline): one forward pass per batch of masked inputs; channels with an "
              "all-zero activation are not run (their mask is all zero: the score of a zero input, exact).",
        notes="Masks are upsampled with align_corners=True, as pytorch-grad-cam does.",
        in_evaluate=True),
    Method(        name="ablationcam", label="Ablation-CAM", family="region",
        params=(LAYER, BATCH_SIZE,
                Param("ablation", "choice", "auto", choices=("auto", "gradcam", "zero"), control=False,
                      help="The ablation value. 'gradcam': 0 where the layer's minimum is 0, else min(A) − 1e7 "
                           "(pytorch-grad-cam); 'zero': 0 (the paper); 'auto': 'zero' on transformer layers "
                           "(tokens, channels-last), where min(A) − 1e7 makes the weights independent of the "
                           "image, 'gradcam' elsewhere.")),
        compute=ablationcam,
        summary="each channel is ablated in turn; the drop of the class score weighs it.",
        formula="w_k = (y − y_k) / y on the logit, channel k set to 0;  L = ReLU(sum_k w_k A_k)",
        reference="Desai & Ramaswamy, 'Ablation-CAM: Visual Explanations for Deep Convolutional Network via "
                  "Gradient-free Localization', WACV 2020, eq. 3.",
        implementation=f"{PGC} AblationCAM (ablation='gradcam'; on transformer layers with its "
                       "ablation_layer=AblationLayerVit()); max abs difference <= 1e-4 after normalisation.",
        needs_gradients=False,
        stage="per layer: the rest of the network after the layer runs once per batch of ablated feature maps.",
        notes="A CNN layer with negative activations is ablated to min(A) − 1e7, as the reference does "
              "(ablation='auto' or 'gradcam'). On a transformer layer (tokens, channels-last) the channel is "
              "ablated in every token, the class token included (the reference's AblationLayerVit), and 'auto' "
              "ablates with 0: there min(A) − 1e7 saturates the attention and the final LayerNorm, so the "
              "ablated logits y_k no longer depend on the image (equal across images to 1e-5 on random-weight "
              "ViTs and Swin). ablation='gradcam' equals the reference with AblationLayerVit on such layers "
              "(tested to 1e-4)."),
)

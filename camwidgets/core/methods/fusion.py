"""Fusion-family methods: UnionCAM and Fusion-CAM combine a gradient map and a region map.

The region map is any method of the ``"region"`` family (Score-CAM by default), the
gradient map any of the ``"gradient"`` family; both come from the explainer's cache, so
moving θ re-runs only the denoising, the contributions and the fusion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _ops
from .. import fusion as _fusion
from ..results import FusionCAMResult, UnionCAMResult, freeze_array
from ._params import LAYER, THETA, baseline, family_choice
from ._spec import Method

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["fusioncam", "unioncam"]


def unioncam(exp: Explainer, *, theta: float, layer: str, baseline: str, region: str) -> UnionCAMResult:
    """UnionCAM: denoise the gradients (eq. 1-3), union with the region map (eq. 6, β clamped at 0), select (eq. 8)."""
    l_r = exp.explain(region, layer=layer).map_tensor
    raw_d = _fusion.unioncam_denoised_map(exp.activation(layer), exp.gradient(layer), theta)
    l_d = exp.finish(raw_d)
    beta_d, beta_r = exp.pair_contributions(l_d, l_r, region, layer, baseline)
    l_dr = _fusion.union_map(l_d, l_r, beta_d, beta_r)
    beta_dr = float(exp.contributions(_ops.normalize(l_dr)[None], baseline)[0])
    chosen, choice = _fusion.union_select(l_dr, l_r, beta_dr, beta_r)
    return UnionCAMResult(
        method="unioncam", layer=layer, target=exp.target,
        params={"theta": theta, "layer": layer, "baseline": baseline, "region": region},
        map_tensor=_ops.normalize(chosen), raw_tensor=chosen, weights_tensor=None,
        # Views, not copies, on the CPU: L_R is the region result's own map (results.freeze_array).
        gradient_map=freeze_array(l_d, share=True), region_map=freeze_array(l_r, share=True),
        union_map=freeze_array(l_dr, share=True),
        beta_gradient=beta_d, beta_region=beta_r, beta_union=beta_dr,
        baseline_probability=exp.baseline_probability(baseline), choice=choice)


def fusioncam(exp: Explainer, *, theta: float, gradient: str, region: str, layer: str,
              baseline: str) -> FusionCAMResult:
    """Fusion-CAM: denoise ``L_g`` at its θ-th percentile, contribution-weighted union, similarity fusion."""
    l_r = exp.explain(region, layer=layer).map_tensor
    l_g = _fusion.denoise_map(exp.explain(gradient, layer=layer).map_tensor, theta)
    beta_g_raw, beta_r_raw = exp.pair_contributions(l_g, l_r, region, layer, baseline)
    l_gr, beta_g, beta_r = _fusion.combine(l_g, l_r, beta_g_raw, beta_r_raw)
    beta_gr_raw = float(exp.contributions(l_gr[None], baseline)[0])
    # Step 4 rescales (β_gr, β_r) with step 3's rescaled β_r, as the official code does.
    fused, sim, beta_gr, beta_r_final = _fusion.fuse(l_gr, l_r, beta_gr_raw, beta_r)
    betas = {"gradient_raw": beta_g_raw, "region_raw": beta_r_raw, "combined_raw": beta_gr_raw,
             "gradient": beta_g, "region": beta_r, "combined": beta_gr, "region_final": beta_r_final}
    return FusionCAMResult(
        method="fusioncam", layer=layer, target=exp.target,
        params={"theta": theta, "gradient": gradient, "region": region, "layer": layer, "baseline": baseline},
        map_tensor=fused, raw_tensor=fused, weights_tensor=None,
        # Views, not copies, on the CPU: L_r is the region result's own map (results.freeze_array).
        gradient_map=freeze_array(l_g, share=True), region_map=freeze_array(l_r, share=True),
        combined_map=freeze_array(l_gr, share=True), similarity=freeze_array(sim, share=True), betas=betas,
        baseline_probability=exp.baseline_probability(baseline))


#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="unioncam", label="UnionCAM", family="fusion",
        params=(THETA, LAYER, baseline("black"), family_choice("region", "region", "scorecam", fast="reciprocam")),
        compute=unioncam,
        summary="denoised gradient map united with a region map by their contributions, then the better kept.",
        formula="L_D = sum_k α_k ReLU(W_k) A_k (W = g below its θ-th percentile zeroed);  "
                "L_DR = max(β_D, 0) L_D + max(β_R, 0) L_R (½, ½ when both ≤ 0);  pick L_DR if β(L_DR) > β_R "
                "else L_R",
        reference="Hu et al., 'UnionCAM: enhancing CNN interpretability through denoising, weighted "
                  "fusion, and selective high-quality class activation mapping', Frontiers in "
                  "Neurorobotics 2024, eq. 1-8.",
        implementation="the paper's equations (no public code); the region map is the chosen region method.",
        needs_gradients=True,
        stage="the region map and its β are cached per (region, layer, baseline); θ re-runs two single-image "
              "forwards (β of the denoised map, then of the union).",
        notes="β_D and β_R are clamped at 0 before the union (equal weights when both are 0), as Fusion-CAM "
              "does; without it a class with negative contributions gets an inverted map.",
        in_evaluate=True),
    Method(        name="fusioncam", label="Fusion-CAM", family="fusion",
        params=(THETA,
                family_choice("gradient", "gradient", "gradcam"),
                family_choice("region", "region", "scorecam", fast="reciprocam"), LAYER, baseline("zeros")),
        compute=fusioncam,
        summary="denoised gradient map and region map, weighted by their contributions, fused pixel by pixel "
                "by their similarity.",
        formula="L_gr = normalise(β_g L_g + β_r L_r);  L1 = β_gr L_gr, L2 = β_r L_r;  sim = clip(1 − |L1 − L2|);  "
                "F = normalise(sim·max(L1, L2) + (1 − sim)(L1 + L2)/2)",
        reference="Dekdegue et al., 'Fusion-CAM: Integrating Gradient and Region-Based Class Activation Maps "
                  "for Robust Visual Explanations', 2026, arXiv:2603.05386; official code "
                  "github.com/codeforpaper64/Fusion-CAM.",
        implementation="the official Fusion-CAM code, given the same L_g and L_r: equal to 1e-6.",
        needs_gradients=True,
        stage="the region map and its β are cached per (region, layer, baseline); θ re-runs two single-image "
              "forwards ([L_g] then [L_gr]).",
        notes="β clamped at 0 and rescaled to sum 1 (equal when both are 0); step 4 rescales (β_gr, β_r) with "
              "step 3's rescaled β_r, as the official code does.",
        in_explorer=True, in_evaluate=True),
)

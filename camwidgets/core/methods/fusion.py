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

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["fusioncam", "unioncam"]


def unioncam(exp: Explainer, *, theta: float, layer: str, baseline: str, region: str) -> UnionCAMResult:
    """UnionCAM: denoise the gradients (eq. 1-3), union with the region map (eq. 6), select (eq. 8)."""
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
        gradient_map=freeze_array(l_d), region_map=freeze_array(l_r), union_map=freeze_array(l_dr),
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
        gradient_map=freeze_array(l_g), region_map=freeze_array(l_r), combined_map=freeze_array(l_gr),
        similarity=freeze_array(sim), betas=betas, baseline_probability=exp.baseline_probability(baseline))

"""The multi-layer family: Integrative CAM (I-CAM) scores every candidate layer, keeps the best, fuses.

Stages cached by the explainer: the perturbation stage per ``(alpha, n, seed)`` (one
batched forward + backward of the ``n`` perturbed images, reduced to ``φ_{i,l}``), the
layer scores per ``(alpha, n, seed, sigma)``, and the per-layer maps per ``(layer, bias)``;
``threshold`` (T), ``bias`` and ``sigma`` run no model pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch

from .. import _ops
from .. import icam as _icam
from .._hooks import capture
from ..explainer import STAGE_LIMITS
from ..results import ICAMResult, freeze_array
from ._spec import Method, Param

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["icam"]

#: Perturbation stages (one per (alpha, n, seed)) an explainer keeps; the least recently used are
#: recomputed (``STAGE_LIMITS["icam-perturb"]``; I-CAM's results are kept as many, so the perturbed
#: images a kept result shows are those of a kept stage, not a copy).
PERTURBATION_STAGES_KEPT = STAGE_LIMITS["icam-perturb"]


def _perturbation_stage(exp: Explainer, alpha: float, n: int, seed: int) -> dict[str, Any]:
    """Perturbed images, their probabilities and φ_{i,l} for every candidate layer.

    One batched forward + backward of the ``n`` perturbed images (eq. 4) capturing ``A``
    and ``dS_c/dA`` at every candidate layer; the activations are reduced to ``φ_{i,l}``
    (``(L, n, H, W)``) and dropped. Only the :data:`PERTURBATION_STAGES_KEPT` most recently
    used stages are kept (each holds ``φ``).
    """
    cands = list(exp.candidate_layers)

    def compute() -> dict[str, Any]:
        pert = _icam.perturb(exp.image_tensor, alpha, n, seed).to(exp.device)
        cap = capture(exp.model, exp.normalize(pert), cands, exp.target, reshape=exp.reshape)
        phi = torch.stack([_icam.layer_phi(cap.activations[ln], cap.gradients[ln], exp.size) for ln in cands])
        probs = torch.softmax(cap.logits.double(), dim=1).float()
        return {"perturbations": pert, "phi": phi, "probs": probs,
                "mds": _icam.mds(exp.probabilities_tensor.float(), probs)}

    return exp.stage(("icam-perturb", alpha, n, seed), compute, keep=PERTURBATION_STAGES_KEPT)


def _layer_map(exp: Explainer, name: str, bias: str) -> torch.Tensor:
    def compute() -> torch.Tensor:
        y = float(exp.probabilities_tensor64[exp.target])
        s_c = float(exp.logits_tensor[exp.target])
        raw = _icam.icam_layer_map(exp.activation(name), exp.gradient(name), y, s_c, cast(_icam.Bias, bias))
        # Upsampled, then normalised (float64; the bias's uniform part, cancelled by normalisation, is not
        # added: see icam_layer_map).
        return _ops.normalize(_ops.upsample(raw, exp.size)).float().clamp(0.0, 1.0)

    return exp.stage(("icam-layer", name, bias), compute)


def icam(exp: Explainer, *, alpha: float, threshold: float, n: int, bias: str, seed: int,
         sigma: float) -> ICAMResult:
    """I-CAM: ``map = normalise(sum_{l kept} W_l L_l)`` (eq. 21) and every intermediate."""
    stage = _perturbation_stage(exp, alpha, n, seed)

    def scores() -> dict[str, Any]:
        img = exp.image_tensor
        sv = _icam.svim(img, stage["perturbations"], sigma)
        w = _icam.perturbation_weights(sv, stage["mds"])
        s = exp.stage(("icam-saliency",), lambda: _icam.input_saliency(img, exp.input_gradient()))
        return {"svim": sv, "w": w, "s": s, "S": _icam.layer_scores(s, stage["phi"], w)}

    sc = exp.stage(("icam-scores", alpha, n, seed, sigma), scores)
    kept_idx, weights = _icam.select_layers(sc["S"], threshold)
    cands = exp.candidate_layers
    kept = [cands[int(i)] for i in kept_idx]
    maps = {ln: _layer_map(exp, ln, bias) for ln in kept}
    stack = torch.stack([maps[ln] for ln in kept])
    raw = (weights.to(stack.dtype)[:, None, None] * stack).sum(0)
    final = _icam.combine(stack, weights)
    return ICAMResult(
        method="icam", layer=tuple(kept), target=exp.target,
        params={"alpha": alpha, "threshold": threshold, "n": n, "bias": bias, "seed": seed, "sigma": sigma},
        map_tensor=final, raw_tensor=raw, weights_tensor=None,
        # The arrays are read-only views of the cached stages' tensors on the CPU (results.freeze_array), not
        # copies: the perturbed images (n 3 H W) and the per-layer maps are held once, however many results.
        candidate_layers=cands, layer_scores=freeze_array(sc["S"], share=True),
        kept_layers=tuple(kept), layer_weights=freeze_array(weights, share=True),
        layer_maps={ln: freeze_array(m, share=True) for ln, m in maps.items()},
        perturbations=freeze_array(stage["perturbations"], share=True), svim=freeze_array(sc["svim"], share=True),
        mds=freeze_array(stage["mds"], share=True), perturbation_weights=freeze_array(sc["w"], share=True),
        input_saliency=freeze_array(sc["s"], share=True))


#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="icam", label="I-CAM", family="multi-layer",
        params=(Param("alpha", "float", 0.4, low=0, high=1, step=0.05,
                      help="α: perturbation strength (Gaussian noise scale and pixel drop probability)."),
                Param("threshold", "float", 0.95, low=0.5, high=1, step=0.01,
                      help="T: keep the best layers until their scores reach T of the total."),
                Param("n", "int", 8, low=1, high=64, step=1, help="Number of perturbations."),
                Param("bias", "choice", "channel", choices=("channel", "spatial", "none"),
                      help="Per-layer bias: channel (eq. 27) or spatial (eq. 28), no ReLU after either; none: "
                           "ReLU(Σ w A) as LayerCAM."),
                Param("seed", "int", 0, help="Seed of the perturbations.", control=False),
                Param("sigma", "float", 0.25, low=0, exclusive_low=True, step=0.05,
                      help="σ: width of the SSIM-based visual similarity (SVIM, eq. 6).", control=False)),
        compute=icam,
        summary="every candidate layer scored by how its evidence matches the input saliency under "
                "perturbations; the best layers' maps fused by their scores.",
        formula="S_l = sum_i w_i ||s − φ_{i,l}||;  keep the top layers until T;  I-CAM = normalise(sum_l W_l L_l)",
        reference="Singh et al., 'Integrative CAM: Adaptive Layer Fusion for Comprehensive Interpretation of "
                  "CNNs', 2024, arXiv:2412.01354, eq. 3-31.",
        implementation="the paper's equations (no public code); the closed-form α is checked against autograd.",
        needs_gradients=True,
        stage="perturbations per (α, n, seed): one batched forward + backward; T, bias and σ run no model pass.",
        notes="Per-layer map with a bias: eq. 20 as printed, L_l = Σ_k w_k A_k + Σ_k b_k, no ReLU (the channel "
              "bias is one constant per layer, cancelled by normalisation; a ReLU gave every class with S_c < 0 an "
              "all-zero map). The closed-form α is exact only with the other logits held fixed; with the full "
              "softmax it is an approximation (48-75 % off in f''g² on the demo model's last block).",
        in_explorer=True, in_evaluate=True),
)

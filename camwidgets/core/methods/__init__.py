"""The method registry: one entry per CAM method, read by everything that lists methods.

:class:`~camwidgets.core.explainer.Explainer` (``explain(name, **params)`` and
``exp.<name>(...)``), :func:`camwidgets.evaluate`, the explorer's method toggles and
parameter controls, and ``docs/methods.md`` all read :data:`REGISTRY`; no other list of
method names exists. Adding a method is one compute function (in the family's module
here) and one :class:`Method` entry below (and its tests).

>>> [m.name for m in methods(family="fusion")]
['unioncam', 'fusioncam']
>>> get("fusioncam").resolve({"theta": 20})["region"]
'scorecam'
"""

from __future__ import annotations

from collections.abc import Mapping

from . import fusion as _fusion
from . import gradient as _gradient
from . import icam as _icam
from . import region as _region
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
# Shared parameters
# ----------------------------------------------------------------------------------------
LAYER = Param("layer", "layer", None, help="The explained layer (dotted name or submodule); None: the last "
              "candidate layer.", control=False)
BATCH_SIZE = Param("batch_size", "int", 32, low=1, help="Inputs per forward pass (does not change the map).",
                   control=False)
THETA = Param("theta", "float", 10.0, low=0, high=100, step=1,
              help="θ: denoise percentile (values of the gradient map below it become 0).")


def _baseline(default: str) -> Param:
    return Param("baseline", "choice", default, choices=("black", "zeros"),
                 help="Contribution baseline: a black image in pixel space, or zeros in model-input space.")


def _region_choice(default: str = "scorecam") -> Param:
    return Param("region", "choice", default, choices=lambda: names("region"),
                 help="The region map: any method of the region family.")


_PGC = "pytorch-grad-cam 1.5 (PyPI grad-cam)"

# ----------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------
_ENTRIES: tuple[Method, ...] = (
    Method(
        name="gradcam", label="Grad-CAM", family="gradient", params=(LAYER,), compute=_gradient.gradcam,
        summary="channel weights are the spatial mean of the class score's gradient.",
        formula="w_k = mean_ij dS_c/dA_k;  L = ReLU(sum_k w_k A_k)",
        reference="Selvaraju et al., 'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
                  "Localization', ICCV 2017, arXiv:1610.02391, eq. 1-2.",
        implementation=f"{_PGC} GradCAM; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction).",
        in_explorer=True, in_evaluate=True),
    Method(
        name="gradcampp", label="Grad-CAM++", family="gradient", params=(LAYER,), compute=_gradient.gradcampp,
        summary="pixel-weighted positive gradients, in the closed form of the exponential-score derivation.",
        formula="α = g² / (2 g² + sum_ij A g³ + 1e-6) (0 where g = 0);  w_k = sum_ij α ReLU(g);  "
                "L = ReLU(sum_k w_k A_k)",
        reference="Chattopadhay et al., 'Grad-CAM++: Improved Visual Explanations for Deep Convolutional "
                  "Networks', WACV 2018, arXiv:1710.11063, eq. 19.",
        implementation=f"{_PGC} GradCAMPlusPlus; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction).",
        notes="The 1e-6 in the denominator is pytorch-grad-cam's and is kept: gradients are often ~1e-4, so it "
              "is not negligible. torchcam's GradCAMpp reduces to α = g² and differs.",
        in_evaluate=True),
    Method(
        name="xgradcam", label="XGrad-CAM", family="gradient", params=(LAYER,), compute=_gradient.xgradcam,
        summary="gradient weights normalised by the activation's sum (axiom-based).",
        formula="w_k = sum_ij (A_k g_k) / (sum_ij A_k + 1e-7);  L = ReLU(sum_k w_k A_k)",
        reference="Fu et al., 'Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of "
                  "CNNs', BMVC 2020, arXiv:2008.02312, eq. 14.",
        implementation=f"{_PGC} XGradCAM; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction)."),
    Method(
        name="layercam", label="LayerCAM", family="gradient", params=(LAYER,), compute=_gradient.layercam,
        summary="each position weighted by its own positive gradient.",
        formula="L = ReLU(sum_k ReLU(g_k) ⊙ A_k)",
        reference="Jiang et al., 'LayerCAM: Exploring Hierarchical Class Activation Maps for Localization', "
                  "IEEE TIP 2021, eq. 5-6.",
        implementation=f"{_PGC} LayerCAM; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=True, stage="the explainer's capture (no model pass after construction).",
        in_explorer=True, in_evaluate=True),
    Method(
        name="scorecam", label="Score-CAM", family="region",
        params=(LAYER, BATCH_SIZE,
                Param("variant", "choice", "gradcam", choices=("gradcam", "paper"),
                      help="'gradcam': w = softmax_k S_c(x ⊙ m_k) (pytorch-grad-cam); 'paper': "
                           "w_k = Y_c(x ⊙ m_k) − Y_c(baseline)."),
                _baseline("zeros")),
        compute=_region.scorecam,
        summary="each channel, upsampled and min-max normalised, masks the input; its score weighs it.",
        formula="m_k = normalise(up(A_k));  w = softmax_k S_c(x ⊙ m_k);  L = ReLU(sum_k w_k A_k)",
        reference="Wang et al., 'Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural "
                  "Networks', CVPR-W 2020, arXiv:1910.01279, eq. 5-8.",
        implementation=f"{_PGC} ScoreCAM (variant 'gradcam'); max abs difference <= 1e-4 after normalisation.",
        needs_gradients=False,
        stage="per (layer, variant, baseline): one forward pass per batch of masked inputs; channels with an "
              "all-zero activation are not run (their mask is all zero: the score of a zero input, exact).",
        notes="Masks are upsampled with align_corners=True, as pytorch-grad-cam does.",
        in_evaluate=True),
    Method(
        name="ablationcam", label="Ablation-CAM", family="region", params=(LAYER, BATCH_SIZE),
        compute=_region.ablationcam,
        summary="each channel is ablated in turn; the drop of the class score weighs it.",
        formula="w_k = (y − y_k) / y on the logit, channel k set to 0;  L = ReLU(sum_k w_k A_k)",
        reference="Desai & Ramaswamy, 'Ablation-CAM: Visual Explanations for Deep Convolutional Network via "
                  "Gradient-free Localization', WACV 2020, eq. 3.",
        implementation=f"{_PGC} AblationCAM; max abs difference <= 1e-4 after normalisation.",
        needs_gradients=False,
        stage="per layer: the rest of the network after the layer runs once per batch of ablated feature maps.",
        notes="A layer with negative activations is ablated to min(A) − 1e7, as the reference does."),
    Method(
        name="unioncam", label="UnionCAM", family="fusion",
        params=(THETA, LAYER, _baseline("black"), _region_choice()),
        compute=_fusion.unioncam,
        summary="denoised gradient map united with a region map by their contributions, then the better kept.",
        formula="L_D = sum_k α_k ReLU(W_k) A_k (W = g below its θ-th percentile zeroed);  "
                "L_DR = β_D L_D + β_R L_R;  pick L_DR if β(L_DR) > β_R else L_R",
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
    Method(
        name="fusioncam", label="Fusion-CAM", family="fusion",
        params=(THETA,
                Param("gradient", "choice", "gradcam", choices=lambda: names("gradient"),
                      help="The gradient map: any method of the gradient family."),
                _region_choice(), LAYER, _baseline("zeros")),
        compute=_fusion.fusioncam,
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
    Method(
        name="icam", label="I-CAM", family="multi-layer",
        params=(Param("alpha", "float", 0.4, low=0, high=1, step=0.05,
                      help="α: perturbation strength (Gaussian noise scale and pixel drop probability)."),
                Param("threshold", "float", 0.95, low=0.5, high=1, step=0.01,
                      help="T: keep the best layers until their scores reach T of the total."),
                Param("n", "int", 8, low=1, high=64, step=1, help="Number of perturbations."),
                Param("bias", "choice", "channel", choices=("channel", "spatial", "none"),
                      help="Per-layer bias: channel (eq. 27), spatial (eq. 28) or none."),
                Param("seed", "int", 0, help="Seed of the perturbations.", control=False),
                Param("sigma", "float", 0.25, low=0, exclusive_low=True, step=0.05,
                      help="σ: width of the SSIM-based visual similarity (SVIM, eq. 6).", control=False)),
        compute=_icam.icam,
        summary="every candidate layer scored by how its evidence matches the input saliency under "
                "perturbations; the best layers' maps fused by their scores.",
        formula="S_l = sum_i w_i ||s − φ_{i,l}||;  keep the top layers until T;  I-CAM = normalise(sum_l W_l L_l)",
        reference="Singh et al., 'Integrative CAM: Adaptive Layer Fusion for Comprehensive Interpretation of "
                  "CNNs', 2024, arXiv:2412.01354, eq. 3-31.",
        implementation="the paper's equations (no public code); the closed-form α is checked against autograd.",
        needs_gradients=True,
        stage="perturbations per (α, n, seed): one batched forward + backward; T, bias and σ run no model pass.",
        in_explorer=True, in_evaluate=True),
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

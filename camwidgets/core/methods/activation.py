"""Activation-family methods: maps from the activations alone, no gradient (CAM, EigenCAM).

Both read the activation ``A`` ``(K, h, w)`` the explainer captured; neither runs the
model. CAM takes its channel weights from the model's own classification head (found
and checked here); EigenCAM projects the positions of ``A`` on their first principal
component and does not depend on the class.

:func:`principal_projection` (the first-principal-component projection with its sign
convention) is shared with EigenGradCAM (:mod:`camwidgets.core.methods.gradient`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from ..results import CAMResult
from ._params import LAYER, PGC
from ._spec import Method, Param

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["GapLinearHead", "cam", "eigencam", "find_gap_linear_head", "principal_projection"]

#: torchcam's CAM (the reference of ``cam``).
TORCHCAM = "torchcam 0.5 CAM (fc_layer given)"

_GRADCAM_HINT = ("Use gradcam, which equals CAM up to scale on GAP + linear models and needs no particular "
                 "head, or explain the last feature layer before the global average pool.")


# ----------------------------------------------------------------------------------------
# CAM: the head's weights of the explained class
# ----------------------------------------------------------------------------------------
class GapLinearHead(NamedTuple):
    """The linear head a CAM reads its weights from.

    Attributes
    ----------
    name : str
        Dotted name of the head module (an ``nn.Linear``, or a 1x1 ``nn.Conv2d``).
    weight : Tensor (num_classes, K)
        Its weight matrix (a detached copy).
    max_error : float
        Largest ``|logit - head(GAP(A))|`` over the classes, relative to the size of the
        terms of the dot product (``sum_k |W_ck a_k| + |b_c|``) on the explained image.
    """

    name: str
    weight: torch.Tensor
    max_error: float


def _affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(W (out, in), b)`` of an ``nn.Linear`` or a 1x1 ungrouped ``nn.Conv2d``; None for other modules."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        return module.weight.reshape(module.out_channels, module.in_channels), module.bias
    return None


def find_gap_linear_head(model: nn.Module, activation: torch.Tensor, logits: torch.Tensor,
                         layer: str = "the layer") -> GapLinearHead:
    """The module ``h`` with ``logits == h(GAP(A))`` on this image: the head CAM needs.

    Every ``nn.Linear`` (or 1x1 ``nn.Conv2d``) of ``model`` mapping the ``K`` channels of
    ``A`` to the ``num_classes`` logits is a candidate; the first one whose output on the
    global average pool of ``A`` reproduces the model's logits is returned. The check is
    done in float64 with a relative tolerance of ``max(1e-4, 10 eps)`` (``eps`` of the
    activation's dtype) of ``sum_k |W_ck a_k| + |b_c|``, the size of the dot product's
    terms: floating-point reordering stays orders of magnitude below it, while any
    non-linearity, extra layer or other pooling between the layer and the head does not.

    Parameters
    ----------
    model : torch.nn.Module
    activation : Tensor (K, h, w)
        ``A`` of the explained layer for the image.
    logits : Tensor (num_classes,)
        The model's logits for the same image.
    layer : str
        The layer's name, for the error message.

    Raises
    ------
    ValueError
        No such module, or none reproduces the logits (the model is not GAP + linear at
        this layer): the message names the problem and suggests Grad-CAM.
    """
    k = int(activation.shape[-3])
    n = int(logits.numel())
    pooled = activation.detach().to(torch.float64).mean(dim=(-2, -1))
    target = logits.detach().to(pooled.device, torch.float64).reshape(-1)
    rel = max(1e-4, 10 * torch.finfo(activation.dtype).eps)
    tried: list[tuple[str, float]] = []
    for name, module in model.named_modules():
        wb = _affine(module)
        if wb is None or tuple(wb[0].shape) != (n, k):
            continue
        w = wb[0].detach().to(pooled.device, torch.float64)
        b = torch.zeros(n, dtype=torch.float64, device=pooled.device) if wb[1] is None else \
            wb[1].detach().to(pooled.device, torch.float64)
        pred = w @ pooled + b
        scale = w.abs() @ pooled.abs() + b.abs()
        err = float(((pred - target).abs() / scale.clamp_min(torch.finfo(torch.float64).tiny)).max())
        if err <= rel:
            return GapLinearHead(name, wb[0].detach().clone(), err)
        tried.append((name, err))
    if not tried:
        raise ValueError(
            f"CAM needs a GAP + linear head after the layer, but the model has no nn.Linear (or 1x1 nn.Conv2d) "
            f"from the {k} channels of {layer!r} to its {n} logits. {_GRADCAM_HINT}")
    detail = ", ".join(f"{name!r} (relative difference {err:.2g})" for name, err in tried)
    raise ValueError(
        f"CAM needs a GAP + linear head after the layer, but on this image the logits are not head(global "
        f"average pool of {layer!r}) for any candidate head: {detail}; something else (another layer, a "
        f"non-linearity, another pooling) lies between them. {_GRADCAM_HINT}")


def cam(exp: Explainer, *, layer: str, relu: bool) -> CAMResult:
    """CAM: ``M = sum_k W[c, k] A_k`` with the model's GAP + linear head (checked on the image)."""
    a = exp.activation(layer)
    layout = exp.layout(layer)
    if layout.kind == "tokens" and layout.prefix:
        raise ValueError(
            f"CAM needs a GAP + linear head after the layer, but {layer!r} is a vision transformer's token sequence "
            f"({layout.describe()}): the model classifies from its class token, not from a global average pool of "
            f"the patch tokens, so no head weight belongs to a patch and CAM is undefined here. {_GRADCAM_HINT}")

    def find() -> GapLinearHead:
        try:
            return find_gap_linear_head(exp.model, a, exp.logits_tensor, layer)
        except ValueError as err:
            if not layout.folded:
                raise
            raise ValueError(f"{err} The layer is a transformer's {layout.describe()}: a LayerNorm (or a class "
                             "token) between it and the head also breaks CAM's GAP + linear structure.") from None

    head: GapLinearHead = exp.stage(("cam-head", layer), find)
    w = head.weight[exp.target].to(a.device, a.dtype)
    signed = (w[:, None, None] * a).sum(dim=-3)
    raw = torch.relu(signed) if relu else signed
    return CAMResult(method="cam", layer=layer, target=exp.target, params={"layer": layer, "relu": relu},
                     map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=w)


# ----------------------------------------------------------------------------------------
# EigenCAM: the first principal component of the activations
# ----------------------------------------------------------------------------------------
def principal_projection(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Projection of the positions of ``features`` on their first principal component.

    The ``h w`` positions are samples of ``K`` variables: ``X`` ``(hw, K)`` is centred
    (each channel's spatial mean subtracted), ``X_c = U S V^T``, and the projection is
    ``p = X_c v_1`` (``v_1`` the first right singular vector), reshaped to ``(h, w)``.

    Sign convention: a singular vector's sign is arbitrary (LAPACK returns either), so
    ``v_1`` is oriented to make ``p`` correlate positively with the channel sum
    ``sum_k F_k`` of the decomposed features: ``<p, sum_k F_k> = s_1^2 sum_k v_1k``, so
    ``sum_k v_1k >= 0``. For activations this is "positive where the layer is more
    active"; for EigenGradCAM's ``g ⊙ A`` it is "positive where the first-order class
    evidence ``sum_k g_k A_k`` is". If ``sum_k v_1k`` is zero (to 1e-12) the largest
    ``|p|`` is made positive instead.

    Computed in float64 on the CPU (``torch.linalg.svd``) and returned in the input's
    dtype and device.

    Parameters
    ----------
    features : Tensor (K, h, w)

    Returns
    -------
    projection : Tensor (h, w)
        Signed, zero spatial mean; all zeros when the positions do not vary (e.g. ``h w = 1``).
    component : Tensor (K,)
        ``v_1`` with the sign above (all zeros together with an all-zero projection).
    """
    if features.dim() != 3:
        raise ValueError(f"features must have shape (K, h, w), got {tuple(features.shape)}.")
    k, h, w = features.shape
    x = features.detach().reshape(k, h * w).T.to("cpu", torch.float64)
    xc = x - x.mean(dim=0, keepdim=True)
    if h * w < 2 or not bool(torch.any(xc != 0)):
        zeros = torch.zeros(h, w, dtype=features.dtype, device=features.device)
        return zeros, torch.zeros(k, dtype=features.dtype, device=features.device)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    v = vh[0]
    p = xc @ v
    total = float(v.sum())
    flip = total < 0 if abs(total) > 1e-12 else float(p[p.abs().argmax()]) < 0
    if flip:
        v, p = -v, -p
    return p.reshape(h, w).to(features.device, features.dtype), v.to(features.device, features.dtype)


def eigencam(exp: Explainer, *, layer: str) -> CAMResult:
    """EigenCAM: ``ReLU`` of the activations' projection on their first principal component."""
    proj, v = exp.stage(("eigencam-projection", layer), lambda: principal_projection(exp.activation(layer)))
    raw = torch.relu(proj)
    return CAMResult(method="eigencam", layer=layer, target=exp.target, params={"layer": layer},
                     map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=v)


_SIGN_NOTE = ("The SVD's sign is arbitrary (the reference keeps whatever LAPACK returns, so its map can come out "
              "inverted); camwidgets orients the component so that the projection correlates positively with the "
              "channel sum of the decomposed tensor (sum_k v_1k >= 0). The reference is compared after the same "
              "orientation.")

#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="cam", label="CAM", family="activation",
        params=(LAYER, Param("relu", "bool", False,
                             help="Apply a ReLU before normalising. False: the signed map min-max normalised "
                                  "(torchcam, the paper); True: only positive evidence (equals Grad-CAM's map).")),
        compute=cam,
        summary="the classification head's weights of the class, on a model whose logits are a linear layer of the "
                "global average pool of the explained layer.",
        formula="M = sum_k W[c, k] A_k  (W: the head's weights; logits = W GAP(A) + b checked on the image)",
        reference="Zhou, Khosla, Lapedriza, Oliva & Torralba, 'Learning Deep Features for Discriminative "
                  "Localization', CVPR 2016, arXiv:1512.04150, eq. 2.",
        implementation=f"{TORCHCAM}: relu=False against its map min-max normalised (and against its own "
                       "normalised map where the map spans > 1e-2, its 1e-8 eps being negligible), relu=True "
                       "against the ReLU of its map; max abs difference <= 1e-4 after normalisation. On GAP + "
                       "linear models relu=True equals Grad-CAM's and HiResCAM's maps (tested to 1e-5).",
        needs_gradients=False,
        stage="the explainer's capture (no model pass): the head search and its check run once per layer; "
              "relu and the class re-run only a weighted sum.",
        notes="The head is found automatically (every nn.Linear or 1x1 nn.Conv2d from the K channels to the logits) "
              "and checked on the explained image: logits = head(GAP(A)) to a relative 1e-4, else ValueError "
              "(use gradcam). The bias is left out of the map, as in the paper and torchcam. relu=False (default) "
              "is torchcam's convention: no ReLU, min-max normalisation of the signed map (torchcam adds 1e-8 to "
              "the map's range in the denominator, camwidgets does not: negligible unless the map spans less "
              "than ~1e-4, as on some random-weight networks). With relu=False, raw is the "
              "signed map. relu=True adds the ReLU every other camwidgets method applies; it then equals "
              "Grad-CAM's map, whose weights on such models are W[c] / (h w)."),
    Method(        name="eigencam", label="EigenCAM", family="activation", params=(LAYER,), compute=eigencam,
        summary="the activations projected on their first principal component; no gradient, and the same map for "
                "every class.",
        formula="X = A as (hw, K), centred per channel;  X = U S V^T;  L = ReLU(X v_1)  (sign: sum_k v_1k >= 0)",
        reference="Muhammad & Yeasin, 'Eigen-CAM: Class Activation Map using Principal Components', IJCNN 2020, "
                  "arXiv:2008.00299 (the projection on the first right singular vector).",
        implementation=f"{PGC} EigenCAM (get_2d_projection); max abs difference <= 1e-4 after normalisation, "
                       "the reference's sign oriented as camwidgets orients it.",
        needs_gradients=False,
        stage="the explainer's capture (no model pass); one SVD of the (hw, K) centred activations per layer, "
              "in float64 on the CPU. Class-independent: every target of an image gives the same map.",
        notes="Centred before the SVD as the reference does (the paper decomposes the uncentred activations). "
              + _SIGN_NOTE + " The SVD runs in float64 (the reference: float32 numpy); weights holds v_1, applied "
              "to the centred activations."),
)

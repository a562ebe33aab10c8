"""Fast region methods: Recipro-CAM and Group-CAM (forward passes of masked features or grouped masks).

Recipro-CAM (Byun & Lee 2022/2024; official code github.com/sybyun/ReciproCAM)
    Each spatial position ``p = (i, j)`` of the explained layer's feature map ``A``
    ``(K, h, w)`` gives one masked feature map ``A^p``; the rest of the network after the
    layer maps it to class probabilities and ``L(p) = softmax(S(A^p))_c``. The map is
    ``L`` itself (``h x w``, min-max normalised by the caller), with no channel weights.

    * ``variant="plain"`` (the official default: its hook calls the mosaic with
      ``is_gaussian=False``): ``A^p = A ⊙ 1_p``, only position ``p`` kept.
    * ``variant="gaussian"`` (the official ``is_gaussian=True`` branch): the feature
      vector of ``p`` spread over its 3x3 neighbourhood with the kernel
      ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` (cut at the borders, not renormalised):
      ``A^p[:, q] = G[q − p] · A[:, p]``. As in the official code the neighbours carry
      ``p``'s own features, weighted, not theirs.

    The masked maps go through the network with
    :func:`camwidgets.core.region.substituted_layer_passes`: one forward per batch of
    ``batch_size`` positions, the layers before the explained one on the single image.

Group-CAM (Zhang, Rao & Yang 2021; official code github.com/wofmanaf/Group-CAM)
    With Grad-CAM's channel weights ``α_k = mean_ij dS_c/dA_k``, the channels are split
    into ``G`` contiguous groups and each group gives ``M_g = ReLU(sum_{k∈g} α_k A_k)``.
    Its mask ``m_g`` is ``M_g`` upsampled to the input (bilinear, ``align_corners=False``)
    and min-max normalised; the masked input keeps the image where the mask is high and a
    blurred image elsewhere: ``x_g = x ⊙ m_g + blur(x) ⊙ (1 − m_g)``, in model-input
    (normalised) space, as the official code does. The blur is a 51x51 Gaussian with
    σ = 50 and reflected borders (the official ``kornia`` call, re-implemented here
    separably). The group score is ``s_g = ReLU(Y_c(x_g) − Y_c(blur(x)))`` on the
    softmax probabilities and the map ``ReLU``-free ``sum_g s_g M_g`` (every term is
    non-negative) at feature resolution: upsampling is linear, so normalising it after
    upsampling gives the official map (which sums the upsampled ``M_g``) up to rounding.
    This is the official code's current version; its versions before August 2021 also
    de-noised each group map (values at or below its 70th percentile set to 0), as the
    paper's abstract says ("summed and de-noised"), summed the *normalised* masks and
    applied the ReLU to the final map instead of the scores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import _ops
from .._hooks import checkpoint, eval_mode, model_device, model_dtype
from ..region import substituted_layer_passes
from ..results import RegionCAMResult, freeze_array
from ._params import BATCH_SIZE, LAYER
from ._spec import Method, Param
from .region import substitution_unfold

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["gaussian_blur", "groupcam", "groupcam_group_maps", "groupcam_scores", "reciprocam",
           "reciprocam_features", "reciprocam_scores"]

#: Recipro-CAM's 3x3 Gaussian (the official ``is_gaussian=True`` kernel).
RECIPRO_KERNEL = ((1 / 16, 1 / 8, 1 / 16), (1 / 8, 1 / 4, 1 / 8), (1 / 16, 1 / 8, 1 / 16))
#: Group-CAM's blur: kernel size and σ of the official code.
BLUR_KERNEL_SIZE = 51
BLUR_SIGMA = 50.0


# ----------------------------------------------------------------------------------------- Recipro-CAM
def reciprocam_features(activation: torch.Tensor, positions: torch.Tensor, variant: str) -> torch.Tensor:
    """The masked feature maps ``A^p`` ``(n, K, h, w)`` of ``positions`` (flat indices ``i * w + j``).

    ``"plain"`` keeps ``A[:, p]`` at ``p`` and zeros elsewhere; ``"gaussian"`` puts
    ``G[q − p] · A[:, p]`` at each ``q`` of the 3x3 neighbourhood (see the module docstring).
    """
    k, h, w = activation.shape
    n = int(positions.numel())
    rows, cols = positions // w, positions % w
    centre = activation[:, rows, cols].T  # (n, K): each position's feature vector
    if variant == "plain":
        out = activation.new_zeros((n, k, h, w))
        out[torch.arange(n, device=activation.device), :, rows, cols] = centre
        return out
    onehot = activation.new_zeros((n, 1, h, w))
    onehot[torch.arange(n, device=activation.device), 0, rows, cols] = 1.0
    kernel = torch.tensor(RECIPRO_KERNEL, dtype=activation.dtype, device=activation.device)
    spread = F.conv2d(onehot, kernel[None, None], padding=1)  # each entry one kernel value (or 0): exact
    return centre[:, :, None, None] * spread


def reciprocam_scores(model: nn.Module, x: torch.Tensor, layer: str, activation: torch.Tensor, target: int, *,
                      variant: str = "plain", batch_size: int = 64,
                      unfold: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                      ) -> tuple[torch.Tensor, int]:
    """``softmax(S(A^p))_c`` for every position ``p`` ``(h * w,)`` (float32) and the forward passes run.

    Parameters
    ----------
    model : torch.nn.Module
    x : Tensor (1, 3, H, W)
        Normalised model input (the layers before ``layer`` run on it).
    layer : str
        Dotted name of the explained layer.
    activation : Tensor (K, h, w)
        ``A`` of that layer for ``x``.
    target : int
        Class ``c``.
    variant : {"plain", "gaussian"}
    batch_size : int
        Masked feature maps per forward pass.
    unfold : callable or None
        For a folded layer (tokens, channels-last): the masked maps back in the layer's layout
        (:func:`camwidgets.core.region.substituted_layer_passes`).
    """
    if variant not in ("plain", "gaussian"):
        raise ValueError(f"Recipro-CAM variant must be 'plain' or 'gaussian', got {variant!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    device = model_device(model)
    act = activation.to(device=device, dtype=model_dtype(model))
    positions = torch.arange(act.shape[1] * act.shape[2], device=device)
    chunks = [positions[s:s + batch_size] for s in range(0, int(positions.numel()), batch_size)]
    probs, passes = substituted_layer_passes(
        model, x, layer, chunks, lambda idx: reciprocam_features(act, idx, variant),
        lambda logits: torch.softmax(logits.double(), dim=1)[:, target].float(), unfold=unfold)
    return probs, passes


def reciprocam(exp: Explainer, *, layer: str, variant: str, batch_size: int) -> RegionCAMResult:
    """Recipro-CAM: the target's probability with only one position (or its 3x3 neighbourhood) of the layer kept."""
    a = exp.activation(layer)

    def stage() -> Any:
        return reciprocam_scores(exp.model, exp.input_tensor, layer, a, exp.target, variant=variant,
                                 batch_size=batch_size, unfold=substitution_unfold(exp, layer))

    probs, passes = exp.stage(("reciprocam-scores", layer, variant), stage)
    raw = probs.reshape(a.shape[1], a.shape[2]).to(a.device)
    return RegionCAMResult(
        method="reciprocam", layer=layer, target=exp.target,
        params={"layer": layer, "variant": variant, "batch_size": batch_size},
        map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=None,
        scores=freeze_array(probs), skipped=freeze_array(torch.zeros(probs.numel(), dtype=torch.bool)),
        forward_passes=passes)


# ----------------------------------------------------------------------------------------- Group-CAM
def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of a reflect padding (the edge not repeated, like ``F.pad(mode="reflect")``) of any width."""
    i = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    r = i.abs() % period
    return torch.where(r >= n, period - r, r)


def gaussian_blur(images: torch.Tensor, kernel_size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur of ``(N, C, H, W)`` images: separable, normalised kernel, reflected borders.

    The kernel is ``exp(−t² / 2σ²)`` at ``t = i − kernel_size // 2`` (``+ 0.5`` for an even
    size), divided by its sum, the convention of ``kornia.filters.gaussian_blur2d`` with its
    default ``border_type="reflect"``; the reflection is repeated for images smaller than
    the kernel (where ``F.pad`` refuses).
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size}.")
    t = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    if kernel_size % 2 == 0:
        t = t + 0.5
    g = torch.exp(-(t ** 2) / (2.0 * float(sigma) ** 2))
    g = (g / g.sum()).to(device=images.device, dtype=images.dtype)
    _, c, h, w = images.shape
    before, after = (kernel_size - 1) // 2, kernel_size - 1 - (kernel_size - 1) // 2
    padded = images[:, :, _reflect_index(h, before, after, images.device)]
    padded = padded[:, :, :, _reflect_index(w, before, after, images.device)]
    out = F.conv2d(padded, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)  # along W
    return F.conv2d(out, g.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)  # along H


def groupcam_group_maps(activation: torch.Tensor, gradient: torch.Tensor, groups: int) -> torch.Tensor:
    """``M_g = ReLU(sum_{k∈g} α_k A_k)`` ``(G', h, w)``, ``α_k = mean_ij g_k``, ``G' = min(groups, K)``.

    The channels are split into ``G'`` contiguous groups whose sizes differ by at most one
    (:func:`torch.tensor_split`); with ``K`` divisible by ``G`` this is the official
    ``chunk(G)``.
    """
    k = activation.shape[0]
    alpha = gradient.mean(dim=(1, 2))
    weighted = alpha[:, None, None] * activation
    parts = torch.tensor_split(weighted, min(int(groups), k), dim=0)
    return torch.relu(torch.stack([p.sum(dim=0) for p in parts]))


def groupcam_scores(model: nn.Module, x: torch.Tensor, blurred: torch.Tensor, base_probability: float,
                    group_maps: torch.Tensor, target: int, *, batch_size: int = 32,
                    channels_last: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Group scores ``s_g = ReLU(Y_c(x ⊙ m_g + blur(x) ⊙ (1 − m_g)) − Y_c(blur(x)))``.

    Parameters
    ----------
    model : torch.nn.Module
    x, blurred : Tensor (1, 3, H, W)
        The normalised model input and its blur.
    base_probability : float
        ``Y_c(blur(x))``.
    group_maps : Tensor (G, h, w)
        ``M_g`` from :func:`groupcam_group_maps`.
    target : int
    batch_size : int
        Masked inputs per forward pass.
    channels_last : bool or None
        Feed the batches in ``torch.channels_last`` format; None: as Score-CAM chooses (on for
        a CPU model and inputs of at least 128x128 pixels).

    Returns
    -------
    (scores (G,), skipped (G,) bool, forward passes)
        A group whose upsampled map is constant has an all-zero mask, so its masked input is
        the blurred image itself and its score is 0: its pass is skipped (``skipped``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    device, dtype = model_device(model), model_dtype(model)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if channels_last is None:
        channels_last = device.type == "cpu" and size[0] * size[1] >= 128 * 128
    x = x.to(device=device, dtype=dtype)
    blurred = blurred.to(device=device, dtype=dtype)
    masks = _ops.normalize(_ops.upsample(group_maps.to(device=device, dtype=torch.float32), size))
    flat = masks.flatten(1)
    skipped = flat.amax(dim=1) == flat.amin(dim=1)  # constant map: all-zero mask (never NaN, unlike the official)
    run = torch.nonzero(~skipped).flatten()
    scores = torch.zeros(masks.shape[0], dtype=torch.float32, device=device)
    passes = 0
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, int(run.numel()), batch_size):
            checkpoint()
            idx = run[start:start + batch_size]
            m = masks[idx].to(dtype)[:, None]
            batch = x * m + blurred * (1 - m)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            probs = torch.softmax(model(batch).double(), dim=1)[:, target]
            passes += 1
            scores[idx] = torch.relu(probs - float(base_probability)).float()
    return scores.clone(), skipped.clone(), passes


def groupcam(exp: Explainer, *, layer: str, groups: int, batch_size: int) -> RegionCAMResult:
    """Group-CAM: Grad-CAM-weighted channel groups as masks over a blurred image, weighted by the score gain."""
    a, g = exp.activation(layer), exp.gradient(layer)
    maps = groupcam_group_maps(a, g, groups)

    def baseline() -> Any:
        blurred = gaussian_blur(exp.input_tensor)
        with torch.inference_mode(), eval_mode(exp.model):
            checkpoint()
            logits = exp.model(blurred.to(dtype=model_dtype(exp.model)))
        return blurred, float(torch.softmax(logits.double(), dim=1)[0, exp.target])

    def stage() -> Any:
        blurred, base = exp.stage(("groupcam-blur",), baseline)
        return groupcam_scores(exp.model, exp.input_tensor, blurred, base, maps, exp.target,
                               batch_size=batch_size)

    scores, skipped, passes = exp.stage(("groupcam-scores", layer, maps.shape[0]), stage)
    raw = torch.einsum("g,ghw->hw", scores.to(maps.dtype), maps)
    return RegionCAMResult(
        method="groupcam", layer=layer, target=exp.target,
        params={"layer": layer, "groups": groups, "batch_size": batch_size},
        map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=None,
        scores=freeze_array(scores), skipped=freeze_array(skipped), forward_passes=passes)


#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="reciprocam", label="Recipro-CAM", family="region",
        params=(LAYER,
                Param("variant", "choice", "plain", choices=("plain", "gaussian"),
                      help="'plain': keep only position p of the feature map (the official default); "
                           "'gaussian': p's features spread over its 3x3 neighbourhood by a Gaussian kernel."),
                Param("batch_size", "int", 64, low=1,
                      help="Masked feature maps per forward pass (does not change the map); the layers before "
                           "the explained one run once per pass, on the single image.", control=False)),
        compute=reciprocam,
        summary="each position of the layer's feature map is kept alone in turn; the target's probability "
                "from the rest of the network is the map.",
        formula="A^p = A ⊙ 1_p (or G * (A_p 1_p));  L(p) = softmax(S(A^p))_c",
        reference="Byun & Lee, 'Recipro-CAM: Fast gradient-free visual explanations for convolutional neural "
                  "networks', arXiv:2209.14074, 2022; published as 'ReciproCAM: Lightweight Gradient-free "
                  "Class Activation Map for Post-hoc Explanations', CVPR Workshops (XAI4CV) 2024; official code "
                  "github.com/sybyun/ReciproCAM.",
        implementation="the official ReciproCam (sybyun/ReciproCAM) at the same layer, input and class "
                       "(benchmarks/check_official_region.py, benchmarks/results/region_methods/): max abs "
                       "difference of the normalised feature-resolution maps, plain / gaussian: demo 3.8e-7 / "
                       "6.4e-7 (layer4.1), 3.7e-7 / 3.4e-7 (layer4.1.bn2, the official's own choice); random "
                       "ResNet-18 at 224 px 1.2e-6 / 1.2e-6 (layer4), 3.2e-6 / 3.9e-6 (layer4.1.bn2); random "
                       "ResNet-50 3.6e-7 / 2.1e-7 (layer4); tolerance 1e-4. Tests: a position-by-position loop "
                       "(demo, ResNet-18, MobileNetV3-small, DenseNet-121), 1e-4.",
        needs_gradients=False,
        stage="per (layer, variant): the rest of the network after the layer runs once per batch of masked "
              "feature maps (h·w of them), the layers before it on the single image.",
        notes="The official class hooks the last Conv/BN/ReLU it finds (for a torchvision BasicBlock: bn2 before "
              "the residual addition; for a Bottleneck the ReLU that runs three times per block, masking three "
              "times); camwidgets masks the layer you choose, once. Probabilities are computed in float64 (the "
              "official float32: differences ~1e-7 before normalisation). The map is not passed through a ReLU "
              "(probabilities are positive), as in the official code."),
    Method(        name="groupcam", label="Group-CAM", family="region",
        params=(LAYER,
                Param("groups", "int", 32, low=1, step=1,
                      help="G: channel groups (contiguous, sizes differing by at most one; at most the layer's "
                           "channels)."),
                BATCH_SIZE),
        compute=groupcam,
        summary="Grad-CAM-weighted channel groups mask the image over a blurred copy; each group's gain in "
                "the target's probability weighs it.",
        formula="M_g = ReLU(sum_{k∈g} α_k A_k);  m_g = normalise(up(M_g));  "
                "s_g = ReLU(Y_c(x ⊙ m_g + blur(x) ⊙ (1 − m_g)) − Y_c(blur(x)));  L = sum_g s_g M_g",
        reference="Zhang, Rao & Yang, 'Group-CAM: Group Score-Weighted Visual Explanations for Deep "
                  "Convolutional Networks', 2021, arXiv:2103.13859; official code github.com/wofmanaf/Group-CAM.",
        implementation="the official GroupCAM (wofmanaf/Group-CAM; its blur from kornia 0.7.3) at the same "
                       "layer, input and class (benchmarks/check_official_region.py, "
                       "benchmarks/results/region_methods/): max abs difference of the normalised "
                       "input-resolution maps, G = 16 / 8: demo 2.4e-7 / 3.0e-7, random ResNet-18 at 224 px "
                       "3.0e-7 / 2.4e-7, random ResNet-50 4.2e-6 / 5.6e-6 (at G = 32 two groups are constant on "
                       "all three and the official map is NaN); tolerance 1e-4. Tests: a group-by-group loop with "
                       "a direct 2-D blur (demo, ResNet-18, MobileNetV3-small), 1e-4.",
        needs_gradients=True,
        stage="per (layer, G): one forward per batch of masked inputs (and once per image the blurred "
              "baseline); α comes from the explainer's capture.",
        notes="G is capped at the layer's channels and groups have sizes differing by at most one (the official "
              "chunk gives fewer than G groups, then fails, when K is not divisible by G). A group whose map is "
              "constant gets score 0 and its pass is skipped (the official min-max divides by zero: NaN); a "
              "constant final map is all zeros (the official returns None). Probabilities in float64 (official "
              "float32). The official code needs CUDA; the comparison runs it on the CPU. camwidgets follows the "
              "official code's current version (commit ffd807b, 2022): its versions before August 2021, like the "
              "paper's 'summed and de-noised' masks, also zeroed each group map at or below its 70th percentile, "
              "weighted the normalised masks and had no ReLU on the scores (only on the final map); none of "
              "that is done here."),
)

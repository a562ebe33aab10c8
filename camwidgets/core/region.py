"""Region-based channel weights: Score-CAM and Ablation-CAM, batched; the layer-substitution passes.

Both methods weight the channels ``A_k`` of one layer by forward passes of the model
and return the raw map ``ReLU(sum_k w_k A_k)`` at feature resolution (normalising and
upsampling are the caller's, :mod:`camwidgets.core._ops`).

Score-CAM (Wang et al. 2020; reference implementation pytorch-grad-cam 1.5 ``ScoreCAM``)
    Each channel is upsampled to the input size ``(H, W)`` (bilinear,
    ``align_corners=True`` as the reference does) and min-max normalised to a mask
    ``m_k = (u_k − min u_k) / (max u_k − min u_k + 1e-8)``; the masked input is
    ``x ⊙ m_k`` in model-input space.

    * ``variant="gradcam"`` (default, equals pytorch-grad-cam):
      ``score_k = S_c(x ⊙ m_k)`` (logit) and ``w = softmax_k(score)``.
    * ``variant="paper"`` (the Score-CAM paper's *Channel-wise Increase of Confidence*):
      ``score_k = softmax(S(x ⊙ m_k))_c − Y_c(baseline)`` and ``w_k = score_k`` (no
      softmax across channels).

    **All-zero channels.** A channel whose activation is zero everywhere has an all-zero
    mask, so its masked input is the zero tensor and its term ``w_k A_k`` is zero
    whatever its weight. Its forward pass is skipped in both variants and this is
    exact: in the paper variant the channel contributes nothing at all; in the
    softmax variant it still enters the softmax's denominator through
    ``exp(S_c(0))``, so ``S_c(0)`` is computed once (one extra image appended to the
    first batch) and used for every such channel, giving the same weights as running
    them all. (After min-max normalisation the denominator would cancel anyway; the
    extra image keeps ``raw`` and ``weights`` exact too.)

Ablation-CAM (Desai & Ramaswamy 2020; reference pytorch-grad-cam ``AblationCAM``)
    The layer's output is replaced by the captured activation with channel ``k`` set to an
    ablation value ``v`` and ``w_k = (y − y_k) / y`` on the target logit.

    * ``ablation="gradcam"`` (pytorch-grad-cam's rule): ``v = 0`` when the layer's minimum
      is 0, else ``v = min(A) − 1e7``. pytorch-grad-cam takes that minimum over the whole
      ablation batch *after* earlier rows were ablated, so on layers with negative
      activations its value drifts by −1e7 per row; camwidgets uses the minimum of the
      image's own activation. The two agree wherever the minimum is 0 (every
      ReLU-terminated block), and on transformer layers (below).
    * ``ablation="zero"``: ``v = 0`` always, the paper's ablation.

    All-zero channels are skipped exactly when ``v`` is 0 (the ablated output equals the
    original, so ``y_k = y`` and ``w_k = 0``).

    **Transformer layers** (tokens ``(N, T, C)``, channels-last maps; ``unfold`` given):
    channel ``k`` is ablated in *every* token, the class (and register) tokens included,
    as pytorch-grad-cam's ``AblationLayerVit`` does; the map still covers only the patch
    grid. (A channel that is zero on every patch is still skipped when ``v`` is 0: its term
    ``w_k A_k`` is zero whatever its class-token entry does to ``y_k``, so the map is exact,
    though its reported weight is 0.) There ``min(A) − 1e7`` saturates the network: after a block's LayerNorm the
    ablated channel's ``−1e7`` dominates the attention's queries, keys and values of every
    token (and, on a block output, the residual stream), the class token becomes a fixed
    multiple of that channel's direction, and the final LayerNorm removes the scale: the
    ablated logit ``y_k`` then depends on ``k`` only, not on the image (measured: equal
    across images to 1e-5 on random-weight ViTs and Swin), so the weights carry no evidence and
    the map ``ReLU(sum_k w_k A_k)`` is a fixed projection of ``A`` (all zero when that
    projection is negative everywhere). The drift of pytorch-grad-cam's value changes
    nothing in this regime. :func:`camwidgets.core.methods.region.ablationcam` therefore
    ablates transformer layers with 0 by default (``ablation="auto"``).

    The ablated feature maps go through the rest of the network with
    :func:`substituted_layer_passes`.

Layer substitution (:func:`substituted_layer_passes`, shared by Ablation-CAM and Recipro-CAM)
    A forward hook on the layer returns a batch of ``N`` replacement feature maps while
    the model's input is the single image, so the layers before it run once per pass on
    one image and the rest of the network runs on the ``N`` maps (tensors from before
    the layer that are used after it, e.g. a residual branch's identity, broadcast from
    batch 1). If the architecture cannot mix a single-image prefix with a batched suffix
    (e.g. a concatenation across the layer, or an output that is not ``N`` rows) the
    input itself is repeated ``N`` times from then on, as pytorch-grad-cam does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._hooks import checkpoint, eval_mode, model_device, model_dtype, model_lock

__all__ = ["RegionWeights", "ScoreCAMVariant", "ablationcam_weights", "region_map", "scorecam_masks",
           "scorecam_weights", "substituted_layer_passes"]

ScoreCAMVariant = Literal["gradcam", "paper"]


@dataclass(frozen=True)
class RegionWeights:
    """Channel weights of a region-based method.

    Attributes
    ----------
    weights : Tensor (K,)
        ``w_k``.
    scores : Tensor (K,)
        The per-channel score the weights come from (see the module docstring).
    skipped : Tensor (K,) bool
        Channels whose forward pass was skipped (all-zero activation).
    forward_passes : int
        Number of batched forward passes started (for Ablation-CAM this includes a
        single-image-prefix attempt that the architecture refused, see the module docstring).
    """

    weights: torch.Tensor
    scores: torch.Tensor
    skipped: torch.Tensor
    forward_passes: int


def region_map(activation: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)``: ``(K, h, w)`` and ``(K,)`` -> ``(h, w)``."""
    return torch.relu(torch.einsum("k,khw->hw", weights.to(activation.dtype), activation))


def scorecam_masks(activation: torch.Tensor, size: tuple[int, int], eps: float = 1e-8) -> torch.Tensor:
    """Score-CAM masks ``(K, H, W)`` in [0, 1] from activations ``(K, h, w)``.

    Bilinear upsampling with ``align_corners=True`` then
    ``(u − min u) / (max u − min u + eps)`` per channel, as pytorch-grad-cam 1.5 does.
    """
    up = F.interpolate(activation[None].float(), size=size, mode="bilinear", align_corners=True)[0]
    flat = up.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    return (up - lo) / (hi - lo + eps)


def substituted_layer_passes(model: nn.Module, x: torch.Tensor, layer: str, chunks: Sequence[torch.Tensor],
                             features: Callable[[torch.Tensor], torch.Tensor],
                             reduce: Callable[[torch.Tensor], torch.Tensor], *,
                             unfold: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                             ) -> tuple[torch.Tensor, int]:
    """Run the network after ``layer`` on batches of replacement feature maps, the part before it on one image.

    For each ``idx`` of ``chunks`` (``N = len(idx)``): ``features(idx)`` gives ``N`` feature maps
    ``(N, K, h, w)`` that a forward hook returns (a new tensor at each call, since the rest of
    the network may modify it in place) in place of the layer's output while the model runs on
    ``x`` ``(1, 3, H, W)``; ``reduce(logits)`` turns the ``(N, C)`` output into what is kept
    (e.g. the target's logit or probability, ``(N,)``). See the module docstring for the
    single-image prefix and its fallback (the input repeated ``N`` times). For a layer whose
    output is not ``(N, K, h, w)`` (tokens, channels-last), ``unfold(maps, output)`` puts the
    feature maps back into the layer's own layout (:meth:`camwidgets.core.tokens.Layout.unfold`,
    the class token taken from the layer's real output).

    The model's lock (:func:`~camwidgets.core._hooks.model_lock`) is held from before the
    hook is registered until after it is removed (also on error or cancellation: no other
    thread's pass can go through it); the model runs in eval mode under
    ``torch.inference_mode`` and :func:`~camwidgets.core._hooks.checkpoint` is called before
    each batch.

    Returns
    -------
    (Tensor, int)
        ``reduce``'s outputs concatenated in the order of ``chunks`` (an empty tensor for no
        chunks), and the number of forward passes started (a refused single-image attempt
        included).
    """
    device, dtype = model_device(model), model_dtype(model)
    x = x.to(device=device, dtype=dtype)
    module = model.get_submodule(layer)
    state: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, args: object, output: object) -> torch.Tensor:
        # Made afresh at each call: the rest of the network may modify it in place (``out += identity``),
        # and a refused single-image attempt is followed by a second pass of the same chunk.
        maps = features(state["idx"]).to(dtype)
        return unfold(maps, output) if unfold is not None and isinstance(output, torch.Tensor) else maps

    outputs: list[torch.Tensor] = []
    broadcast_prefix = True
    passes = 0
    # The hook would alter another thread's passes of the model: its lock is held from before it is registered.
    with model_lock(model):
        handle = module.register_forward_hook(hook)
        try:
            with torch.inference_mode(), eval_mode(model):
                for idx in chunks:
                    checkpoint()
                    n = int(idx.shape[0])
                    state["idx"] = idx
                    logits = None
                    if broadcast_prefix:
                        passes += 1  # counted even if it fails part-way
                        try:
                            logits = model(x)
                            if not isinstance(logits, torch.Tensor) or logits.shape[0] != n:
                                logits = None
                        except RuntimeError:
                            logits = None
                        if logits is None:
                            broadcast_prefix = False
                    if logits is None:
                        logits = model(x.expand(n, -1, -1, -1))
                        passes += 1
                    outputs.append(reduce(logits))
        finally:
            handle.remove()
            state.clear()
    out = torch.cat(outputs) if outputs else torch.empty(0, device=device)
    return out.clone(), passes  # a normal (non-inference) tensor


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return batch_size


def scorecam_weights(model: nn.Module, x: torch.Tensor, activation: torch.Tensor, target: int, *,
                     batch_size: int = 32, variant: str = "gradcam",
                     baseline_probability: float = 0.0, skip_zero: bool = True,
                     channels_last: bool | None = None) -> RegionWeights:
    """Score-CAM channel weights, batched, skipping all-zero channels exactly.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode under ``torch.inference_mode``.
    x : Tensor (1, 3, H, W)
        Normalised model input.
    activation : Tensor (K, h, w)
        ``A`` of the explained layer for ``x``.
    target : int
        Class ``c``.
    batch_size : int
        Masked inputs per forward pass.
    variant : {"gradcam", "paper"}
        ``"gradcam"``: ``w = softmax_k(S_c(x ⊙ m_k))`` (pytorch-grad-cam).
        ``"paper"``: ``w_k = softmax(S(x ⊙ m_k))_c − baseline_probability``.
    baseline_probability : float
        ``Y_c(baseline)`` for the paper variant.
    skip_zero : bool
        Skip the forward passes of all-zero channels (exact, see the module docstring).
    channels_last : bool or None
        Feed the masked batches in ``torch.channels_last`` memory format (only the input:
        the model itself is never converted). None (default) chooses by measurement
        (``benchmarks/bench_scorecam.py``, CPU, ResNet-18): on for a CPU model with inputs
        of at least 128x128 pixels (about 1.4x faster forwards at 224 px), off otherwise
        (slower at 64 px; not measured on GPUs). ``torch.inference_mode`` is always used
        (faster than ``no_grad``).

    Returns
    -------
    RegionWeights
    """
    _check_batch_size(batch_size)
    if variant not in ("gradcam", "paper"):
        raise ValueError(f"Score-CAM variant must be 'gradcam' or 'paper', got {variant!r}.")
    device, dtype = model_device(model), model_dtype(model)
    x = x.to(device=device, dtype=dtype)
    act = activation.to(device)
    k = act.shape[0]
    zero = act.flatten(1).abs().amax(dim=1) == 0 if skip_zero else torch.zeros(k, dtype=torch.bool,
                                                                                device=device)
    run = torch.nonzero(~zero).flatten()
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if channels_last is None:
        channels_last = device.type == "cpu" and size[0] * size[1] >= 128 * 128
    scores = torch.empty(k, dtype=torch.float32, device=device)
    need_zero_image = bool(zero.any())
    passes = 0
    with torch.inference_mode(), eval_mode(model):
        starts = list(range(0, int(run.numel()), batch_size)) or ([0] if need_zero_image else [])
        for i, start in enumerate(starts):
            checkpoint()
            idx = run[start:start + batch_size]
            masks = scorecam_masks(act[idx], size).to(dtype)
            batch = x * masks[:, None]
            if i == 0 and need_zero_image:
                batch = torch.cat([batch, torch.zeros_like(x)])
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            logits = model(batch).float()
            passes += 1
            out = logits[:, target] if variant == "gradcam" else logits.softmax(dim=1)[:, target]
            if i == 0 and need_zero_image:
                scores[zero] = out[-1]
                out = out[:-1]
            scores[idx] = out
        if variant == "paper":
            scores = scores - float(baseline_probability)
            weights = scores
        else:
            weights = torch.softmax(scores, dim=0)
    return RegionWeights(weights=weights.clone(), scores=scores.clone(), skipped=zero.clone(),
                         forward_passes=passes)


def ablationcam_weights(model: nn.Module, x: torch.Tensor, layer: str, activation: torch.Tensor,
                        target: int, score: float, *, batch_size: int = 32,
                        skip_zero: bool = True, ablation: str = "gradcam",
                        unfold: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> RegionWeights:
    """Ablation-CAM channel weights ``w_k = (y − y_k) / y``, batched.

    Parameters
    ----------
    model : torch.nn.Module
    x : Tensor (1, 3, H, W)
        Normalised model input.
    layer : str
        Dotted name of the ablated layer.
    activation : Tensor (K, h, w)
        ``A`` of that layer for ``x``.
    target : int
        Class ``c``.
    score : float
        ``y = S_c(x)``, the unablated logit.
    batch_size : int
        Ablated channels per forward pass.
    skip_zero : bool
        Skip all-zero channels when the ablation value is 0 (exact: ``y_k = y``).
    ablation : {"gradcam", "zero"}
        The ablation value: ``"gradcam"`` 0 where ``min(A)`` is 0, else ``min(A) − 1e7``
        (pytorch-grad-cam); ``"zero"`` always 0 (the paper). See the module docstring.
    unfold : callable or None
        For a folded layer (tokens, channels-last): see :func:`substituted_layer_passes`.
        The channel is then ablated in the whole un-folded output (the class and register
        tokens included, as pytorch-grad-cam's ``AblationLayerVit``).

    Returns
    -------
    RegionWeights
        ``scores`` holds the ablated logits ``y_k``.
    """
    _check_batch_size(batch_size)
    device, dtype = model_device(model), model_dtype(model)
    x = x.to(device=device, dtype=dtype)
    act = activation.to(device=device, dtype=dtype)
    k = act.shape[0]
    if ablation not in ("gradcam", "zero"):
        raise ValueError(f"Ablation-CAM ablation must be 'gradcam' or 'zero', got {ablation!r}.")
    lowest = float(act.min())
    value = 0.0 if ablation == "zero" or lowest == 0.0 else lowest - 1e7
    if skip_zero and value == 0.0:
        zero = act.flatten(1).abs().amax(dim=1) == 0
    else:
        zero = torch.zeros(k, dtype=torch.bool, device=device)
    run = torch.nonzero(~zero).flatten()
    scores = torch.full((k,), float(score), dtype=torch.float32, device=device)

    current: dict[str, torch.Tensor] = {}

    def ablated(idx: torch.Tensor) -> torch.Tensor:
        current["idx"] = idx  # read by whole_channel, called next in the same hook
        out = act.unsqueeze(0).repeat(idx.numel(), 1, 1, 1)
        out[torch.arange(idx.numel(), device=device), idx] = value
        return out

    def whole_channel(maps: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        # The layer's own layout has the channels last (tokens (n, T, C), channels-last (n, H, W, C)):
        # the channel is ablated in every token, the prefix (class, register) tokens included.
        assert unfold is not None
        out = unfold(maps, output)
        idx = current["idx"].to(out.device)
        out[torch.arange(idx.numel(), device=out.device), ..., idx] = value
        return out

    chunks = [run[start:start + batch_size] for start in range(0, int(run.numel()), batch_size)]
    logits, passes = substituted_layer_passes(model, x, layer, chunks, ablated, lambda out: out[:, target].float(),
                                              unfold=whole_channel if unfold is not None else None)
    if chunks:
        scores[run] = logits
    y = float(score)
    weights = (y - scores) / y
    return RegionWeights(weights=weights.clone(), scores=scores.clone(), skipped=zero.clone(),
                         forward_passes=passes)


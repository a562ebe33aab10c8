"""Noise-averaged methods: SmoothGrad-CAM++ (gradient family), SS-CAM and IS-CAM (region family).

Each method averages many model passes of one image: SmoothGrad-CAM++ the gradients of
noisy copies of the input, SS-CAM the scores of noisy Score-CAM masks, IS-CAM the scores
of progressively stronger Score-CAM masks. The passes are one cached stage of the
explainer, keyed by the layer and the parameters that change them (never the batch
size), so a second call, another batch size or the use as Fusion-CAM's / UnionCAM's
region map runs no model pass.

The numerical reference is torchcam 0.5 (``SmoothGradCAMpp``, ``SSCAM``, ``ISCAM``); its
conventions are kept, and every departure is listed in the registry entries' ``notes``:

* the class score is the **logit** ``S_c`` (not the softmax probability);
* SS-CAM and IS-CAM masks are the channels min-max normalised **at feature resolution**
  (``(A − min) / (max − min + 1e-8)``) and then upsampled (bilinear,
  ``align_corners=False``); Score-CAM in this package follows pytorch-grad-cam instead
  (upsample with ``align_corners=True``, then normalise);
* SS-CAM and IS-CAM weights are ``softmax_k`` of the averaged score increase
  ``S_c(masked) − S_c(x)``;
* SmoothGrad-CAM++'s α is the closed form ``ḡ² / (2 ḡ² + Σ_ab A ḡ³ + 1e-8)`` with
  ``ḡ^p`` the mean over the noisy samples of ``g^p`` (torchcam's ``GradCAMpp`` reduces α
  to ``g²``; its ``SmoothGradCAMpp`` does not).

Determinism: the noise comes from a CPU :class:`torch.Generator` seeded with ``seed`` at
every call and is moved to the model's device, so a seed gives the same noise on any
device and for any batch size. SmoothGrad-CAM++ draws one standard normal ``(3, H, W)``
tensor per sample, SS-CAM one ``(H, W)`` tensor per (sample, channel), samples outer,
channels inner (so only ``batch_size`` masks are held at once); each is scaled by σ.
torchcam draws from torch's global generator: one ``(1, 3, H, W)`` tensor per sample for
SmoothGradCAMpp, the same numbers; one ``(1, K, H, W)`` tensor per sample for SSCAM, which
PyTorch's CPU normal sampler fills in blocks of 16 values, so the per-channel draws give
the same numbers whenever ``H·W`` is a multiple of 16 (e.g. 64, 128 or 224 pixels
square). Then ``torch.manual_seed(seed)`` before a torchcam call reproduces camwidgets'
noise, which is how the tests compare them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .._hooks import capture, checkpoint, eval_mode, model_device, model_dtype
from ..region import region_map
from ..results import CAMResult, RegionCAMResult, freeze_array
from ._params import BATCH_SIZE, LAYER
from ._spec import Method, Param

if TYPE_CHECKING:
    from ..explainer import Explainer

__all__ = ["iscam", "smoothgradcampp", "sscam"]

#: torchcam's additive constants: Smooth Grad-CAM++'s α denominator and the mask normalisation.
ALPHA_EPS: float = 1e-8
MASK_EPS: float = 1e-8
#: The reference implementation of the three methods.
TORCHCAM = "torchcam 0.5 (PyPI torchcam)"


def _generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a new one per call: the same seed, the same noise)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _seed_param() -> Param:
    return Param("seed", "int", 0, low=0, help="Seed of the noise (a CPU torch.Generator): the same seed draws the "
                 "same noise on any device and for any batch size.", control=False)


# ----------------------------------------------------------------------------------------
# SmoothGrad-CAM++
# ----------------------------------------------------------------------------------------
def _smoothgrad_passes(exp: Explainer, layer: str, samples: int, std: float, seed: int,
                       batch_size: int) -> dict[str, Any]:
    """Forward + backward passes of ``samples`` noisy inputs ``x + ε`` (``ε ~ N(0, std²)``, model-input space).

    Returns the means over the samples of ``g``, ``g²`` and ``g³`` at ``layer``, the last
    sample's ``g`` and ``A`` (torchcam's convention uses them) and the number of passes.
    """
    def compute() -> dict[str, Any]:
        gen = _generator(seed)
        x = exp.input_tensor
        shape = tuple(x.shape[1:])
        sums = [torch.zeros_like(exp.activation(layer), dtype=torch.float64) for _ in range(3)]
        last_g = last_a = None
        passes = 0
        for start in range(0, samples, batch_size):
            checkpoint()
            n = min(batch_size, samples - start)
            noise = torch.stack([torch.randn(shape, generator=gen) * std for _ in range(n)])
            cap = capture(exp.model, x + noise.to(device=x.device, dtype=x.dtype), [layer], exp.target,
                          reshape=exp.reshape)
            passes += 1
            g = cap.gradients[layer].float()
            for p, s in enumerate(sums, start=1):
                s += g.pow(p).sum(dim=0, dtype=torch.float64)
            last_g, last_a = g[-1], cap.activations[layer][-1]
        g1, g2, g3 = (s.div(samples).float() for s in sums)
        return {"g": g1, "g2": g2, "g3": g3, "last_g": last_g, "last_a": last_a, "passes": passes}

    return exp.stage(("smoothgradcampp-passes", layer, samples, std, seed), compute)


def smoothgrad_alpha(activation: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor,
                     eps: float = ALPHA_EPS) -> torch.Tensor:
    """Smooth Grad-CAM++'s ``α = ḡ² / (2 ḡ² + Σ_ab A ḡ³ + eps)`` from the averaged ``g²`` and ``g³`` ``(K, h, w)``."""
    spatial = (g3 * activation).sum(dim=(-2, -1), keepdim=True)
    return g2 / (2 * g2 + spatial + eps)


def smoothgradcampp(exp: Explainer, *, layer: str, samples: int, std: float, variant: str, seed: int,
                    batch_size: int) -> CAMResult:
    """SmoothGrad-CAM++: Grad-CAM++'s α from gradients averaged over noisy copies of the input."""
    st = _smoothgrad_passes(exp, layer, samples, std, seed, batch_size)
    a = exp.activation(layer)
    alpha = smoothgrad_alpha(a.float(), st["g2"], st["g3"])
    grad, act = (st["last_g"], st["last_a"]) if variant == "torchcam" else (st["g"], a)
    # A NaN α (a 0/0 denominator) drops its channel, as torchcam's nansum over channels does.
    weights = torch.nan_to_num((alpha * torch.relu(grad)).sum(dim=(-2, -1)), nan=0.0)
    raw = region_map(act.float(), weights)
    return CAMResult(
        method="smoothgradcampp", layer=layer, target=exp.target,
        params={"layer": layer, "samples": samples, "std": std, "variant": variant, "seed": seed,
                "batch_size": batch_size},
        map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=weights)


# ----------------------------------------------------------------------------------------
# SS-CAM and IS-CAM: Score-CAM masks, many passes per channel
# ----------------------------------------------------------------------------------------
def channel_masks(activation: torch.Tensor, size: tuple[int, int], eps: float = MASK_EPS) -> torch.Tensor:
    """torchcam's Score-CAM masks ``(K, H, W)``: each channel min-max normalised at feature resolution, then upsampled.

    ``m_k = up((A_k − min A_k) / (max A_k − min A_k + eps))``, bilinear with
    ``align_corners=False``. A constant channel gives an all-zero mask.
    """
    a = activation.float()
    lo = a.amin(dim=(-2, -1), keepdim=True)
    shifted = a - lo
    norm = shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + eps)
    return F.interpolate(norm[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _pair_batches(outer: int, channels: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (outer index, channel) pairs in the order outer-major, channel-minor: ``(o, k)`` index tensors."""
    k = int(channels.numel())
    total = outer * k
    for start in range(0, total, batch_size):
        p = torch.arange(start, min(start + batch_size, total))
        yield p // k, channels[p % k]


def _score_weights(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.double(), dim=0).float()


def _sscam_scores(exp: Explainer, layer: str, samples: int, std: float, seed: int,
                  batch_size: int) -> dict[str, Any]:
    """SS-CAM's averaged score increases ``(1/n) Σ_i S_c(x ⊙ (m_k + ε_ik)) − S_c(x)`` for every channel."""
    def compute() -> dict[str, Any]:
        model = exp.model
        device, dtype = model_device(model), model_dtype(model)
        act = exp.activation(layer)
        k = int(act.shape[0])
        size = exp.size
        x = exp.input_tensor.to(device=device, dtype=torch.float32)
        base = float(exp.logits_tensor[exp.target])
        gen = _generator(seed)
        sums = torch.zeros(k, dtype=torch.float64, device=device)
        passes = 0
        with torch.inference_mode(), eval_mode(model):
            for s, ch in _pair_batches(samples, torch.arange(k, device=device), batch_size):
                checkpoint()
                # One (H, W) draw per (sample, channel), in order: independent of the batch size.
                noise = torch.stack([torch.randn(size, generator=gen) * std for _ in range(int(s.numel()))])
                masks = channel_masks(act[ch], size) + noise.to(device)
                logits = model((masks[:, None] * x).to(dtype))
                passes += 1
                sums.index_add_(0, ch, logits[:, exp.target].double() - base)
        scores = (sums / samples).float()
        return {"scores": scores, "weights": _score_weights(scores), "skipped": torch.zeros(k, dtype=torch.bool),
                "passes": passes}

    return exp.stage(("sscam-scores", layer, samples, std, seed), compute)


def _iscam_coefficients(steps: int) -> list[float]:
    """torchcam's integration coefficients ``c_i = Σ_{j=1..i} j / N`` for ``i = 1..N``, summed in the same order."""
    out, c = [], 0.0
    for i in range(steps):
        c += (i + 1) / steps
        out.append(c)
    return out


def _iscam_scores(exp: Explainer, layer: str, steps: int, batch_size: int) -> dict[str, Any]:
    """IS-CAM's averaged score increases ``(1/N) Σ_i S_c(c_i (x ⊙ m_k)) − S_c(x)`` for every channel.

    Constant channels (all-zero mask) are not run: every step feeds them the zero input,
    whose score is computed once (one extra image in the first batch) — exact.
    """
    def compute() -> dict[str, Any]:
        model = exp.model
        device, dtype = model_device(model), model_dtype(model)
        act = exp.activation(layer).float()
        k = int(act.shape[0])
        size = exp.size
        x = exp.input_tensor.to(device=device, dtype=torch.float32)
        base = float(exp.logits_tensor[exp.target])
        coeffs = torch.tensor(_iscam_coefficients(steps), dtype=torch.float64)
        flat = act.flatten(1)
        constant = flat.amax(dim=1) == flat.amin(dim=1)
        run = torch.nonzero(~constant).flatten()
        sums = torch.zeros(k, dtype=torch.float64, device=device)
        need_zero = bool(constant.any())
        passes = 0
        batches = list(_pair_batches(steps, run, batch_size))
        if need_zero and not batches:  # every channel constant: only the zero image runs
            batches = [(torch.zeros(0, dtype=torch.long), run)]
        with torch.inference_mode(), eval_mode(model):
            for b, (i, ch) in enumerate(batches):
                checkpoint()
                if ch.numel():
                    masked = channel_masks(act[ch], size)[:, None] * x
                    batch = masked * coeffs[i].to(device=device, dtype=masked.dtype)[:, None, None, None]
                else:
                    batch = x[:0]
                if b == 0 and need_zero:
                    batch = torch.cat([batch, torch.zeros_like(x)])
                logits = model(batch.to(dtype))[:, exp.target].double() - base
                passes += 1
                if b == 0 and need_zero:
                    sums[constant] = logits[-1] * steps
                    logits = logits[:-1]
                sums.index_add_(0, ch, logits)
        scores = (sums / steps).float()
        return {"scores": scores, "weights": _score_weights(scores), "skipped": constant.cpu(), "passes": passes}

    return exp.stage(("iscam-scores", layer, steps), compute)


def _region_result(exp: Explainer, method: str, layer: str, params: dict[str, Any],
                   st: dict[str, Any]) -> RegionCAMResult:
    raw = region_map(exp.activation(layer), st["weights"])
    return RegionCAMResult(
        method=method, layer=layer, target=exp.target, params=params,
        map_tensor=exp.finish(raw), raw_tensor=raw, weights_tensor=st["weights"],
        scores=freeze_array(st["scores"]), skipped=freeze_array(st["skipped"]), forward_passes=st["passes"])


def sscam(exp: Explainer, *, layer: str, samples: int, std: float, seed: int, batch_size: int) -> RegionCAMResult:
    """SS-CAM: Score-CAM with Gaussian noise added to every mask, scores averaged over ``samples`` draws."""
    st = _sscam_scores(exp, layer, samples, std, seed, batch_size)
    return _region_result(exp, "sscam", layer, {"layer": layer, "samples": samples, "std": std, "seed": seed,
                                                "batch_size": batch_size}, st)


def iscam(exp: Explainer, *, layer: str, steps: int, batch_size: int) -> RegionCAMResult:
    """IS-CAM: Score-CAM with each mask integrated over ``steps`` growing intensities."""
    st = _iscam_scores(exp, layer, steps, batch_size)
    return _region_result(exp, "iscam", layer, {"layer": layer, "steps": steps, "batch_size": batch_size}, st)


#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = (
    Method(        name="smoothgradcampp", label="SmoothGrad-CAM++", family="gradient",
        params=(LAYER,
                Param("samples", "int", 4, low=1, high=64, step=1,
                      help="n: noisy copies of the input whose gradients are averaged."),
                Param("std", "float", 0.3, low=0, high=3, step=0.05,
                      help="σ: standard deviation of the Gaussian noise added to the model input (normalised "
                           "space)."),
                Param("variant", "choice", "torchcam", choices=("torchcam", "paper"),
                      help="'torchcam': ReLU of the last noisy sample's gradient and that sample's activation "
                           "(torchcam); 'paper': ReLU of the mean gradient and the image's own activation."),
                _seed_param(), BATCH_SIZE),
        compute=smoothgradcampp,
        summary="Grad-CAM++ whose higher-order gradient terms are averaged over noisy copies of the input.",
        formula="ḡ^p = mean_i (dS_c/dA at x + ε_i)^p;  α = ḡ² / (2 ḡ² + sum_ab A ḡ³ + 1e-8);  "
                "w_k = sum_ij α ReLU(g);  L = ReLU(sum_k w_k A_k)",
        reference="Omeiza, Speakman, Cintas & Weldermariam, 'Smooth Grad-CAM++: An Enhanced Inference Level "
                  "Visualization Technique for Deep Convolutional Neural Network Models', 2019, arXiv:1908.01224 "
                  "(the averaged-derivative α and w_k of its method section).",
        implementation=f"{TORCHCAM} SmoothGradCAMpp (variant 'torchcam', the same noise: torch.manual_seed(seed) "
                       "before its call, batch_size 1); max abs difference <= 1e-4 at feature resolution after "
                       "normalisation. Variant 'paper': rebuilt from torchcam's per-sample gradients, 1e-4.",
        needs_gradients=True,
        stage="per (layer, samples, std, seed): ceil(samples / batch_size) batched forward + backward passes of "
              "the noisy inputs; variant and batch_size re-run nothing.",
        notes="Noise ε ~ N(0, σ²) is added to the normalised model input (torchcam's convention; σ = 0.3 there is "
              "about 0.07 in [0, 1] pixel units with ImageNet statistics). α's numerator is the averaged g², as "
              "torchcam corrects the paper's printed first derivative; α is Grad-CAM++'s closed form with "
              "torchcam's 1e-8 (not pytorch-grad-cam's 1e-6, no 'α = 0 where g = 0' guard), unlike torchcam's "
              "own GradCAMpp, which reduces α to g². Variant 'torchcam' reproduces torchcam exactly: w_k uses "
              "ReLU of the LAST noisy sample's gradient and the map combines the LAST noisy sample's activation "
              "(its hooks keep recording during the noisy passes), while α uses the clean activation. Variant "
              "'paper' averages the first derivative in w_k too, as the paper averages every derivative over the "
              "samples, and combines the image's own activation; with samples = 1 and std = 0 both equal "
              "Grad-CAM++ with ε = 1e-8. The class score is the logit. Gradients come from batched passes "
              "(torchcam runs one sample at a time): float rounding, which α amplifies where its denominator "
              "nearly cancels (of the normalised map: up to 1.2e-4 on a random-weight ResNet-18's layer3 with "
              "batch_size 2, 5e-5 on the demo model's layer3.0, 2e-7 on its layer4)."),
    Method(        name="sscam", label="SS-CAM", family="region",
        params=(LAYER,
                Param("samples", "int", 10, low=1, high=100, step=1,
                      help="n: noisy draws of every mask whose scores are averaged (n × K forward passes)."),
                Param("std", "float", 2.0, low=0, high=10, step=0.1,
                      help="σ: standard deviation of the Gaussian noise added to each [0, 1] mask."),
                _seed_param(), BATCH_SIZE),
        compute=sscam,
        summary="Score-CAM whose masks get Gaussian noise; each channel's score increase is averaged over the draws.",
        formula="m_k = up(normalise(A_k));  s_k = mean_i S_c(x ⊙ (m_k + ε_ik)) − S_c(x);  w = softmax_k(s);  "
                "L = ReLU(sum_k w_k A_k)",
        reference="Wang, Naidu, Michael & Kundu, 'SS-CAM: Smoothed Score-CAM for Sharper Visual Feature "
                  "Localization', 2020, arXiv:2006.14255 (SS-CAM(1): noise on the masks).",
        implementation=f"{TORCHCAM} SSCAM (the same noise: torch.manual_seed(seed) before its call); max abs "
                       "difference <= 1e-4 at feature resolution after normalisation, and the averaged scores to "
                       "1e-4.",
        needs_gradients=False,
        stage="per (layer, samples, std, seed): samples × K masked inputs, in forward passes of batch_size "
              "images (the (sample, channel) pairs are batched together); batch_size re-runs nothing.",
        notes="torchcam's conventions: logits (not softmax probabilities), w = softmax over channels of the "
              "averaged increase over S_c(x) (the paper builds on Score-CAM's channel-wise increase of "
              "confidence, a softmax-probability increase over a baseline), masks normalised at feature "
              "resolution then upsampled with align_corners=False (camwidgets' Score-CAM follows "
              "pytorch-grad-cam: upsample with align_corners=True, then normalise), noise added to the mask "
              "without clipping (the paper's SS-CAM(1); SS-CAM(2), noise on the input, is not offered). Default "
              "samples = 10 (torchcam's is 35; the cost is samples × K forward passes). No channel is skipped: "
              "an all-zero channel's noisy mask is not zero."),
    Method(        name="iscam", label="IS-CAM", family="region",
        params=(LAYER,
                Param("steps", "int", 10, low=1, high=100, step=1,
                      help="N: integration steps, mask intensities c_i = sum_{j<=i} j / N (N × K forward passes)."),
                BATCH_SIZE),
        compute=iscam,
        summary="Score-CAM whose channel scores are integrated over growing intensities of each mask.",
        formula="m_k = up(normalise(A_k));  s_k = mean_i S_c(c_i (x ⊙ m_k)) − S_c(x),  c_i = sum_{j=1..i} j / N;  "
                "w = softmax_k(s);  L = ReLU(sum_k w_k A_k)",
        reference="Naidu, Ghosh, Maurya, Nayak K & Kundu, 'IS-CAM: Integrated Score-CAM for axiomatic-based "
                  "explanations', 2020, arXiv:2010.03023 (the integrated CIC score).",
        implementation=f"{TORCHCAM} ISCAM; max abs difference <= 1e-4 at feature resolution after normalisation, "
                       "and the averaged scores to 1e-4.",
        needs_gradients=False,
        stage="per (layer, steps): steps × K masked inputs, in forward passes of batch_size images (the (step, "
              "channel) pairs are batched together); constant channels are not run (their input is the zero "
              "image, scored once: exact); batch_size re-runs nothing.",
        notes="torchcam's conventions: logits, w = softmax over channels of the averaged increase over S_c(x), "
              "masks normalised at feature resolution then upsampled with align_corners=False, and the "
              "intensities c_i = sum_{j=1..i} j / N as its code computes them (c_N = (N + 1) / 2; its docstring "
              "writes the sum from j = 0 to i − 1, one step less). Deterministic: no noise, so no seed and no "
              "std."),
)

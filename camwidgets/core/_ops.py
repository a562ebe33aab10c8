"""Small tensor helpers shared by every CAM method: normalise, upsample, percentiles.

Conventions (docs/methods.md, "Notation"):

* **normalise** is a per-map min-max over the last two dimensions to ``[0, 1]``; a
  constant map (``max == min``) becomes all zeros, never NaN.
* **upsample** is bilinear interpolation with ``align_corners=False`` to ``(H, W)``.
  (pytorch-grad-cam resizes with OpenCV's ``INTER_LINEAR``, which samples at the same
  half-pixel centres, so both agree up to rounding.)
* **percentile** uses linear interpolation between the closest ranks, the default of
  :func:`numpy.percentile` and :func:`torch.quantile`.

All functions accept any number of leading batch dimensions and never modify their input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["normalize", "percentile", "upsample", "zero_below_percentile"]


def normalize(maps: torch.Tensor) -> torch.Tensor:
    r"""Min-max normalise each map over its last two dimensions to ``[0, 1]``.

    .. math:: \hat L = \frac{L - \min L}{\max L - \min L}, \qquad
              \hat L = 0 \text{ where } \max L = \min L.

    Parameters
    ----------
    maps : Tensor, shape ``(..., h, w)``
        Any real values, e.g. ``(h, w)``, ``(K, h, w)`` or ``(N, K, h, w)``. Integer and
        boolean inputs are converted to float32; float dtypes are kept.

    Returns
    -------
    Tensor, shape ``(..., h, w)``, values in ``[0, 1]``
        A new tensor. A constant map (including an all-zero map) gives all zeros: the
        result is never NaN for finite input.
    """
    if maps.dim() < 2:
        raise ValueError(f"normalize expects shape (..., h, w), got {tuple(maps.shape)}.")
    x = maps if maps.is_floating_point() else maps.float()
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo
    ok = rng > 0
    # The division is done with a safe denominator so no NaN/inf appears even transiently.
    out = (x - lo) / torch.where(ok, rng, torch.ones_like(rng))
    return torch.where(ok, out, torch.zeros_like(out)).clamp_(0.0, 1.0)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize maps bilinearly (``align_corners=False``) to ``size = (H, W)``.

    Parameters
    ----------
    maps : Tensor, shape ``(..., h, w)``
        Any number of leading dimensions (``(h, w)``, ``(K, h, w)``, ``(N, K, h, w)``, ...).
        Non-float inputs are converted to float32.
    size : (int, int)
        Target ``(H, W)``.

    Returns
    -------
    Tensor, shape ``(..., H, W)``
        A new tensor (values are convex combinations of the input's, so a map in
        ``[0, 1]`` stays in ``[0, 1]`` up to rounding). Resizing to the same size is the
        identity.
    """
    if maps.dim() < 2:
        raise ValueError(f"upsample expects shape (..., h, w), got {tuple(maps.shape)}.")
    if len(size) != 2:
        raise ValueError(f"size must be (H, W), got {tuple(size)!r}.")
    out_h, out_w = int(size[0]), int(size[1])
    x = maps if maps.is_floating_point() else maps.float()
    lead = x.shape[:-2]
    h, w = x.shape[-2:]
    if (h, w) == (out_h, out_w):
        return x.clone()
    flat = x.reshape(-1, 1, h, w)
    up = F.interpolate(flat, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return up.reshape(*lead, out_h, out_w)


def percentile(x: torch.Tensor, q: float, dims: int | Sequence[int] = (-2, -1)) -> torch.Tensor:
    """``q``-th percentile of ``x`` over ``dims`` (linear interpolation, as :func:`numpy.percentile`).

    Parameters
    ----------
    x : Tensor
        Float tensor of any shape.
    q : float in ``[0, 100]``
        Percentile (0 = minimum, 100 = maximum).
    dims : int or sequence of int
        Dimensions reduced together (default the last two, i.e. per map).

    Returns
    -------
    Tensor
        ``x``'s shape with ``dims`` kept as size 1 (broadcastable against ``x``).
        Computed in float64 when ``x`` is float64, else in ``x``'s float dtype.
    """
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}.")
    xf = x if x.is_floating_point() else x.float()
    dims_t = (dims,) if isinstance(dims, int) else tuple(dims)
    nd = xf.dim()
    dims_n = sorted({d % nd for d in dims_t})
    keep = [d for d in range(nd) if d not in dims_n]
    # Move the reduced dims last, flatten them, take the quantile, restore a broadcastable shape.
    perm = keep + dims_n
    moved = xf.permute(*perm)
    flat = moved.reshape(*moved.shape[: len(keep)], -1)
    qs = torch.quantile(flat, q / 100.0, dim=-1, keepdim=True, interpolation="linear")
    out_shape = [1 if d in dims_n else xf.shape[d] for d in range(nd)]
    return qs.reshape(out_shape)


def zero_below_percentile(
    x: torch.Tensor, theta: float, dims: int | Sequence[int] = (-2, -1)
) -> torch.Tensor:
    """Set the values of ``x`` strictly below their ``θ``-th percentile (over ``dims``) to 0.

    The denoising step of UnionCAM (Hu et al. 2024, eq. 1, per gradient channel) and Fusion-CAM
    (Dekdegue et al. 2026, on the normalised gradient map). Values equal to the percentile are kept, so
    ``theta=0`` (the minimum) keeps everything.

    Parameters
    ----------
    x : Tensor
        Float tensor of any shape.
    theta : float in ``[0, 100]``
        Percentile.
    dims : int or sequence of int
        Dimensions over which the percentile is taken (default the last two).

    Returns
    -------
    Tensor, same shape and dtype as ``x``
        ``where(x < P_θ(x), 0, x)``.
    """
    thr = percentile(x, theta, dims).to(x.dtype)
    return torch.where(x < thr, torch.zeros_like(x), x)

"""Token sequences and channels-last maps as ``(N, C, h, w)`` feature maps (vision transformers).

Every CAM works on a feature map ``A`` of shape ``(N, K, h, w)``. Vision transformers do
not give one directly:

* a ViT block outputs **tokens** ``(N, T, C)``: ``T = p + h·w``, where the first ``p``
  tokens are the class token (and register tokens, if any) and the ``h·w`` others the
  patches of an ``h x w`` grid, row by row;
* a Swin stage outputs a **channels-last** map ``(N, H', W', C)``.

:func:`infer_layout` recognises both from the layer's output shape and the model input's
size ``(H, W)`` (and, for a ViT, the model's patch size when it has one), and returns a
:class:`Layout` whose :meth:`Layout.fold` drops the prefix tokens and folds the patches
into ``(N, C, h, w)`` (tokens), or permutes to ``(N, C, H', W')`` (channels-last).
:func:`~camwidgets.core._hooks.capture` applies the same fold to the activation and to its
gradient (the fold only selects and moves entries, so the gradient of the folded tensor is
the folded gradient), which is what pytorch-grad-cam's ``reshape_transform`` does; no
hand-written reshape function is needed.

How the layout is found (``H x W`` the model input):

=======================  ======================================================================
output                   layout
=======================  ======================================================================
``(N, K, h, w)``         ``"nchw"`` (unchanged) when ``h x w`` is a grid of the input (same
                         aspect ratio, to one cell of rounding); otherwise ``"nhwc"`` when
                         ``(K, h)`` is such a grid (Swin: ``(N, 56, 56, 96)`` at 224 px); an
                         output that fits neither is left as it is (``"nchw"``)
``(N, T, C)``            ``"tokens"``: with a known patch size ``P`` (torchvision's
                         ``VisionTransformer.patch_size``, timm's ``patch_embed.patch_size``) the
                         grid is ``(H // P, W // P)`` and the ``T - h·w`` leading tokens are
                         dropped; otherwise the fewest leading tokens (0 to
                         :data:`MAX_PREFIX_TOKENS`, and fewer than the patches) whose removal
                         leaves ``h·w`` tokens that factor into a grid of the input's aspect
                         ratio
anything else            None: not a feature map (pass your own ``reshape``)
=======================  ======================================================================

A ``(N, K, h, w)`` map whose ``h x w`` and ``K x h`` are both grids of the input (a square
input with ``K == w``) is taken as ``"nchw"``. A user ``reshape`` (tokens in, ``(N, C, h, w)``
out, as pytorch-grad-cam's ``reshape_transform``) replaces the inference:
``Explainer(model, image, reshape=fn)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["MAX_PREFIX_TOKENS", "Layout", "Reshape", "check_folded", "grid_matches", "infer_layout",
           "patch_size"]

#: A user's fold: the layer's output ``(N, ...)`` in, ``(N, C, h, w)`` out (pytorch-grad-cam's
#: ``reshape_transform`` contract). It must only select, reshape and permute entries: the same
#: function is applied to the gradient.
Reshape = Callable[[torch.Tensor], torch.Tensor]

#: Most leading (class + register) tokens :func:`infer_layout` drops when no patch size is known.
MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class Layout:
    """How a layer's output becomes a feature map ``(N, C, h, w)``.

    Attributes
    ----------
    kind : "nchw", "nhwc", "tokens" or "custom"
        ``"nchw"``: already a feature map; ``"nhwc"``: channels-last, permuted;
        ``"tokens"``: ``(N, T, C)``, leading tokens dropped and the rest folded row by row;
        ``"custom"``: the user's ``reshape``.
    shape : tuple of int
        The layer's output shape without the batch dimension.
    grid : (int, int)
        ``(h, w)`` of the folded map (``(0, 0)`` for ``"custom"`` until known).
    prefix : int
        Leading tokens dropped (``"tokens"``: the class token, register tokens).
    """

    kind: Literal["nchw", "nhwc", "tokens", "custom"]
    shape: tuple[int, ...]
    grid: tuple[int, int]
    prefix: int = 0

    @property
    def folded(self) -> bool:
        """True unless the output is used as it is (``"nchw"``)."""
        return self.kind != "nchw"

    def fold(self, t: torch.Tensor) -> torch.Tensor:
        """The layer's output ``(N, *shape)`` (or its gradient) as ``(N, C, h, w)``."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2).contiguous()
        if self.kind == "tokens":
            h, w = self.grid
            patches = t[:, self.prefix:, :]
            return patches.reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2).contiguous()
        raise ValueError("a custom layout has no fold of its own (the user's reshape is applied)")

    def unfold(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`fold`: feature maps ``(n, C, h, w)`` back in the layer's output layout.

        ``like`` is the layer's original output ``(1 or n, *shape)``: the dropped prefix
        tokens are taken from it (repeated over the ``n`` maps). Used by the methods that
        substitute a layer's output (Ablation-CAM, Recipro-CAM).
        """
        if self.kind == "nchw":
            return maps
        if self.kind == "nhwc":
            return maps.permute(0, 2, 3, 1).contiguous()
        if self.kind == "tokens":
            n, c = maps.shape[0], maps.shape[1]
            patches = maps.reshape(n, c, -1).transpose(1, 2)
            head = like[:, :self.prefix, :].to(patches.dtype).expand(n, -1, -1)
            return torch.cat([head, patches], dim=1)
        raise ValueError(
            "A layer folded by a user reshape cannot be un-folded: methods that replace the layer's output "
            "(Ablation-CAM, Recipro-CAM) need the automatic layout (reshape=None).")

    def describe(self) -> str:
        """A short account for messages, e.g. ``"tokens (50, 768): 1 leading token dropped, 7x7 grid"``."""
        h, w = self.grid
        if self.kind == "tokens":
            return (f"tokens {self.shape}: {self.prefix} leading token{'s' if self.prefix != 1 else ''} dropped, "
                    f"{h}x{w} grid")
        if self.kind == "nhwc":
            return f"channels-last map {self.shape} permuted to ({self.shape[-1]}, {h}, {w})"
        if self.kind == "custom":
            return f"output {self.shape} folded by the user's reshape"
        return f"feature map {self.shape}"


def grid_matches(grid: Sequence[int], size: Sequence[int]) -> bool:
    """True if ``grid = (h, w)`` is a grid of an input of ``size = (H, W)``: the same aspect ratio,
    to the rounding of one cell (``|h W - w H| < max(H, W)``), and no larger than the input."""
    h, w = int(grid[0]), int(grid[1])
    big_h, big_w = int(size[0]), int(size[1])
    if h < 1 or w < 1 or h > big_h or w > big_w:
        return False
    return abs(h * big_w - w * big_h) < max(big_h, big_w)


def patch_size(model: nn.Module | None) -> tuple[int, int] | None:
    """The model's patch size ``(P_h, P_w)`` when it declares one (torchvision ViT, timm), else None."""
    if model is None:
        return None
    for owner in (model, getattr(model, "patch_embed", None)):
        p = getattr(owner, "patch_size", None)
        if isinstance(p, int) and p > 0:
            return p, p
        if isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p):
            return int(p[0]), int(p[1])
    return None


def _factor_grid(n: int, size: Sequence[int]) -> tuple[int, int] | None:
    """The factorisation ``h · w = n`` closest to the input's aspect ratio, if it is a grid of the input."""
    if n < 1:
        return None
    big_h, big_w = int(size[0]), int(size[1])
    best: tuple[int, int] | None = None
    best_err = None
    for h in range(1, int(n ** 0.5) + 2):
        if n % h:
            continue
        for gh, gw in ((h, n // h), (n // h, h)):
            if not grid_matches((gh, gw), size):
                continue
            err = abs(gh * big_w - gw * big_h)
            if best_err is None or err < best_err:
                best, best_err = (gh, gw), err
    return best


def infer_layout(shape: Sequence[int], size: Sequence[int], model: nn.Module | None = None) -> Layout | None:
    """The :class:`Layout` of a layer output of ``shape`` ``(N, ...)`` for a model input of ``size`` ``(H, W)``.

    See the module docstring for the rules. Returns None when the output is neither a
    feature map, a channels-last map nor a token sequence with a recognisable grid.
    """
    dims = tuple(int(s) for s in shape[1:])
    if len(dims) == 3:
        k, h, w = dims
        if grid_matches((h, w), size):
            return Layout("nchw", dims, (h, w))
        if grid_matches((k, h), size):
            return Layout("nhwc", dims, (k, h))
        return Layout("nchw", dims, (h, w))
    if len(dims) == 2:
        t, _ = dims
        p = patch_size(model)
        if p is not None:
            grid = (int(size[0]) // p[0], int(size[1]) // p[1])
            extra = t - grid[0] * grid[1]
            if grid[0] >= 1 and grid[1] >= 1 and 0 <= extra <= MAX_PREFIX_TOKENS:
                return Layout("tokens", dims, grid, extra)
        for prefix in range(min(MAX_PREFIX_TOKENS, t - 1) + 1):
            found = _factor_grid(t - prefix, size)
            if found is not None and prefix < found[0] * found[1]:  # fewer dropped tokens than patches
                return Layout("tokens", dims, found, prefix)
    return None


def check_folded(name: str, raw: torch.Tensor, folded: object) -> torch.Tensor:
    """``folded`` if it is a feature map ``(N, C, h, w)`` of ``raw``'s batch; else ``ValueError`` naming the layer."""
    if not isinstance(folded, torch.Tensor) or folded.dim() != 4 or folded.shape[0] != raw.shape[0]:
        got = (f"{type(folded).__name__}{tuple(folded.shape)}" if isinstance(folded, torch.Tensor)
               else type(folded).__name__)
        raise ValueError(
            f"reshape returned {got} for layer {name!r} (output {tuple(raw.shape)}); it must return a feature map "
            f"(N, C, h, w) with the same N ({raw.shape[0]}), e.g. for ViT tokens "
            "lambda t: t[:, 1:, :].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2).")
    return folded

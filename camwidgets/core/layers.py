"""Which layers of a CNN a CAM can explain, found at block granularity (SPEC §5).

A *candidate layer* is a module whose output is a 4-D feature map ``(N, K, h, w)``
and that ends a block of the network:

============================  ==============================================================
architecture                  candidate layers
============================  ==============================================================
ResNet (and the demo model)   every ``BasicBlock`` / ``Bottleneck`` (``layer1.0`` … ``layer4.2``)
VGG                           every ReLU that follows a convolution (through a BatchNorm)
DenseNet                      every dense block and every transition
MobileNet v2 / v3             every inverted-residual block, then the last 1x1 head conv
EfficientNet (v1 / v2)        every ``MBConv`` / ``FusedMBConv``, then the last 1x1 head conv
RegNet                        every ``ResBottleneckBlock``
ConvNeXt                      every ``CNBlock``
anything else                 every module inside a ``Sequential`` / ``ModuleList`` (recursing
                              into containers only) or directly under the model, keeping only
                              the last of a conv → norm → activation run; the capture then drops
                              those whose output is not 4-D
============================  ==============================================================

For MobileNet and EfficientNet the final ``Conv2dNormActivation`` of ``features`` (the
1x1 head convolution) is added after the inverted-residual blocks: its activated output
is the layer CAM users pick for these models (the last inverted-residual block is a
linear bottleneck without activation).

Candidates are listed in forward order; the *default single layer* is the last one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from torch import nn

__all__ = ["LayerSpec", "candidate_layers", "default_layer", "resolve_layer", "resolve_layers"]

#: A layer given by its dotted name (``"layer4.1"``) or by the module object itself.
LayerSpec = str | nn.Module

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish,
                nn.PReLU, nn.SELU, nn.CELU, nn.Sigmoid, nn.Tanh, nn.Hardtanh)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def _block_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(block classes, classes whose models get the head conv appended)`` of torchvision."""
    from torchvision.models import convnext, densenet, efficientnet, mobilenetv2, mobilenetv3, regnet, resnet

    blocks: tuple[type, ...] = (
        resnet.BasicBlock, resnet.Bottleneck,
        densenet._DenseBlock, densenet._Transition,
        mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual,
        efficientnet.MBConv, efficientnet.FusedMBConv,
        regnet.ResBottleneckBlock,
        convnext.CNBlock,
    )
    with_head = (mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual,
                 efficientnet.MBConv, efficientnet.FusedMBConv)
    return blocks, with_head


def _known_blocks(model: nn.Module) -> list[str]:
    blocks, with_head = _block_types()
    names: list[str] = []
    inside: list[str] = []  # blocks never nest candidates (DenseNet's layers live inside blocks)
    head_family = False
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, blocks):
            names.append(name)
            inside.append(name)
            head_family = head_family or isinstance(module, with_head)
    if names and head_family:
        from torchvision.ops.misc import Conv2dNormActivation

        features = getattr(model, "features", None)
        if isinstance(features, nn.Sequential) and isinstance(features[-1], Conv2dNormActivation):
            names.append(f"features.{len(features) - 1}")
    return names


def _vgg_relus(model: nn.Module) -> list[str]:
    """ReLUs that follow a convolution (optionally through a norm) inside a Sequential."""
    names: list[str] = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        last_conv = False
        for child_name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                last_conv = True
            elif isinstance(child, _NORMS) and last_conv:
                continue
            elif isinstance(child, _ACTIVATIONS) and last_conv:
                names.append(f"{prefix}.{child_name}" if prefix else child_name)
                last_conv = False
            else:
                last_conv = False
    return names


def _generic(model: nn.Module) -> list[str]:
    """Structural fallback: block-level modules; the capture keeps only 4-D outputs."""
    names: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        children = list(module.named_children())
        for i, (child_name, child) in enumerate(children):
            full = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, _CONTAINERS):
                visit(child, full)
                continue
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            # Keep only the end of a conv -> norm -> activation run (its output is the block's).
            if isinstance(child, (nn.Conv2d, *_NORMS)) and isinstance(nxt, (*_NORMS, *_ACTIVATIONS)):
                continue
            names.append(full)

    visit(model, "")
    return names


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.modules.conv._ConvNd)) and getattr(m, "weight", None) is not None
               and m.weight.dim() == 4 for m in model.modules())


def candidate_layers(model: nn.Module) -> list[str]:
    """Dotted names of the model's candidate layers, in forward order (SPEC §5).

    Parameters
    ----------
    model : torch.nn.Module
        A CNN classifier.

    Returns
    -------
    list of str
        Names usable with ``model.get_submodule``. For models not listed in the module
        docstring the list is structural and may still contain layers whose output is
        not 4-D; :class:`~camwidgets.core.explainer.Explainer` drops those after its
        first forward pass.

    Raises
    ------
    ValueError
        If the model has no 2-D convolution, hence no 4-D feature map to explain.

    Examples
    --------
    >>> from torchvision.models import resnet18
    >>> candidate_layers(resnet18())[-2:]
    ['layer4.0', 'layer4.1']
    """
    if not _has_conv(model):
        raise ValueError(
            f"{type(model).__name__} has no 2-D convolution, so no layer gives the 4-D feature map "
            "(N, K, h, w) a CAM needs. Pass a convolutional network (or a model whose features are "
            "computed by Conv2d layers)."
        )
    names = _known_blocks(model)
    if not names:
        names = _vgg_relus(model)
    if not names:
        names = _generic(model)
    return names


def default_layer(candidates: Sequence[str]) -> str:
    """The default single layer: the last candidate (the last block)."""
    if not candidates:
        raise ValueError("The model has no candidate layer with a 4-D output; pass layer=... explicitly.")
    return candidates[-1]


def resolve_layer(model: nn.Module, layer: LayerSpec, candidates: Sequence[str] = ()) -> str:
    """The dotted name of ``layer`` in ``model``.

    Parameters
    ----------
    model : torch.nn.Module
    layer : str or torch.nn.Module
        A dotted name such as ``"layer4.1"`` (as in ``model.named_modules()``) or a
        submodule of ``model``.
    candidates : sequence of str
        Listed in the error message as suggestions.

    Raises
    ------
    ValueError
        If the name does not exist or the module is not part of ``model``; the message
        lists the closest names and the candidate layers.
    """
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name
        raise ValueError(
            f"The module {type(layer).__name__} passed as layer is not a submodule of the model "
            "(or is the model itself). Pass a submodule of the model, or its dotted name, e.g. "
            f"{candidates[-1]!r}." if candidates else
            f"The module {type(layer).__name__} passed as layer is not a submodule of the model."
        )
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a dotted name (str) or a submodule, got {type(layer).__name__}.")
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return layer
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(repr(c) for c in list(candidates)[-8:])
    raise ValueError(
        f"The model has no layer named {layer!r}.{hint} Use a dotted name from model.named_modules(); "
        f"candidate layers include {shown}." if candidates else
        f"The model has no layer named {layer!r}.{hint} Use a dotted name from model.named_modules()."
    )


def resolve_layers(model: nn.Module, layers: Iterable[LayerSpec],
                   candidates: Sequence[str] = ()) -> list[str]:
    """:func:`resolve_layer` for each entry, duplicates removed, order kept."""
    out: list[str] = []
    for layer in layers:
        name = resolve_layer(model, layer, candidates)
        if name not in out:
            out.append(name)
    return out

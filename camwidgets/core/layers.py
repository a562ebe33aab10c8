"""Which layers of a CNN (or vision transformer) a CAM can explain, found at block granularity.

A *candidate layer* is a module whose output is a feature map ``(N, K, h, w)`` -- or a
token sequence / channels-last map that :mod:`camwidgets.core.tokens` folds into one --
and that ends a block of the network:

============================  ==============================================================
architecture                  candidate layers
============================  ==============================================================
ResNet (and the demo model)   every ``BasicBlock`` / ``Bottleneck`` (``layer1.0`` … ``layer4.2``;
                              the demo model's own ``BasicBlock`` as torchvision's)
VGG                           every ReLU that follows a convolution (through a BatchNorm)
DenseNet                      every dense block and every transition
MobileNet v2 / v3             every inverted-residual block, then the last 1x1 head conv
EfficientNet (v1 / v2)        every ``MBConv`` / ``FusedMBConv``, then the last 1x1 head conv
RegNet                        every ``ResBottleneckBlock``
ConvNeXt                      every ``CNBlock``
ViT (torchvision)             every ``EncoderBlock`` but the last (``encoder.layers.encoder_layer_0``
                              …), then the last block's first LayerNorm
                              (``encoder.layers.encoder_layer_11.ln_1`` for ``vit_b_*``); tokens
                              ``(N, 1 + h·w, C)``, folded to ``(N, C, h, w)``
Swin / Swin v2                every ``SwinTransformerBlock`` / ``SwinTransformerBlockV2``
                              (``features.1.0`` … ``features.7.1``); channels-last maps
                              ``(N, h, w, C)``, permuted
MaxViT                        every ``MaxVitLayer`` (``blocks.0.layers.0`` …; already ``(N, C, h, w)``)
anything else                 every module inside a ``Sequential`` / ``ModuleList`` (recursing
                              into containers only) or directly under the model, keeping only
                              the last of a conv → norm → activation run; the capture then drops
                              those whose output is not 4-D
============================  ==============================================================

Shared modules. A module that runs more than once in one forward pass has no single
activation, so it cannot be a CAM layer. What the module tree shows is used here: a module
registered under several names (the same ``nn.ReLU`` object at two places of a
``Sequential``) is never a candidate, and the conv (or norm) before it ends the run
instead; in a custom module with fewer activation modules than convolutions (one
``self.relu`` applied after every conv, as in many hand-written CNNs) the convolutions are
kept as well as the activation. What only a forward pass shows (one ``self.relu`` called
three times, a block called twice) is left to the capture:
:func:`~camwidgets.core._hooks.capture` with ``drop_reused=True`` leaves those layers out,
which the explainer does for ``layers="auto"``; a layer named by the user that runs more
than once is an error.

Compiled models. A ``torch.compile(model)`` wrapper is looked through
(:func:`~camwidgets.core._hooks.unwrap_model`): candidates are named as in the original
model (``"layer4.1"``, not ``"_orig_mod.layer4.1"``) and :func:`resolve_layer` accepts both.

For MobileNet and EfficientNet the final ``Conv2dNormActivation`` of ``features`` (the
1x1 head convolution) is added after the inverted-residual blocks: its activated output
is the layer CAM users pick for these models (the last inverted-residual block is a
linear bottleneck without activation).

Vision transformers. A ViT classifies from its class token alone: after the last block
only the class token reaches the head (through the final LayerNorm, which works per
token), so the gradient of the class score with respect to the last block's *patch*
tokens is exactly zero and every gradient CAM of that layer is empty. The last candidate,
and so the default layer, is therefore the last block's first LayerNorm (``ln_1``, the
input of the last self-attention, whose keys and values are the patch tokens): the layer
pytorch-grad-cam's vision-transformer tutorial and README use
(``target_layers = [model.blocks[-1].norm1]`` for timm's ViT, the same module as
torchvision's ``encoder_layer_11.ln_1``), for this reason. For Swin the head averages
every position of the last stage, so its last block is the default layer, as for a CNN.

Candidates are listed in forward order; the *default single layer* is the last one.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Sequence

from torch import nn

from ._hooks import strip_compiled_prefix, unwrap_model

__all__ = ["LayerSpec", "candidate_layers", "default_layer", "resolve_layer", "resolve_layers"]

#: A layer given by its dotted name (``"layer4.1"``) or by the module object itself.
LayerSpec = str | nn.Module

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish,
                nn.PReLU, nn.SELU, nn.CELU, nn.Sigmoid, nn.Tanh, nn.Hardtanh)
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def _torchvision_loaded() -> bool:
    """Whether torchvision is imported: if not, no model can hold one of its modules.

    Recognising torchvision's blocks never imports torchvision, which takes seconds (its
    ``ops`` import ``torch._dynamo``): a model built from torchvision's classes has
    imported it already.
    """
    return "torchvision" in sys.modules


def _block_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """``(block classes, classes whose models get the head conv appended)``: torchvision's,
    when torchvision is imported, and the demo model's :class:`~camwidgets.models.demo.BasicBlock`,
    when its module is imported (neither is imported here)."""
    blocks: tuple[type, ...] = ()
    with_head: tuple[type, ...] = ()
    demo = sys.modules.get("camwidgets.models.demo")
    block = getattr(demo, "BasicBlock", None)
    if isinstance(block, type):
        blocks += (block,)
    if not _torchvision_loaded():
        return blocks, with_head

    from torchvision.models import (
        convnext,
        densenet,
        efficientnet,
        maxvit,
        mobilenetv2,
        mobilenetv3,
        regnet,
        resnet,
        swin_transformer,
        vision_transformer,
    )

    blocks += (
        resnet.BasicBlock, resnet.Bottleneck,
        densenet._DenseBlock, densenet._Transition,
        mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual,
        efficientnet.MBConv, efficientnet.FusedMBConv,
        regnet.ResBottleneckBlock,
        convnext.CNBlock,
        vision_transformer.EncoderBlock,
        swin_transformer.SwinTransformerBlock,  # SwinTransformerBlockV2 is a subclass
        maxvit.MaxVitLayer,
    )
    with_head = (mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual,
                 efficientnet.MBConv, efficientnet.FusedMBConv)
    return blocks, with_head


def _shared(model: nn.Module) -> set[int]:
    """``id`` of every module registered at more than one place (it runs once per place)."""
    seen: set[int] = set()
    shared: set[int] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        (shared if id(module) in seen else seen).add(id(module))
    return shared


def _known_blocks(model: nn.Module) -> list[str]:
    model = unwrap_model(model)
    blocks, with_head = _block_types()
    shared = _shared(model)
    names: list[str] = []
    inside: list[str] = []  # blocks never nest candidates (DenseNet's layers live inside blocks)
    head_family = False
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, blocks):
            if id(module) not in shared:
                names.append(name)
            inside.append(name)
            head_family = head_family or isinstance(module, with_head)
    if names and head_family:
        from torchvision.ops.misc import Conv2dNormActivation

        features = getattr(model, "features", None)
        if (isinstance(features, nn.Sequential) and isinstance(features[-1], Conv2dNormActivation)
                and id(features[-1]) not in shared):
            names.append(f"features.{len(features) - 1}")
    if names and _torchvision_loaded():
        from torchvision.models.vision_transformer import EncoderBlock

        last = model.get_submodule(names[-1])
        if isinstance(last, EncoderBlock):
            # Only the class token of the last block reaches the head: its patch tokens' gradient is 0.
            names[-1] = f"{names[-1]}.ln_1"
    return names


def _vgg_relus(model: nn.Module) -> list[str]:
    """Activations that follow a convolution (optionally through a norm) inside a Sequential.

    An activation module that sits at several places (one ``nn.ReLU`` object reused) runs
    more than once: the conv or norm before it ends the run instead.
    """
    model = unwrap_model(model)
    shared = _shared(model)
    names: list[str] = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or id(module) in shared:
            continue
        run_end: str | None = None  # the conv, or the norm after it, the current run ends with so far
        for child_name, child in module._modules.items():
            full = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, nn.Conv2d) or (isinstance(child, _NORMS) and run_end is not None):
                run_end = None if id(child) in shared else full
            elif isinstance(child, _ACTIVATIONS) and run_end is not None:
                names.append(run_end if id(child) in shared else full)
                run_end = None
            else:
                run_end = None
    return names


def _generic(model: nn.Module) -> list[str]:
    """Structural fallback: block-level modules; the capture keeps only 4-D outputs."""
    model = unwrap_model(model)
    shared = _shared(model)
    names: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        # A custom module's children are listed in declaration order, not call order: with fewer
        # activation modules than convolutions, one activation is probably applied after several
        # convolutions, so a conv followed by an activation is not taken to end there.
        n_act = len({id(c) for _, c in children if isinstance(c, _ACTIVATIONS)})
        n_conv = len({id(c) for _, c in children if isinstance(c, nn.Conv2d)})
        unpaired = not isinstance(module, _CONTAINERS) and n_act < n_conv
        for i, (child_name, child) in enumerate(children):
            full = f"{prefix}.{child_name}" if prefix else child_name
            if id(child) in shared:
                continue  # runs at each place it is registered: no single activation
            if isinstance(child, _CONTAINERS):
                visit(child, full)
                continue
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            # Keep only the end of a conv -> norm -> activation run (its output is the block's).
            if isinstance(child, (nn.Conv2d, *_NORMS)) and isinstance(nxt, (*_NORMS, *_ACTIVATIONS)):
                act_may_be_shared = isinstance(nxt, _ACTIVATIONS) and (unpaired or id(nxt) in shared)
                if not act_may_be_shared:
                    continue
            names.append(full)

    visit(model, "")
    return names


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.modules.conv._ConvNd)) and getattr(m, "weight", None) is not None
               and m.weight.dim() == 4 for m in model.modules())


def candidate_layers(model: nn.Module) -> list[str]:
    """Dotted names of the model's candidate layers, in forward order.

    Parameters
    ----------
    model : torch.nn.Module
        A CNN classifier, or a ``torch.compile`` wrapper of one (the names are those of
        the original model, without ``"_orig_mod."``).

    Returns
    -------
    list of str
        Names usable with ``unwrap_model(model).get_submodule``. For models not listed in
        the module docstring the list is structural and may still contain layers whose
        output is not 4-D, or a module that runs more than once (one ``self.relu`` called
        after every conv); :class:`~camwidgets.core.explainer.Explainer` drops those after
        its first forward pass (``capture(..., drop_reused=True)``).

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
    return _find_candidates(model)[0]


def _find_candidates(model: nn.Module) -> tuple[list[str], bool]:
    """:func:`candidate_layers`, and whether they came from the structural fallback (``_generic``).

    The explainer drops a fallback candidate whose output is 1x1 (a pooled head), and keeps
    one of a recognised architecture; this tells it which without a second search.
    """
    model = unwrap_model(model)
    if not _has_conv(model):
        raise ValueError(
            f"{type(model).__name__} has no 2-D convolution, so no layer gives the 4-D feature map "
            "(N, K, h, w) a CAM needs. Pass a convolutional network (or a model whose features are "
            "computed by Conv2d layers)."
        )
    names = _known_blocks(model)
    if not names:
        names = _vgg_relus(model)
    if names:
        return names, False
    return _generic(model), True


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
        The model, or a ``torch.compile`` wrapper of it: names are relative to the
        original model, and a leading ``"_orig_mod."`` (as the wrapper's
        ``named_modules()`` writes it) is removed.
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
    model = unwrap_model(model)
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
    layer = strip_compiled_prefix(model, layer)
    try:  # the common case, without walking every module
        if layer and model.get_submodule(layer) is not model:
            return layer
    except AttributeError:
        pass
    names = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
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

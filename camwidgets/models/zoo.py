"""torchvision classification models with their own preprocessing and class names."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch
import torchvision
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from ..core.preprocess import Preprocess

__all__ = ["WeightsUnavailableError", "classification_models", "load_torchvision"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded (no network, or the download failed)."""


def classification_models() -> list[str]:
    """Names of torchvision's image-classification models (``resnet50``, ``vgg16``, ...)."""
    return sorted(list_models(module=torchvision.models))


def _default_weights(name: str) -> WeightsEnum | None:
    try:
        enum = get_model_weights(name)
    except (ValueError, KeyError):
        return None
    return getattr(enum, "DEFAULT", None) or next(iter(enum), None)


def _preprocess_from(weights: WeightsEnum | None) -> Preprocess:
    """A :class:`Preprocess` equal to the weights' ``ImageClassification`` transform."""
    if weights is None:
        return Preprocess(size=224, resize=256, mean=_IMAGENET_MEAN, std=_IMAGENET_STD)
    return Preprocess.from_torchvision(weights.transforms())  # resize, crop, interpolation, antialias, mean, std


def _categories(weights: WeightsEnum | None, num_classes: int) -> list[str]:
    cats = list(weights.meta.get("categories") or []) if weights is not None else []
    if len(cats) == num_classes:
        return cats
    return [f"class {i}" for i in range(num_classes)]


def _num_classes(model: torch.nn.Module) -> int:
    """Output width of the last Linear or Conv2d registered (the classifier head)."""
    last = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m.out_features
        elif isinstance(m, torch.nn.Conv2d):
            last = m.out_channels
    return int(last)


def _load_local(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types
        raise ValueError(
            f"Could not read weights from {str(path)!r} ({type(err).__name__}: {err}). Pass a file "
            "saved with torch.save(model.state_dict(), path), e.g. torchvision's .pth checkpoints."
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_torchvision(
    name: str,
    weights: str | os.PathLike[str] | WeightsEnum | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Preprocess, list[str]]:
    """Build a torchvision classification model with its preprocessing and class names.

    Parameters
    ----------
    name : str
        A torchvision classification model, e.g. ``"resnet50"``, ``"vgg16"``,
        ``"densenet121"``, ``"mobilenet_v3_large"``, ``"efficientnet_b0"``, ``"convnext_tiny"``.
    weights : None, str, path or ``WeightsEnum``
        ``None``: random initialisation (no download). ``"DEFAULT"``, ``"IMAGENET1K_V1"``, ... or a
        weights enum member: torchvision's pretrained weights, downloaded through torchvision's own
        path (``torch.hub`` cache, ``$TORCH_HOME``) the first time. A path to a local ``.pth`` file
        with a state dict (e.g. a torchvision checkpoint copied from an online machine): loaded with
        ``torch.load(weights_only=True)``.
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    preprocess : Preprocess
        The weights' own transform (resize the shorter side, centre crop, normalise); for
        random or local weights, that of the architecture's default weights.
    class_names : list of str
        The weights' categories (ImageNet's 1,000 for torchvision's classifiers).

    Raises
    ------
    ValueError
        Unknown model name, unknown weights name, or an unreadable / mismatching local file.
    WeightsUnavailableError
        The download failed (e.g. no network). The message says how to continue offline.
    """
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"{name!r} is not a torchvision classification model.{hint} "
            "See camwidgets.models.classification_models() for the list."
        )
    default = _default_weights(name)
    enum_weights: WeightsEnum | None = None
    local: Path | None = None
    if isinstance(weights, WeightsEnum):
        enum_weights = weights
    elif isinstance(weights, (str, os.PathLike)):
        s = os.fspath(weights)
        if os.path.sep in s or s.endswith((".pth", ".pt")) or Path(s).exists():
            local = Path(s).expanduser()
            if not local.is_file():
                raise ValueError(f"Weights file {s!r} does not exist; check the path.")
        else:
            try:
                enum_weights = get_model_weights(name).verify(s)
            except (ValueError, KeyError, AttributeError):
                options = ["DEFAULT", *(w.name for w in get_model_weights(name))]
                raise ValueError(
                    f"{s!r} is not a weights name for {name!r}; choose one of {options}, "
                    "a path to a local .pth file, or None for random weights."
                ) from None
    elif weights is not None:
        raise ValueError(f"weights must be None, a name, a path or a WeightsEnum, not {type(weights)}.")

    if enum_weights is not None:
        try:
            model = get_model(name, weights=enum_weights)
        except OSError as err:  # urllib's URLError, socket errors, HTTP errors
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            url = getattr(enum_weights, "url", "?")
            raise WeightsUnavailableError(
                f"Could not download the pretrained weights {name}/{enum_weights.name} from {url} "
                f"({err}). This machine seems to be offline. To continue: use weights=None for "
                f"random weights (fine for trying the widgets, not for meaningful maps); or download "
                f"that file on a machine with network access and either pass its path as "
                f"weights='/path/{Path(url).name}' or copy it into {cache}; or use "
                f"camwidgets.load_demo_model(), which ships with camwidgets."
            ) from None
        preprocess_weights: WeightsEnum | None = enum_weights
    else:
        model = get_model(name, weights=None)
        preprocess_weights = default
        if local is not None:
            state = _load_local(local)
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(
                    f"The weights in {str(local)!r} do not fit torchvision's {name!r}: "
                    f"{str(err).splitlines()[0]} Check that the file belongs to this architecture."
                ) from None
    model = model.eval().to(device)
    return model, _preprocess_from(preprocess_weights), _categories(preprocess_weights, _num_classes(model))

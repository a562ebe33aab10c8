"""Recipro-CAM and Group-CAM: camwidgets vs the official code, same model, layer, input and class. Prints JSON.

The official implementations are **not** part of camwidgets and are never copied into it: pass work trees
of github.com/sybyun/ReciproCAM and github.com/wofmanaf/Group-CAM, e.g.::

    mkdir -p /tmp/x/reciprocam /tmp/x/groupcam
    git --git-dir=/work/.mirror/sybyun+ReciproCAM/repo archive HEAD | tar -x -C /tmp/x/reciprocam
    git --git-dir=/work/.mirror/wofmanaf+Group-CAM/repo archive HEAD | tar -x -C /tmp/x/groupcam
    pip install --target /tmp/offdeps kornia==0.7.3 kornia_rs --no-deps   # Group-CAM's blur
    PYTHONPATH=/tmp/offdeps python benchmarks/check_official_region.py \\
        --reciprocam /tmp/x/reciprocam --groupcam /tmp/x/groupcam

A missing or unusable path gives ``"not available: <reason>"`` for that method (exit status 0).

How the official code is run
    Recipro-CAM: ``src/recipro_cam.py`` is imported from PATH by file location. ``ReciproCam(model, "cpu")``
    deep-copies the model and hooks the last Conv/BN/ReLU it finds. For a case at another layer its hook
    is moved (on its own copy of the model) to that layer: the hook function is the official
    ``_cam_hook()`` itself, so the masking and the scores are the official code's. For
    ``variant="gaussian"`` the instance's ``_mosaic_feature`` is wrapped to pass ``is_gaussian=True``
    (its hook hard-codes ``False``: the official default is the plain variant). The map compared is the
    official ``cam`` (``h x w``, min-max normalised) vs ``normalise(result.raw)`` of camwidgets, for both
    variants.
    Group-CAM: ``cam/groupcam.py`` is imported by file location with the two names it imports provided
    (``cam.BaseCAM`` from ``cam/basecam.py``; ``utils.group_sum`` from ``utils/cluster.py``, only used by
    the clustering variants, a stub if scikit-learn is missing), without running the packages'
    ``__init__`` (they import OpenCV, matplotlib, importlib_resources). It needs ``kornia`` for its blur.
    The official code calls ``.cuda()`` on two tensors; on a CPU-only machine ``torch.Tensor.cuda`` is
    made the identity for the duration of the call (nothing else is changed). ``GroupCAM`` registers
    hooks that it never removes, so it gets a deep copy of the model. Compared: its returned map
    ``(H, W)`` vs camwidgets' ``result.map`` (both min-max normalised at input resolution), for G = 32 (the
    default) and G = 16: on the trained demo model two of 32 groups have an all-zero map, which makes the
    official map NaN (reported, not compared); G = 8 too.

Models (random weights after ``torch.manual_seed(0)`` for torchvision; the input is the same normalised
tensor, ``Explainer.input``)
    ``demo``: ``load_demo_model()``, ``load_sample("shapes-star")``, its label as class, 128 px.
    ``resnet18`` / ``resnet50``: torchvision, ``load_sample("chelsea")`` resized and cropped to ``--size``
    with ImageNet normalisation, the model's predicted class.
    Layers: the last block's output (demo ``layer4.1``, ResNets ``layer4``), and for Recipro-CAM also the
    layer the official class picks by itself where camwidgets can explain it (the ``bn2`` of a
    BasicBlock: ``layer4.1.bn2``). For a Bottleneck (ResNet-50) the official class hooks ``layer4.2.relu``,
    which runs three times per block (the masking is applied three times); camwidgets refuses such a
    layer, so that case is reported as not comparable.

Reported per case: ``max_abs`` / ``mean_abs`` differences, ``official_raw_range`` (Recipro-CAM: the
spread max − min of the official probabilities before normalisation, which sets how much float rounding
the normalisation magnifies), and single-run wall times (``--threads`` torch threads).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import camwidgets
from camwidgets.core import _ops
from camwidgets.core.preprocess import Preprocess
from camwidgets.datasets import load_sample
from camwidgets.models import load_demo_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Unavailable(Exception):
    """The official code cannot be used (the message says why)."""


def _git_blob(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _module_from(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise Unavailable(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_official_reciprocam(path: str | None) -> tuple[type, dict[str, str]]:
    """The official ``ReciproCam`` class from a work tree at ``path``."""
    if not path:
        raise Unavailable("no --reciprocam PATH given")
    root = Path(path).expanduser().resolve()
    src = root / "src" / "recipro_cam.py"
    if not src.is_file():
        raise Unavailable(f"{src} does not exist")
    try:
        module = _module_from(src, "official_recipro_cam")
    except Unavailable:
        raise
    except Exception as err:  # any import failure means "not available"
        raise Unavailable(f"import of {src} failed: {type(err).__name__}: {err}") from err
    return module.ReciproCam, {"path": str(root), "git_blob:src/recipro_cam.py": _git_blob(src)}


@contextlib.contextmanager
def _modules(**stubs: types.ModuleType) -> Iterator[None]:
    """``sys.modules`` entries for the block only (the previous ones, or none, restored after)."""
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def load_official_groupcam(path: str | None) -> tuple[type, dict[str, str]]:
    """The official ``GroupCAM`` class from a work tree at ``path`` (see the module docstring)."""
    if not path:
        raise Unavailable("no --groupcam PATH given")
    root = Path(path).expanduser().resolve()
    files = {name: root / name for name in ("cam/groupcam.py", "cam/basecam.py", "utils/cluster.py")}
    missing = [n for n, p in files.items() if not p.is_file()]
    if missing:
        raise Unavailable(f"{root} lacks {missing}")
    try:
        import kornia.filters.gaussian  # the official blur
    except Exception as err:
        raise Unavailable(f"the official Group-CAM needs kornia: {type(err).__name__}: {err}") from err
    try:
        base = _module_from(files["cam/basecam.py"], "official_groupcam_basecam")
        try:
            cluster: Any = _module_from(files["utils/cluster.py"], "official_groupcam_cluster")
            group_sum = cluster.group_sum
        except ImportError:  # scikit-learn missing: only the clustering variants need it
            def group_sum(*args: Any, **kwargs: Any) -> Any:
                raise NotImplementedError("utils.group_sum needs scikit-learn")
        cam_pkg, utils_pkg = types.ModuleType("cam"), types.ModuleType("utils")
        cam_pkg.BaseCAM = base.BaseCAM  # type: ignore[attr-defined]
        utils_pkg.group_sum = group_sum  # type: ignore[attr-defined]
        with _modules(cam=cam_pkg, utils=utils_pkg):
            module = _module_from(files["cam/groupcam.py"], "official_groupcam")
    except Unavailable:
        raise
    except Exception as err:
        raise Unavailable(f"import of {files['cam/groupcam.py']} failed: {type(err).__name__}: {err}") from err
    import kornia

    info = {"path": str(root), "kornia": kornia.__version__,
            **{f"git_blob:{n}": _git_blob(p) for n, p in files.items()}}
    return module.GroupCAM, info


@contextlib.contextmanager
def _cuda_is_identity() -> Iterator[None]:
    """``tensor.cuda()`` returns the tensor itself inside the block (the official Group-CAM calls it)."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


# ----------------------------------------------------------------------------------------- setup
def setup(name: str, size: int = 224) -> dict[str, Any]:
    """Model, preprocessing, image and class of one case (see the module docstring)."""
    if name == "demo":
        model, pre, classes = load_demo_model()
        sample = load_sample("shapes-star")
        target: int | None = classes.index(sample["label"])
        block = "layer4.1"
    elif name in ("resnet18", "resnet50"):
        import torchvision

        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        pre = Preprocess(size=(size, size), resize=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        sample = load_sample("chelsea")
        target = None
        block = "layer4"
    else:
        raise ValueError(f"unknown model {name!r}; choose demo, resnet18 or resnet50")
    ex = camwidgets.Explainer(model, sample["image"], target=target, preprocess=pre, layers=[block])
    return {"name": name, "model": model, "pre": pre, "image": sample["image"], "target": ex.target,
            "block": block, "x": ex.input}


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _diff(a: Any, b: Any) -> dict[str, float]:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def compare_reciprocam(recipro_cls: type, s: dict[str, Any], layer: str | None, variant: str) -> dict[str, Any]:
    """One Recipro-CAM case; ``layer=None``: the layer the official class picks by itself."""
    model = s["model"]
    t0 = time.perf_counter()
    rc = recipro_cls(model, "cpu" if not next(model.parameters()).is_cuda else "cuda")
    chosen = _module_name(rc.model, rc.target_layers[-1])
    if layer is not None and layer != chosen:
        rc.target_layers[-1]._forward_hooks.clear()  # its copy of the model only
        rc.model.get_submodule(layer).register_forward_hook(rc._cam_hook())
    if variant == "gaussian":
        mosaic = rc._mosaic_feature
        rc._mosaic_feature = lambda f, nc, h, w, is_gaussian=False: mosaic(f, nc, h, w, True)
    with torch.no_grad():
        raw_logits: list[torch.Tensor] = []
        probe = rc.model.register_forward_hook(lambda m, i, o: raw_logits.append(o.detach()))
        try:
            cam, _ = rc(s["x"], index=s["target"])
        finally:
            probe.remove()
    t_official = time.perf_counter() - t0
    layer = layer or chosen
    out: dict[str, Any] = {"method": "reciprocam", "model": s["name"], "variant": variant, "layer": layer,
                           "official_layer_choice": chosen, "target": s["target"], "input": list(s["x"].shape)}
    try:
        t0 = time.perf_counter()
        ex = camwidgets.Explainer(model, s["image"], target=s["target"], preprocess=s["pre"], layers=[layer])
        res = ex.reciprocam(layer=layer, variant=variant)
        t_ours = time.perf_counter() - t0
    except ValueError as err:
        return {**out, "comparable": False, "reason": str(err)}
    probs = torch.softmax(raw_logits[-1][1:], dim=1)[:, s["target"]]
    ours = _ops.normalize(res.raw_tensor.double().cpu())
    return {**out, "comparable": True, "feature_shape": list(ours.shape), **_diff(ours, cam.cpu()),
            "official_raw_range": float(probs.max() - probs.min()), "official_raw_mean": float(probs.mean()),
            "ours_raw_max_abs_vs_official_probs": float((res.raw_tensor.cpu().flatten() - probs.cpu()).abs().max()),
            "time_s": {"ours_incl_explainer": t_ours, "official": t_official}}


def compare_groupcam(group_cls: type, s: dict[str, Any], layer: str, groups: int = 32) -> dict[str, Any]:
    """One Group-CAM case."""
    model = s["model"]
    official_model = copy.deepcopy(model)  # the official BaseCAM never removes its hooks
    t0 = time.perf_counter()
    gc = group_cls(official_model, target_layer=layer, groups=groups)
    with _cuda_is_identity():
        cam = gc(s["x"].clone(), class_idx=s["target"])
    t_official = time.perf_counter() - t0
    out: dict[str, Any] = {"method": "groupcam", "model": s["name"], "layer": layer, "groups": groups,
                           "target": s["target"], "input": list(s["x"].shape)}
    t0 = time.perf_counter()
    ex = camwidgets.Explainer(model, s["image"], target=s["target"], preprocess=s["pre"], layers=[layer])
    res = ex.groupcam(layer=layer, groups=groups)
    t_ours = time.perf_counter() - t0
    if cam is None:
        return {**out, "comparable": False, "reason": "the official code returned None (constant map)",
                "ours_max": float(res.map.max())}
    official = cam.detach()[0, 0].cpu().numpy()
    out.update({"group_scores_nonzero": int((res.scores > 0).sum()), "groups_skipped": int(res.skipped.sum()),
                "time_s": {"ours_incl_explainer": t_ours, "official": t_official}})
    if np.isnan(official).any():
        return {**out, "comparable": False,
                "reason": f"the official map is NaN: {int(res.skipped.sum())} group(s) with a constant map (its "
                          "min-max divides by zero); camwidgets gives them score 0"}
    return {**out, "comparable": True, **_diff(res.map, official)}


def run(reciprocam: str | None, groupcam: str | None, models: list[str], size: int) -> dict[str, Any]:
    report: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0],
                              "machine": platform.machine(), "threads": torch.get_num_threads(), "size": size,
                              "loadavg_before": list(os.getloadavg())}
    try:
        rcls, rinfo = load_official_reciprocam(reciprocam)
        report["official_reciprocam"] = rinfo
    except Unavailable as err:
        rcls, report["official_reciprocam"] = None, f"not available: {err}"
    try:
        gcls, ginfo = load_official_groupcam(groupcam)
        report["official_groupcam"] = ginfo
    except Unavailable as err:
        gcls, report["official_groupcam"] = None, f"not available: {err}"
    cases: list[dict[str, Any]] = []
    for name in models:
        s = setup(name, size)
        if rcls is not None:
            for variant in ("plain", "gaussian"):
                cases.append(compare_reciprocam(rcls, s, s["block"], variant))
                cases.append(compare_reciprocam(rcls, s, None, variant))
        if gcls is not None:
            for groups in (32, 16, 8):  # the default, and fewer groups (a constant group makes the official NaN)
                cases.append(compare_groupcam(gcls, s, s["block"], groups))
    report["cases"] = cases
    done = [c for c in cases if c.get("comparable")]
    report["max_abs_overall"] = {m: max((c["max_abs"] for c in done if c["method"] == m), default=None)
                                 for m in ("reciprocam", "groupcam")}
    report["loadavg_after"] = list(os.getloadavg())
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reciprocam", default=None, help="work tree of github.com/sybyun/ReciproCAM")
    parser.add_argument("--groupcam", default=None, help="work tree of github.com/wofmanaf/Group-CAM")
    parser.add_argument("--models", default="demo,resnet18,resnet50", help="comma-separated: demo, resnet18, resnet50")
    parser.add_argument("--size", type=int, default=224, help="input size of the torchvision models")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = run(args.reciprocam, args.groupcam, [m for m in args.models.split(",") if m], args.size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

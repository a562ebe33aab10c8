"""camwidgets equals pytorch-grad-cam 1.5 at feature resolution.

pytorch-grad-cam's ``BaseCAM.__call__`` returns maps resized with cv2, so the reference
maps here are taken before that step: its own hooks (``ActivationsAndGradients``) record
``A`` and ``g`` and its ``get_cam_image`` (which for Score-CAM and Ablation-CAM runs its
own masked / ablated forward passes) gives the raw map at feature resolution. Both maps
are ReLU'd and min-max normalised the same way, then compared with a tolerance of 1e-4.

Models have random (seeded) weights and small inputs to keep the suite fast. Ablation-CAM
is compared only on layers whose minimum activation is 0 (ReLU-terminated blocks): on
layers with negative values pytorch-grad-cam's ablation value drifts by -1e7 per batch
row (see :mod:`camwidgets.core.region`), which camwidgets does not reproduce.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import (  # noqa: E402
    AblationCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from camwidgets.core._hooks import capture  # noqa: E402
from camwidgets.core.region import ablationcam_weights, region_map, scorecam_weights  # noqa: E402
from camwidgets.models.demo import DemoNet  # noqa: E402

from .conftest import relu_minmax  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4
PEERS = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
         "scorecam": ScoreCAM, "ablationcam": AblationCAM}




def _peer_capture(model: nn.Module, x: torch.Tensor, layer: str,
                  target: int) -> tuple[np.ndarray, np.ndarray]:
    """``A`` and ``g`` recorded by pytorch-grad-cam's own hooks (``ActivationsAndGradients``)."""
    cam = GradCAM(model, [model.get_submodule(layer)])
    try:
        outputs = cam.activations_and_grads(x)
        ClassifierOutputTarget(target)(outputs[0]).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)  # it accumulates .grad; the models are this module's own
    return acts, grads


def peer_raw(method: str, model: nn.Module, x: torch.Tensor, layer: str, target: int,
             acts: np.ndarray | None = None, grads: np.ndarray | None = None) -> np.ndarray:
    """pytorch-grad-cam's map for (layer, target) at feature resolution, before normalisation.

    ``get_cam_image`` is its per-layer computation before the cv2 resize; Score-CAM and
    Ablation-CAM run their own masked / ablated forward passes inside it.
    """
    module = model.get_submodule(layer)
    if acts is None:
        acts, grads = _peer_capture(model, x, layer, target)
    cam = PEERS[method](model, [module])
    try:
        raw = cam.get_cam_image(x, module, [ClassifierOutputTarget(target)], acts, grads, False)
    finally:
        cam.activations_and_grads.release()
    return np.asarray(raw[0])


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return {"demo": DemoNet, "resnet18": tvm.resnet18, "vgg11": tvm.vgg11,
            "mobilenet_v3_small": tvm.mobilenet_v3_small, "mobilenet_v2": tvm.mobilenet_v2,
            "efficientnet_b0": tvm.efficientnet_b0}[name]().eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    names = ("demo", "resnet18", "vgg11", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0")
    return {n: _model(n) for n in names}


def _x(size: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))


GRADIENT_CASES = [  # (model, input size, layer or None for the default layer)
    ("demo", 64, None), ("demo", 64, "layer3.0"),
    ("resnet18", 64, None), ("vgg11", 64, None),
    ("mobilenet_v3_small", 64, None), ("efficientnet_b0", 64, "features.6.0"),
]


@pytest.mark.parametrize(("arch", "size", "layer"), GRADIENT_CASES)
def test_gradient_methods_equal_pytorch_grad_cam(models, arch: str, size: int, layer: str | None) -> None:
    from camwidgets.core import Explainer

    model, x = models[arch], _x(size)
    exp = Explainer(model, x, layers="auto")
    name = exp.gradcam(layer).layer
    acts, grads = _peer_capture(model, x, name, exp.target)
    for method in ("gradcam", "gradcampp", "xgradcam", "layercam"):
        res = getattr(exp, method)(layer=layer)
        ref = peer_raw(method, model, x, name, exp.target, acts, grads)
        assert ref.shape == res.raw.shape
        assert np.abs(relu_minmax(res.raw) - relu_minmax(ref)).max() <= TOL, method


# Score-CAM / Ablation-CAM: layers with few channels keep the masked passes cheap.
REGION_CASES = [("demo", 64, "layer4.1"), ("resnet18", 32, "layer2.1"), ("vgg11", 32, "features.1"),
                ("mobilenet_v3_small", 32, "features.1")]


@pytest.mark.parametrize(("arch", "size", "layer"), REGION_CASES)
def test_scorecam_equals_pytorch_grad_cam(models, arch: str, size: int, layer: str) -> None:
    model, x = models[arch], _x(size)
    cap = capture(model, x, [layer], None)
    target = int(cap.targets[0])
    a = cap.activations[layer][0]
    rw = scorecam_weights(model, x, a, target, batch_size=16)
    ours = region_map(a, rw.weights).numpy()
    ref = peer_raw("scorecam", model, x, layer, target)
    assert np.abs(relu_minmax(ours) - relu_minmax(ref)).max() <= TOL


# MobileNet v3's blocks end without activation (negative minimum); v2's first ReLU6 has minimum 0.
ABLATION_CASES = [*(c for c in REGION_CASES if c[0] != "mobilenet_v3_small"),
                  ("mobilenet_v2", 32, "features.1.conv.0")]


@pytest.mark.parametrize(("arch", "size", "layer"), ABLATION_CASES)
def test_ablationcam_equals_pytorch_grad_cam(models, arch: str, size: int, layer: str) -> None:
    model, x = models[arch], _x(size)
    cap = capture(model, x, [layer], None)
    target = int(cap.targets[0])
    a = cap.activations[layer][0]
    assert float(a.min()) == 0.0  # the regime where both ablate with 0
    rw = ablationcam_weights(model, x, layer, a, target, float(cap.logits[0, target]), batch_size=16)
    ours = region_map(a, rw.weights).numpy()
    ref = peer_raw("ablationcam", model, x, layer, target)
    assert np.abs(relu_minmax(ours) - relu_minmax(ref)).max() <= TOL

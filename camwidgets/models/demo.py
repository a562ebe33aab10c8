"""The embedded default: a small ResNet trained on :class:`camwidgets.datasets.Shapes`.

Its weights ship inside the package (``camwidgets/data/demo_model.pt``), so every
notebook, test and benchmark runs offline. ``python -m camwidgets.datasets.train_demo``
retrains it from scratch.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from ..core.preprocess import Preprocess
from ..datasets.shapes import CLASSES

__all__ = ["DEMO_MEAN", "DEMO_SIZE", "DEMO_STD", "BasicBlock", "DemoNet", "demo_preprocess", "load_demo_model"]

#: Normalisation of the demo model's input (ImageNet's, so it reads like torchvision's).
DEMO_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DEMO_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Input side the demo model was trained at.
DEMO_SIZE: int = 128
_WEIGHTS = "demo_model.pt"


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock`` (groups 1, dilation 1, BatchNorm), without torchvision.

    Same submodules, in the same order (``conv1``, ``bn1``, ``relu``, ``conv2``, ``bn2``,
    ``downsample``), hence the same state-dict keys, parameter initialisation and output as
    :class:`torchvision.models.resnet.BasicBlock`: conv3x3 (stride) - BN - ReLU - conv3x3 - BN,
    plus the identity (or ``downsample(x)``), then ReLU. Importing torchvision costs seconds
    (its ``ops`` import ``torch._dynamo``), so the demo model does without it;
    :mod:`camwidgets.core.layers` recognises this block as it does torchvision's.
    """

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class DemoNet(nn.Module):
    """A torchvision-style ResNet small enough to train on a 2-core CPU.

    Stem (3x3 conv, stride 2, BN, ReLU), four stages ``layer1``-``layer4`` of two
    :class:`BasicBlock` each (torchvision's block, rewritten here; 8 blocks; strides
    1, 2, 2, 2), global average pooling and one linear head ``fc``. On a 128x128
    input the stages give 64, 32, 16 and 8 pixel feature maps (no max-pool, so the
    last block keeps an 8x8 map for CAMs).

    Input ``(N, 3, H, W)`` normalised with :data:`DEMO_MEAN` / :data:`DEMO_STD`;
    output logits ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int = len(CLASSES),
                 widths: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != w:
                down = nn.Sequential(nn.Conv2d(cin, w, 1, stride=stride, bias=False), nn.BatchNorm2d(w))
            stages.append(nn.Sequential(BasicBlock(cin, w, stride, down), BasicBlock(w, w)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def demo_preprocess() -> Preprocess:
    """The demo model's preprocessing: shorter side to 128, centre crop 128x128, normalise
    with ImageNet statistics."""
    return Preprocess(size=DEMO_SIZE, resize=DEMO_SIZE, mean=DEMO_MEAN, std=DEMO_STD)


def load_demo_model(device: str | torch.device = "cpu") -> tuple[DemoNet, Preprocess, list[str]]:
    """Load the embedded demo model.

    Returns
    -------
    model : DemoNet
        In eval mode, on ``device``.
    preprocess : Preprocess
        Turns a ``(3, H, W)`` image in ``[0, 1]`` into the model's input.
    class_names : list of str
        The :class:`~camwidgets.datasets.Shapes` class names, in label order.

    Examples
    --------
    >>> model, preprocess, classes = load_demo_model()
    >>> classes[:3]
    ['circle', 'square', 'triangle']
    """
    model = DemoNet()
    ref = resources.files("camwidgets").joinpath("data").joinpath(_WEIGHTS)
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise FileNotFoundError(
                f"The demo model's weights are missing ({path}). Reinstall camwidgets, or "
                "retrain them with: python -m camwidgets.datasets.train_demo"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    # assign: the loaded tensors become the parameters (copying them into the fresh ones cost ~50 ms)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().to(device), demo_preprocess(), list(CLASSES)

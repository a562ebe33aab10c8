"""Candidate layers at block granularity (SPEC §5) and layer resolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from camwidgets.core.layers import candidate_layers, default_layer, resolve_layer, resolve_layers
from camwidgets.models.demo import DemoNet

pytestmark = pytest.mark.usefixtures("single_thread")


def test_demo_blocks() -> None:
    names = candidate_layers(DemoNet())
    assert names == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert default_layer(names) == "layer4.1"


@pytest.mark.parametrize(
    ("factory", "first", "last", "count"),
    [
        (tvm.resnet18, "layer1.0", "layer4.1", 8),
        (tvm.resnet50, "layer1.0", "layer4.2", 16),
        (tvm.vgg11, "features.1", "features.19", 8),
        (tvm.vgg11_bn, "features.2", "features.27", 8),
        (tvm.densenet121, "features.denseblock1", "features.denseblock4", 7),
        (tvm.mobilenet_v2, "features.1", "features.18", 18),
        (tvm.mobilenet_v3_small, "features.1", "features.12", 12),
        (tvm.efficientnet_b0, "features.1.0", "features.8", 17),
        (tvm.regnet_y_400mf, "trunk_output.block1.block1-0", "trunk_output.block4.block4-5", 16),
        (tvm.convnext_tiny, "features.1.0", "features.7.2", 18),
    ],
)
def test_torchvision_blocks(factory, first: str, last: str, count: int) -> None:
    names = candidate_layers(factory())
    assert (names[0], names[-1], len(names)) == (first, last, count)


def test_no_conv_model_raises() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(ValueError, match="no 2-D convolution"):
        candidate_layers(mlp)


def test_generic_fallback_keeps_block_ends() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    # The VGG rule (activation after conv) applies to any Sequential.
    assert candidate_layers(net) == ["2", "4"]

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.body = nn.ModuleList([nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)])
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            for m in self.body:
                x = torch.relu(m(x))
            return self.head(x.mean((2, 3)))

    assert candidate_layers(Custom()) == ["stem", "body.0", "body.1", "head"]


def test_resolve_by_name_and_module() -> None:
    m = DemoNet()
    assert resolve_layer(m, "layer4.1") == "layer4.1"
    assert resolve_layer(m, m.layer3[0]) == "layer3.0"
    assert resolve_layers(m, ["layer4.1", m.layer4[1], "layer1.0"]) == ["layer4.1", "layer1.0"]


def test_unknown_layer_message_names_fix() -> None:
    m = DemoNet()
    with pytest.raises(ValueError, match=r"no layer named 'layer4\.9'.*Did you mean"):
        resolve_layer(m, "layer4.9", candidate_layers(m))
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(m, nn.Conv2d(1, 1, 1), candidate_layers(m))

"""Candidate layers at block granularity and layer resolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from camwidgets.core._hooks import capture
from camwidgets.core.explainer import Explainer
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


class SharedReLU(nn.Module):
    """A hand-written CNN: one ``nn.ReLU`` and one ``nn.MaxPool2d`` module used after every conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.relu(self.conv3(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) + x


class BlockTwice(nn.Module):
    """One residual block applied twice in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = _Block(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.block(self.block(x))
        x = torch.relu(self.down(x))
        return self.fc(x.mean((2, 3)))


class TorchvisionBlockTwice(nn.Module):
    """Known blocks (torchvision ``BasicBlock``), the first one applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = BasicBlock(8, 8)
        self.b2 = BasicBlock(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(self.b1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _shared_sequential() -> nn.Sequential:
    relu = nn.ReLU()  # the same module object at two places of the Sequential
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), relu, nn.Conv2d(8, 8, 3, padding=1), relu,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def test_shared_activation_in_the_module_tree() -> None:
    # Registered at two places: never a candidate; the conv before each place ends the run.
    assert candidate_layers(_shared_sequential()) == ["0", "2"]
    # One self.relu for three convs: the convs are kept (the last one used to be dropped in
    # favour of the ReLU, which runs three times); the capture drops relu and pool.
    assert candidate_layers(SharedReLU()) == ["conv1", "conv2", "conv3", "relu", "pool", "gap", "fc"]
    # Separate activations keep the conv -> norm -> activation rule.
    assert candidate_layers(BlockTwice()) == ["stem", "block", "down", "fc"]


def test_reused_modules_dropped_by_the_capture() -> None:
    torch.manual_seed(0)
    for model, expected in [(SharedReLU(), ["conv1", "conv2", "conv3", "gap", "fc"]),
                            (BlockTwice(), ["stem", "down", "fc"]),
                            (TorchvisionBlockTwice(), ["b2"])]:
        cap = capture(model, torch.rand(1, 3, 16, 16), candidate_layers(model), 0, drop_reused=True)
        assert list(cap.activations) == expected


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (SharedReLU, ("conv1", "conv2", "conv3")),
        (BlockTwice, ("stem", "down")),
        (TorchvisionBlockTwice, ("b2",)),
    ],
)
def test_auto_layers_leave_out_reused_modules(factory, expected: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    exp = Explainer(factory(), torch.rand(3, 16, 16))
    assert exp.candidate_layers == expected
    assert exp.default_layer == expected[-1]
    assert float(exp.gradcam().map.max()) <= 1.0


def test_auto_layers_of_a_sequential_with_one_relu_object() -> None:
    # Seen in the module tree, so no help from the capture is needed.
    exp = Explainer(_shared_sequential(), torch.rand(3, 16, 16))
    assert exp.candidate_layers == ("0", "2")


@pytest.mark.parametrize(("factory", "layer"), [(SharedReLU, "relu"), (BlockTwice, "block"),
                                                (_shared_sequential, "1")])
def test_named_reused_layer_is_still_an_error(factory, layer: str) -> None:
    with pytest.raises(ValueError, match=rf"\['{layer}'\] ran more than once"):
        Explainer(factory(), torch.rand(3, 16, 16), layers=[layer])

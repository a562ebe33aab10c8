"""The capture context: one forward + backward, hooks removed, modes and flags restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from camwidgets.core._hooks import capture, eval_mode, forward_hooks
from camwidgets.core.layers import candidate_layers

pytestmark = pytest.mark.usefixtures("single_thread")


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


def _reference(model: nn.Module, x: torch.Tensor, layers: list[str], target: int):
    """Independent reference: values copied at hook time, dS_c/dA as the gradient of a zero offset.

    The hook returns ``out + delta`` with a zero leaf ``delta``; ``dS/d delta = dS/dA`` and later
    in-place operations act on the sum, not on what was recorded.
    """
    acts: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, a: tuple, out: torch.Tensor, n: str) -> torch.Tensor:
        acts[n] = out.detach().clone()
        deltas[n] = torch.zeros_like(out, requires_grad=True)
        return out + deltas[n]

    handles = [model.get_submodule(n).register_forward_hook(
        lambda mod, a, out, n=n: hook(mod, a, out, n)) for n in layers]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(out[0, target], [deltas[n] for n in layers])
    return out.detach(), acts, dict(zip(layers, grads, strict=True))


def test_inplace_relu_does_not_corrupt_capture() -> None:
    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.randn(1, 3, 48, 48)
    # bn1 of a BasicBlock is followed by an in-place ReLU; block outputs by `out += identity`.
    layers = ["layer1.0.bn1", "layer2.0.bn2", "layer3.1", "layer4.1"]
    cap = capture(model, x, layers, 7)
    logits, acts, grads = _reference(model, x, layers, 7)
    assert cap.activations["layer1.0.bn1"].min() < 0  # pre-ReLU values survived the in-place ReLU
    torch.testing.assert_close(cap.logits, logits)
    no_grad = capture(model, x, layers, 7, gradients=False)  # the forward-only capture is protected too
    for n in layers:
        torch.testing.assert_close(cap.activations[n], acts[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(no_grad.activations[n], acts[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cap.gradients[n], grads[n], rtol=1e-4, atol=1e-7)


def test_a_second_pass_only_when_a_recorded_output_was_changed_in_place(counter) -> None:
    """Outputs are recorded without a copy; an in-place change downstream (seen by the tensor's
    version counter) makes the capture run once more with copies, so the values and gradient are
    those of the layer's own output."""
    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.randn(1, 3, 48, 48)
    c = counter(model)
    capture(model, x, candidate_layers(model), 7)  # block outputs: never changed in place
    assert c.calls == 1
    c.calls = 0
    layers = ["layer1.0.bn1", "layer4.1"]  # bn1 is followed by ReLU(inplace=True)
    cap = capture(model, x, layers, 7)
    assert c.calls == 2
    _, acts, grads = _reference(model, x, layers, 7)
    assert cap.activations["layer1.0.bn1"].min() < 0
    for n in layers:
        torch.testing.assert_close(cap.activations[n], acts[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cap.gradients[n], grads[n], rtol=1e-4, atol=1e-7)
    c.remove()
    assert _no_hooks(model)


def test_one_forward_captures_all_candidates(demo: nn.Module, counter) -> None:
    names = candidate_layers(demo)
    c = counter(demo)
    cap = capture(demo, torch.rand(1, 3, 64, 64), names, None, input_grad=True)
    assert c.calls == 1
    assert set(cap.activations) == set(names) == set(cap.gradients)
    assert cap.input_grad is not None and cap.input_grad.shape == (1, 3, 64, 64)
    assert int(cap.targets[0]) == int(cap.logits.argmax())


def test_hooks_removed_modes_and_flags_restored_on_success(demo: nn.Module) -> None:
    demo.train()
    demo.layer2.eval()  # mixed modes must come back exactly
    demo.layer1.requires_grad_(False)
    modes = [m.training for m in demo.modules()]
    flags = [p.requires_grad for p in demo.parameters()]
    capture(demo, torch.rand(1, 3, 32, 32), candidate_layers(demo), 1, input_grad=True)
    assert _no_hooks(demo)
    assert [m.training for m in demo.modules()] == modes
    assert [p.requires_grad for p in demo.parameters()] == flags
    assert all(p.grad is None for p in demo.parameters())  # autograd.grad, not .backward()


def test_hooks_removed_and_modes_restored_on_error() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.act(self.conv(x))
            raise RuntimeError("boom")

    net = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        capture(net, torch.rand(1, 3, 8, 8), ["conv", "act"], 0)
    assert _no_hooks(net)
    assert net.training and net.conv.training


def test_out_of_range_target_raises_before_backward(demo: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"out of range.*8 classes"):
        capture(demo, torch.rand(1, 3, 32, 32), ["layer4.1"], 8)
    assert _no_hooks(demo)


def test_gradients_flow_under_no_grad_inference_mode_and_frozen(demo: nn.Module) -> None:
    demo.requires_grad_(False)
    x = torch.rand(1, 3, 32, 32)
    ref = capture(demo, x, ["layer4.1"], 2)
    for ctx in (torch.no_grad(), torch.inference_mode()):
        with ctx:
            x_ctx = x.clone()
            cap = capture(demo, x_ctx, ["layer4.1"], 2, input_grad=True)
        assert cap.gradients["layer4.1"].abs().sum() > 0
        torch.testing.assert_close(cap.gradients["layer4.1"], ref.gradients["layer4.1"])
    assert not any(p.requires_grad for p in demo.parameters())


def test_batched_capture_equals_single_images(demo: nn.Module) -> None:
    x = torch.rand(3, 3, 32, 32)
    targets = torch.tensor([0, 5, 2])
    cap = capture(demo, x, ["layer3.1", "layer4.1"], targets, input_grad=True)
    for i in range(3):
        one = capture(demo, x[i:i + 1], ["layer3.1", "layer4.1"], int(targets[i]), input_grad=True)
        for n in ("layer3.1", "layer4.1"):
            torch.testing.assert_close(cap.gradients[n][i:i + 1], one.gradients[n], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(cap.input_grad[i:i + 1], one.input_grad, rtol=1e-4, atol=1e-7)


def test_shared_module_is_refused(demo: nn.Module) -> None:
    # torchvision's BasicBlock calls its single ReLU module twice.
    with pytest.raises(ValueError, match="more than once"):
        capture(demo, torch.rand(1, 3, 32, 32), ["layer4.1.relu"], 0)
    assert _no_hooks(demo)


def test_forward_hooks_and_eval_mode_contexts(demo: nn.Module) -> None:
    demo.train()
    with eval_mode(demo), forward_hooks(demo, ["layer1.0"]) as store:
        assert not demo.training
        demo(torch.rand(1, 3, 16, 16))
        assert store["layer1.0"].shape == (1, 16, 8, 8)
    assert demo.training and _no_hooks(demo)


class _Disconnected(nn.Module):
    """A stem run under no_grad, a detached conv, an auxiliary branch the logits never use."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.detached = nn.Conv2d(4, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.stem(x)
        x = self.detached(x).detach()
        x = torch.relu(self.body(x))
        self.aux(x)  # computed, not used
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("layer", ["stem", "detached", "aux"])
def test_layer_no_gradient_reaches_raises(layer: str) -> None:
    # Before: the missing gradient was returned as zeros, so every gradient CAM was an all-zero map.
    torch.manual_seed(0)
    net = _Disconnected().train()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=rf"\['{layer}'\]: No gradient of the target score reaches them"
                                         r".*(?s:compiled or traced).*no_grad.*does not feed the output"):
        capture(net, x, [layer, "body"], 0)
    assert _no_hooks(net) and net.training and net.stem.training
    assert capture(net, x, [layer, "body"], 0, gradients=False).activations[layer].dim() == 4  # forward only: fine
    cap = capture(net, x, ["body"], 0)
    assert cap.gradients["body"].abs().sum() > 0


def test_input_no_gradient_reaches_raises() -> None:
    net = _Disconnected()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="reaches the model input"):
        capture(net, x, ["body"], 0, input_grad=True)
    cap = capture(net, x, ["body"], 0)  # the layer gradient alone is defined
    assert cap.gradients["body"].abs().sum() > 0 and cap.input_grad is None


def test_no_gradient_at_all_names_every_layer(demo: nn.Module) -> None:
    class Detached(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).detach()  # logits outside autograd

    with pytest.raises(ValueError, match=r"\['inner.layer3.1', 'inner.layer4.1'\]: No gradient"):
        capture(Detached(demo), torch.rand(1, 3, 16, 16), ["inner.layer3.1", "inner.layer4.1"], 0)
    assert _no_hooks(demo)


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


def test_drop_reused_leaves_out_modules_that_run_more_than_once() -> None:
    torch.manual_seed(0)
    net = SharedReLU()
    x = torch.rand(1, 3, 16, 16)
    names = ["conv1", "relu", "pool", "conv3", "gap"]
    with pytest.raises(ValueError, match=r"\['relu', 'pool'\] ran more than once"):
        capture(net, x, names, 0)
    cap = capture(net, x, names, 0, drop_reused=True)
    assert list(cap.activations) == list(cap.gradients) == ["conv1", "conv3", "gap"]
    ref = capture(net, x, ["conv1", "conv3", "gap"], 0)
    for n in ("conv1", "conv3"):
        torch.testing.assert_close(cap.gradients[n], ref.gradients[n])
    # Nothing left: still the error, not an empty capture.
    with pytest.raises(ValueError, match="ran more than once"):
        capture(net, x, ["relu", "pool"], 0, drop_reused=True)
    assert _no_hooks(net)


def test_forward_hooks_drop_reused(demo: nn.Module) -> None:
    with forward_hooks(demo, ["layer4.1.relu", "layer4.1"], drop_reused=True) as store:
        demo(torch.rand(1, 3, 16, 16))
    assert list(store) == ["layer4.1"]
    assert _no_hooks(demo)

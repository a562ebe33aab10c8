"""Score-CAM and Ablation-CAM: exact skipping of all-zero channels, both Score-CAM variants, batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camwidgets.core._hooks import capture
from camwidgets.core.region import ablationcam_weights, scorecam_masks, scorecam_weights

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def setup(demo: nn.Module):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cap = capture(demo, x, ["layer4.1"], None, gradients=False)
    a = cap.activations["layer4.1"][0].clone()
    a[::3] = 0.0  # a third of the channels all zero
    return demo, x, a, int(cap.targets[0]), float(cap.logits[0, cap.targets[0]])


@pytest.mark.parametrize("variant", ["gradcam", "paper"])
def test_scorecam_zero_channel_skip_is_exact(setup, variant: str, counter) -> None:
    model, x, a, target, _ = setup
    c = counter(model)
    full = scorecam_weights(model, x, a, target, batch_size=16, variant=variant, skip_zero=False,
                            baseline_probability=0.1)
    n_full = c.calls
    fast = scorecam_weights(model, x, a, target, batch_size=16, variant=variant, baseline_probability=0.1)
    zero = a.flatten(1).abs().amax(1) == 0
    assert torch.equal(fast.skipped, zero) and int(zero.sum()) >= len(range(0, a.shape[0], 3))
    assert fast.forward_passes == c.calls - n_full < full.forward_passes == n_full
    torch.testing.assert_close(fast.scores, full.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.weights, full.weights, rtol=1e-5, atol=1e-7)


def test_scorecam_batch_size_does_not_change_weights(setup) -> None:
    model, x, a, target, _ = setup
    w1 = scorecam_weights(model, x, a, target, batch_size=5).weights
    w2 = scorecam_weights(model, x, a, target, batch_size=64).weights
    torch.testing.assert_close(w1, w2, rtol=1e-5, atol=1e-7)


def test_scorecam_paper_variant_is_probability_increase(setup) -> None:
    model, x, a, target, _ = setup
    res = scorecam_weights(model, x, a[:4], target, variant="paper", baseline_probability=0.25,
                           skip_zero=False)
    masks = scorecam_masks(a[:4], (32, 32))
    with torch.no_grad():
        probs = model(x * masks[:, None]).softmax(1)[:, target]
    torch.testing.assert_close(res.weights, probs - 0.25, rtol=1e-5, atol=1e-6)


def test_scorecam_masks_match_reference_normalisation() -> None:
    a = torch.zeros(2, 2, 2)
    a[1] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    m = scorecam_masks(a, (3, 3))
    assert torch.equal(m[0], torch.zeros(3, 3))  # all-zero channel -> all-zero mask
    assert m[1, 0, 0] == 0 and abs(float(m[1, 2, 2]) - 1) < 1e-6 and abs(float(m[1, 1, 1]) - 0.5) < 1e-6


def test_ablationcam_zero_channel_skip_is_exact(setup) -> None:
    model, x, a, target, _ = setup
    full = ablationcam_weights(model, x, "layer4.1", a, target, 1.0, batch_size=16, skip_zero=False)
    zero = a.flatten(1).abs().amax(1) == 0
    y = float(full.scores[zero][0])  # ablating an all-zero channel leaves the output as it is: y_k = y
    full = ablationcam_weights(model, x, "layer4.1", a, target, y, batch_size=16, skip_zero=False)
    fast = ablationcam_weights(model, x, "layer4.1", a, target, y, batch_size=16)
    assert torch.equal(fast.skipped, zero) and fast.forward_passes < full.forward_passes
    assert torch.all(fast.weights[zero] == 0)
    torch.testing.assert_close(fast.weights, full.weights, rtol=1e-4, atol=1e-6)


def test_ablationcam_negative_layer_uses_min_minus_1e7(demo: nn.Module) -> None:
    x = torch.rand(1, 3, 32, 32)
    cap = capture(demo, x, ["layer4.1.conv2"], None, gradients=False)  # a conv output: negative values
    a = cap.activations["layer4.1.conv2"][0]
    assert float(a.min()) < 0
    seen: list[torch.Tensor] = []  # what the next module (bn2) receives
    handle = demo.layer4[1].bn2.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    try:
        ablationcam_weights(demo, x, "layer4.1.conv2", a, int(cap.targets[0]), 1.0, batch_size=64)
    finally:
        handle.remove()
    out = seen[0]
    expected = float(a.min()) - 1e7
    assert torch.all(out[0, 0] == expected) and torch.all(out[1, 1] == expected)
    torch.testing.assert_close(out[0, 1], a[1])


def test_ablationcam_broadcast_prefix_and_fallback_agree(counter) -> None:
    """The single-image prefix is used where the architecture allows it, else the input is repeated."""
    from torchvision.models import densenet121

    torch.manual_seed(0)
    model = densenet121().eval()
    x = torch.rand(1, 3, 32, 32)
    layer = "features.denseblock1.denselayer2"  # its output is concatenated with earlier features
    cap = capture(model, x, [layer], None, gradients=False)
    a, target = cap.activations[layer][0][:8].clone(), int(cap.targets[0])
    full_a = cap.activations[layer][0]
    c = counter(model)
    rw = ablationcam_weights(model, x, layer, full_a, target, float(cap.logits[0, target]), batch_size=32)
    assert rw.forward_passes == c.calls == 2  # the refused broadcast attempt + the repeated-input pass
    # Same weights as ablating by hand on a repeated input.
    value = float(full_a.min()) - 1e7
    outs = []
    for k in range(a.shape[0]):
        ablated = full_a.clone()
        ablated[k] = value
        h = model.get_submodule(layer).register_forward_hook(lambda m, i, o, t=ablated: t[None])
        with torch.no_grad():
            outs.append(float(model(x)[0, target]))
        h.remove()
    y = float(cap.logits[0, target])
    torch.testing.assert_close(rw.weights[:8], (y - torch.tensor(outs)) / y, rtol=1e-4, atol=1e-5)

"""Gradient-method weights against pytorch-grad-cam's own weight functions and hand values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camwidgets.core.gradient import (
    gradcam_weights,
    gradcampp_weights,
    layercam_map,
    weighted_map,
    xgradcam_weights,
)

pgc = pytest.importorskip("pytorch_grad_cam")


def _pair(scale: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.relu(torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64))
    g = scale * torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64)
    g[0, 1, 2:4, 3:5] = 0.0  # exact zeros: alpha must be 0 there
    return a, g


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_weights_equal_pytorch_grad_cam(scale: float) -> None:
    a, g = _pair(scale)
    an, gn = a.numpy(), g.numpy()
    # get_cam_weights does not use `self` or the other arguments; call it unbound.
    refs = {
        gradcam_weights: pgc.GradCAM.get_cam_weights(None, None, None, None, an, gn),
        gradcampp_weights: pgc.GradCAMPlusPlus.get_cam_weights(None, None, None, None, an, gn),
        xgradcam_weights: pgc.XGradCAM.get_cam_weights(None, None, None, None, an, gn),
    }
    for fn, ref in refs.items():
        ours = fn(a, g)
        assert ours.shape == (2, 5)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-14 * scale, err_msg=fn.__name__)
        # Unbatched (K, h, w) gives the same rows.
        np.testing.assert_allclose(fn(a[1], g[1]).numpy(), ref[1], rtol=1e-10, atol=1e-14 * scale)


def test_gradcampp_keeps_the_1e6() -> None:
    a, g = _pair(1e-4)
    ours = gradcampp_weights(a, g)
    g2, g3 = g**2, g**3
    no_eps = torch.where(g != 0, g2 / (2 * g2 + a.sum((-2, -1), keepdim=True) * g3), 0.0)
    without = (no_eps * torch.relu(g)).sum((-2, -1))
    # With gradients ~1e-4, g^2 ~ 1e-8 << 1e-6: the constant dominates the denominator.
    assert (without - ours).abs().max() > 10 * ours.abs().max()
    # Hand value: one pixel, A = 1, g = 1e-3: alpha = 1e-6 / (2e-6 + 1e-9 + 1e-6).
    a1, g1 = torch.ones(1, 1, 1, dtype=torch.float64), torch.full((1, 1, 1), 1e-3, dtype=torch.float64)
    expected = 1e-6 / (2e-6 + 1e-9 + 1e-6) * 1e-3
    assert gradcampp_weights(a1, g1).item() == pytest.approx(expected, rel=1e-12)


def test_layercam_and_weighted_map_hand_values_and_reference() -> None:
    a = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]]])  # K=2, h=1, w=2
    g = torch.tensor([[[1.0, -1.0]], [[-2.0, 0.5]]])
    # ReLU(g) * A summed over k: [1*1 + 0*3, 0*2 + 0.5*0] = [1, 0]
    assert torch.equal(layercam_map(a, g), torch.tensor([[1.0, 0.0]]))
    w = torch.tensor([1.0, -1.0])
    # 1*[1,2] - [3,0] = [-2, 2] -> ReLU -> [0, 2]
    assert torch.equal(weighted_map(a, w), torch.tensor([[0.0, 2.0]]))
    an, gn = _pair()
    ref = pgc.LayerCAM.get_cam_image(None, None, None, None, an.numpy(), gn.numpy(), False)
    np.testing.assert_allclose(layercam_map(an, gn).numpy(), np.maximum(ref, 0), rtol=1e-12)
    # Batched weighted map equals the reference's weighted sum.
    wts = gradcam_weights(an, gn)
    ref_cam = np.maximum((wts.numpy()[:, :, None, None] * an.numpy()).sum(1), 0)
    np.testing.assert_allclose(weighted_map(an, wts).numpy(), ref_cam, rtol=1e-12)


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        gradcam_weights(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError):
        weighted_map(torch.zeros(2, 3, 4), torch.zeros(3))

"""Tests of camwidgets.core._ops: normalise, upsample, percentiles (hand-computed values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camwidgets.core._ops import normalize, percentile, upsample, zero_below_percentile


def test_normalize_hand_values_and_shapes() -> None:
    m = torch.tensor([[1.0, 3.0], [5.0, 2.0]])
    expected = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    assert torch.equal(normalize(m), expected)
    # (K, h, w) and (N, K, h, w): each map on its own.
    stack = torch.stack([m, 2 * m + 7, -m])
    out = normalize(stack)
    assert out.shape == (3, 2, 2)
    assert torch.allclose(out[0], expected) and torch.allclose(out[1], expected)
    assert torch.allclose(out[2], 1 - expected)
    out4 = normalize(stack[None].repeat(2, 1, 1, 1))
    assert out4.shape == (2, 3, 2, 2) and torch.allclose(out4[1], out)


def test_normalize_constant_map_is_zero_never_nan() -> None:
    maps = torch.stack([torch.full((3, 3), 4.0), torch.zeros(3, 3), torch.tensor([[0, 0, 0], [0, 1e-30, 0],
                                                                                  [0, 0, 0.0]])])
    out = normalize(maps)
    assert not torch.isnan(out).any()
    assert torch.equal(out[0], torch.zeros(3, 3)) and torch.equal(out[1], torch.zeros(3, 3))
    assert out[2, 1, 1] == 1.0 and out[2].sum() == 1.0
    assert normalize(torch.ones(2, 2, dtype=torch.int64)).dtype == torch.float32


def test_normalize_does_not_modify_input_and_keeps_dtype() -> None:
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    before = m.clone()
    out = normalize(m)
    assert torch.equal(m, before) and out.dtype == torch.float64


def test_upsample_bilinear_half_pixel_hand_values() -> None:
    # align_corners=False samples output x at (i + 0.5) * w/W - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped).
    out = upsample(torch.tensor([[0.0, 1.0]]), (1, 4))
    assert torch.allclose(out, torch.tensor([[0.0, 0.25, 0.75, 1.0]]))
    x = torch.rand(2, 3, 4, 5)
    up = upsample(x, (8, 10))
    assert up.shape == (2, 3, 8, 10)
    assert torch.equal(upsample(x, (4, 5)), x)


def test_upsample_matches_cv2_inter_linear() -> None:
    cv2 = pytest.importorskip("cv2")
    x = torch.rand(7, 7, generator=torch.Generator().manual_seed(1))
    ours = upsample(x, (32, 32)).numpy()
    ref = cv2.resize(x.numpy().astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours - ref).max() < 1e-4


def test_percentile_matches_numpy_and_zero_below() -> None:
    x = torch.tensor([[[4.0, 1.0], [3.0, 2.0]], [[10.0, 0.0], [0.0, 5.0]]])
    p = percentile(x, 25)
    assert p.shape == (2, 1, 1)
    np.testing.assert_allclose(p.flatten().numpy(), np.percentile(x.numpy(), 25, axis=(1, 2)), rtol=1e-6)
    z = zero_below_percentile(x, 50)  # medians 2.5 and 2.5
    assert torch.equal(z, torch.tensor([[[4.0, 0.0], [3.0, 0.0]], [[10.0, 0.0], [0.0, 5.0]]]))
    assert torch.equal(zero_below_percentile(x, 0), x)  # values equal to the percentile are kept
    with pytest.raises(ValueError):
        percentile(x, 101)

"""I-CAM math (Integrative CAM, Singh et al. 2024, arXiv:2412.01354): alpha vs autograd, bias, selection, SVIM/MDS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core import icam
from camwidgets.core._ops import normalize

F64 = torch.float64


# ----------------------------------------------------------------------------- (c) derivatives
def _diag_derivatives(fn, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Diagonal 1st, 2nd and 3rd derivatives d^n fn / dA_p^n for every element p of A (autograd)."""
    a = a.detach().clone().requires_grad_(True)
    d1 = torch.autograd.grad(fn(a), a, create_graph=True)[0].flatten()
    d2 = torch.empty_like(d1)
    d3 = torch.empty_like(d1)
    for p in range(d1.numel()):
        h = torch.autograd.grad(d1[p], a, create_graph=True)[0].flatten()[p]
        d2[p] = h.detach()
        d3[p] = torch.autograd.grad(h, a, retain_graph=True)[0].flatten()[p]
    return d1.detach().reshape(a.shape), d2.reshape(a.shape), d3.reshape(a.shape)


def _gap_linear(zero_other_rows: bool = False) -> tuple[torch.Tensor, nn.Linear, int]:
    """Last block (conv + ReLU) of a tiny CNN, its activation A (K=4, 5x5) and a GAP + linear head."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    block = nn.Sequential(conv, nn.ReLU()).to(F64)
    head = nn.Linear(4, 3).to(F64)
    with torch.no_grad():
        for p in [*block.parameters(), *head.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.5)
        assert conv.bias is not None
        conv.bias.add_(0.5)
        if zero_other_rows:
            head.weight[[0, 2]] = 0.0
    x = torch.rand(1, 3, 5, 5, generator=gen, dtype=F64)
    with torch.no_grad():
        a = block(x)[0]
    return a, head, 1


def _logits(head: nn.Linear, a: torch.Tensor) -> torch.Tensor:
    return head(a.mean(dim=(-2, -1)))


def test_alpha_equals_autograd_derivatives_at_last_block_of_gap_linear_head() -> None:
    a, head, c = _gap_linear()
    s = _logits(head, a).detach()
    y = float(torch.softmax(s, 0)[c])
    assert 0.05 < y < 0.95 and abs(y - 0.5) > 0.05  # f'' and f''' are far from 0

    def y_c(av: torch.Tensor) -> torch.Tensor:  # Y_c = f(S_c), the other logits held fixed (eq. 24, 29)
        sv = _logits(head, av)
        others = torch.cat([s[:c], s[c + 1:]])
        return torch.exp(sv[c]) / (torch.exp(sv[c]) + torch.exp(others).sum())

    av = a.clone().requires_grad_(True)
    g = torch.autograd.grad(_logits(head, av)[c], av)[0]
    d1, d2, d3 = _diag_derivatives(y_c, a)
    f1, f2, f3 = icam.softmax_derivatives(y)
    # eq. 24: d^n Y / dA^n = f^(n)(S_c) g^n, exact here (S_c linear in A).
    torch.testing.assert_close(d1, f1 * g, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(d2, f2 * g**2, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(d3, f3 * g**3, rtol=1e-9, atol=1e-15)
    # eq. 17 from autograd == eq. 25/30 closed form.
    alpha_auto = d2 / (2 * d2 + a.sum(dim=(-2, -1), keepdim=True) * d3)
    alpha = icam.icam_alpha(a, g, y)
    assert alpha.dtype == F64 and alpha.abs().max() > 0
    torch.testing.assert_close(alpha, alpha_auto, rtol=1e-9, atol=1e-12)
    # eq. 26/31: w = tanh(alpha) * ReLU(dY/dA).
    torch.testing.assert_close(icam.icam_weights(a, g, y), torch.tanh(alpha_auto) * torch.relu(d1),
                               rtol=1e-9, atol=1e-15)


def test_full_softmax_equals_closed_form_only_when_other_logits_ignore_a() -> None:
    for zero_rows in (True, False):
        a, head, c = _gap_linear(zero_other_rows=zero_rows)
        s = _logits(head, a).detach()
        y = float(torch.softmax(s, 0)[c])
        av = a.clone().requires_grad_(True)
        g = torch.autograd.grad(_logits(head, av)[c], av)[0]
        def full(t: torch.Tensor, head: nn.Linear = head, c: int = c) -> torch.Tensor:
            return torch.softmax(_logits(head, t), 0)[c]

        _, d2, d3 = _diag_derivatives(full, a)
        _, f2, f3 = icam.softmax_derivatives(y)
        close = torch.allclose(d2, f2 * g**2, rtol=1e-9, atol=1e-15) and torch.allclose(
            d3, f3 * g**3, rtol=1e-9, atol=1e-15)
        # Documented in icam's module notes: exact when only S_c depends on A, else an approximation.
        assert close is zero_rows


@pytest.mark.parametrize("others", [[0.3, -1.2], [4.0, 2.0], [-3.0, -5.0]])
def test_softmax_derivatives_match_autograd(others: list[float]) -> None:
    s = torch.tensor(0.7, dtype=F64, requires_grad=True)
    rest = torch.tensor(others, dtype=F64)
    y = torch.softmax(torch.cat([s[None], rest]), 0)[0]
    y_value = float(y.detach())
    d1 = torch.autograd.grad(y, s, create_graph=True)[0]
    d2 = torch.autograd.grad(d1, s, create_graph=True)[0]
    d3 = torch.autograd.grad(d2, s)[0]
    f1, f2, f3 = icam.softmax_derivatives(y_value)
    for ours, ref in ((f1, d1), (f2, d2), (f3, d3)):
        assert float(ours) == pytest.approx(float(ref.detach()), rel=1e-10, abs=1e-15)


def test_alpha_guards_and_extreme_probabilities() -> None:
    a = torch.ones(2, 2, 2)
    g = torch.tensor([[[0.0, 1e-3], [2e-3, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    for y in (0.0, 1.0):  # f'' = f''' = 0: 0/0 -> 0, weights 0, never NaN
        assert torch.equal(icam.icam_alpha(a, g, y), torch.zeros(2, 2, 2, dtype=F64))
    alpha = icam.icam_alpha(a, g, 0.3)
    assert torch.isfinite(alpha).all() and (alpha[g == 0] == 0).all() and (alpha[g != 0] != 0).all()
    # Y very close to 1 (float64): still finite and equal to the factored value.
    y = 1 - 1e-13
    d2, d3 = 1 - 2 * y, 1 - 6 * y + 6 * y * y
    expected = d2 * 1e-6 / (2 * d2 * 1e-6 + 4.0 * d3 * 1e-9)
    assert float(icam.icam_alpha(a, g, y)[0, 0, 1]) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError):
        icam.icam_alpha(a, g, 1.5)


# ----------------------------------------------------------------------------- bias and maps
def test_bias_hand_values() -> None:
    a = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]]])  # K=2, h=1, w=2; sums 3 and 3
    w = torch.tensor([[[0.5, 0.0]], [[0.0, 1.0]]], dtype=F64)
    # channel (eq. 27): K*S_c - sum_k (sum w_k)(sum A_k) = 6 - (0.5*3 + 1*3) = 1.5
    b = icam.icam_bias(a, w, 3.0, "channel")
    assert b.shape == (1, 1) and float(b) == pytest.approx(1.5)
    # spatial (eq. 28): K*S_c - sum_k w_k(i,j) sum A_k = [6 - 1.5, 6 - 3]
    torch.testing.assert_close(icam.icam_bias(a, w, 3.0, "spatial"), torch.tensor([[4.5, 3.0]], dtype=F64))
    assert torch.equal(icam.icam_bias(a, w, 3.0, "none"), torch.zeros(1, 1, dtype=F64))
    # Batched with one S_c per item.
    bb = icam.icam_bias(torch.stack([a, a]), torch.stack([w, w]), torch.tensor([3.0, 4.0]), "channel")
    torch.testing.assert_close(bb.flatten(), torch.tensor([1.5, 3.5], dtype=F64))
    with pytest.raises(ValueError):
        icam.icam_bias(a, w, 3.0, "pixel")  # type: ignore[arg-type]


def test_spatial_bias_inverts_a_hand_map() -> None:
    a = torch.tensor([[[1.0, 3.0]]])  # K=1, sum 4
    w = torch.tensor([[[1.0, 0.1]]], dtype=F64)
    plain = (w * a).sum(0)  # [1.0, 0.3]: left pixel high
    spatial = plain + icam.icam_bias(a, w, 5.0, "spatial")  # 5 + [1*(1-4), 0.1*(3-4)] = [2, 4.9]
    torch.testing.assert_close(spatial, torch.tensor([[2.0, 4.9]], dtype=F64))
    assert spatial.argmax() != plain.argmax()


def test_bias_maps_have_no_relu_so_a_negative_logit_keeps_its_map() -> None:
    """Eq. 20 with a bias has no ReLU: a class with S_c < 0 (its uniform bias < 0) is not all zeros."""
    gen = torch.Generator().manual_seed(1)
    a = torch.relu(torch.randn(64, 6, 6, generator=gen, dtype=F64))
    g = 1e-2 * torch.randn(64, 6, 6, generator=gen, dtype=F64)
    y, s_c = 0.004, -0.8  # a non-predicted class: K * S_c ~ -51 dominates the channel bias
    w = icam.icam_weights(a, g, y)
    weighted = (w * a).sum(0)
    assert float(icam.icam_bias(a, w, s_c, "channel")) < -float(weighted.abs().max())  # ReLU would zero it
    none = icam.icam_layer_map(a, g, y, s_c, "none")
    for kind in ("channel", "spatial"):
        m = icam.icam_layer_map(a, g, y, s_c, kind)
        assert m.dtype == F64 and float(m.max() - m.min()) > 0, kind
        # eq. 20 verbatim (constant=True) is the same map up to the uniform offset.
        full = icam.icam_layer_map(a, g, y, s_c, kind, constant=True)
        torch.testing.assert_close(full, weighted + icam.icam_bias(a, w, s_c, kind))
        assert float(full.max()) < 0  # every value negative: ReLU(eq. 20) would be all zeros
        torch.testing.assert_close(normalize(full), normalize(m), rtol=0, atol=1e-9)
    # "channel" drops only a uniform constant: it is sum_k w_k A_k itself.
    torch.testing.assert_close(icam.icam_layer_map(a, g, y, s_c, "channel"), weighted)
    # Y_c < 0.21 and A >= 0: every w >= 0, so "channel" and "none" agree after normalisation.
    assert bool((w >= 0).all())
    torch.testing.assert_close(normalize(icam.icam_layer_map(a, g, y, s_c, "channel")), normalize(none))


def test_channel_bias_differs_from_none_where_weights_are_negative() -> None:
    """For Y_c > 0.5 (f'' < 0) tanh(alpha) can be < 0: "channel" keeps the negative evidence."""
    a = torch.tensor([[[1.0, 2.0, 0.0]], [[0.0, 1.0, 3.0]]], dtype=F64)  # K=2, 1x3
    g = torch.tensor([[[2.0, 2.0, 2.0]], [[0.1, 0.1, 0.1]]], dtype=F64)  # sum(A) g: 6 and 0.4
    y = 0.9  # f'' < 0, f''' > 0: alpha < 0 where 2 f'' g^2 + sum(A) f''' g^3 > 0 (channel 0)
    w = icam.icam_weights(a, g, y)
    assert bool((w[0] < 0).all()) and bool((w[1] > 0).all())
    weighted = (w * a).sum(0)
    assert float(weighted.min()) < 0 < float(weighted.max())
    chan = icam.icam_layer_map(a, g, y, 4.0, "channel")
    none = icam.icam_layer_map(a, g, y, 4.0, "none")
    torch.testing.assert_close(chan, weighted)
    torch.testing.assert_close(none, torch.relu(weighted))
    assert float((normalize(chan) - normalize(none)).abs().max()) > 0.05


def test_uniform_offset_is_left_out_because_it_erases_small_maps() -> None:
    """w carries Y(1 - Y): tiny for an unlikely class. Added to K * S_c even float64 loses the map."""
    gen = torch.Generator().manual_seed(4)
    a = torch.relu(torch.randn(64, 6, 6, generator=gen, dtype=F64))
    g = 1e-2 * torch.randn(64, 6, 6, generator=gen, dtype=F64)
    y, s_c = 1e-12, -20.0
    m = icam.icam_layer_map(a, g, y, s_c, "channel")
    assert 0 < float(m.max() - m.min()) < 1e-12
    ref = normalize((icam.icam_weights(a, g, y) * a).sum(0))
    torch.testing.assert_close(normalize(m), ref, rtol=0, atol=1e-12)
    lossy = normalize(icam.icam_layer_map(a, g, y, s_c, "channel", constant=True))
    assert float((lossy - ref).abs().max()) > 0.01


def test_layer_map_equals_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.relu(torch.randn(2, 3, 4, 4, generator=gen, dtype=F64))
    g = torch.randn(2, 3, 4, 4, generator=gen, dtype=F64)
    y, s_c = torch.tensor([0.2, 0.9], dtype=F64), torch.tensor([1.0, -0.5], dtype=F64)
    w = icam.icam_weights(a, g, y)
    for i in range(2):
        f1, f2, f3 = (float(t) for t in icam.softmax_derivatives(float(y[i])))
        den = 2 * f2 * g[i] ** 2 + a[i].sum((-2, -1), keepdim=True) * f3 * g[i] ** 3
        alpha = f2 * g[i] ** 2 / den
        torch.testing.assert_close(w[i], torch.tanh(alpha) * torch.relu(f1 * g[i]))
        weighted = (w[i] * a[i]).sum(0)
        k = a.shape[1]
        # eq. 20 with a bias, no ReLU; the uniform part K * S_c (and the channel sum) only with constant=True.
        for kind in ("channel", "spatial"):
            full = weighted + icam.icam_bias(a[i], w[i], float(s_c[i]), kind)
            torch.testing.assert_close(icam.icam_layer_map(a, g, y, s_c, kind, constant=True)[i], full)
        torch.testing.assert_close(icam.icam_layer_map(a, g, y, s_c, "channel")[i], weighted)
        spatial = weighted - (w[i] * a[i].sum((-2, -1), keepdim=True)).sum(0)
        torch.testing.assert_close(icam.icam_layer_map(a, g, y, s_c, "spatial")[i], spatial)
        torch.testing.assert_close(icam.icam_layer_map(a, g, y, s_c, "spatial", constant=True)[i],
                                   spatial + k * float(s_c[i]))
        # bias "none": LayerCAM's ReLU form.
        torch.testing.assert_close(icam.icam_layer_map(a, g, y, s_c, "none")[i], torch.relu(weighted))
    with pytest.raises(ValueError):
        icam.icam_layer_map(a, g, y, s_c, "pixel")  # type: ignore[arg-type]


def test_combine_hand_values() -> None:
    maps = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    out = icam.combine(maps, torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(out, torch.tensor([[0.25, 1.0], [0.75, 0.0]]))


# ----------------------------------------------------------------------------- (d) selection
def test_select_layers_hand_cases() -> None:
    sel = icam.select_layers
    # T = 1 keeps exactly the non-zero scores, by decreasing score.
    kept, w = sel(torch.tensor([0.3, 0.0, 0.5, 0.2]), 1.0)
    assert kept.tolist() == [2, 0, 3]
    torch.testing.assert_close(w, torch.tensor([0.5, 0.3, 0.2]))
    # T = 0.5 exact prefix: total 10, target 5 -> 4 then 4+3=7 >= 5 -> two layers.
    kept, w = sel(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.5)
    assert kept.tolist() == [3, 2]
    torch.testing.assert_close(w, torch.tensor([4 / 7, 3 / 7]))
    # Boundary: C_1 = 5 == 0.5 * 10 reaches the target (>=), one layer.
    assert sel(torch.tensor([5.0, 3.0, 2.0]), 0.5)[0].tolist() == [0]
    # Ties: stable, the earlier (shallower) layer first.
    assert sel(torch.tensor([2.0, 3.0, 3.0, 2.0]), 0.5)[0].tolist() == [1, 2]
    kept, w = sel(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5)
    assert kept.tolist() == [0, 1] and w.tolist() == [0.5, 0.5]
    # One layer; all zero; T = 0.
    for scores in ([0.7], [0.0]):
        kept, w = sel(torch.tensor(scores), 0.95)
        assert kept.tolist() == [0] and w.tolist() == [1.0]
    # All zero (every perturbation weight was 0): nothing to rank by, the deepest layer is kept.
    kept, w = sel(torch.zeros(3), 0.95)
    assert kept.tolist() == [2] and w.tolist() == [1.0]
    assert sel({"layer1": 0.0, "layer4": 0.0}, 0.95)[0] == ["layer4"]
    assert sel(torch.tensor([1.0, 2.0]), 0.0)[0].tolist() == [1]
    # Rounding cannot make T = 1 miss the total.
    assert len(sel(torch.full((10,), 0.1), 1.0)[0]) == 10
    # A mapping gives names.
    names, w = sel({"layer1": 1.0, "layer2": 3.0, "layer3": 0.0}, 0.7)
    assert names == ["layer2"] and w.tolist() == [1.0]
    with pytest.raises(ValueError):
        sel(torch.tensor([1.0]), 1.5)
    with pytest.raises(ValueError):
        sel(torch.tensor([-1.0, 2.0]), 0.5)


# ----------------------------------------------------------------------------- scores
def test_layer_phi_saliency_and_scores_hand_values() -> None:
    a = torch.tensor([[[[3.0, 1.0]], [[4.0, 0.0]]]])  # (n=1, K=2, 1, 2)
    g = torch.ones_like(a)
    # norms over channels: [5, 1] -> upsample (1,4): [5, 4, 2, 1] -> normalise
    torch.testing.assert_close(icam.layer_phi(a, g, (1, 4)), torch.tensor([[[1.0, 0.75, 0.25, 0.0]]]))
    assert torch.equal(icam.layer_phi(a, -g, (1, 2)), torch.zeros(1, 1, 2))  # ReLU(A * g) = 0
    img = torch.tensor([[[1.0, 0.5]], [[0.0, 0.5]], [[0.0, 0.0]]])
    grad = torch.tensor([[[3.0, 2.0]], [[1.0, 2.0]], [[9.0, 9.0]]])
    # |img * grad| over channels: [3, sqrt(2)] -> [1, 0]
    torch.testing.assert_close(icam.input_saliency(img, grad[None]), torch.tensor([[1.0, 0.0]]))
    s = torch.zeros(2, 2)
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    phis = torch.stack([torch.ones(2, 2, 2), torch.stack([one_hot, torch.zeros(2, 2)])])  # (L=2, n=2, 2, 2)
    w = torch.tensor([0.5, 0.25])
    # layer 0: distances [2, 2] -> 0.75 * 2 = 1.5; layer 1: distances [1, 0] -> 0.5
    torch.testing.assert_close(icam.layer_scores(s, phis, w), torch.tensor([1.5, 0.5]))
    as_dict = icam.layer_scores(s, {"a": phis[0], "b": phis[1]}, w)
    assert float(as_dict["a"]) == pytest.approx(1.5) and float(as_dict["b"]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- (e) SVIM / MDS / perturbations
def test_svim_identical_images_and_constant_images() -> None:
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = icam.svim(img, img[None].repeat(2, 1, 1, 1), sigma=0.25)
    torch.testing.assert_close(out, torch.full((2,), math.exp(-0.25 / (2 * 0.25**2))))  # SSIM = 1
    # Constant grey images a, b: SSIM = (2ab + c1) / (a^2 + b^2 + c1), c1 = (0.01 * 1)^2.
    a_img, b_img = torch.full((3, 9, 9), 0.5), torch.full((1, 3, 9, 9), 0.25)
    ssim = (2 * 0.5 * 0.25 + 1e-4) / (0.5**2 + 0.25**2 + 1e-4)
    for sigma in (0.25, 0.1):
        expected = math.exp(-((ssim - 0.5) ** 2) / (2 * sigma**2))
        assert float(icam.svim(a_img, b_img, sigma)[0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        icam.svim(img, img[None], sigma=0.0)


def test_mds_hand_values_symmetry_and_clip() -> None:
    p = torch.tensor([0.8, 0.2], dtype=F64)
    q = torch.tensor([[0.6, 0.4], [0.8, 0.2]], dtype=F64)
    mdd = 0.1 * math.log(0.8 / 0.6) + (-0.1) * math.log(0.2 / 0.4)
    out = icam.mds(p, q)
    assert out.dtype == F64
    assert float(out[0]) == pytest.approx(1 - mdd, rel=1e-12) and float(out[1]) == 1.0
    assert float(icam.mds(q[0], p[None])[0]) == pytest.approx(float(out[0]), rel=1e-12)  # symmetric
    # Very different distributions: 1 - MDD < 0 is clipped to 0; zeros are clamped (no NaN).
    far = icam.mds(torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 1.0], [0.999, 0.001]]))
    assert far[0] == 0.0 and torch.isfinite(far).all() and 0 < far[1] < 1
    w = icam.perturbation_weights(torch.tensor([0.25, 1.0]), torch.tensor([1.0, 0.49]))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.7]))


def test_perturb_is_seeded_masked_and_shared_across_channels() -> None:
    img = torch.ones(3, 32, 32)
    p1 = icam.perturb(img, 0.1, n=8, seed=0)
    assert p1.shape == (8, 3, 32, 32) and p1.dtype == torch.float32
    assert torch.equal(p1, icam.perturb(img, 0.1, n=8, seed=0))
    assert torch.equal(p1[:3], icam.perturb(img, 0.1, n=3, seed=0))  # prefix-stable in n
    assert not torch.equal(p1, icam.perturb(img, 0.1, n=8, seed=1))
    assert p1.min() >= 0 and p1.max() <= 1
    # 1 + 0.1 N > 0 in practice, so a zero means "masked": masks are shared by the 3 channels.
    zero = p1 == 0
    assert torch.equal(zero.any(dim=1), zero.all(dim=1))
    assert 0.08 < zero.all(dim=1).float().mean() < 0.12  # drop probability alpha
    # Noise: unmasked values are clip(1 + 0.1 N): about half are below 1.
    kept = p1[~zero]
    assert 0.4 < (kept < 1).float().mean() < 0.6
    assert torch.equal(icam.perturb(img * 0.3, 0.0, n=2), (img * 0.3)[None].repeat(2, 1, 1, 1))
    assert torch.equal(icam.perturb(img, 1.0, n=2), torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError):
        icam.perturb(img, 1.5)


def test_perturbation_pipeline_shapes_with_numpy_reference() -> None:
    img = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(4))
    pert = icam.perturb(img, 0.4, n=4, seed=0)
    sv = icam.svim(img, pert)
    from skimage.metrics import structural_similarity

    gray = lambda t: t.double().numpy().transpose(1, 2, 0) @ np.array([0.2125, 0.7154, 0.0721])  # noqa: E731
    ref = [math.exp(-((structural_similarity(gray(img), gray(p), data_range=1.0) - 0.5) ** 2) / 0.125)
           for p in pert]
    np.testing.assert_allclose(sv.numpy(), ref, rtol=1e-6)

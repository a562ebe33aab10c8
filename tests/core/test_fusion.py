"""UnionCAM and Fusion-CAM against independent float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camwidgets.core import fusion


# ----------------------------------------------------------------------------- numpy references
def _np_norm(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    return x / x.max() if x.max() > 0 else np.zeros_like(x)


def _np_weights(a: float, b: float) -> tuple[float, float]:
    a, b = max(a, 0.0), max(b, 0.0)
    return (a / (a + b), b / (a + b)) if a + b > 0 else (0.5, 0.5)


def _np_fusion(lg: np.ndarray, lr: np.ndarray, bg: float, br: float, bgr: float) -> dict[str, np.ndarray]:
    """Fusion-CAM steps 3-4 in float64 numpy, given the (denoised) L_g, L_r and the raw betas."""
    wg, wr = _np_weights(bg, br)
    lgr = _np_norm(wg * lg + wr * lr)
    wgr, wr2 = _np_weights(bgr, wr)  # step 4 rescales (beta_gr, step-3 beta_r), as the official code
    l1, l2 = wgr * lgr, wr2 * lr
    sim = np.clip(1 - np.abs(l1 - l2), 0, 1)
    f = _np_norm(sim * np.maximum(l1, l2) + (1 - sim) * (l1 + l2) / 2)
    return {"lgr": lgr, "f": f, "sim": sim, "w": np.array([wg, wr, wgr, wr2])}


def _maps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _np_norm(rng.random((5, 6))), _np_norm(rng.random((5, 6)) ** 2)


HAND = np.array([[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]])

CASES = [
    # (L_g, L_r, beta_g, beta_r, beta_gr)
    (*_maps(0), 0.30, 0.50, 0.40),
    (*_maps(1), -0.10, 0.40, 0.35),  # beta_g < 0 -> clamped to 0
    (*_maps(2), -0.20, 0.00, 0.10),  # both <= 0 -> equal weights in step 3
    (*_maps(3), 0.20, 0.10, -0.05),  # beta_gr < 0 in step 4
    (HAND, HAND[::-1, ::-1].copy(), 0.25, 0.75, 0.5),
    (np.zeros((2, 3)), HAND, 0.1, 0.2, 0.3),  # constant (all-zero) gradient map
    (np.full((2, 3), 0.5), np.full((2, 3), 0.5), 0.1, 0.2, 0.3),  # both constant -> F all zeros
    (HAND, np.zeros((2, 3)), -0.3, -0.1, -0.2),  # all betas <= 0
]


@pytest.mark.parametrize(("lg", "lr", "bg", "br", "bgr"), CASES)
def test_fusion_equals_spec_formula(lg: np.ndarray, lr: np.ndarray, bg: float, br: float, bgr: float) -> None:
    ref = _np_fusion(lg, lr, bg, br, bgr)
    tg, tr = torch.tensor(lg, dtype=torch.float32), torch.tensor(lr, dtype=torch.float32)
    l_gr, wg, wr = fusion.combine(tg, tr, bg, br)
    out, sim, wgr, wr2 = fusion.fuse(l_gr, tr, bgr, wr)
    assert out.dtype == torch.float32 and out.shape == lg.shape
    np.testing.assert_allclose([wg, wr, wgr, wr2], ref["w"], atol=1e-12)
    np.testing.assert_allclose(l_gr.numpy(), ref["lgr"], atol=1e-6)
    np.testing.assert_allclose(sim.numpy(), ref["sim"], atol=1e-6)
    np.testing.assert_allclose(out.numpy(), ref["f"], atol=1e-6)
    assert not torch.isnan(out).any()


def test_fusion_weights_edge_cases() -> None:
    assert fusion.fusion_weights(0.0, 0.0) == (0.5, 0.5)
    assert fusion.fusion_weights(-1.0, -2.0) == (0.5, 0.5)
    assert fusion.fusion_weights(-1.0, 0.3) == (0.0, 1.0)
    assert fusion.fusion_weights(0.1, 0.3) == pytest.approx((0.25, 0.75))
    # Both constant maps: combined and fused maps are all zeros, never NaN.
    c = torch.full((3, 3), 0.4)
    l_gr, _, _ = fusion.combine(c, c, 0.2, 0.2)
    assert torch.equal(l_gr, torch.zeros(3, 3))
    assert torch.equal(fusion.fuse(l_gr, c, 0.0, 0.5)[0], torch.zeros(3, 3))


def test_matches_official_code_arithmetic_for_positive_betas() -> None:
    """codeforpaper64/Fusion-CAM src/cams_methods/fusioncam.py with a / (a + b + 1e-8), betas > 0."""
    lg, lr = _maps(5)
    bg, br, bgr = 0.31, 0.52, 0.44

    def nw(a: float, b: float) -> tuple[float, float]:
        return a / (a + b + 1e-8), b / (a + b + 1e-8)

    bg2, br2 = nw(bg, br)
    lgr = _np_norm(bg2 * lg + br2 * lr)
    bgr2, br3 = nw(bgr, br2)
    l1, l2 = lgr * bgr2, lr * br3
    sim = np.clip(1 - np.abs(l1 - l2), 0, 1)
    official = _np_norm(sim * np.maximum(l1, l2) + (1 - sim) * 0.5 * (l1 + l2))
    steps = fusion.run_fusioncam(torch.tensor(lg), torch.tensor(lr), lambda m: torch.tensor([bg, br])
                                 if m.shape[0] == 2 else torch.tensor([bgr]), theta=0)
    np.testing.assert_allclose(steps.map.numpy(), official, atol=1e-6)


def test_denoise_map_equals_numpy_percentile_rule() -> None:
    rng = np.random.default_rng(7)
    m = _np_norm(rng.random((6, 7)))
    for theta in (0, 10, 25, 50, 100):
        ref = m.copy()
        ref[ref < np.percentile(ref, theta)] = 0  # the official code's rule
        np.testing.assert_allclose(fusion.denoise_map(torch.tensor(m), theta).numpy(), ref, atol=0)
    # Hand value: percentile 50 of [0, .2, .4, .6, .8, 1] is 0.5.
    out = fusion.denoise_map(torch.tensor(HAND), 50)
    np.testing.assert_allclose(out.numpy(), np.array([[0, 0, 0], [0.6, 0.8, 1.0]]))
    with pytest.raises(ValueError):
        fusion.denoise_map(torch.tensor(HAND), 120)


def test_run_fusioncam_pass_structure_and_cache() -> None:
    lg, lr = (torch.tensor(m) for m in _maps(8))
    calls: list[int] = []

    def beta_fn(maps: torch.Tensor) -> torch.Tensor:
        calls.append(maps.shape[0])
        return maps.mean(dim=(-2, -1)) - 0.1  # any deterministic contribution

    steps = fusion.run_fusioncam(lg, lr, beta_fn, theta=20)
    assert calls == [2, 1]  # [L_g, L_r] together, then L_gr (it needs beta_g)
    den = fusion.denoise_map(lg, 20).numpy()
    ref = _np_fusion(den, lr.numpy(), den.mean() - 0.1, lr.numpy().mean() - 0.1,
                     steps.combined_map.numpy().mean() - 0.1)
    np.testing.assert_allclose(steps.map.numpy(), ref["f"], atol=1e-6)
    np.testing.assert_allclose(steps.combined_map.numpy(), ref["lgr"], atol=1e-6)
    # A theta change with the cached beta_r: two single-map passes, same result as uncached.
    calls.clear()
    again = fusion.run_fusioncam(lg, lr, beta_fn, theta=20, beta_r_raw=steps.beta_r_raw)
    assert calls == [1, 1]
    assert torch.equal(again.map, steps.map)


# ----------------------------------------------------------------------------- UnionCAM
def _hand_gradient() -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.tensor([[[-2.0, -1.0, 0.0], [1.0, 2.0, 3.0]],
                      [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]], dtype=torch.float64)
    a = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]],
                      [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]], dtype=torch.float64)
    return a, w


def test_denoise_gradients_hand_values() -> None:
    _, w = _hand_gradient()
    # Channel 0, theta 50: percentile of [-2,-1,0,1,2,3] = 0.5 -> values < 0.5 zeroed.
    # Channel 1 is constant: its percentile is 4, nothing is below it.
    out = fusion.denoise_gradients(w, 50)
    expected = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], [[4.0] * 3, [4.0] * 3]], dtype=torch.float64)
    assert torch.equal(out, expected)
    # theta 10: percentile -1.5, only -2 is zeroed.
    assert fusion.denoise_gradients(w, 10)[0, 0].tolist() == [0.0, -1.0, 0.0]


def test_unioncam_denoised_map_hand_values() -> None:
    a, w = _hand_gradient()
    # theta 50: alpha_0 = 1/6 (positives 1+2+3), alpha_1 = 1/24.
    # ch0: [0,0,0; 1*1/6, 2*2/6, 3*3/6]; ch1: 4/24 * A_1 = [1/6,0,0; 0,0,2/6]
    expected = torch.tensor([[1 / 6, 0.0, 0.0], [1 / 6, 4 / 6, 11 / 6]], dtype=torch.float64)
    torch.testing.assert_close(fusion.unioncam_denoised_map(a, w, 50), expected)
    # Denoising at theta 10 or 50 only removes non-positive values: same map as no denoising (documented).
    torch.testing.assert_close(fusion.unioncam_denoised_map(a, w, 10), fusion.unioncam_denoised_map(a, w, 0))
    torch.testing.assert_close(fusion.unioncam_denoised_map(a, w, 50), fusion.unioncam_denoised_map(a, w, 0))
    # theta 70: percentile 1.5 > 0 removes the positive 1: alpha_0 = 1/5 and the map changes.
    expected70 = torch.tensor([[1 / 6, 0.0, 0.0], [0.0, 0.8, 1.8 + 1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(fusion.unioncam_denoised_map(a, w, 70), expected70)
    # A channel with no positive gradient contributes 0 (no NaN).
    out = fusion.unioncam_denoised_map(a, -w.abs(), 0)
    assert torch.equal(out, torch.zeros(2, 3, dtype=torch.float64))


def test_unioncam_denoised_map_numpy_reference_batched() -> None:
    rng = np.random.default_rng(3)
    a = np.maximum(rng.standard_normal((2, 3, 5, 5)), 0)
    g = rng.standard_normal((2, 3, 5, 5))
    theta = 60
    ref = np.zeros((2, 5, 5))
    for n in range(2):
        for k in range(3):
            wk = g[n, k].copy()
            wk[wk < np.percentile(wk, theta)] = 0
            pos = wk > 0
            if pos.any():
                ref[n] += np.where(pos, 1 / wk[pos].sum(), 0) * np.maximum(wk, 0) * a[n, k]
    out = fusion.unioncam_denoised_map(torch.tensor(a), torch.tensor(g), theta)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-15)


def _np_union_weights(bd: float, br: float) -> tuple[float, float]:
    """UnionCAM's guard: each beta clamped at 0, (1/2, 1/2) when both are <= 0 (no rescaling)."""
    d, r = max(bd, 0.0), max(br, 0.0)
    return (d, r) if d + r > 0 else (0.5, 0.5)


@pytest.mark.parametrize(("bd", "br", "expected"), [
    (0.2, 0.3, (0.2, 0.3)),  # both positive: eq. 6 unchanged
    (-0.1, 0.3, (0.0, 0.3)),  # a negative beta no longer subtracts its map
    (0.4, -0.2, (0.4, 0.0)),
    (-0.1, -0.3, (0.5, 0.5)),  # both negative: equal weights, not an inverted union
    (0.0, 0.0, (0.5, 0.5)),
    (0.0, -1e-9, (0.5, 0.5)),
])
def test_union_weights_clamp_at_zero(bd: float, br: float, expected: tuple[float, float]) -> None:
    assert fusion.union_weights(bd, br) == expected
    assert fusion.union_weights(torch.tensor(bd), torch.tensor(br)) == pytest.approx(expected)
    ld, lr = (torch.tensor(m) for m in _maps(9))
    torch.testing.assert_close(fusion.union_map(ld, lr, bd, br), expected[0] * ld + expected[1] * lr)


def test_union_of_negative_contributions_is_not_inverted() -> None:
    """Both betas < 0 (a class the masked images make less likely than the baseline).

    Eq. 6 with the raw betas gives a negative multiple of the maps, whose normalisation is
    their inverse (correlation -1 with L_R when L_D ~ L_R); the clamp keeps their sum.
    """
    ld, lr = (torch.tensor(m) for m in _maps(10))
    ld = 0.9 * lr + 0.1 * ld  # the denoised map usually resembles the region map
    raw = -0.06 * ld + -0.05 * lr
    assert np.corrcoef(_np_norm(raw.numpy()).ravel(), lr.numpy().ravel())[0, 1] < -0.99  # the bug
    union = fusion.union_map(ld, lr, -0.06, -0.05)
    torch.testing.assert_close(union, 0.5 * ld + 0.5 * lr)
    assert np.corrcoef(_np_norm(union.numpy()).ravel(), lr.numpy().ravel())[0, 1] > 0.99
    # Through the pipeline, with beta_DR > beta_R so that eq. 8 selects the union.
    answers = iter([torch.tensor([-0.06, -0.05]), torch.tensor([-0.01])])
    steps = fusion.run_unioncam(ld, lr, lambda maps: next(answers))
    assert (steps.beta_d, steps.beta_r, steps.beta_dr) == pytest.approx((-0.06, -0.05, -0.01))
    assert steps.choice == "union" and float(steps.union.min()) >= 0
    assert np.corrcoef(steps.map.numpy().ravel(), lr.numpy().ravel())[0, 1] > 0.99


def test_union_and_selection_as_written_with_the_clamp() -> None:
    ld, lr = (torch.tensor(m) for m in _maps(9))
    # eq. 6 with non-negative betas: unchanged, no normalisation.
    torch.testing.assert_close(fusion.union_map(ld, lr, 0.1, 0.3), 0.1 * ld + 0.3 * lr)
    # eq. 8: strict '>'.
    ldr = fusion.union_map(ld, lr, 0.2, 0.3)
    assert fusion.union_select(ldr, lr, 0.31, 0.3)[1] == "union"
    chosen, choice = fusion.union_select(ldr, lr, 0.3, 0.3)
    assert choice == "region" and chosen is lr
    # Pipeline: beta of the normalised union decides; the union uses the clamped betas.
    for offset in (0.2, 0.45, 0.7):  # betas of both signs
        calls: list[int] = []

        def beta_fn(maps: torch.Tensor, offset: float = offset, calls: list[int] = calls) -> torch.Tensor:
            calls.append(maps.shape[0])
            return maps.mean(dim=(-2, -1)) - offset

        steps = fusion.run_unioncam(ld, lr, beta_fn)
        assert calls == [2, 1]
        bd, br = float(ld.mean()) - offset, float(lr.mean()) - offset
        wd, wr = _np_union_weights(bd, br)
        ref_union = wd * ld.numpy() + wr * lr.numpy()
        bdr = _np_norm(ref_union).mean() - offset
        np.testing.assert_allclose(steps.union.numpy(), ref_union, atol=1e-12)
        assert steps.beta_d == pytest.approx(bd) and steps.beta_r == pytest.approx(br)  # raw betas reported
        assert steps.beta_dr == pytest.approx(bdr) and steps.choice == ("union" if bdr > br else "region")
        np.testing.assert_allclose(steps.map.numpy(), _np_norm(ref_union if bdr > br else lr.numpy()),
                                   atol=1e-12)


def test_contributions_both_calling_conventions() -> None:
    maps = torch.stack([torch.ones(2, 2), torch.zeros(2, 2), torch.eye(2)])
    out = fusion.contributions(lambda m: m.mean(dim=(-2, -1)), maps, 0.25)
    torch.testing.assert_close(out, torch.tensor([0.75, -0.25, 0.25]))
    img = torch.full((3, 2, 2), 0.5)

    def probs(x: torch.Tensor) -> torch.Tensor:  # (m, 3, H, W) -> (m, C=2)
        p1 = x.mean(dim=(1, 2, 3))
        return torch.stack([1 - p1, p1], dim=1)

    out = fusion.contributions(probs, maps, 0.1, image=img, target=1)
    torch.testing.assert_close(out, torch.tensor([0.4, -0.1, 0.15]))
    with pytest.raises(ValueError):
        fusion.contributions(probs, maps, 0.1, image=img)

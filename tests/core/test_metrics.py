"""Known-answer tests for camwidgets.core.metrics (docs/methods.md, "Metrics").

Hand-built models whose softmax probability is a chosen function of the input make
every value below computable on paper; the comments give the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.core import metrics as M
from camwidgets.core.preprocess import Preprocess


class ProbModel(nn.Module):
    """Two classes with ``softmax(S)_0 = fn(x)`` exactly: logits ``(log p, log(1 - p))``.

    Records each input batch, whether inference mode was on and its own training flag.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.inputs: list[torch.Tensor] = []
        self.inference: list[bool] = []
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        self.inference.append(torch.is_inference_mode_enabled())
        self.modes.append(self.training)
        p = self.fn(x).double().clamp(1e-12, 1 - 1e-12)
        return torch.stack([p.log(), (1 - p).log()], dim=1).float()


def frac_kept(x: torch.Tensor) -> torch.Tensor:
    """Mean of channel 0: on an all-ones image, the fraction of pixels not blacked out."""
    return x[:, 0].mean(dim=(1, 2))


def step_prob(x: torch.Tensor) -> torch.Tensor:
    """0.9 while at least half the pixels are kept, else 0.1."""
    return torch.where(frac_kept(x) >= 0.5 - 1e-6, torch.tensor(0.9), torch.tensor(0.1))


def corner_prob(x: torch.Tensor) -> torch.Tensor:
    """0.1 + 0.8 q, q = mean of channel 0 over the top-left 2x2 corner."""
    return 0.1 + 0.8 * x[:, 0, :2, :2].mean(dim=(1, 2))


def small_cnn(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes),
    ).eval()


ONES = torch.ones(3, 4, 4)
A_MAP = np.zeros((4, 4))
A_MAP[:2, :2] = 1.0  # the top-left corner first
B_MAP = np.zeros((4, 4))
B_MAP[2:, 2:] = 1.0  # the bottom-right corner first, then the rest in raster order


# -- Average Drop / Increase in Confidence ---------------------------------------------------
def test_all_ones_map_has_zero_average_drop_and_increase() -> None:
    model = small_cnn()
    pre = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert M.average_drop(model, img, np.ones((8, 8)), preprocess=pre) == 0.0
    assert M.increase_in_confidence(model, img, np.ones((8, 8)), preprocess=pre) == 0.0
    batch = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(M.average_drop(model, batch, np.ones((3, 8, 8)), preprocess=pre), 0.0)
    np.testing.assert_array_equal(M.increase_in_confidence(model, batch, np.ones((3, 8, 8))), 0.0)


def test_average_drop_and_increase_hand_values() -> None:
    # p = 0.1 + 0.8 * kept; all-ones image: y = 0.9; E = 0.5 everywhere: o = 0.5.
    rising = ProbModel(lambda x: 0.1 + 0.8 * frac_kept(x))
    half = np.full((4, 4), 0.5)
    cc = M.confidence_change(rising, ONES, half, target=0)
    assert cc.original == pytest.approx(0.9, abs=1e-6)
    assert cc.masked == pytest.approx(0.5, abs=1e-6)
    assert cc.target == 0
    assert M.average_drop(rising, ONES, half, target=0) == pytest.approx(100 * 0.4 / 0.9, abs=1e-4)
    assert M.increase_in_confidence(rising, ONES, half, target=0) == 0.0
    # p = 0.9 - 0.8 * kept: y = 0.1, o = 0.5 -> no drop, an increase.
    falling = ProbModel(lambda x: 0.9 - 0.8 * frac_kept(x))
    assert M.average_drop(falling, ONES, half, target=0) == 0.0
    assert M.increase_in_confidence(falling, ONES, half, target=0) == 100.0
    # Class 1 of the rising model: y = 0.1, o = 0.5.
    assert M.increase_in_confidence(rising, ONES, half, target=1) == 100.0
    # target=None takes the predicted class (class 0, p = 0.9).
    assert M.confidence_change(rising, ONES, half).target == 0


def test_mask_is_applied_in_pixel_space_then_normalised() -> None:
    model = ProbModel(lambda x: torch.sigmoid(x.mean(dim=(1, 2, 3))))
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    g = torch.Generator().manual_seed(3)
    img, emap = torch.rand(3, 5, 6, generator=g), torch.rand(5, 6, generator=g)
    M.average_drop(model, img, emap, target=0, preprocess=pre)
    torch.testing.assert_close(model.inputs[0][0], (img - 0.5) / 0.25)
    torch.testing.assert_close(model.inputs[1][0], (img * emap - 0.5) / 0.25)


def test_geometry_output_size_is_the_map_size() -> None:
    model = ProbModel(lambda x: torch.sigmoid(x.mean(dim=(1, 2, 3))))
    pre = Preprocess(size=8)
    img = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match=r"16x16 but the image is 8x8 after preprocess.geometry"):
        M.average_drop(model, img, np.ones((16, 16)), target=0, preprocess=pre)
    assert M.average_drop(model, img, np.ones((8, 8)), target=0, preprocess=pre) == 0.0
    assert model.inputs[-1].shape == (1, 3, 8, 8)


def test_result_objects_and_lists_are_accepted() -> None:
    model = ProbModel(lambda x: 0.1 + 0.8 * frac_kept(x))
    res = SimpleNamespace(map=np.full((4, 4), 0.5, dtype=np.float32))
    one = M.average_drop(model, ONES, res, target=0)
    assert isinstance(one, float)
    many = M.average_drop(model, [ONES, ONES], [res, res], target=[0, 0])
    assert isinstance(many, np.ndarray) and many.shape == (2,)
    np.testing.assert_allclose(many, one)
    # load_image inputs: an (H, W, 3) uint8 array is a single image.
    arr = np.full((4, 4, 3), 255, dtype=np.uint8)
    assert M.average_drop(model, arr, res, target=0) == pytest.approx(one)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"saliency_map": np.full((4, 4), np.nan)}, "NaN"),
        ({"saliency_map": np.full((4, 4), 1.5)}, r"\[0, 1\]"),
        ({"saliency_map": np.full((4, 4), -0.1)}, r"\[0, 1\]"),
        ({"saliency_map": np.ones((4, 5))}, "4x5 but the image is 4x4"),
        ({"saliency_map": np.ones((2, 4, 4))}, "2 saliency map"),
        ({"saliency_map": np.ones((1, 1, 4, 4))}, "expected \\(H, W\\)"),
        ({"target": 2}, "out of range for a model with 2 classes"),
        ({"target": -1}, "out of range"),
        ({"target": [0, 1]}, "2 targets for 1 image"),
        ({"target": 0.5}, "integer"),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs: dict, message: str) -> None:
    model = ProbModel(lambda x: 0.1 + 0.8 * frac_kept(x))
    args = {"saliency_map": np.ones((4, 4)), "target": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        M.average_drop(model, ONES, args["saliency_map"], target=args["target"])


def test_bad_curve_parameters_and_model_output() -> None:
    model = ProbModel(step_prob)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        M.deletion(model, ONES, A_MAP, steps=0)
    with pytest.raises(ValueError, match="baseline 'gray' is not known"):
        M.deletion(model, ONES, A_MAP, baseline="gray")
    with pytest.raises(ValueError, match="sigma"):
        M.insertion(model, ONES, A_MAP, sigma=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        M.insertion(model, ONES, A_MAP, batch_size=0)
    with pytest.raises(ValueError, match=r"logits of shape \(N, num_classes\)"):
        M.average_drop(nn.Identity(), ONES, A_MAP)
    with pytest.raises(ValueError, match="Preprocess"):
        M.average_drop(model, ONES, A_MAP, preprocess="imagenet")  # type: ignore[arg-type]


def test_agrees_with_pytorch_grad_cam_under_matching_conventions() -> None:
    """pytorch-grad-cam: DropInConfidence = max(0, y - o), IncreaseInConfidence = 1[o > y].

    Conventions that differ: no division by y and no percent there; the score is the
    softmax only with ClassifierOutputSoftmaxTarget; the *normalised* input is masked.
    With an identity normalisation (preprocess=None) the inputs coincide, so
    AD_i * y / 100 == DropInConfidence and IC_i / 100 == IncreaseInConfidence.
    """
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = small_cnn(seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 8, 8, generator=g)
    cams = torch.rand(6, 8, 8, generator=g).numpy().astype(np.float32)
    cams[:3] = np.sqrt(cams[:3])  # brighter maps on half of the batch: some rises, some drops
    targets = [0, 1, 2, 0, 1, 2]
    gc_targets = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    theirs_drop = DropInConfidence()(x, cams, gc_targets, model)
    theirs_inc = IncreaseInConfidence()(x, cams, gc_targets, model)
    cc = M.confidence_change(model, x, cams, targets)
    ad = M.average_drop(model, x, cams, targets)
    ic = M.increase_in_confidence(model, x, cams, targets)
    assert 0 < theirs_inc.sum() < 6  # both outcomes occur, so the comparison can fail
    np.testing.assert_allclose(ad * cc.original / 100.0, theirs_drop, atol=1e-6)
    np.testing.assert_array_equal(ic / 100.0, theirs_inc)

    # With a real normalisation the conventions differ: they mask (x - mean) / std.
    pre = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    theirs_norm = DropInConfidence()(pre.normalize(x), cams, gc_targets, model)
    cc_norm = M.confidence_change(model, x, cams, targets, preprocess=pre)
    ours_norm = np.maximum(0.0, cc_norm.original - cc_norm.masked)
    assert not np.allclose(ours_norm, theirs_norm, atol=1e-4)


# -- Deletion / insertion -----------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["black", "blur", "mean", 0.3])
def test_constant_model_curves_equal_the_constant(baseline: object) -> None:
    model = ProbModel(lambda x: torch.full((x.shape[0],), 0.37))
    emap = np.random.default_rng(0).random((4, 4))
    for fn in (M.deletion, M.insertion):
        res = fn(model, ONES * 0.5, emap, target=0, steps=7, baseline=baseline)
        np.testing.assert_allclose(res.curve, 0.37, atol=1e-6)
        assert res.auc == pytest.approx(0.37, abs=1e-6)
        assert res.curve.shape == (8,) and res.fractions[0] == 0.0 and res.fractions[-1] == 1.0


def test_step_model_curves_by_hand() -> None:
    # 16 pixels, 4 steps: 0, 4, 8, 12, 16 removed -> kept 1, .75, .5, .25, 0.
    model = ProbModel(step_prob)
    res = M.deletion(model, ONES, A_MAP, target=0, steps=4)
    np.testing.assert_allclose(res.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(res.curve, [0.9, 0.9, 0.9, 0.1, 0.1], atol=1e-6)
    # AUC = .25 * ((.9+.9)/2 + (.9+.9)/2 + (.9+.1)/2 + (.1+.1)/2) = .25 * 2.4
    assert res.auc == pytest.approx(0.6, abs=1e-6)
    assert res.kind == "deletion" and res.target == 0
    ins = M.insertion(model, ONES, A_MAP, target=0, steps=4, baseline="black")
    np.testing.assert_allclose(ins.curve, [0.1, 0.1, 0.9, 0.9, 0.9], atol=1e-6)
    assert ins.auc == pytest.approx(0.25 * (0.1 + 0.5 + 0.9 + 0.9), abs=1e-6)
    assert M.over_all(ins, res) == pytest.approx(0.6 - 0.6, abs=1e-6)


def test_curves_follow_the_map_order() -> None:
    model = ProbModel(corner_prob)  # 0.1 + 0.8 * (share of the top-left 2x2 still on)
    a = M.deletion(model, ONES, A_MAP, target=0, steps=4)
    # The corner goes first: .9, .1, .1, .1, .1 -> AUC = .25 * (.5 + .1 + .1 + .1) = 0.2
    np.testing.assert_allclose(a.curve, [0.9, 0.1, 0.1, 0.1, 0.1], atol=1e-6)
    assert a.auc == pytest.approx(0.2, abs=1e-6)
    b = M.deletion(model, ONES, B_MAP, target=0, steps=4)
    # Bottom-right first, then raster order: row 0 (two corner pixels), row 1 (the other two).
    np.testing.assert_allclose(b.curve, [0.9, 0.9, 0.5, 0.1, 0.1], atol=1e-6)
    assert b.auc == pytest.approx(0.25 * (0.9 + 0.7 + 0.3 + 0.1), abs=1e-6)
    ins = M.insertion(model, ONES, A_MAP, target=0, steps=4, baseline="black")
    np.testing.assert_allclose(ins.curve, [0.1, 0.9, 0.9, 0.9, 0.9], atol=1e-6)
    assert ins.auc == pytest.approx(0.8, abs=1e-6)
    assert M.over_all(ins, a) == pytest.approx(0.6, abs=1e-6)


def test_step_counts_round_to_nearest_pixel() -> None:
    model = ProbModel(frac_kept)
    res = M.deletion(model, ONES, A_MAP, target=0, steps=3)
    # round(16 k / 3) = 0, 5, 11, 16 pixels removed
    np.testing.assert_allclose(res.fractions, np.array([0, 5, 11, 16]) / 16)
    np.testing.assert_allclose(res.curve, 1 - res.fractions, atol=1e-6)
    expected = np.sum((res.curve[1:] + res.curve[:-1]) / 2 * np.diff(res.fractions))
    assert res.auc == pytest.approx(expected, abs=1e-12)
    assert res.auc == pytest.approx(0.5, abs=1e-6)  # a straight line from 1 to 0


def test_blur_baseline_is_a_gaussian_blur() -> None:
    from skimage.filters import gaussian

    img = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(6))
    ours = M._gaussian_blur(img, 1.7).numpy()
    for i in range(2):
        ref = gaussian(img[i].numpy().astype(np.float64), sigma=1.7, mode="nearest", truncate=3.0,
                       channel_axis=0, preserve_range=True)
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)
    # insertion starts from exactly that image
    model = ProbModel(lambda x: torch.sigmoid(x.mean(dim=(1, 2, 3))))
    M.insertion(model, img[0], np.ones((12, 10)), target=0, steps=2, sigma=1.7)
    np.testing.assert_allclose(model.inputs[1][0].numpy(), ours[0], atol=1e-6)
    torch.testing.assert_close(model.inputs[1][2], img[0])


def test_mean_baseline_on_a_flat_image_changes_nothing() -> None:
    model = ProbModel(corner_prob)
    res = M.deletion(model, ONES, A_MAP, target=0, steps=4, baseline="mean")
    np.testing.assert_allclose(res.curve, 0.9, atol=1e-6)


def test_curve_batching_inference_mode_and_forward_count() -> None:
    model = ProbModel(frac_kept)
    M.deletion(model, ONES, A_MAP, target=0, steps=10, batch_size=4)
    # one pass on the unmasked image + ceil(11 / 4) passes for the curve
    assert len(model.inputs) == 1 + 3
    assert all(t.shape[0] <= 4 for t in model.inputs)
    assert all(model.inference)
    model.inputs.clear()
    M.deletion(model, torch.stack([ONES, ONES]), np.stack([A_MAP, B_MAP]), target=0, steps=10, batch_size=4)
    assert len(model.inputs) == 1 + 6  # 22 perturbed images in batches of 4


def test_eval_mode_during_and_train_mode_restored_after_success_and_error() -> None:
    model = ProbModel(frac_kept)
    inner = nn.Dropout()
    model.add_module("inner", inner)
    model.train()
    inner.eval()  # a mixed state must come back as it was
    M.deletion(model, ONES, A_MAP, target=0, steps=2)
    assert not any(model.modes)
    assert model.training and not inner.training
    with pytest.raises(ValueError, match="out of range"):
        M.insertion(model, ONES, A_MAP, target=5, steps=2)
    assert model.training and not inner.training


# -- batch == loop --------------------------------------------------------------------------
def test_batch_equals_per_image_loop() -> None:
    model = small_cnn(seed=7)
    pre = Preprocess(mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3))
    g = torch.Generator().manual_seed(8)
    imgs = torch.rand(3, 3, 8, 8, generator=g)
    maps = torch.rand(3, 8, 8, generator=g).numpy()
    targets = [2, 0, 1]

    def explain(masked: torch.Tensor, t: int) -> np.ndarray:
        m = masked[t % 3]
        return ((m - m.min()) / (m.max() - m.min())).numpy()

    b_ad = np.asarray(M.average_drop(model, imgs, maps, targets, pre))
    b_ic = np.asarray(M.increase_in_confidence(model, imgs, maps, targets, pre))
    b_del = M.deletion(model, imgs, maps, targets, pre, steps=5, batch_size=4)
    b_ins = M.insertion(model, imgs, maps, targets, pre, steps=5, batch_size=4, sigma=1.0)
    b_adcc = M.adcc(model, imgs, maps, targets, pre, explain_fn=explain)
    for i in range(3):
        args = (model, imgs[i], maps[i], targets[i], pre)
        # A batch of 3 and a batch of 1 take different float32 conv kernels: probabilities agree to
        # ~1e-7, and AD = 100 (y - o) / y turns that into up to ~1e-5 percent points (8e-6 seen).
        assert b_ad[i] == pytest.approx(M.average_drop(*args), abs=1e-4)
        assert b_ic[i] == M.increase_in_confidence(*args)
        d = M.deletion(*args, steps=5)
        np.testing.assert_allclose(b_del.curve[i], d.curve, atol=1e-6)
        assert np.asarray(b_del.auc)[i] == pytest.approx(d.auc, abs=1e-6)
        ins = M.insertion(*args, steps=5, sigma=1.0)
        np.testing.assert_allclose(b_ins.curve[i], ins.curve, atol=1e-6)
        one = M.adcc(*args, explain_fn=explain)
        # ADCC carries AD / 100 (see above): 1e-6 covers the batch-size kernel difference
        assert np.asarray(b_adcc.adcc)[i] == pytest.approx(one.adcc, abs=1e-6)
        assert np.asarray(b_adcc.coherency)[i] == pytest.approx(one.coherency, abs=1e-9)
    np.testing.assert_array_equal(b_del.target, targets)


def test_map_only_batch_equals_per_image_loop() -> None:
    rng = np.random.default_rng(9)
    maps = rng.random((4, 10, 10))
    masks = rng.random((4, 10, 10)) > 0.6
    boxes = np.array([[0, 0, 4, 4], [2, 3, 9, 9], [5, 0, 9, 2], [1, 1, 1, 1]])
    loc = M.localisation(maps, masks, threshold=0.6)
    epg_masks = np.asarray(M.energy_pointing_game(maps, masks))
    epg_boxes = np.asarray(M.energy_pointing_game(maps, boxes))
    pg = np.asarray(M.pointing_game(maps, boxes))
    for i in range(4):
        assert epg_masks[i] == pytest.approx(M.energy_pointing_game(maps[i], masks[i]))
        assert epg_boxes[i] == pytest.approx(M.energy_pointing_game(maps[i], boxes[i]))
        assert pg[i] == M.pointing_game(maps[i], boxes[i])
        one = M.localisation(maps[i], masks[i], threshold=0.6)
        for key in ("iou", "precision", "recall", "f1", "box_iou"):
            assert np.asarray(getattr(loc, key))[i] == pytest.approx(getattr(one, key))
        assert loc.predicted_box[i] == one.predicted_box
    np.testing.assert_allclose(np.asarray(M.complexity(maps)), [float(M.complexity(m)) for m in maps])


# -- ADCC -------------------------------------------------------------------------------------
def test_adcc_hand_value() -> None:
    # E = 1 on the left half: complexity 0.5; kept share 0.5 -> o = 0.5, y = 0.9,
    # AD = 100 * 0.4 / 0.9; explain_fn returns E itself -> coherency 1.
    model = ProbModel(lambda x: 0.1 + 0.8 * frac_kept(x))
    emap = np.zeros((4, 4))
    emap[:, :2] = 1.0
    seen: list[tuple[torch.Tensor, int]] = []

    def explain(masked: torch.Tensor, target: int) -> np.ndarray:
        seen.append((masked, target))
        return emap

    res = M.adcc(model, ONES, emap, target=0, explain_fn=explain)
    assert res.complexity == pytest.approx(0.5)
    assert res.coherency == pytest.approx(1.0)
    assert res.average_drop == pytest.approx(100 * 0.4 / 0.9, abs=1e-4)
    # 3 / (1/1 + 1/0.5 + 1/(1 - 0.4/0.9)) = 3 / (1 + 2 + 1.8) = 0.625
    assert res.adcc == pytest.approx(0.625, abs=1e-5)
    torch.testing.assert_close(seen[0][0], ONES * torch.from_numpy(emap).float())
    assert seen[0][1] == 0
    # An anti-correlated re-run has coherency 0, so ADCC 0.
    anti = M.adcc(model, ONES, emap, target=0, explain_fn=lambda m, t: 1.0 - emap)
    assert anti.coherency == pytest.approx(0.0) and anti.adcc == 0.0
    # The all-ones map has complexity 1, so ADCC 0.
    full = M.adcc(model, ONES, np.ones((4, 4)), target=0, explain_fn=lambda m, t: emap)
    assert full.complexity == 1.0 and full.adcc == 0.0
    assert M.coherency(model, ONES, emap, target=0, explain_fn=explain) == pytest.approx(1.0)


def test_adcc_needs_a_way_to_recompute_the_map() -> None:
    model = ProbModel(frac_kept)
    with pytest.raises(ValueError, match="explain_fn"):
        M.adcc(model, ONES, A_MAP, target=0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        M.adcc(model, ONES, A_MAP, target=0, explain_fn=lambda m, t: np.ones((2, 2)))


def test_coherency_and_complexity_match_pytorch_grad_cam() -> None:
    from pytorch_grad_cam.metrics.arcc import Coherency, Complexity
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def channel_map(x: torch.Tensor) -> np.ndarray:
        m = x[:, 1] ** 2
        lo = m.amin(dim=(1, 2), keepdim=True)
        hi = m.amax(dim=(1, 2), keepdim=True)
        return ((m - lo) / (hi - lo)).numpy()

    model = small_cnn(seed=10)
    g = torch.Generator().manual_seed(11)
    x = torch.rand(3, 3, 8, 8, generator=g)
    cams = torch.rand(3, 8, 8, generator=g).numpy().astype(np.float32)
    targets = [0, 1, 2]
    theirs = Coherency()(x, cams, [ClassifierOutputTarget(t) for t in targets], model,
                         lambda input_tensor, targets: channel_map(input_tensor))
    ours = M.coherency(model, x, cams, targets, explain_fn=lambda m, t: channel_map(m[None])[0])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    np.testing.assert_allclose(M.complexity(cams), Complexity()(cams), atol=1e-6)


# -- localisation -----------------------------------------------------------------------------
def test_map_equal_to_mask_scores_one() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 1:7] = True
    emap = mask.astype(np.float32)
    assert M.energy_pointing_game(emap, mask) == 1.0
    assert M.saliency_score(emap, mask) == 1.0
    assert M.pointing_game(emap, mask) == 1.0
    loc = M.localisation(emap, mask)
    assert (loc.iou, loc.precision, loc.recall, loc.f1, loc.box_iou) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert loc.predicted_box == (1, 2, 6, 5)
    # the same region given as an inclusive box (x0, y0, x1, y1)
    assert M.energy_pointing_game(emap, (1, 2, 6, 5)) == 1.0
    assert M.localisation(emap, (1, 2, 6, 5)).iou == 1.0


def test_energy_hand_value() -> None:
    emap = np.full((4, 4), 0.25)
    emap[0, 0] = 1.0
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True
    # inside: 1 + 0.25 = 1.25; total: 1 + 15 * 0.25 = 4.75
    assert M.energy_pointing_game(emap, mask) == pytest.approx(1.25 / 4.75)
    assert M.energy_pointing_game(np.zeros((4, 4)), mask) == 0.0


def test_pointing_game_hit_miss_and_tolerance() -> None:
    emap = np.zeros((8, 8))
    emap[1, 6] = 1.0
    box = (0, 0, 3, 3)
    assert M.pointing_game(emap, box) == 0.0
    assert M.pointing_game(emap, (5, 0, 7, 2)) == 1.0
    # nearest box pixel (3, 1) is 3 pixels away
    assert M.pointing_game(emap, box, tolerance=2.9) == 0.0
    assert M.pointing_game(emap, box, tolerance=3.0) == 1.0
    assert M.pointing_game(np.zeros((8, 8)), box) == 0.0
    np.testing.assert_array_equal(M.pointing_game(np.stack([emap, emap]), [box, (5, 0, 7, 2)]), [0.0, 1.0])


def test_localisation_hand_drawn_8x8() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True                   # 16 object pixels, box (2, 2, 5, 5)
    emap = np.full((8, 8), 0.2)
    emap[0:4, 0:6] = 0.8                    # 24 predicted pixels at threshold 0.5
    loc = M.localisation(emap, mask, threshold=0.5)
    # overlap rows 2-3, cols 2-5 = 8 pixels
    assert loc.precision == pytest.approx(8 / 24)
    assert loc.recall == pytest.approx(8 / 16)
    assert loc.iou == pytest.approx(8 / (24 + 16 - 8))
    assert loc.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # predicted box (0, 0, 5, 3) vs (2, 2, 5, 5): 4 x 2 = 8 shared, 24 + 16 - 8 = 32
    assert loc.predicted_box == (0, 0, 5, 3)
    assert loc.box_iou == pytest.approx(8 / 32)
    assert M.localisation(emap, mask, threshold=0.9).f1 == 0.0
    assert M.localisation(emap, mask, threshold=0.9).box_iou == 0.0
    # relative threshold: 0.5 * max(0.4 * E) = 0.16 -> the same 24 pixels
    rel = M.localisation(emap * 0.4, mask, threshold=0.5, relative=True)
    assert rel.iou == pytest.approx(loc.iou)


def test_largest_component_box_on_two_blobs() -> None:
    emap = np.zeros((8, 8))
    emap[0:3, 0:3] = 1.0                    # 9 pixels, box (0, 0, 2, 2)
    emap[5:7, 5:7] = 1.0                    # 4 pixels
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:4, 1:4] = True
    loc = M.localisation(emap, mask, box=(1, 1, 3, 3))
    # (0..2) x (0..2) vs (1..3) x (1..3): 2 x 2 = 4 shared, 9 + 9 - 4 = 14
    assert loc.predicted_box == (0, 0, 2, 2)
    assert loc.box_iou == pytest.approx(4 / 14)
    # diagonal contact merges blobs with 8-connectivity, not with 4-connectivity
    diag = np.zeros((8, 8))
    diag[0:2, 0:2] = 1.0
    diag[2:5, 2:5] = 1.0
    assert M.localisation(diag, mask, connectivity=2).predicted_box == (0, 0, 4, 4)
    assert M.localisation(diag, mask, connectivity=1).predicted_box == (2, 2, 4, 4)


def test_localisation_bad_ground_truth() -> None:
    emap = np.ones((4, 4))
    with pytest.raises(ValueError, match="empty"):
        M.localisation(emap, np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="outside"):
        M.energy_pointing_game(emap, (10, 10, 12, 12))
    with pytest.raises(ValueError, match="x1 < x0"):
        M.energy_pointing_game(emap, (3, 0, 1, 2))
    with pytest.raises(ValueError, match="ground truth has shape"):
        M.energy_pointing_game(emap, np.ones((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="threshold"):
        M.localisation(emap, (0, 0, 1, 1), threshold=2.0)


def test_adcc_re_runs_the_method_of_a_result_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a result (``.method``, ``.params``, ``.layer``) the method is re-run on x ⊙ E."""
    import sys
    import types

    calls: list[dict] = []

    class FakeExplainer:
        def __init__(self, model: nn.Module, image: torch.Tensor, target: int | None = None,
                     layers: object = "auto", preprocess: Preprocess | None = None) -> None:
            calls.append({"image": image, "target": target, "layers": layers, "preprocess": preprocess})

        def gradcam(self, layer: str | None = None) -> SimpleNamespace:
            calls[-1]["layer"] = layer
            return SimpleNamespace(map=1.0 - emap)

    fake = types.ModuleType("camwidgets.core.explainer")
    fake.Explainer = FakeExplainer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "camwidgets.core.explainer", fake)
    model = ProbModel(lambda x: 0.1 + 0.8 * frac_kept(x))
    emap = np.zeros((4, 4))
    emap[:, :2] = 1.0
    result = SimpleNamespace(map=emap, method="gradcam", params={"layer": "layer4"}, layer="layer4")
    pre = Preprocess(size=4, resize=4, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    res = M.adcc(model, ONES, result, target=1, preprocess=pre)
    assert res.coherency == pytest.approx(0.0)  # the fake returns 1 - E
    (call,) = calls
    torch.testing.assert_close(call["image"], ONES * torch.from_numpy(emap).float())
    assert call["target"] == 1 and call["layers"] == ["layer4"] and call["layer"] == "layer4"
    # normalisation kept, geometry dropped: the masked image is already preprocessed
    assert call["preprocess"] == Preprocess(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))

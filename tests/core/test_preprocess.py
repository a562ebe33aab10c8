import numpy as np
import pytest
import torch
import torchvision as tv
import torchvision.transforms as T
import torchvision.transforms.functional as TF
import torchvision.transforms.v2 as V
from PIL import Image
from torchvision.transforms import InterpolationMode as IM
from torchvision.transforms._presets import ImageClassification  # what weights.transforms() returns

from camwidgets.core.image import load_image
from camwidgets.core.preprocess import Preprocess, as_preprocess


def test_normalize_roundtrip_and_values():
    p = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    img = torch.tensor([1.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    x = p.normalize(img)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 1.0, 0.5]))
    assert torch.allclose(p.denormalize(x), img)


def test_resize_shorter_side_then_centre_crop():
    p = Preprocess(size=4, resize=4)
    img = torch.zeros(3, 4, 8)
    img[:, :, 2:6] = 1.0  # the centre 4 columns
    out = p.geometry(img)
    assert out.shape == (3, 4, 4) and torch.all(out == 1.0)


def test_direct_resize_keeps_batches():
    p = Preprocess(size=(6, 5))
    assert p.geometry(torch.rand(2, 3, 12, 10)).shape == (2, 3, 6, 5)
    assert p(torch.rand(3, 6, 5)).shape == (3, 6, 5)


def test_bad_std_is_rejected():
    with pytest.raises(ValueError, match="std"):
        Preprocess(std=(1.0, 0.0, 1.0))


# --- torchvision's arithmetic, and converting torchvision transforms ----------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Shorter side below, at and above the resize; both orientations; odd crop margins; upscaling.
SIZES = [(300, 451), (500, 375), (231, 240), (224, 224), (100, 150), (517, 233)]


def _image(h, w, seed=0):
    """A photo-like image in [0, 1]: smooth colour blobs plus a little pixel noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (0.9 * x + 0.1 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def _transforms():
    return {
        "resnet50_v2_weights": tv.models.ResNet50_Weights.IMAGENET1K_V2.transforms(),
        "preset_bicubic": ImageClassification(crop_size=224, resize_size=256, interpolation=IM.BICUBIC),
        "v1_compose": T.Compose([T.Resize(256), T.CenterCrop(224), T.ConvertImageDtype(torch.float),
                                 T.Normalize(MEAN, STD)]),
        "v2_compose": V.Compose([V.ToImage(), V.ToDtype(torch.float32, scale=True), V.Resize(232),
                                 V.CenterCrop(224), V.Normalize(MEAN, STD)]),
        "resize_hw_then_padded_crop": V.Compose([V.Resize((200, 300)), V.CenterCrop(224), V.Normalize(MEAN, STD)]),
        "resize_hw_only": T.Compose([T.Resize((224, 224)), T.Normalize(MEAN, STD)]),
        "resize_short_side_only": T.Compose([T.Resize(160), T.Normalize([0.5], [0.25])]),
        "nearest": T.Compose([T.Resize(256, interpolation=IM.NEAREST), T.CenterCrop(225)]),
        "nearest_exact": V.Compose([V.Resize(99, interpolation=IM.NEAREST_EXACT), V.CenterCrop((101, 77))]),
        "no_antialias": torch.nn.Sequential(T.Resize(256, antialias=False), T.CenterCrop(224),
                                            T.Normalize(MEAN, STD)),
    }


def test_resize_truncates_the_longer_side_like_torchvision():
    # Before: the longer side was rounded (349 here) where torchvision truncates (348).
    img = _image(300, 451)
    out = Preprocess(resize=232).geometry(img)
    assert out.shape == (3, 232, 348)
    assert torch.equal(out, TF.resize(img, [232], antialias=True).clamp(0, 1))


def test_centre_crop_offsets_round_like_torchvision():
    # Before: the offset was (7 - 4) // 2 = 1; torchvision takes round(1.5) = 2.
    img = torch.arange(3 * 4 * 7, dtype=torch.float32).reshape(3, 4, 7) / 84
    assert torch.equal(Preprocess(size=4, resize=4).geometry(img), TF.center_crop(img, [4, 4]))


def test_centre_crop_larger_than_the_image_is_zero_padded():
    # Before: resize=(H, W) was not accepted, and a crop larger than the image returned a smaller image.
    img = _image(120, 90)
    p = Preprocess(size=(224, 224), resize=(200, 300))
    want = TF.center_crop(TF.resize(img, [200, 300], antialias=True), [224, 224])
    assert torch.equal(p.geometry(img), want.clamp(0, 1))
    assert float(p.geometry(img)[:, :12].abs().max()) == 0.0


@pytest.mark.parametrize("name", list(_transforms()))
def test_converted_transform_matches_torchvision_on_tensors(name):
    # camwidgets works on float tensors in [0, 1], so this is the case that must agree: the
    # same F.interpolate calls and the same crop, so up to float rounding (observed: 0).
    transform = _transforms()[name]
    p = Preprocess.from_torchvision(transform)
    assert as_preprocess(transform) == p
    for i, (h, w) in enumerate(SIZES):
        img = _image(h, w, seed=i)
        want = transform(img)
        got = p(img)
        assert got.shape == want.shape, (h, w)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"{name} on a {h}x{w} image")


def test_weights_transforms_become_the_expected_preprocess():
    p = as_preprocess(tv.models.ResNet50_Weights.IMAGENET1K_V2.transforms())
    assert p == Preprocess(size=224, resize=232, mean=MEAN, std=STD, interpolation="bilinear", antialias=True)
    p = as_preprocess(ImageClassification(crop_size=224, interpolation=IM.BICUBIC, antialias=None))
    assert (p.interpolation, p.antialias, p.resize) == ("bicubic", False, 256)  # None: no antialias on tensors


def test_bicubic_overshoot_is_clipped_to_the_pixel_range():
    # A hard edge upscaled with bicubic overshoots [0, 1]. torchvision keeps the overshoot on
    # float tensors; Preprocess's pixel image stays in [0, 1] (as PIL's 8-bit output does), so
    # the model input is torchvision's with its pixels clipped -- and equal everywhere else.
    img = torch.zeros(3, 40, 60)
    img[:, :, 30:] = 1.0
    transform = ImageClassification(crop_size=96, resize_size=100, interpolation=IM.BICUBIC)
    p = Preprocess.from_torchvision(transform)
    pixels = TF.center_crop(TF.resize(img, [100], interpolation=IM.BICUBIC, antialias=True), [96, 96])
    assert float(pixels.min()) < -0.01 and float(pixels.max()) > 1.01  # it does overshoot
    torch.testing.assert_close(p(img), TF.normalize(pixels.clamp(0, 1), list(MEAN), list(STD)), rtol=0, atol=1e-6)
    inside = ((pixels >= 0) & (pixels <= 1)).all(dim=0)
    torch.testing.assert_close(p(img)[:, inside], transform(img)[:, inside], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet50_v2_weights", "preset_bicubic"])
def test_converted_transform_on_pil_images_within_one_grey_level(name):
    # The PIL path: torchvision resizes the 8-bit PIL image with PIL (fixed-point filter
    # weights, output rounded to uint8); camwidgets loads it as floats and resizes the tensor.
    # The two agree to about one grey level (max 1.08/255 observed), 0.3/255 on average.
    transform = _transforms()[name]
    p = Preprocess.from_torchvision(transform)
    for i, (h, w) in enumerate(SIZES):
        arr = (_image(h, w, seed=i).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pil = Image.fromarray(arr)
        diff = (p.denormalize(transform(pil)) - p.geometry(load_image(pil))).abs() * 255
        assert float(diff.max()) <= 1.5 and float(diff.mean()) <= 0.5, (h, w, float(diff.max()))


@pytest.mark.parametrize("transform, match", [
    (T.RandomResizedCrop(224), "RandomResizedCrop"),
    (T.Compose([T.Resize(256), T.ColorJitter(0.4), T.ToTensor()]), "ColorJitter"),
    (T.Compose([T.Resize(256, max_size=400), T.ToTensor()]), "max_size"),
    (T.Compose([T.Lambda(lambda x: x), T.ToTensor()]), "Lambda"),
    (T.Compose([T.CenterCrop(224), T.ToTensor()]), "CenterCrop.*no Resize"),
    (T.Compose([T.ToTensor(), T.Normalize(MEAN, STD), T.Resize(256)]), "after Normalize"),
    (T.Compose([T.Resize(256, interpolation=IM.LANCZOS)]), "lanczos"),
    (V.Compose([V.ToImage(), V.ToDtype(torch.float32), V.Resize(256)]), "scale=False"),
    (T.Compose([T.Resize(256), T.Resize(224)]), "another Resize"),
    (V.Compose([V.RandomHorizontalFlip(), V.Resize(224)]), "RandomHorizontalFlip"),
])
def test_transforms_that_cannot_be_reproduced_are_refused(transform, match):
    with pytest.raises(ValueError, match=match):
        as_preprocess(transform)


def test_as_preprocess_passes_none_and_preprocess_and_refuses_the_rest():
    assert as_preprocess(None) is None
    p = Preprocess(size=8)
    assert as_preprocess(p) is p
    for bad in ("resnet50", {"size": 224}, lambda x: x, torch.nn.Linear(2, 2)):
        with pytest.raises(ValueError, match=r"got a .*camwidgets.Preprocess\(size=.*torchvision transform"):
            as_preprocess(bad)


def test_interpolation_and_sizes_are_checked():
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(interpolation="lanczos")
    with pytest.raises(ValueError, match="positive"):
        Preprocess(size=0)
    assert Preprocess(resize=[232]).resize == 232

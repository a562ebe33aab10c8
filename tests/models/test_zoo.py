import urllib.error

import pytest
import torch
import torchvision

from camwidgets.models import WeightsUnavailableError, classification_models, load_torchvision


def test_random_weights_give_model_preprocess_and_imagenet_classes():
    model, pre, classes = load_torchvision("resnet18")
    assert not model.training
    assert len(classes) == 1000 and classes[0] == "tench"
    assert pre.size == (224, 224) and pre.resize == 256
    x = pre(torch.rand(3, 300, 400))
    assert x.shape == (3, 224, 224)
    with torch.inference_mode():
        assert model(x[None]).shape == (1, 1000)


def test_preprocess_matches_the_weights_transform():
    weights = torchvision.models.get_model_weights("resnet50").DEFAULT
    _, pre, _ = load_torchvision("resnet50")
    img = torch.rand(3, 240, 320)
    ref = weights.transforms()(img)
    assert torch.allclose(pre(img), ref, atol=1e-5)


def test_local_weights_file_is_loaded(tmp_path):
    model, _, _ = load_torchvision("mobilenet_v3_small")
    path = tmp_path / "mnv3.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    again, _, _ = load_torchvision("mobilenet_v3_small", weights=path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_local_file_for_another_architecture_is_a_clear_error(tmp_path):
    model, _, _ = load_torchvision("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        load_torchvision("mobilenet_v3_small", weights=str(path))
    with pytest.raises(ValueError, match="does not exist"):
        load_torchvision("resnet18", weights=str(tmp_path / "missing.pth"))


def test_offline_download_raises_error_that_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: a download is needed

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network, raising=False)
    with pytest.raises(WeightsUnavailableError) as info:
        load_torchvision("resnet18", weights="DEFAULT")
    msg = str(info.value)
    assert "weights=None" in msg and "resnet18-f37072fd.pth" in msg and "offline" in msg


def test_unknown_names_are_clear_errors():
    assert "resnet50" in classification_models()
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        load_torchvision("resnt18")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        load_torchvision("resnet18", weights="IMAGENET9K")

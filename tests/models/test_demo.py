import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from camwidgets.datasets import CLASSES, Shapes
from camwidgets.datasets.train_demo import EVAL_SEED, TRAIN_MULTI_SEED, TRAIN_SEED, evaluate_accuracy
from camwidgets.models import DemoNet, load_demo_model
from camwidgets.models import demo as demo_module
from camwidgets.models.demo import BasicBlock


def test_architecture_is_a_small_torchvision_style_resnet():
    model, pre, classes = load_demo_model()
    assert classes == list(CLASSES)
    assert not model.training
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) >= 8
    assert all(len(getattr(model, f"layer{i}")) >= 2 for i in range(1, 5))
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and isinstance(model.fc, nn.Linear)
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert pre.size == (128, 128)


def test_shipped_weights_load_with_weights_only_and_stay_small():
    from importlib import resources

    path = resources.files("camwidgets").joinpath("data", "demo_model.pt")
    with resources.as_file(path) as p:
        assert p.stat().st_size <= 5 * 1024 * 1024
        state = torch.load(p, weights_only=True)
    DemoNet().load_state_dict(state)


def test_shipped_weights_are_accurate_on_fresh_items():
    # Seed 11 is used by no training or reporting run (see train_demo's seed list).
    assert 11 not in (TRAIN_SEED, TRAIN_MULTI_SEED, EVAL_SEED)
    model, _, _ = load_demo_model()
    acc = evaluate_accuracy(model, Shapes(400, seed=11))
    assert acc >= 0.95, acc


def test_model_is_confident_on_a_bundled_sample():
    from camwidgets.datasets import load_sample

    model, pre, classes = load_demo_model()
    sample = load_sample("shapes-star")
    with torch.inference_mode():
        probs = model(pre(sample["image"])[None]).softmax(-1)[0]
    assert classes[int(probs.argmax())] == "star"


def _shipped_state() -> dict[str, torch.Tensor]:
    from importlib import resources

    with resources.as_file(resources.files("camwidgets").joinpath("data", "demo_model.pt")) as p:
        return torch.load(p, map_location="cpu", weights_only=True)


def _with_torchvision_blocks(monkeypatch: pytest.MonkeyPatch) -> DemoNet:
    """The demo model as it was built before it had its own block: with torchvision's ``BasicBlock``."""
    tv_resnet = pytest.importorskip("torchvision.models.resnet")
    with monkeypatch.context() as m:
        m.setattr(demo_module, "BasicBlock", tv_resnet.BasicBlock)
        model = DemoNet()
    assert all(type(b) is tv_resnet.BasicBlock for b in (model.layer1[0], model.layer4[1]))
    return model


def test_own_basic_block_matches_torchvision_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our BasicBlock has torchvision's submodules, state-dict keys, initialisation and output."""
    torch.manual_seed(0)
    ours = DemoNet()
    torch.manual_seed(0)
    theirs = _with_torchvision_blocks(monkeypatch)
    assert all(type(b) is BasicBlock for b in (ours.layer1[0], ours.layer4[1]))
    assert BasicBlock.expansion == 1
    assert list(ours.layer2[0]._modules) == ["conv1", "bn1", "relu", "conv2", "bn2", "downsample"]
    for a, b in zip(ours.modules(), theirs.modules(), strict=True):
        assert list(a._modules) == list(b._modules)
        assert getattr(a, "stride", None) == getattr(b, "stride", None)
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    # The same random initialisation (retraining with a seed gives the same model as before).
    s_ours, s_theirs = ours.state_dict(), theirs.state_dict()
    assert list(s_ours) == list(s_theirs)
    assert all(torch.equal(s_ours[k], s_theirs[k]) for k in s_ours)

    state = _shipped_state()
    assert list(state) == list(s_ours)
    ours.load_state_dict(state, strict=True)
    theirs.load_state_dict(state, strict=True)
    ours.eval()
    theirs.eval()
    pre = demo_module.demo_preprocess()
    ds = Shapes(8, seed=5)
    x = torch.stack([pre(ds[i]["image"]) for i in range(len(ds))])
    with torch.inference_mode():
        out_ours, out_theirs = ours(x), theirs(x)
    assert out_ours.shape == (8, len(CLASSES))
    assert torch.equal(out_ours, out_theirs)
    loaded, _, _ = load_demo_model()
    with torch.inference_mode():
        assert torch.equal(loaded(x), out_theirs)


#: The demo model's candidate layers (I-CAM's layer list) and default layer, as with torchvision's block.
DEMO_LAYERS = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]


def test_demo_layers_are_those_of_the_torchvision_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from camwidgets.core.layers import candidate_layers, default_layer

    model, _, _ = load_demo_model()
    assert candidate_layers(model) == DEMO_LAYERS
    assert default_layer(candidate_layers(model)) == "layer4.1"
    assert candidate_layers(_with_torchvision_blocks(monkeypatch)) == DEMO_LAYERS


def test_demo_layers_without_torchvision() -> None:
    """In a process without torchvision the demo model's blocks are still recognised (default layer,
    I-CAM's layers, the static class count), and nothing imports torchvision."""
    code = (
        "import json, sys\n"
        "import camwidgets\n"
        "from camwidgets.core.explainer import _static_num_classes\n"
        "from camwidgets.datasets import load_sample\n"
        "from camwidgets.models import load_demo_model\n"
        "model, pre, classes = load_demo_model()\n"
        "ex = camwidgets.Explainer(model, load_sample('shapes-star')['image'], preprocess=pre)\n"
        "r = ex.explain('icam')\n"
        "print(json.dumps({'candidates': list(ex.candidate_layers), 'default': ex.default_layer,\n"
        "                  'icam': list(r.candidate_layers), 'num_classes': _static_num_classes(model),\n"
        "                  'torchvision': 'torchvision' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"candidates": DEMO_LAYERS, "default": "layer4.1", "icam": DEMO_LAYERS,
                   "num_classes": len(CLASSES), "torchvision": False}

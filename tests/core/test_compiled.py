"""Compiled models: hooks and gradients go through the original modules, names are the original's.

A ``torch.compile`` graph does not keep a forward hook's output on the autograd path (the
``aot_eager`` and ``inductor`` backends: every layer gradient came back ``None``, which the
capture used to turn into zeros, so every gradient CAM was an all-zero map), and a graph
traced once ignores hooks registered later (the ``eager`` backend: only the layers hooked
at the first call were ever recorded). ``aot_eager`` reproduces the first without a C
compiler and in about a second; ``inductor`` behaves the same but takes minutes to compile
on a small CPU, so it is not run here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from camwidgets.core._hooks import capture, forward_hooks, model_lock, unwrap_model
from camwidgets.core.explainer import Explainer
from camwidgets.core.layers import candidate_layers, resolve_layer, resolve_layers
from camwidgets.datasets.shapes import Shapes
from camwidgets.models.demo import DemoNet, load_demo_model

pytestmark = pytest.mark.usefixtures("single_thread", "fresh_dynamo")

LAYERS = ["layer1.0", "layer3.1", "layer4.0", "layer4.1"]


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches (and its per-function recompile limit) are process-wide: reset around each test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def _assert_same_capture(cap, ref, names: list[str], prefix: str = "") -> None:
    torch.testing.assert_close(cap.logits, ref.logits)
    torch.testing.assert_close(cap.input_grad, ref.input_grad)
    for n in names:
        torch.testing.assert_close(cap.activations[prefix + n], ref.activations[n])
        torch.testing.assert_close(cap.gradients[prefix + n], ref.gradients[n])
        assert cap.gradients[prefix + n].abs().sum() > 0


@pytest.mark.parametrize("backend", ["aot_eager", "eager"])
def test_compiled_capture_equals_uncompiled(demo: nn.Module, backend: str) -> None:
    x = torch.rand(2, 3, 32, 32)
    ref = capture(demo, x, LAYERS, [1, 4], input_grad=True)
    compiled = torch.compile(demo, backend=backend)
    # Two passes hooking one layer, then one hooking four: the "eager" backend's graph kept
    # running the first hook only (the other three layers were missing from the capture).
    for _ in range(2):
        first = capture(compiled, x, ["layer4.1"], [1, 4], input_grad=True)
    cap = capture(compiled, x, LAYERS, [1, 4], input_grad=True)
    _assert_same_capture(first, ref, ["layer4.1"])
    _assert_same_capture(cap, ref, LAYERS)
    # The wrapper's named_modules() names ("_orig_mod." prefix) are accepted too, keys as written.
    cap = capture(compiled, x, ["_orig_mod." + n for n in LAYERS], [1, 4], input_grad=True)
    _assert_same_capture(cap, ref, LAYERS, prefix="_orig_mod.")
    assert _no_hooks(compiled)


def test_in_place_compile_and_compiled_submodule(demo: nn.Module) -> None:
    x = torch.rand(1, 3, 32, 32)
    ref = capture(demo, x, ["layer3.1", "layer4.1"], 2, input_grad=True)

    demo.compile(backend="aot_eager")  # nn.Module.compile(): the module itself, compiled in place
    cap = capture(demo, x, ["layer3.1", "layer4.1"], 2, input_grad=True)
    _assert_same_capture(cap, ref, ["layer3.1", "layer4.1"])
    assert demo._compiled_call_impl is not None  # still compiled afterwards

    torch.manual_seed(0)
    part = DemoNet().eval()
    part.layer4 = torch.compile(part.layer4, backend="aot_eager")  # a compiled submodule
    compiled_layer4 = part.layer4
    part(x)
    cap = capture(part, x, ["layer3.1", "layer4._orig_mod.1"], 2, input_grad=True)
    torch.testing.assert_close(cap.gradients["layer4._orig_mod.1"], ref.gradients["layer4.1"])
    torch.testing.assert_close(cap.gradients["layer3.1"], ref.gradients["layer3.1"])
    assert part.layer4 is compiled_layer4  # put back
    assert _no_hooks(part)


def test_unswapped_on_error(demo: nn.Module) -> None:
    demo.layer2 = torch.compile(demo.layer2, backend="aot_eager")
    wrapper = demo.layer2
    demo.compile(backend="aot_eager")
    impl = demo._compiled_call_impl
    with pytest.raises(ValueError, match="out of range"):
        capture(demo, torch.rand(1, 3, 16, 16), ["layer4.1"], 99)
    assert demo.layer2 is wrapper and demo._compiled_call_impl is impl and _no_hooks(demo)


def test_layer_names_of_a_compiled_model(demo: nn.Module) -> None:
    compiled = torch.compile(demo, backend="aot_eager")
    assert unwrap_model(compiled) is demo and unwrap_model(demo) is demo
    assert candidate_layers(compiled) == candidate_layers(demo) == [
        f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert resolve_layer(compiled, "layer4.1") == "layer4.1"
    assert resolve_layer(compiled, "_orig_mod.layer4.1") == "layer4.1"
    assert resolve_layer(compiled, demo.layer3[0]) == "layer3.0"
    assert resolve_layers(compiled, ["_orig_mod.layer4.1", demo.layer4[1]]) == ["layer4.1"]
    with pytest.raises(ValueError, match="no layer named 'layer9'"):
        resolve_layer(compiled, "layer9")


def test_wrapper_and_original_share_one_gate(demo: nn.Module) -> None:
    import threading

    compiled = torch.compile(demo, backend="aot_eager")
    entered = threading.Event()

    def other() -> None:
        with model_lock(compiled):
            entered.set()

    with model_lock(demo):
        t = threading.Thread(target=other, daemon=True)
        t.start()
        assert not entered.wait(0.2)  # the wrapper's lock is the original's
    t.join(5)
    assert entered.is_set()


def test_forward_hooks_on_a_compiled_model(demo: nn.Module) -> None:
    compiled = torch.compile(demo, backend="aot_eager")
    with forward_hooks(compiled, ["layer1.0"]) as store:
        unwrap_model(compiled)(torch.rand(1, 3, 16, 16))
        assert store["layer1.0"].shape == (1, 16, 8, 8)
    assert _no_hooks(demo)


def test_gradcam_of_compiled_demo_model_equals_uncompiled() -> None:
    model, preprocess, _ = load_demo_model()
    image = Shapes(1, seed=7)[0]["image"]
    ref = Explainer(model, image, preprocess=preprocess)
    compiled = torch.compile(model, backend="aot_eager")
    exp = Explainer(compiled, image, preprocess=preprocess)
    assert exp.candidate_layers == ref.candidate_layers  # "layer4.1", not "_orig_mod.layer4.1"
    assert exp.target == ref.target
    for layer in ("layer4.1", "layer3.1"):
        m, m_ref = exp.gradcam(layer=layer).map, ref.gradcam(layer=layer).map
        assert float(m_ref.max()) == 1.0 and float(m.max()) == 1.0  # not the all-zero map of before
        assert abs(m - m_ref).max() < 1e-5

"""The method registry: entries are complete, Explainer runs every one, parameters are checked first."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import camwidgets
from camwidgets.core import methods as registry
from camwidgets.core.explainer import Explainer

from .conftest import ForwardCounter


def test_public_listing_has_every_entry_with_its_fields() -> None:
    entries = camwidgets.methods()
    assert [m.name for m in entries] == list(registry.REGISTRY)
    assert len({m.name for m in entries}) == len(entries)
    for m in entries:
        assert m.label and m.summary and m.formula and m.reference and m.implementation and m.stage
        assert m.family in registry.FAMILIES
        assert all(isinstance(p, registry.Param) for p in m.params)
        compute_params = [p for p in inspect.signature(m.compute).parameters if p != "exp"]
        assert sorted(compute_params) == sorted(m.param_names)
        for p in m.params:  # every default is valid for its own parameter, and so is a fast default
            assert p.kind == "layer" or p.validate(p.default, m.name) == p.default
            assert p.fast_default is None or p.validate(p.fast_default, m.name) == p.fast_default


def test_family_filter_and_unknown_names() -> None:
    assert set(registry.names("gradient")) >= {"gradcam", "gradcampp", "xgradcam", "layercam"}
    assert set(registry.names("region")) >= {"scorecam", "ablationcam"}
    with pytest.raises(ValueError, match="Unknown method 'nope'; choose from gradcam"):
        registry.get("nope")
    with pytest.raises(ValueError, match="Unknown method family"):
        registry.methods("gradients")


def test_fusion_choices_follow_the_families() -> None:
    fusion = registry.get("fusioncam")
    assert fusion.param("region").allowed() == registry.names("region")
    assert fusion.param("gradient").allowed() == registry.names("gradient")
    assert registry.get("unioncam").param("region").allowed() == registry.names("region")


@pytest.mark.parametrize(("kind", "value", "ok"), [
    ("float", 0.5, 0.5), ("float", 1, 1.0), ("float", 1.5, None), ("float", float("nan"), None),
    ("float", "0.5", None), ("float", True, None), ("int", 3, 3), ("int", 3.0, 3), ("int", 3.5, None),
])
def test_param_validation(kind: str, value: object, ok: object) -> None:
    p = registry.Param("x", kind, 0, low=0, high=10 if kind == "int" else 1)  # type: ignore[arg-type]
    if ok is None:
        with pytest.raises(ValueError, match=r"m: x must be (float|int) in \[0, (1|10)\]"):
            p.validate(value, "m")
    else:
        assert p.validate(value, "m") == ok and type(p.validate(value, "m")) is type(ok)


def test_resolve_fills_defaults_and_refuses_unknown_parameters() -> None:
    icam = registry.get("icam")
    assert icam.resolve({"alpha": 0.2}) == {**icam.defaults, "alpha": 0.2}
    with pytest.raises(ValueError, match=r"icam has no parameter\(s\) \['thresh'\]"):
        icam.resolve({"thresh": 0.9})
    with pytest.raises(ValueError, match=r"icam: threshold must be float in \[0.5, 1\], got 0.3"):
        icam.resolve({"threshold": 0.3})
    with pytest.raises(ValueError, match=r"sigma must be float in \(0, inf\)"):
        icam.resolve({"sigma": 0})


@pytest.fixture(scope="module")
def exp() -> Explainer:
    model, pre, _ = camwidgets.load_demo_model()
    return Explainer(model, camwidgets.load_sample("shapes-star")["image"], preprocess=pre)


#: Cheaper settings for the methods whose defaults run many passes (the registry test checks wiring, not speed).
FAST = {"icam": {"n": 2}, "sscam": {"samples": 2}, "iscam": {"steps": 2}, "smoothgradcampp": {"samples": 2},
        "lime": {"n_samples": 32}, "kernelshap": {"n_samples": 32}}


def test_every_method_runs_through_explain_and_by_name(exp: Explainer) -> None:
    for m in registry.methods():
        params = {k: v for k, v in FAST.get(m.name, {}).items() if k in m.param_names}
        r = exp.explain(m.name, **params)
        assert r.method == m.name and r.target == exp.target
        assert r.map.shape == exp.size and np.isfinite(r.map).all()
        assert r.map.min() >= 0 and r.map.max() <= 1
        assert getattr(exp, m.name)(**params) is r  # the same cached object
        assert m.name in dir(exp)
        assert getattr(exp, m.name).__doc__.startswith(m.label)


def test_positional_arguments_follow_the_entry_order(exp: Explainer) -> None:
    assert exp.gradcam("layer3.1") is exp.explain("gradcam", layer="layer3.1")
    assert exp.fusioncam(20) is exp.explain("fusioncam", theta=20)
    with pytest.raises(TypeError, match="multiple values for argument 'theta'"):
        exp.fusioncam(20, theta=30)


def test_bad_parameters_fail_before_any_model_pass(exp: Explainer) -> None:
    counter = ForwardCounter(exp.model)
    try:
        for name, params in [("scorecam", {"batch_size": 0}), ("fusioncam", {"region": "gradcam"}),
                             ("unioncam", {"theta": 101}), ("icam", {"alpha": -0.1}),
                             ("scorecam", {"variant": "pape"}), ("gradcam", {"layr": "layer4"})]:
            with pytest.raises(ValueError, match=name):
                exp.explain(name, **params)
        with pytest.raises(ValueError, match="Unknown method"):
            camwidgets.core.explain_batch(exp.model, torch.rand(2, 3, 32, 32), "gradcamm")
    finally:
        counter.remove()
    assert counter.calls == 0


def test_fusion_accepts_any_region_method(exp: Explainer) -> None:
    for region in registry.names("region"):
        if FAST.get(region):  # Fusion-CAM takes the region method's defaults: skip the slow ones here
            continue
        f = exp.fusioncam(region=region)
        np.testing.assert_array_equal(f.region_map, exp.explain(region).map)
        u = exp.unioncam(region=region)
        np.testing.assert_array_equal(u.region_map, exp.explain(region).map)


def test_unknown_attribute_names_the_methods(exp: Explainer) -> None:
    with pytest.raises(AttributeError, match="the methods are gradcam"):
        exp.gradcamm  # noqa: B018


def test_no_other_list_of_method_names() -> None:
    # Method names appear as string literals only in the registry's package, except where a
    # name means something else or picks a method-specific detail pane (listed with the reason).
    import ast
    from pathlib import Path

    allowed = {
        ("core/__init__.py", "icam"),            # the submodule camwidgets.core.icam
        ("core/region.py", "gradcam"),           # Score-CAM's variant named after pytorch-grad-cam
        ("core/explainer.py", "gradcam"),        # explain_batch's default method
        ("widgets/panes.py", "icam"),            # I-CAM's layer / perturbation detail panes
        ("widgets/panes.py", "fusioncam"),       # Fusion-CAM's component detail pane
    }
    root = Path(camwidgets.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("core/methods/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in registry.REGISTRY:
                found.add((rel, node.value))
    assert found <= allowed, sorted(found - allowed)

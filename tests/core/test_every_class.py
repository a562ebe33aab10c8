"""Every method on every class: no map is all zero unless the method's own evidence is exactly zero.

The demo model (its trained weights) explains every class of three small Shapes images
with every CAM method, I-CAM with each bias. A map may be all zero only where the
method's evidence is: for the single-layer methods, the raw map after their ReLU; for
I-CAM, every kept layer's raw map; for UnionCAM and Fusion-CAM, every input map that
enters the chosen output with a positive weight. Each such case is checked, so the test
cannot pass by skipping zeros. UnionCAM's map of a non-predicted class must also agree
with (correlate positively with) its region map: without the clamp of its contributions
at 0 it was the region map's inverse.

The images are 64 x 64 and the model runs at that size (it has a global average pool),
so the whole module takes a few seconds on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest
import torch

import camwidgets
from camwidgets.core import icam
from camwidgets.core._hooks import capture
from camwidgets.core.fusion import union_weights
from camwidgets.core.preprocess import Preprocess
from camwidgets.models.demo import DEMO_MEAN, DEMO_STD

SIZE = 64
N_IMAGES = 3
#: The single-layer methods: map = normalise(upsample(raw)), raw = ReLU(...) at feature resolution.
SINGLE_LAYER = ("gradcam", "gradcampp", "xgradcam", "layercam", "scorecam", "ablationcam")
BIASES = ("channel", "spatial", "none")


def _is_zero(a: Any) -> bool:
    return not bool(np.any(np.asarray(a) != 0))


def _corr(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(x, y)[0, 1])


@pytest.fixture(scope="module")
def explained() -> Iterator[dict[str, Any]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _, classes = camwidgets.load_demo_model()
        pre = Preprocess(size=SIZE, resize=SIZE, mean=DEMO_MEAN, std=DEMO_STD)
        images = [camwidgets.datasets.Shapes(N_IMAGES, seed=0, size=SIZE)[i]["image"] for i in range(N_IMAGES)]
        results: dict[tuple[int, int, str], Any] = {}
        predicted: list[int] = []
        probs: list[np.ndarray] = []
        for i, img in enumerate(images):
            for c in range(len(classes)):
                exp = camwidgets.Explainer(model, img, target=c, preprocess=pre)
                for name in (*SINGLE_LAYER, "unioncam", "fusioncam"):
                    results[i, c, name] = getattr(exp, name)()
                for bias in BIASES:
                    results[i, c, f"icam-{bias}"] = exp.icam(bias=bias)
            probs.append(np.asarray(exp.probabilities, dtype=np.float64))
            predicted.append(int(np.argmax(probs[-1])))
        yield {"model": model, "pre": pre, "images": images, "classes": classes,
               "results": results, "predicted": predicted, "probabilities": probs}
    finally:
        torch.set_num_threads(before)


def _icam_evidence_is_zero(data: dict[str, Any], i: int, c: int, bias: icam.Bias, layers: tuple[str, ...]) -> bool:
    """Every kept layer's raw I-CAM map (recomputed from a fresh capture) is exactly zero."""
    x = data["pre"](data["images"][i])[None]
    cap = capture(data["model"], x, list(layers), c)
    logits = cap.logits[0].double()
    y, s_c = float(torch.softmax(logits, 0)[c]), float(logits[c])
    return all(_is_zero(icam.icam_layer_map(cap.activations[ln][0], cap.gradients[ln][0], y, s_c, bias))
               for ln in layers)


def test_every_class_of_every_sample_is_explained(explained: dict[str, Any]) -> None:
    n_classes = len(explained["classes"])
    methods = {name for (_, _, name) in explained["results"]}
    assert methods == {*SINGLE_LAYER, "unioncam", "fusioncam", *(f"icam-{b}" for b in BIASES)}
    assert len(explained["results"]) == N_IMAGES * n_classes * len(methods)


def test_no_map_is_zero_unless_its_evidence_is(explained: dict[str, Any]) -> None:
    zero_with_evidence: list[tuple[int, int, str]] = []  # legitimate zeros, for the record
    bad: list[tuple[int, int, str]] = []
    for (i, c, name), r in explained["results"].items():
        if not _is_zero(r.map):
            continue
        if name in SINGLE_LAYER:
            ok = _is_zero(r.raw)  # raw = ReLU(sum_k w_k A_k): its argument is <= 0 everywhere
        elif name.startswith("icam-"):
            bias = cast(icam.Bias, name.removeprefix("icam-"))
            ok = _icam_evidence_is_zero(explained, i, c, bias, tuple(r.kept_layers))
        elif name == "unioncam":
            if r.choice == "region":
                ok = _is_zero(r.region_map)
            else:
                wd, wr = union_weights(r.beta_gradient, r.beta_region)
                ok = (wd == 0 or _is_zero(r.gradient_map)) and (wr == 0 or _is_zero(r.region_map))
        else:  # fusioncam: F is a pixel-wise mix of L1 = b_gr' L_gr and L2 = b_r'' L_r
            b = r.betas
            ok = _is_zero(b["combined"] * np.asarray(r.combined_map)) and _is_zero(
                b["region_final"] * np.asarray(r.region_map))
        (zero_with_evidence if ok else bad).append((i, c, name))
    assert not bad, f"all-zero maps whose evidence is not zero (image, class, method): {bad}"
    # I-CAM with a bias has no ReLU: on this model no class gets an all-zero map.
    assert not [z for z in zero_with_evidence if z[2] in ("icam-channel", "icam-spatial")]


def test_icam_channel_bias_equals_none_where_every_weight_is_non_negative(explained: dict[str, Any]) -> None:
    """Bias "channel" is normalise(sum_k w_k A_k) and "none" normalise(ReLU(...)).

    With non-negative activations, ``w >= 0`` whenever ``f''`` and ``f'''`` are both
    positive, i.e. ``Y_c < (3 - sqrt 3) / 6 ~ 0.21``: then the two maps are equal. (For
    ``Y_c > 0.5``, ``f'' < 0`` and some ``w`` may be negative; test_icam.py checks that
    the maps then differ.)
    """
    res = explained["results"]
    y_max = (3 - 3**0.5) / 6
    equal = 0
    for i in range(N_IMAGES):
        for c, y in enumerate(explained["probabilities"][i]):
            ch, no = np.asarray(res[i, c, "icam-channel"].map), np.asarray(res[i, c, "icam-none"].map)
            assert ch.max() == 1.0
            if y < y_max:
                np.testing.assert_allclose(ch, no, atol=1e-5)
                equal += 1
    assert equal >= 10


def test_unioncam_of_a_non_predicted_class_agrees_with_its_region_map(explained: dict[str, Any]) -> None:
    checked = 0
    for (i, c, name), r in explained["results"].items():
        if name != "unioncam" or c == explained["predicted"][i] or np.ptp(np.asarray(r.region_map)) == 0:
            continue
        assert _corr(r.map, r.region_map) > 0, (i, c, r.choice, r.beta_gradient, r.beta_region)
        checked += 1
    assert checked >= 10


#: The other registered methods, bar the sampling ones (minutes per class on a CPU): every class too.
OTHERS = tuple(m.name for m in camwidgets.methods()
               if m.name not in (*SINGLE_LAYER, "unioncam", "fusioncam", "icam")
               and m.family != "perturbation" and not any(p.name in ("samples", "steps") for p in m.params))


def test_the_other_methods_give_no_zero_map_unless_their_raw_map_is_constant(explained: dict[str, Any]) -> None:
    assert {"cam", "hirescam", "eigencam", "eigengradcam", "reciprocam", "groupcam"} <= set(OTHERS)
    bad: list[tuple[int, str]] = []
    img = explained["images"][0]
    for c in range(len(explained["classes"])):
        exp = camwidgets.Explainer(explained["model"], img, target=c, preprocess=explained["pre"])
        for name in OTHERS:
            r = exp.explain(name)
            raw = np.asarray(r.raw, dtype=np.float64)
            if _is_zero(r.map) and not np.all(raw == raw.flat[0]):
                bad.append((c, name))
    assert not bad, f"all-zero maps with a non-constant raw map (class, method): {bad}"

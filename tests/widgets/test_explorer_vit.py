"""The explorer on a vision transformer: token grids found by the core, every pane drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_32()
    # torchvision starts the head at zero: every gradient would be 0 with random weights
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval()


def test_explorer_opens_on_vit_b_32_with_every_pane(vit):
    from camwidgets.widgets import CAMExplorer

    pre = torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1.transforms()
    hooks_before = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in vit.modules())
    ex = CAMExplorer(model=vit, image="chelsea", preprocess=pre, metrics=False, background=False)
    try:
        assert ex.message == ""
        # 768 channels at the default layer (the last block's first LayerNorm): the fast region map
        assert ex.controller.channels == 768
        assert ex.auto_params[("fusioncam", "region")] == "reciprocam"
        assert set(ex.results) == {"gradcam", "layercam", "fusioncam", "icam"}
        for m, r in ex.results.items():
            assert r.map.shape == (224, 224) and np.ptp(r.map) > 0, m
            assert np.array_equal(np.asarray(ex.figures[m].data[1].z), r.map)
        icam = ex.results["icam"]
        assert len(icam.candidate_layers) == 12 and icam.candidate_layers[-1] == "encoder.layers.encoder_layer_11.ln_1"
        assert {"icam_scores", "icam_maps", "perturbations", "fusion"} <= set(ex.figures)
        assert len(ex.figures["icam_maps"].data) == 12
        ex.threshold = 0.6  # fewer blocks, from cached scores
        assert len(ex.results["icam"].kept_layers) < len(icam.kept_layers)
    finally:
        ex.close()
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in vit.modules()) == hooks_before
    assert not vit.training

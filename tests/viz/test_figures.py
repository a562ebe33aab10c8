import numpy as np
import pytest
import torch

from camwidgets.viz import image_figure, topk_figure
from camwidgets.viz.figures import _thumbnail


def test_thumbnail_keeps_aspect_and_range():
    img = torch.rand(3, 200, 100)
    th = _thumbnail(img, 50)
    assert th.shape == (50, 25, 3) and th.dtype == np.uint8
    m = _thumbnail(np.ones((300, 300), np.float32), 64)
    assert m.shape == (64, 64) and np.allclose(m, 1.0)
    small = _thumbnail(np.zeros((10, 10), np.float32), 64)
    assert small.shape == (10, 10)


def test_image_figure_draws_image_mask_and_box(decode_png):
    img = torch.zeros(3, 8, 10)
    img[0] = 1.0
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:5, 3:7] = True
    fig = image_figure(img, mask=mask, box=(3, 2, 6, 4), title="t")
    z = decode_png(fig.data[0].source)
    assert z.shape == (8, 10, 3) and (z[..., 0] == 255).all() and (z[..., 1:] == 0).all()
    assert np.array_equal(np.asarray(fig.data[1].z), mask.astype(float))
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.y0, rect.x1, rect.y1) == (2.5, 1.5, 6.5, 4.5)
    with pytest.raises(ValueError, match="mask"):
        image_figure(img, mask=np.zeros((3, 3), dtype=bool))


def test_topk_orders_classes_by_probability():
    fig = topk_figure(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], k=2)
    bar = fig.data[0]
    assert list(bar.y) == ["c", "b"]  # drawn bottom-up, so the best is last
    assert np.allclose(bar.x, [0.3, 0.6])

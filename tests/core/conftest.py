"""Shared fixtures for the core tests: small models, small inputs, a forward-pass counter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from camwidgets.models.demo import DemoNet


def masked_items(n: int = 4, size: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` random images with a label (``i % 3``) and a 4x4 object mask each: a tiny dataset for evaluate."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        mask = np.zeros((size, size), dtype=bool)
        mask[i % 3:i % 3 + 4, 2:6] = True
        items.append({"image": torch.rand(3, size, size, generator=g), "label": i % 3, "mask": mask})
    return items


class ForwardCounter:
    """Counts calls of a model's ``forward`` (a forward-pre-hook on the root module)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.images = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.images += int(args[0].shape[0])

    def remove(self) -> None:
        self._handle.remove()


def minmax(a: Any) -> np.ndarray:
    """Min-max to [0, 1] in float64 (a constant map becomes all zero)."""
    a = np.asarray(a, dtype=np.float64)
    span = a.max() - a.min()
    return np.zeros_like(a) if span == 0 else (a - a.min()) / span


def relu_minmax(a: Any) -> np.ndarray:
    """ReLU then min-max: the normalisation both sides of an equivalence comparison get."""
    return minmax(np.maximum(np.asarray(a, dtype=np.float64), 0))


@pytest.fixture
def single_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread (the references' SVDs); on the shared machine its threads contend."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test with one intra-op thread, then restore the setting.

    The test machine is shared: with two OpenMP threads competing with other processes
    these small-model tests ran 5x slower (wall clock) than with one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def demo() -> nn.Module:
    """The demo architecture with seeded random weights (the trained weights are not needed)."""
    torch.manual_seed(0)
    return DemoNet().eval()


@pytest.fixture
def image64() -> torch.Tensor:
    """A seeded random pixel image (3, 64, 64) in [0, 1]."""
    g = torch.Generator().manual_seed(3)
    return torch.rand(3, 64, 64, generator=g)


@pytest.fixture
def counter() -> Iterator[type[ForwardCounter]]:
    made: list[ForwardCounter] = []

    class _Counter(ForwardCounter):
        def __init__(self, model: nn.Module) -> None:
            super().__init__(model)
            made.append(self)

    yield _Counter
    for c in made:
        c.remove()

"""Perturbation-family methods: model-agnostic LIME and KernelSHAP on superpixels."""

from __future__ import annotations

from ._spec import Method

__all__: list[str] = []

#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = ()

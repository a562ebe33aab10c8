"""Noise-averaged methods: SmoothGrad-CAM++ (gradient family), SS-CAM and IS-CAM (region family)."""

from __future__ import annotations

from ._spec import Method

__all__: list[str] = []

#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = ()

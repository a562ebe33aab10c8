"""Activation-family methods: maps from the activations alone, no gradient (CAM, EigenCAM)."""

from __future__ import annotations

from ._spec import Method

__all__: list[str] = []

#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = ()

"""Fast region methods: Recipro-CAM and Group-CAM (forward passes of masked features or grouped masks)."""

from __future__ import annotations

from ._spec import Method

__all__: list[str] = []

#: This module's registry entries (gathered by :mod:`camwidgets.core.methods`).
ENTRIES: tuple[Method, ...] = ()

"""Public metrics API: faithfulness and localisation scores for saliency maps.

A thin re-export of :mod:`camwidgets.core.metrics` (docs/methods.md, "Metrics") and of
:mod:`camwidgets.core.road` (ROAD and ARCC, docs/evaluate.md). The former documents the
conventions: model-based metrics take ``(model, image, saliency_map, target=None,
preprocess=None, **params)`` and mask in pixel space; map-only metrics take
``(saliency_map, mask_or_box, **params)``.

Examples
--------
>>> import numpy as np
>>> from camwidgets.metrics import energy_pointing_game
>>> mask = np.zeros((4, 4), dtype=bool); mask[:2] = True
>>> energy_pointing_game(mask.astype(float), mask)
1.0
"""

from __future__ import annotations

from camwidgets.core.metrics import *  # noqa: F403
from camwidgets.core.metrics import __all__ as _core_all
from camwidgets.core.road import *  # noqa: F403
from camwidgets.core.road import __all__ as _road_all

# The same public names as camwidgets.core.metrics and camwidgets.core.road (ROAD, ARCC), listed there.
__all__ = [*_core_all, *_road_all]

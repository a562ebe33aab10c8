"""Dataset views for evaluation.

:func:`each_class` turns a dataset of multi-class scenes (e.g. ``Shapes(..., scene="pair")``)
into one item per (image, class present): :func:`camwidgets.evaluate` then explains each
class of every image in turn, and the ``discrimination`` metric scores each map against its
own class's object and against the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["EachClass", "each_class"]


class EachClass:
    """Item ``j`` is image ``j // k`` of ``dataset`` explained for its class ``labels[j % k]``.

    Each item is the source item with ``label`` / ``target`` set to that class and ``mask``
    / ``box`` to that class's object (its ``masks`` and ``boxes`` entries), plus
    ``source_index`` (the image's index in ``dataset``). Items are built on access.

    Parameters
    ----------
    dataset : sequence
        Items are dicts with ``labels`` (the classes present, ``k`` of them in every item) and
        ``masks`` (``{class index: bool mask}``); ``boxes`` (``{class index: box}``) optional.
    k : int, default 2
        Classes per image (2 for pair scenes).
    """

    def __init__(self, dataset: Sequence[Any], k: int = 2) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"each_class needs a sequence (len and indexing), got {type(dataset).__name__}.")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        self.dataset = dataset
        self.k = int(k)

    def __len__(self) -> int:
        return len(self.dataset) * self.k

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"EachClass index {index} out of range for {len(self)} items.")
        src = index // self.k
        item = self.dataset[src]
        if not isinstance(item, Mapping) or item.get("labels") is None or not isinstance(item.get("masks"), Mapping):
            raise ValueError(f"Item {src} has no 'labels' and 'masks' per class: each_class needs "
                             "multi-class scenes, e.g. Shapes(n, seed, scene='pair').")
        labels, masks = item["labels"], item["masks"]
        if len(labels) != self.k:
            raise ValueError(f"Item {src} holds {len(labels)} classes, not k={self.k}.")
        c = labels[index % self.k]
        boxes = item.get("boxes")
        box = boxes.get(c) if isinstance(boxes, Mapping) else None
        return {**item, "label": c, "target": c, "mask": masks[c], "box": box, "source_index": src}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"each_class({self.dataset!r}, k={self.k})"


def each_class(dataset: Sequence[Any], k: int = 2) -> EachClass:
    """One item per (image, class present) of a multi-class scene dataset; see :class:`EachClass`.

    >>> from camwidgets.datasets import Shapes
    >>> view = each_class(Shapes(3, seed=5, scene="pair"))
    >>> len(view), view[0]["source_index"], view[1]["source_index"]
    (6, 0, 0)
    >>> view[0]["label"] != view[1]["label"]
    True
    """
    return EachClass(dataset, k)

"""Dataset formats: the project's instruction JSONL, and importers from COCO, YOLO, RefCOCO and ODVG.

Every importer has the signature
``(src, *, images_root=None, seed=0, split=None, templates="train", absent_rate=0.2) -> ImportResult``
(``odvg`` also takes ``label_map``).
"""

from __future__ import annotations

from collections.abc import Callable

from promptdet.data.formats.base import ImportResult
from promptdet.data.formats.coco import import_coco
from promptdet.data.formats.odvg import import_odvg
from promptdet.data.formats.refcoco import import_refcoco
from promptdet.data.formats.yolo import import_yolo

Importer = Callable[..., ImportResult]

IMPORTERS: dict[str, Importer] = {
    "coco": import_coco,
    "yolo": import_yolo,
    "refcoco": import_refcoco,
    "odvg": import_odvg,
}


def get_importer(name: str) -> Importer:
    """The importer called ``name``; an unknown name fails with the valid ones."""
    try:
        return IMPORTERS[name]
    except KeyError:
        raise ValueError(f"unknown data format {name!r}; valid formats: {', '.join(sorted(IMPORTERS))}") from None


__all__ = ["IMPORTERS", "ImportResult", "get_importer"]

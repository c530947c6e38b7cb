"""COCO detection JSON -> ``category`` and ``absent`` instruction pairs.

Input (``instances_*.json``)::

    {"images": [{"id": 1, "file_name": "000001.jpg", ...}],
     "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [x, y, w, h], "iscrowd": 0}],
     "categories": [{"id": 3, "name": "traffic light"}]}

Per image: one ``category`` pair per category present, with all its boxes as ``[x1, y1, x2, y2]``
and the annotation ids as ``object_ids``; ``absent`` pairs (no boxes) for categories not in it.
Crowd regions and zero-area boxes are skipped and counted.

An annotation may carry ``attributes``: a list of names (``["mono", "defective"]``), or a mapping
in which ``true`` adds the key, ``false`` or null adds nothing, and a string adds the string
(``{"defective": true, "type": "mono"}`` gives defective and mono). They go to
``ImportResult.labels``, from which a dataset vocabulary makes instructions
(``promptdet.data.user_vocab``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptdet.data.formats.base import (
    ImageLabels,
    ImportResult,
    as_dict,
    attribute_name,
    category_pairs,
    check_options,
    default_images_dir,
    labels_record,
    load_json,
    refuse_split,
    require,
    xywh_to_xyxy,
)
from promptdet.data.pairs import DataFormatError


@dataclass
class CocoAnnotation:
    """bbox_xyxy is None for a zero-area box."""

    id: int
    image_id: int
    category_id: int
    bbox_xyxy: list[float] | None
    iscrowd: bool
    attributes: tuple[str, ...] = ()


@dataclass
class CocoData:
    """images: id -> file_name and categories: id -> name, both in file order; sizes: id -> (w, h)
    for the images whose record gives both."""

    path: Path
    images: dict[int, str]
    categories: dict[int, str]
    annotations: list[CocoAnnotation]
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)


def read_attributes(value, path: Path, where: str) -> tuple[str, ...]:
    """An annotation's ``attributes``: a list of names, or {name: bool} / {key: name}; see the module doc."""
    if value is None:
        return ()
    names: list[str] = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            names.append(attribute_name(item, path, where, f"attributes[{i}]"))
    elif isinstance(value, dict):
        for key, item in value.items():
            field_name = f"attributes.{key}"
            if item is True:
                names.append(attribute_name(key, path, where, field_name))
            elif isinstance(item, str):
                names.append(attribute_name(item, path, where, field_name))
            elif item is not False and item is not None:
                raise DataFormatError(str(path), where, field_name,
                                      f"expected true, false or a name (a string), got {item!r}")
    else:
        raise DataFormatError(str(path), where, "attributes",
                              f"expected a list of names or a mapping, got {value!r}")
    return tuple(dict.fromkeys(names))


def _read_size(rec: dict) -> tuple[int, int] | None:
    # Only spatial instructions use the size, and the image itself can tell it: an odd value
    # here is ignored rather than refused, as it always was.
    w, h = rec.get("width"), rec.get("height")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6 for v in (w, h)):
        return None
    return round(w), round(h)


def load_coco(path: Path, need_categories: bool = True) -> CocoData:
    """Read and check a COCO instances file; a bad record raises DataFormatError naming it."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(str(path), None, None, f"expected a COCO JSON object, got {type(data).__name__}")
    for key in ("images", "annotations") + (("categories",) if need_categories else ()):
        # A file without annotations (COCO's image_info_test) is unlabelled, not empty: refuse it
        # rather than turning every image into false absent pairs.
        require(data, key, list, path, None)

    images: dict[int, str] = {}
    sizes: dict[int, tuple[int, int]] = {}
    for i, rec in enumerate(data["images"]):
        where = f"images[{i}]"
        image_id = require(rec, "id", int, path, where)
        file_name = require(rec, "file_name", str, path, where)
        if not file_name:
            raise DataFormatError(str(path), where, "file_name", "must be a non-empty string")
        if image_id in images:
            raise DataFormatError(str(path), where, "id", f"duplicate image id {image_id}")
        images[image_id] = file_name
        size = _read_size(rec)
        if size is not None:
            sizes[image_id] = size

    categories: dict[int, str] = {}
    for i, rec in enumerate(data.get("categories") or []):
        where = f"categories[{i}]"
        cat_id = require(rec, "id", int, path, where)
        name = require(rec, "name", str, path, where).strip()
        if not name:
            raise DataFormatError(str(path), where, "name", "must be a non-empty string")
        if cat_id in categories:
            raise DataFormatError(str(path), where, "id", f"duplicate category id {cat_id}")
        categories[cat_id] = name

    annotations: list[CocoAnnotation] = []
    for i, rec in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        ann_id = require(rec, "id", int, path, where)
        image_id = require(rec, "image_id", int, path, where)
        category_id = require(rec, "category_id", int, path, where)
        require(rec, "bbox", list, path, where)
        box = xywh_to_xyxy(rec["bbox"], path, where)
        crowd = rec.get("iscrowd", 0)
        if crowd not in (0, 1, True, False):
            raise DataFormatError(str(path), where, "iscrowd", f"expected 0 or 1, got {crowd!r}")
        attributes = read_attributes(rec.get("attributes"), path, where)
        annotations.append(CocoAnnotation(ann_id, image_id, category_id, box, bool(crowd), attributes))
    return CocoData(path, images, categories, annotations, sizes)


def import_coco(src: Path, *, images_root: Path | None = None, seed: int = 0, split: str | None = None,
                templates: str = "train", absent_rate: float = 0.2) -> ImportResult:
    """COCO instances JSON at ``src`` -> category/absent pairs.

    images_root: where ``file_name`` is rooted; default ``<src dir>/images`` if it exists, else the src dir.
    """
    src = Path(src)
    check_options(absent_rate, templates)
    refuse_split("coco", split, "point SRC at the split's file, e.g. instances_val2017.json")
    coco = load_coco(src)
    skipped: Counter = Counter()

    labels = {image_id: ImageLabels(file_name, size_wh=coco.sizes.get(image_id))
              for image_id, file_name in coco.images.items()}
    for ann in coco.annotations:
        img = labels.get(ann.image_id)
        if img is None:
            skipped["annotation_unknown_image"] += 1
            continue
        name = coco.categories.get(ann.category_id)
        if name is None:
            skipped["annotation_unknown_category"] += 1
            continue
        if ann.iscrowd:
            skipped["crowd_box"] += 1
            img.add(name, None)
        elif ann.bbox_xyxy is None:
            skipped["degenerate_box"] += 1
            img.add(name, None)
        else:
            img.add(name, ann.bbox_xyxy, ann.id, ann.attributes)

    names = list(dict.fromkeys(coco.categories.values()))  # two ids may share a name
    rng = np.random.default_rng(seed)
    pairs = category_pairs(labels.values(), names, rng=rng, templates=templates, absent_rate=absent_rate,
                           skipped=skipped)
    images_dir = Path(images_root) if images_root is not None else default_images_dir(src.parent)
    return ImportResult(pairs, as_dict(skipped), images_dir, len(coco.images),
                        [labels_record(img) for img in labels.values()])

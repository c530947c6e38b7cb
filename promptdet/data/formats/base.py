"""What every importer shares: the result type, strict field readers, and category/absent pairs.

Importers turn a foreign dataset into ``InstructionPair``s whose ``image`` is relative to
``ImportResult.images_dir``. Records that are well-formed but unusable (crowd boxes, zero-area
boxes, dangling ids) are counted in ``skipped`` by reason; malformed ones raise DataFormatError.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from promptdet.data.pairs import DataFormatError, InstructionPair

TEMPLATE_SPLITS = ("train", "test")
_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


@dataclass
class ImportResult:
    """pairs: images relative to ``images_dir``; skipped: reason -> count (the unit is in the
    reason: ``crowd_box``, ``ref_missing_annotation``); num_images: images in the source (for
    refcoco, the images that have a ref)."""

    pairs: list[InstructionPair]
    skipped: dict[str, int]
    images_dir: Path
    num_images: int = 0
    labels: list[dict] | None = None  # per image its boxes, classes and attributes (``labels_record``)


@dataclass
class ImageLabels:
    """One image's boxes grouped by category name, before they become pairs.

    boxes_xyxy: name -> kept boxes; object_ids: name -> their ids (same order), if the format has ids.
    present: every category with at least one annotation here, kept or skipped, so a category
    whose only box was a crowd region is never offered as absent. objects: the kept boxes in file
    order, with their attributes. size_wh: the image's (width, height), if the source says.
    unusable: the categories of the annotations that were not kept.
    """

    image: str
    boxes_xyxy: dict[str, list[list[float]]] = field(default_factory=dict)
    object_ids: dict[str, list[int]] | None = None
    present: set[str] = field(default_factory=set)
    objects: list[dict] = field(default_factory=list)
    size_wh: tuple[int, int] | None = None
    unusable: set[str] = field(default_factory=set)

    def add(self, name: str, box_xyxy: list[float] | None, object_id: int | None = None,
            attributes: Sequence[str] = ()) -> None:
        """Record an annotation of ``name``; ``box_xyxy=None`` marks it present but unusable."""
        self.present.add(name)
        if box_xyxy is None:
            self.unusable.add(name)
            return
        self.objects.append({"id": len(self.objects) if object_id is None else object_id, "category": name,
                             "attributes": list(attributes), "bbox": list(box_xyxy)})
        self.boxes_xyxy.setdefault(name, []).append(box_xyxy)
        if object_id is not None:
            if self.object_ids is None:
                self.object_ids = {}
            self.object_ids.setdefault(name, []).append(object_id)


def labels_record(img: ImageLabels) -> dict:
    """One line of ``labels.jsonl``: ``{"image", "width", "height", "objects": [{"id", "category",
    "attributes", "bbox"}], "unlabelled": [class, ...]}``, bbox as [x1, y1, x2, y2] pixels;
    width/height None when unknown. unlabelled: classes with a box here that is not kept (a crowd
    region, a zero-area box), so no question about that class can be answered from the kept boxes."""
    w, h = img.size_wh if img.size_wh else (None, None)
    # Rounded as instructions.jsonl rounds its boxes, so the two files agree to the digit.
    objects = [{**o, "bbox": [round(float(v), 2) for v in o["bbox"]]} for o in img.objects]
    return {"image": img.image, "width": w, "height": h, "objects": objects, "unlabelled": sorted(img.unusable)}


def attribute_name(value: Any, path: Path | str, where: str | int | None, field_name: str) -> str:
    """A per-box attribute name: a non-empty string without commas or line breaks."""
    if not isinstance(value, str) or not value.strip() or any(c in value for c in ",\n\r"):
        raise DataFormatError(str(path), where, field_name,
                              f"an attribute name must be a non-empty string without commas, got {value!r}")
    return value.strip()


def check_options(absent_rate: float, templates: str) -> None:
    if not 0.0 <= absent_rate < 1.0:
        raise ValueError(f"absent_rate must be in [0, 1), got {absent_rate}")
    if templates not in TEMPLATE_SPLITS:
        raise ValueError(f"templates must be one of {TEMPLATE_SPLITS}, got {templates!r}")


def refuse_split(fmt: str, split: str | None, hint: str) -> None:
    # Ignoring a --split the format cannot honour would silently convert the wrong data.
    if split is not None:
        raise ValueError(f"the {fmt} importer has no --split; {hint}")


def default_images_dir(root: Path) -> Path:
    """``root/images`` when it exists (the common layout), else ``root``."""
    return root / "images" if (root / "images").is_dir() else root


def refuse_pickle(path: Path) -> None:
    """Raise if ``path`` is a pickle: unpickling runs code from the file, so promptdet never does it."""
    head = b""
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(1)
    if path.suffix.lower() in _PICKLE_SUFFIXES or head == b"\x80":
        raise DataFormatError(
            str(path), None, None,
            "is a Python pickle, and loading a pickle runs code in it, so promptdet refuses. Convert it "
            "to JSON once, in an environment you trust: python -c \"import json, pickle; "
            f"json.dump(pickle.load(open('{path.name}', 'rb')), open('{path.stem}.json', 'w'))\"",
        )


def load_json(path: Path) -> Any:
    """Parse a JSON file; bad JSON names the line, and pickles are refused."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    refuse_pickle(path)
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataFormatError(str(path), exc.lineno, None, f"invalid JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise DataFormatError(str(path), None, None, "not UTF-8 text; expected JSON") from None


def require(rec: Any, key: str, types: type | tuple[type, ...], path: Path | str, where: str | int | None,
            field_name: str | None = None) -> Any:
    """``rec[key]`` if present and of ``types`` (bools are not ints), else DataFormatError."""
    name = field_name or key
    if not isinstance(rec, dict):
        raise DataFormatError(str(path), where, None, f"expected a JSON object, got {type(rec).__name__}")
    if key not in rec:
        raise DataFormatError(str(path), where, name, "missing")
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, types):
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataFormatError(str(path), where, name, f"expected {want}, got {value!r}")
    return value


def xywh_to_xyxy(bbox: Any, path: Path | str, where: str | int | None, field_name: str = "bbox") -> list[float] | None:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``; None for a zero-area box; raises on a malformed one."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataFormatError(str(path), where, field_name, f"expected [x, y, w, h], got {bbox!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in bbox):
        raise DataFormatError(str(path), where, field_name, f"values must be finite numbers, got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise DataFormatError(str(path), where, field_name, f"width and height must be >= 0, got {bbox!r}")
    if w == 0 or h == 0:
        return None
    return [x, y, x + w, y + h]


def is_degenerate(box_xyxy: Sequence[float]) -> bool:
    return box_xyxy[2] <= box_xyxy[0] or box_xyxy[3] <= box_xyxy[1]


def category_pairs(images: Iterable[ImageLabels], categories: Sequence[str], *, rng: np.random.Generator,
                   templates: str, absent_rate: float, skipped: Counter) -> list[InstructionPair]:
    """One ``category`` pair per category with boxes in an image, plus ``absent`` pairs.

    Absent pairs ask for a category of ``categories`` that has no annotation in the image, and
    have no boxes. They come at ``absent_rate / (1 - absent_rate)`` per positive pair, so they make
    up about ``absent_rate`` of the output; an image with no annotations counts as one positive,
    so background images are drawn on too. Assumes exhaustive labels (an unlabelled category is
    truly absent), as in COCO and YOLO sets.
    """
    from promptdet.data.synth.templates import category_instruction

    per_positive = absent_rate / (1.0 - absent_rate)
    # Error diffusion keeps the absent fraction on target even for a handful of images; the
    # random start stops the first images of every dataset from never getting one.
    carry = float(rng.random()) if per_positive > 0 else 0.0
    order = {name: i for i, name in enumerate(categories)}
    pairs: list[InstructionPair] = []
    for img in images:
        n_pos = 0
        for name in sorted(img.present, key=lambda n: (order.get(n, len(order)), n)):
            boxes = img.boxes_xyxy.get(name)
            if not boxes:
                # Every box was crowd or degenerate: an empty "category" pair would claim it is absent.
                skipped["category_without_usable_boxes"] += 1
                continue
            ids = img.object_ids.get(name) if img.object_ids is not None else None
            pairs.append(InstructionPair(img.image, category_instruction(name, rng, templates), boxes,
                                         "category", ids, {"category": name}))
            n_pos += 1
        if per_positive <= 0:
            continue
        quota = per_positive * max(n_pos, 1)
        carry += quota
        candidates = [name for name in categories if name not in img.present]
        # An image that has every category cannot take its share; later images catch up, but at no
        # more than twice their own rate, so the shortfall never lands on one image.
        n_abs = min(int(carry), len(candidates), max(1, math.ceil(2 * quota)))
        carry -= n_abs
        if n_abs:
            picks = sorted(rng.choice(len(candidates), size=n_abs, replace=False).tolist())
            for i in picks:
                name = candidates[i]
                pairs.append(InstructionPair(img.image, category_instruction(name, rng, templates), [],
                                             "absent", None, {"category": name}))
    return pairs


def as_dict(counter: Counter) -> dict[str, int]:
    return {k: counter[k] for k in sorted(counter) if counter[k]}

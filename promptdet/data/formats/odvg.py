"""ODVG JSONL (Grounding-DINO / mmdetection) -> instruction pairs.

One image per line; boxes are ``[x1, y1, x2, y2]`` pixels. Detection lines::

    {"filename": "a.jpg", "height": 480, "width": 640,
     "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 0, "category": "cat"}]}}

give ``category`` and ``absent`` pairs as for COCO; the category list (for absent pairs) is the
optional label map ``{"0": "cat", ...}``, else every category seen in the file. Grounding lines::

    {"filename": "b.jpg", "height": 480, "width": 640,
     "grounding": {"caption": "a cat and two dogs",
                   "regions": [{"bbox": [x1, y1, x2, y2] or [[...], ...], "phrase": "two dogs",
                                "tokens_positive": [[10, 18]]}]}}

give one ``grounding`` pair per distinct phrase (case-insensitive) with all its boxes; a region
without ``phrase`` takes it from the caption via ``tokens_positive``.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from promptdet.data.formats.base import (
    ImageLabels,
    ImportResult,
    as_dict,
    category_pairs,
    check_options,
    default_images_dir,
    is_degenerate,
    load_json,
    refuse_split,
    require,
)
from promptdet.data.formats.jsonl import iter_jsonl
from promptdet.data.pairs import DataFormatError, InstructionPair, validate_box


def read_label_map(path: Path) -> dict[int, str]:
    """``{"0": "cat", ...}`` (keys are label ids as strings or ints) -> {0: "cat"}."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(str(path), None, None, "expected a JSON object mapping label id -> name")
    out: dict[int, str] = {}
    for key, name in data.items():
        try:
            label = int(key)
        except ValueError:
            raise DataFormatError(str(path), None, str(key), "label ids must be integers") from None
        if not isinstance(name, str) or not name.strip():
            raise DataFormatError(str(path), None, str(key), f"expected a category name, got {name!r}")
        out[label] = name.strip()
    return out


def _boxes(value: Any, path: Path, line: int, field_name: str) -> list[list[float]]:
    """A region's ``bbox``: one box or a list of boxes."""
    if isinstance(value, list) and value and all(isinstance(v, (list, tuple)) for v in value):
        return [validate_box(b, str(path), line, field_name) for b in value]
    return [validate_box(value, str(path), line, field_name)]


def _detection(rec: dict, path: Path, line: int, label_map: dict[int, str] | None, names: dict[int, str],
               skipped: Counter) -> ImageLabels:
    det = require(rec, "detection", dict, path, line)
    instances = require(det, "instances", list, path, line, "detection.instances")
    labels = ImageLabels(rec["filename"])
    for k, inst in enumerate(instances):
        prefix = f"detection.instances[{k}]"
        if not isinstance(inst, dict):
            raise DataFormatError(str(path), line, prefix, f"expected an object, got {inst!r}")
        box = validate_box(require(inst, "bbox", list, path, line, f"{prefix}.bbox"), str(path), line, f"{prefix}.bbox")
        label = inst.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int)):
            raise DataFormatError(str(path), line, f"{prefix}.label", f"expected an integer, got {label!r}")
        if label_map is not None:
            if label not in label_map:
                raise DataFormatError(str(path), line, f"{prefix}.label", f"{label!r} is not in the label map")
            name = label_map[label]
        else:
            name = require(inst, "category", str, path, line, f"{prefix}.category").strip()
            if not name:
                raise DataFormatError(str(path), line, f"{prefix}.category", "empty; or pass a label map")
            if label is not None:
                names.setdefault(label, name)
        if is_degenerate(box):
            skipped["degenerate_box"] += 1
            labels.add(name, None)
        else:
            labels.add(name, box)
    return labels


def _grounding(rec: dict, path: Path, line: int, skipped: Counter) -> list[InstructionPair]:
    g = require(rec, "grounding", dict, path, line)
    caption = g.get("caption", "")
    regions = require(g, "regions", list, path, line, "grounding.regions")
    phrases: dict[str, tuple[str, list[list[float]]]] = {}
    for k, region in enumerate(regions):
        prefix = f"grounding.regions[{k}]"
        if not isinstance(region, dict):
            raise DataFormatError(str(path), line, prefix, f"expected an object, got {region!r}")
        phrase = region.get("phrase")
        if phrase is None and "tokens_positive" in region and isinstance(caption, str):
            spans = region["tokens_positive"]
            try:
                phrase = " ".join(caption[int(s):int(e)] for s, e in spans)
            except (TypeError, ValueError):
                raise DataFormatError(str(path), line, f"{prefix}.tokens_positive",
                                      f"expected [[start, end], ...], got {spans!r}") from None
        if not isinstance(phrase, str):
            raise DataFormatError(str(path), line, f"{prefix}.phrase",
                                  "missing (and no tokens_positive into a caption)")
        phrase = " ".join(phrase.split())
        if not phrase:
            raise DataFormatError(str(path), line, f"{prefix}.phrase", "empty")
        if "bbox" not in region:
            raise DataFormatError(str(path), line, f"{prefix}.bbox", "missing")
        entry = phrases.setdefault(phrase.lower(), (phrase, []))
        for box in _boxes(region["bbox"], path, line, f"{prefix}.bbox"):
            if is_degenerate(box):
                skipped["degenerate_box"] += 1
            else:
                entry[1].append(box)
    pairs = []
    for phrase, boxes in phrases.values():
        if boxes:
            pairs.append(InstructionPair(rec["filename"], phrase, boxes, "grounding"))
        else:
            skipped["phrase_without_usable_boxes"] += 1
    return pairs


def import_odvg(src: Path, *, images_root: Path | None = None, seed: int = 0, split: str | None = None,
                templates: str = "train", absent_rate: float = 0.2, label_map: Path | None = None) -> ImportResult:
    """An ODVG ``.jsonl`` file -> category/absent pairs (detection lines) and grounding pairs.

    label_map: optional JSON ``{"0": "cat", ...}``; names the labels and fixes the category list.
    images_root: where ``filename`` is rooted; default ``<src dir>/images`` if it exists, else the src dir.
    """
    src = Path(src)
    check_options(absent_rate, templates)
    refuse_split("odvg", split, "point SRC at the split's .jsonl file")
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file (expected an ODVG .jsonl)")
    lmap = read_label_map(Path(label_map)) if label_map is not None else None

    skipped: Counter = Counter()
    seen_names: dict[int, str] = {}
    detections: list[ImageLabels] = []
    grounding: list[InstructionPair] = []
    n_lines = 0
    for line, rec in iter_jsonl(src):
        n_lines += 1
        filename = require(rec, "filename", str, src, line)
        if not filename:
            raise DataFormatError(str(src), line, "filename", "must be a non-empty string")
        for key in ("height", "width"):  # optional, but a NaN or negative size is a broken file
            size = rec.get(key)
            if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float))
                                     or not math.isfinite(size) or size <= 0):
                raise DataFormatError(str(src), line, key, f"must be a finite positive number, got {size!r}")
        if "detection" in rec:
            detections.append(_detection(rec, src, line, lmap, seen_names, skipped))
        elif "grounding" in rec:
            grounding.extend(_grounding(rec, src, line, skipped))
        else:
            raise DataFormatError(str(src), line, "detection", "a line needs 'detection' or 'grounding'")

    if lmap is not None:
        categories = [lmap[k] for k in sorted(lmap)]
    else:
        # Label order where labels exist, then order of appearance: the same file gives the same list.
        categories = [seen_names[k] for k in sorted(seen_names)]
        categories += [n for img in detections for n in sorted(img.present)]
    categories = list(dict.fromkeys(categories))
    rng = np.random.default_rng(seed)
    pairs = category_pairs(detections, categories, rng=rng, templates=templates, absent_rate=absent_rate,
                           skipped=skipped)
    images_dir = Path(images_root) if images_root is not None else default_images_dir(src.parent)
    return ImportResult(pairs + grounding, as_dict(skipped), images_dir, n_lines)

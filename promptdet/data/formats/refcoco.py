"""RefCOCO / RefCOCO+ / RefCOCOg referring expressions -> ``referring`` instruction pairs.

Input: a folder holding ``refs*.json`` and ``instances.json`` (or the refs file itself, with
``instances.json`` beside it)::

    refs.json:      [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "testA", "category_id": 1,
                      "sentences": [{"sent": "man on the left"}, ...]}, ...]
    instances.json: COCO layout (images, annotations with bbox [x, y, w, h])

The original ``refs(unc).p`` is a pickle, which promptdet refuses to load (unpickling runs code);
convert it to JSON once, where you trust it. Each sentence becomes one pair whose single box is
the annotation ``ann_id``; ``object_ids`` is ``[ann_id]``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from promptdet.data.formats.base import (
    ImportResult,
    as_dict,
    check_options,
    default_images_dir,
    load_json,
    refuse_pickle,
    require,
)
from promptdet.data.formats.coco import load_coco
from promptdet.data.pairs import DataFormatError, InstructionPair


def _find_files(src: Path) -> tuple[Path, Path]:
    """(refs file, instances file) from a folder or a refs file."""
    if src.is_dir():
        refs = sorted(src.glob("refs*.json"))
        if not refs:
            for p in sorted(src.glob("refs*")):
                refuse_pickle(p)  # give the conversion hint rather than "not found"
            raise FileNotFoundError(f"{src}: no refs*.json file")
        if len(refs) > 1:
            raise ValueError(f"{src}: several refs files ({', '.join(p.name for p in refs)}); pass one as SRC")
        ref_file, root = refs[0], src
    else:
        ref_file, root = src, src.parent
    refuse_pickle(ref_file)
    instances = root / "instances.json"
    if not instances.is_file():
        raise FileNotFoundError(f"{root}: no instances.json (the COCO-style images and annotations of the refs)")
    return ref_file, instances


def import_refcoco(src: Path, *, images_root: Path | None = None, seed: int = 0, split: str | None = None,
                   templates: str = "train", absent_rate: float = 0.2) -> ImportResult:
    """RefCOCO-style refs + instances -> one ``referring`` pair per sentence.

    split: keep only refs of this split (train, val, test, testA, testB); None keeps all.
    The sentence is used as written, so ``seed``, ``templates`` and ``absent_rate`` change nothing
    here (they are accepted for a uniform importer signature).
    """
    src = Path(src)
    check_options(absent_rate, templates)
    ref_file, instances_file = _find_files(src)
    coco = load_coco(instances_file, need_categories=False)
    anns = {a.id: a for a in coco.annotations}
    refs = load_json(ref_file)
    if not isinstance(refs, list):
        raise DataFormatError(str(ref_file), None, None, f"expected a JSON list of refs, got {type(refs).__name__}")

    if split is not None:
        splits = {r.get("split") for r in refs if isinstance(r, dict)}
        if split not in splits:
            have = ", ".join(sorted(str(s) for s in splits)) or "none"
            raise ValueError(f"{ref_file}: no refs with split {split!r} (splits present: {have})")

    skipped: Counter = Counter()
    pairs: list[InstructionPair] = []
    images_used: set[int] = set()
    for i, ref in enumerate(refs):
        where = f"refs[{i}]"
        ann_id = require(ref, "ann_id", int, ref_file, where)
        image_id = require(ref, "image_id", int, ref_file, where)
        sentences = require(ref, "sentences", list, ref_file, where)
        ref_id = ref.get("ref_id", i)
        if split is not None and ref.get("split") != split:
            skipped["ref_not_in_split"] += 1
            continue
        ann = anns.get(ann_id)
        if ann is None:
            skipped["ref_missing_annotation"] += 1
            continue
        if image_id not in coco.images:
            skipped["ref_unknown_image"] += 1
            continue
        if ann.image_id != image_id:
            skipped["ref_image_mismatch"] += 1
            continue
        if ann.bbox_xyxy is None:
            skipped["degenerate_box"] += 1
            continue
        for j, sent in enumerate(sentences):
            s_where = f"{where}.sentences[{j}]"
            if not isinstance(sent, dict):
                raise DataFormatError(str(ref_file), s_where, None, f"expected an object with 'sent', got {sent!r}")
            text = sent.get("sent", sent.get("raw"))
            if not isinstance(text, str):
                raise DataFormatError(str(ref_file), s_where, "sent", "missing or not a string")
            text = " ".join(text.split())
            if not text:
                skipped["empty_sentence"] += 1
                continue
            pairs.append(InstructionPair(coco.images[image_id], text, [list(ann.bbox_xyxy)], "referring",
                                         [ann_id], {"ref_id": ref_id}))
            images_used.add(image_id)

    images_dir = Path(images_root) if images_root is not None else default_images_dir(instances_file.parent)
    return ImportResult(pairs, as_dict(skipped), images_dir, len(images_used))

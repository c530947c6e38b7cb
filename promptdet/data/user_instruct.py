"""Instructions for a user's imported data, from its labels and a dataset vocabulary.

``promptdet data convert`` writes ``labels.jsonl`` beside ``instructions.jsonl``: per image, its
size and its boxes with class and attributes (``formats.base.labels_record``). With a vocabulary
(``user_vocab``) the synthetic line's instruction builders run on these facts, so every pair's
boxes still follow from the labels and the pair's ``query`` alone. Labels are taken to be
exhaustive: a class or attribute no box in an image carries is absent from it.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from promptdet.data.formats.jsonl import iter_jsonl, write_pairs
from promptdet.data.lexicon import Lexicon, looks_of
from promptdet.data.pairs import DataFormatError, InstructionPair, validate_box
from promptdet.data.synth.instruct import ALL_TYPES, generate_instructions
from promptdet.data.user_vocab import UserVocab
from promptdet.errors import UsageError

LABELS_NAME = "labels.jsonl"


def read_labels(path: str | Path) -> list[dict]:
    """Read ``labels.jsonl`` (or the folder holding it); a bad line raises DataFormatError naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {LABELS_NAME} at {path}; write it with: promptdet data convert --from coco|yolo ...")
    records = []
    for n, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise DataFormatError(str(path), n, None, "expected a JSON object")
        for key in ("image", "width", "height", "objects"):
            if key not in rec:
                raise DataFormatError(str(path), n, key, "missing")
        for key in ("width", "height"):
            v = rec[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise DataFormatError(str(path), n, key, f"expected a positive whole number of pixels, got {v!r}")
        if not isinstance(rec["objects"], list):
            raise DataFormatError(str(path), n, "objects", "expected a list")
        for j, obj in enumerate(rec["objects"]):
            where = f"objects[{j}]"
            if not isinstance(obj, dict):
                raise DataFormatError(str(path), n, where, "expected a JSON object")
            for key in ("id", "category", "attributes", "bbox"):
                if key not in obj:
                    raise DataFormatError(str(path), n, f"{where}.{key}", "missing")
            if not isinstance(obj["category"], str) or not obj["category"]:
                raise DataFormatError(str(path), n, f"{where}.category", "expected a class name")
            attrs = obj["attributes"]
            if not isinstance(attrs, list) or not all(isinstance(a, str) and a for a in attrs):
                raise DataFormatError(str(path), n, f"{where}.attributes", f"expected a list of names, got {attrs!r}")
            validate_box(obj["bbox"], str(path), n, f"{where}.bbox")
        unlabelled = rec.get("unlabelled", [])
        if not isinstance(unlabelled, list) or not all(isinstance(c, str) for c in unlabelled):
            raise DataFormatError(str(path), n, "unlabelled", f"expected a list of class names, got {unlabelled!r}")
        records.append(rec)
    return records


def scene_objects(record: dict, vocab: UserVocab, path: str = LABELS_NAME, line: int | str | None = None) -> list[dict]:
    """A labels record's boxes as scene objects (``id, category, color, types, defects, bbox``).

    An attribute the vocabulary does not declare, or two colours on one box, is a DataFormatError
    naming the line and the box: its kind decides what instructions say, so it cannot be guessed.
    """
    objects = []
    for j, obj in enumerate(record["objects"]):
        color, types, defects = None, [], []
        for name in obj["attributes"]:
            kind = vocab.kind(name)
            if kind is None:
                raise DataFormatError(path, line, f"objects[{j}].attributes",
                                      f"{name!r} is not in the vocabulary {vocab.path}; declare it under "
                                      "attributes: with its kind (defect, color or type)")
            if kind == "color":
                if color is not None and color != name:
                    raise DataFormatError(path, line, f"objects[{j}].attributes",
                                          f"{color!r} and {name!r} are both colours; a box has at most one")
                color = name
            elif kind == "type":
                types.append(name)
            else:
                defects.append(name)
        objects.append({"id": obj["id"], "category": obj["category"], "color": color, "types": types,
                        "defects": defects, "bbox": [float(v) for v in obj["bbox"]]})
    return objects


def to_scenes(labels: list[dict], vocab: UserVocab, path: str = LABELS_NAME, by_image: bool = False) -> list[dict]:
    """Labels records -> scenes (``image, width, height, objects``) that the instruction builders read.

    Errors name the record by its line in ``path``, or with ``by_image`` by its image (``path`` is
    then the source the labels were imported from).
    """
    return [{"image": rec["image"], "width": rec["width"], "height": rec["height"],
             "objects": scene_objects(rec, vocab, path, f"image {rec['image']}" if by_image else n)}
            for n, rec in enumerate(labels, 1)]


def lexicon_for(scenes: list[dict], vocab: UserVocab) -> Lexicon:
    return vocab.lexicon(sorted({o["category"] for s in scenes for o in s["objects"]}))


def unsupported(kind: str, scenes: list[dict], lex: Lexicon) -> str | None:
    """Why the data cannot give instructions of type ``kind``, or None when it can."""
    objects = [o for s in scenes for o in s["objects"]]
    has_look = any(looks_of(o) for o in objects)
    has_defect = any(o["defects"] for o in objects)
    no_defect = f"no box has an attribute of kind defect (the vocabulary's defects: {', '.join(lex.defects) or 'none'})"
    no_look = (f"no box has an attribute of kind color or type (the vocabulary's: "
               f"{', '.join(lex.looks) or 'none'})")
    if not objects:
        return "the data has no boxes"
    if kind in ("defect", "jargon") and not has_defect:
        return no_defect
    if kind == "attribute" and not has_look:
        return no_look
    if kind == "conjunction" and not any(o["defects"] and looks_of(o) for o in objects):
        return "no box has both a defect and a colour or type"
    if kind in ("spatial", "superlative", "relation") and not any(len(s["objects"]) >= 2 for s in scenes):
        return "no image has two boxes to compare"
    if kind == "negation" and not (has_look or has_defect):
        return f"{no_look}, and {no_defect}"
    if kind == "exclusion" and not (has_look or len({o['category'] for o in objects}) >= 2):
        return "the boxes are all of one class, with no colour or type to set some apart"
    if kind == "disjunction":
        two_looks = any(len(lex.same_kind(look, lex.looks)) >= 2 for o in objects for look in looks_of(o))
        if not (len(lex.categories) >= 2 or two_looks or len(lex.defects) >= 2):
            return "there is no second class, colour, type or defect to name beside the first"
    return None


def parse_types(text: str | None) -> dict[str, int] | None:
    """'defect=2,negation' -> {"defect": 2, "negation": 1}; None or '' for every type the data supports."""
    if not text:
        return None
    weights: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in ALL_TYPES:
            raise UsageError(f"--types: unknown type {name!r} (valid: {', '.join(ALL_TYPES)}; "
                             "absent answers come from --absent-rate)")
        if value and (not value.isdigit() or not 1 <= int(value) <= 10):
            raise UsageError(f"--types: '{item}': the weight must be a whole number from 1 to 10")
        weights[name] = int(value) if value else 1
    return weights or None


def plan_types(scenes: list[dict], lex: Lexicon, weights: dict[str, int] | None) -> tuple[str, ...]:
    """The ``types`` cycle for ``generate_instructions``: the asked types by weight, or every type the
    data supports. An asked type the data cannot support is a UsageError that says why."""
    if weights:
        for kind in weights:
            reason = unsupported(kind, scenes, lex)
            if reason:
                raise UsageError(f"cannot make {kind} instructions: {reason}")
        return tuple(t for t in ALL_TYPES if t in weights for _ in range(weights[t]))
    types = tuple(t for t in ALL_TYPES if unsupported(t, scenes, lex) is None)
    if not types:
        raise UsageError(f"cannot make instructions: {unsupported('category', scenes, lex)}")
    return types


def user_instructions(labels: list[dict], vocab: UserVocab, *, seed: int = 0, split: str = "train",
                      per_image: int = 6, absent_rate: float = 0.2, types: dict[str, int] | None = None,
                      path: str = LABELS_NAME) -> list[InstructionPair]:
    """Instruction pairs for imported labels (image paths as in ``labels``), one rng stream per image.

    A type asked for in ``types`` that no image can answer clearly (no clear leftmost box, no
    uniquely named reference, ...) is a UsageError, not a file silently without it.
    """
    from promptdet.data.synth.generate import instruction_rng

    if not 0.0 <= absent_rate < 1.0 or math.isnan(absent_rate):
        raise UsageError(f"--absent-rate must be in [0, 1), got {absent_rate}")
    scenes = to_scenes(labels, vocab, path)
    lex = lexicon_for(scenes, vocab)
    cycle = plan_types(scenes, lex, types)
    pairs = []
    for index, (scene, record) in enumerate(zip(scenes, labels)):
        unlabelled = set(record.get("unlabelled", ()))
        pairs += [pair for pair in generate_instructions(scene, instruction_rng(seed, index), split, per_image,
                                                         absent_rate, types=cycle, lex=lex)
                  if not unlabelled or _answerable(pair.extra["query"], unlabelled)]
    made = {p.type for p in pairs} | {p.extra["query"].get("absent") for p in pairs}
    for kind in types or ():
        if kind not in made:
            raise UsageError(f"cannot make {kind} instructions: {_NONE_CLEAR.get(kind, 'no image gave one')}")
    return pairs


# Why an asked type can come out empty although plan_types let it through: its answer is never clear.
_NONE_CLEAR = {
    "spatial": "no two boxes of a group are far enough apart for a clear leftmost, rightmost, topmost or "
               "bottommost one (a margin of 4% of the image)",
    "superlative": "no group of boxes has a clearly largest or smallest one (1.3 times the area of the next)",
    "relation": "no box is named uniquely (the only one of its class, or of its colour or type in its class) "
                "with exactly one box of a class clearly on one side of it",
}


def _answerable(query: dict, unlabelled: set[str]) -> bool:
    """Whether the kept boxes answer ``query`` although boxes of the ``unlabelled`` classes were
    dropped (crowd regions, zero-area boxes): only when every leaf names a class, and none of those."""
    def ok(select: dict) -> bool:
        if "not" in select:
            return ok(select["not"])
        for op in ("any", "all"):
            if op in select:
                return all(ok(s) for s in select[op])
        return bool(select.get("category")) and select["category"] not in unlabelled
    return ok(query["select"]) and ok(query.get("ref_select") or {"category": "-"})


def write_user_instructions(labels: list[dict], vocab: UserVocab, out: str | Path, **options) -> Counter:
    """Write ``out`` (instructions.jsonl) for imported labels; returns pairs per type."""
    counts: Counter = Counter()
    pairs = user_instructions(labels, vocab, **options)  # all checks pass before a file is touched
    for pair in pairs:
        counts[pair.type] += 1
    write_pairs(pairs, out)
    return counts

"""The query language: which parts of a scene an instruction selects, as a small boolean expression.

Every instruction pair carries ``extra["query"]``; its ``select`` is one of::

    {"category": "nut", "color": "red", "defect": "crack"}   # a leaf: every given field must hold
    {"category": "cell", "type": "mono"}                      # a type (imported data's attributes)
    {"any": [EXPR, ...]}                                      # or
    {"all": [EXPR, ...]}                                      # and
    {"not": EXPR}                                             # not

In a leaf a missing or None field means "any"; ``"defect": "any"`` means "has at least one
defect", and ``"type": "mono"`` means "mono" is among the object's ``types``. ``{}`` selects
every part. Negation ("undamaged nuts"), exclusion ("all but the gears"),
disjunction ("dented or scratched cans") and the inspector's jargon ("NG", "OK parts") are all
selections over the same scene facts (category, colour, defects), so every box can be checked
from ``scenes.jsonl`` alone. The synthetic generator, the importers and the tests speak this one
language.
"""

from __future__ import annotations

from typing import Any

LEAF_FIELDS = ("category", "color", "type", "defect")
OPERATORS = ("any", "all", "not")
MAX_DEPTH = 8  # queries are written by programs; a deeper one is a bug, not a sentence


def _leaf_matches(obj: dict, leaf: dict) -> bool:
    if leaf.get("category") and obj["category"] != leaf["category"]:
        return False
    if leaf.get("color") and obj["color"] != leaf["color"]:
        return False
    if leaf.get("type") and leaf["type"] not in obj.get("types", ()):
        return False
    defect = leaf.get("defect")
    if defect == "any":
        return bool(obj["defects"])
    if defect:
        return defect in obj["defects"]
    return True


def matches(obj: dict, select: dict, _depth: int = 0) -> bool:
    """Whether the scene object ``obj`` (category, color, defects, and types if any) is selected by ``select``."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"query nested deeper than {MAX_DEPTH} levels")
    if "any" in select:
        return any(matches(obj, s, _depth + 1) for s in select["any"])
    if "all" in select:
        return all(matches(obj, s, _depth + 1) for s in select["all"])
    if "not" in select:
        return not matches(obj, select["not"], _depth + 1)
    return _leaf_matches(obj, select)


def select_objects(objects: list[dict], select: dict) -> list[dict]:
    """The objects ``select`` picks, in scene order."""
    return [o for o in objects if matches(o, select)]


def context(select: dict) -> dict:
    """The selection with its negations dropped: the parts an instruction is *about*.

    "undamaged nuts" is about the nuts; "everything but the gears" is about every part. The
    first stage of the detector is trained to find this context, and the later stages to pick
    the answer out of it.
    """
    if "not" in select:
        return {}
    if "all" in select:
        kept = [context(s) for s in select["all"] if "not" not in s]
        kept = [s for s in kept if s]
        return kept[0] if len(kept) == 1 else ({"all": kept} if kept else {})
    return select


def validate(select: Any, _depth: int = 0) -> None:
    """ValueError naming what is wrong with a selection (an unknown key, an empty list, ...)."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"query nested deeper than {MAX_DEPTH} levels")
    if not isinstance(select, dict):
        raise ValueError(f"a selection must be a mapping, got {type(select).__name__}")  # noqa: TRY004 - one error type for callers
    ops = [k for k in select if k in OPERATORS]
    if ops:
        if len(select) != 1:
            raise ValueError(f"an {ops[0]!r} selection has no other keys, got {sorted(select)}")
        value = select[ops[0]]
        if ops[0] == "not":
            validate(value, _depth + 1)
            return
        if not isinstance(value, list) or not value:
            raise ValueError(f"{ops[0]!r} takes a non-empty list of selections")
        for s in value:
            validate(s, _depth + 1)
        return
    unknown = sorted(set(select) - set(LEAF_FIELDS))
    if unknown:
        raise ValueError(f"unknown selection key(s) {unknown} (valid: {', '.join(LEAF_FIELDS + OPERATORS)})")
    for key, value in select.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"selection {key!r} must be a string or null, got {value!r}")

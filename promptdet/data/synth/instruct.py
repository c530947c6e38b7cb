"""Turn a scene's facts into instruction pairs whose boxes are exactly right.

Each pair carries a ``query`` (the structured meaning of its instruction), so its boxes can be
recomputed from ``scenes.jsonl`` alone. Queries are only emitted when their answer is clear: a
"leftmost" part that wins by a visible margin, a "largest" part clearly larger by every measure,
a relation with exactly one part on the named side of a reference that is unique in the scene.
Wording comes from ``templates``; meaning lives here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from promptdet.data.pairs import InstructionPair
from promptdet.data.query import matches
from promptdet.data.synth import templates as T
from promptdet.data.synth.logic import BUILDERS as LOGIC_BUILDERS
from promptdet.data.synth.logic import LOGIC_TYPES
from promptdet.data.vocab import (
    CATEGORIES,
    COLORS,
    COLORS_BY_CATEGORY,
    DEFECTS,
    DEFECTS_BY_CATEGORY,
)

POSITIVE_TYPES = ("category", "attribute", "defect", "spatial", "superlative", "relation", "count")
# The boolean forms are asked only when named (``type_weights``), so the default mix, and the
# stored val/test files made with it, stay as they were.
ALL_TYPES = POSITIVE_TYPES + LOGIC_TYPES

# Margins that make an answer unambiguous to a person (fractions of the image side / ratios).
SPATIAL_MARGIN = 0.04  # the extreme part's centre beats the runner-up by 4% of the image side
SIZE_RATIO = 1.3  # the largest part is 1.3x the runner-up's area (both box and visible pixels)
NEXT_TO_RATIO = 1.6  # the nearest part is 1.6x closer than the next one


# ---- geometry of the answers, kept simple enough to check by hand ----

def _center(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _extreme_key(extreme: str):
    return {
        "leftmost": lambda o: _center(o["bbox"])[0],
        "rightmost": lambda o: -_center(o["bbox"])[0],
        "topmost": lambda o: _center(o["bbox"])[1],
        "bottommost": lambda o: -_center(o["bbox"])[1],
        "largest": lambda o: -_area(o["bbox"]),
        "smallest": lambda o: _area(o["bbox"]),
    }[extreme]


def _relation_holds(obj: dict, ref: dict, relation: str) -> bool:
    cx, cy = _center(obj["bbox"])
    rx1, ry1, rx2, ry2 = ref["bbox"]
    return {"left_of": cx < rx1, "right_of": cx > rx2, "above": cy < ry1, "below": cy > ry2}[relation]


def _gap(a, b) -> float:
    dx = max(b[0] - a[2], a[0] - b[2], 0.0)
    dy = max(b[1] - a[3], a[1] - b[3], 0.0)
    return float(np.hypot(dx, dy))


def _dist(a, b) -> float:
    (ax, ay), (bx, by) = _center(a), _center(b)
    return float(np.hypot(ax - bx, ay - by))


# ---- query builders: each returns (type, query, target objects, instruction) or None ----

def _selectors_present(objects: list[dict], kind: str) -> list[dict]:
    cats = sorted({o["category"] for o in objects})
    if kind == "category":
        return [{"category": c} for c in cats] + [{}]
    if kind == "attribute":
        pairs = sorted({(o["color"], o["category"]) for o in objects})
        return [{"category": c, "color": col} for col, c in pairs] + [{"color": col} for col in sorted({o["color"] for o in objects})]
    defects = sorted({d for o in objects for d in o["defects"]})
    return ([{"defect": "any"}]
            + [{"category": c, "defect": "any"} for c in cats]
            + [{"category": c, "defect": d} for c in cats for d in defects]
            + [{"defect": d} for d in defects])


def _set_query(rng, objects, split, kind):
    options = _selectors_present(objects, kind)
    if kind == "category" and rng.random() > 0.1:  # "all parts" now and then, named kinds mostly
        options = options[:-1]
    if kind == "defect" and rng.random() < 0.7:  # "the defective parts" now and then, specifics mostly
        options = options[1:]
    options = [s for s in options if any(matches(o, s) for o in objects)]
    if not options:
        return None
    select = options[int(rng.integers(len(options)))]
    text = T.set_instruction(rng, split, select.get("category"), select.get("color"), select.get("defect"))
    return kind, {"select": select}, [o for o in objects if matches(o, select)], text


def _describe(rng, objects, candidates_min: int = 2):
    """A selector naming a group of at least ``candidates_min`` parts (by kind, colour+kind, or any)."""
    options = []
    for c in sorted({o["category"] for o in objects}):
        options.append({"category": c})
    for col, c in sorted({(o["color"], o["category"]) for o in objects}):
        options.append({"category": c, "color": col})
    if rng.random() < 0.15:
        options.append({})
    options = [s for s in options if sum(matches(o, s) for o in objects) >= candidates_min]
    if not options:
        return None
    return options[int(rng.integers(len(options)))]


def _extreme_query(rng, objects, split, kind, size_wh):
    extremes = ("leftmost", "rightmost", "topmost", "bottommost") if kind == "spatial" else ("largest", "smallest")
    for _ in range(4):
        select = _describe(rng, objects)
        if select is None:
            return None
        extreme = extremes[int(rng.integers(len(extremes)))]
        group = sorted((o for o in objects if matches(o, select)), key=_extreme_key(extreme))
        best, runner = group[0], group[1]
        if kind == "spatial":
            axis = 0 if extreme in ("leftmost", "rightmost") else 1
            margin = abs(_center(best["bbox"])[axis] - _center(runner["bbox"])[axis])
            if margin < SPATIAL_MARGIN * size_wh[axis]:
                continue
        else:
            big, small = (best, runner) if extreme == "largest" else (runner, best)
            if not (_area(big["bbox"]) >= SIZE_RATIO * _area(small["bbox"])
                    and big.get("visible_px", 1) >= SIZE_RATIO * small.get("visible_px", 0)):
                continue
        text = T.extreme_instruction(rng, split, extreme, select.get("category"), select.get("color"))
        return kind, {"select": select, "extreme": extreme}, [best], text
    return None


def _unique_references(objects):
    """Parts a phrase names uniquely: the only one of its kind, or the only one of its colour and kind."""
    refs = []
    for o in objects:
        if sum(p["category"] == o["category"] for p in objects) == 1:
            refs.append((o, None))
        elif sum(p["category"] == o["category"] and p["color"] == o["color"] for p in objects) == 1:
            refs.append((o, o["color"]))
    return refs


def _relation_query(rng, objects, split, size_wh):
    refs = _unique_references(objects)
    if not refs:
        return None
    for _ in range(6):
        ref, ref_color = refs[int(rng.integers(len(refs)))]
        cats = sorted({o["category"] for o in objects if o is not ref})
        if not cats:
            return None
        cat = cats[int(rng.integers(len(cats)))]
        if cat == ref["category"] and ref_color is None:
            continue  # "the can left of the can" names nothing sensible
        group = [o for o in objects if o is not ref and o["category"] == cat]
        relation = ("left_of", "right_of", "above", "below", "next_to")[int(rng.integers(5))]
        if relation == "next_to":
            group.sort(key=lambda o: _dist(o["bbox"], ref["bbox"]))
            near = group[0]
            ref_side = max(ref["bbox"][2] - ref["bbox"][0], ref["bbox"][3] - ref["bbox"][1])
            if _gap(near["bbox"], ref["bbox"]) > 0.75 * ref_side:
                continue
            if len(group) > 1 and _dist(group[1]["bbox"], ref["bbox"]) < NEXT_TO_RATIO * _dist(near["bbox"], ref["bbox"]):
                continue
            target = near
        else:
            hits = [o for o in group if _relation_holds(o, ref, relation)]
            if len(hits) != 1:
                continue
            # The others must be clearly on the far side of the reference's centre, not straddling it.
            axis, sign = {"left_of": (0, 1), "right_of": (0, -1), "above": (1, 1), "below": (1, -1)}[relation]
            rc = _center(ref["bbox"])[axis]
            if any(sign * (_center(o["bbox"])[axis] - rc) <= 0 for o in group if o is not hits[0]):
                continue
            target = hits[0]
        text = T.relation_instruction(rng, split, relation, cat, ref["category"], ref_color)
        query = {"select": {"category": cat}, "relation": relation, "ref_id": ref["id"],
                 "ref_select": {"category": ref["category"], "color": ref_color}}
        return "relation", query, [target], text
    return None


def _count_query(rng, objects, split):
    cats = sorted({o["category"] for o in objects})
    cat = cats[int(rng.integers(len(cats)))]
    k = sum(o["category"] == cat for o in objects)
    op = ("more_than", "at_least", "fewer_than", "exactly")[int(rng.integers(4))]
    # Thresholds near the true count, so about half the conditions hold.
    n = int(max(1, k + rng.integers(-2, 3)))
    holds = {"more_than": k > n, "at_least": k >= n, "fewer_than": k < n, "exactly": k == n}[op]
    text = T.count_instruction(rng, split, op, n, cat)
    targets = [o for o in objects if o["category"] == cat] if holds else []
    return "count", {"select": {"category": cat}, "op": op, "n": n}, targets, text


# Which kind of absent query to ask, as drawn weights, and how often a colour or defect is tied to
# a part kind that is present ("the blue bottles" rather than "blue parts"). The default mix
# matches the stored val/test files. "Hard" negatives name a part that *is* in the scene with a
# colour or defect that is not: the near misses ("the blue bottles" among red ones) that a
# detector keyed on the noun gets wrong, so training asks them more often. "defect" asks mostly for a defect that no part has ("the
# scratched gears" among clean and cracked ones): the near miss the detector gets wrong most.
# "confusable" asks most of its defects about a part that has *another* defect ("the dented
# bottles" when the only bottle is cracked, "scratched parts" among cracked ones): on val the
# bundled model answers 28 of 59 such queries, and only 5 of 302 absent colours and part kinds
# (benchmarks/defect_confusion.py), so the kind of defect is what the detector must learn there.
ABSENT_KINDS = {"default": (("category", "category", "color", "defect"), 0.7),
                "hard": (("category", "color", "color", "defect", "defect"), 0.9),
                "defect": (("category", "color", "defect", "defect", "defect", "defect"), 0.9),
                "confusable": (("category", "color", "defect", "other_defect", "other_defect", "other_defect"), 0.9)}


def _absent_query(rng, objects, split, mix: str = "default"):
    """A category, colour or defect that is nowhere in the image; the answer is empty."""
    present_cats = {o["category"] for o in objects}
    present_cols = {o["color"] for o in objects}
    present_defects = {d for o in objects for d in o["defects"]}
    kinds, name_part = ABSENT_KINDS[mix]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "other_defect":
        # Tie the query to a part that has another defect (or to no kind: "dented parts").
        defective = [o["category"] for o in objects if o["defects"]]
        query = _absent_defect(rng, split, defective, name_part - 0.2, present_defects) if defective else None
        if query:
            return query
        kind = "defect"
    if kind == "color":
        # The draw comes first, so an empty scene (no kind to name) keeps the same random stream.
        cat = sorted(present_cats)[int(rng.integers(len(present_cats)))] \
            if rng.random() < name_part and present_cats else None
        cols = [c for c in (COLORS_BY_CATEGORY[cat] if cat else COLORS) if c not in present_cols]
        if cols:
            select = {"category": cat, "color": cols[int(rng.integers(len(cols)))]}
            return _absent(rng, split, select, kind)
    if kind == "defect":
        if not present_defects and rng.random() < 0.4:
            return _absent(rng, split, {"defect": "any"}, kind)
        query = _absent_defect(rng, split, sorted(present_cats), name_part - 0.1, present_defects)
        if query:
            return query
    cats = [c for c in CATEGORIES if c not in present_cats]
    if not cats:
        return None
    return _absent(rng, split, {"category": cats[int(rng.integers(len(cats)))]}, "category")


def _absent_defect(rng, split, part_kinds: list[str], p_named: float, present_defects: set[str]):
    """A defect that no part has, named on one of ``part_kinds`` (drawn) with probability p_named,
    else on no kind ("dented parts"); None when that kind of part has every defect it can have."""
    cat = part_kinds[int(rng.integers(len(part_kinds)))] if rng.random() < p_named and part_kinds else None
    defects = [d for d in (DEFECTS_BY_CATEGORY[cat] if cat else DEFECTS) if d not in present_defects]
    if not defects:
        return None
    return _absent(rng, split, {"category": cat, "defect": defects[int(rng.integers(len(defects)))]}, "defect")


def _absent(rng, split, select, kind):
    select = {k: v for k, v in select.items() if v is not None}
    text = T.set_instruction(rng, split, select.get("category"), select.get("color"), select.get("defect"))
    return "absent", {"select": select, "absent": kind}, [], text


def weighted_types(type_weights: dict[str, int] | None = None) -> tuple[str, ...]:
    """The ``types`` cycle of ``generate_instructions`` in which a type of weight w gets w turns
    per round ({"defect": 2}: defect instructions asked twice as often). The positive types are
    always in it; a boolean form (``LOGIC_TYPES``) only when it is given a weight.
    ValueError names a bad entry."""
    weights = type_weights or {}
    for name, value in weights.items():
        if name not in ALL_TYPES:
            raise ValueError(f"unknown type {name!r} (valid: {', '.join(ALL_TYPES)})")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10:
            raise ValueError(f"'{name}={value}': the weight must be a whole number from 1 to 10")
    return tuple(t for t in ALL_TYPES if t in POSITIVE_TYPES or t in weights for _ in range(weights.get(t, 1)))


def generate_instructions(scene: dict, rng: np.random.Generator, split: str = "train", per_image: int = 6,
                          absent_rate: float = 0.2, types: tuple[str, ...] = POSITIVE_TYPES,
                          absent_mix: str = "default") -> list[InstructionPair]:
    """Instruction pairs for one scene (a ``scenes.jsonl`` record), about ``absent_rate`` of them absent.

    absent_mix: ``default``, ``hard`` (more near-miss colours and defects) or ``defect`` (mostly
    near-miss defects), see ``ABSENT_KINDS``.
    """
    if not 0.0 <= absent_rate <= 1.0:
        raise ValueError(f"absent_rate must be in [0, 1], got {absent_rate}")
    if absent_mix not in ABSENT_KINDS:
        raise ValueError(f"absent_mix must be one of {sorted(ABSENT_KINDS)}, got {absent_mix!r}")
    objects = scene["objects"]
    size_wh = (scene["width"], scene["height"])
    n_absent = int(rng.binomial(per_image, absent_rate)) if objects else per_image
    pairs: list[InstructionPair] = []
    seen: set[str] = set()

    def add(built) -> None:
        if built is None:
            return
        kind, query, targets, text = built
        key = repr((kind, sorted(query.items(), key=str)))
        if key in seen:
            return
        seen.add(key)
        pairs.append(InstructionPair(
            image=scene["image"], instruction=text, type=kind,
            boxes_xyxy=[list(map(float, o["bbox"])) for o in targets],
            object_ids=[int(o["id"]) for o in targets], extra={"query": query}))

    for _ in range(n_absent * 3):
        if len(pairs) >= n_absent:
            break
        add(_absent_query(rng, objects, split, absent_mix))
    if objects:
        # Cycle through the types in a shuffled order, so every type gets its turn on every scene
        # that allows it; a type with no clear answer here is simply passed over.
        order = [types[i] for i in rng.permutation(len(types))]
        for attempt in range(per_image * 4):
            if len(pairs) >= per_image:
                break
            add(_build(rng, objects, split, order[attempt % len(order)], size_wh))
    return pairs


def _build(rng, objects, split, kind, size_wh) -> Any:
    if kind in ("category", "attribute", "defect"):
        return _set_query(rng, objects, split, kind)
    if kind in ("spatial", "superlative"):
        return _extreme_query(rng, objects, split, kind, size_wh)
    if kind == "relation":
        return _relation_query(rng, objects, split, size_wh)
    if kind == "count":
        return _count_query(rng, objects, split)
    if kind in LOGIC_BUILDERS:
        return LOGIC_BUILDERS[kind](rng, objects, split)
    raise ValueError(f"unknown instruction type {kind!r}; expected one of {ALL_TYPES}")

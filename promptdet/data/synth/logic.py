"""Boolean instructions over a scene's facts: negation, exclusion, disjunction, conjunction, jargon.

Each builder returns ``(type, query, targets, text)`` like those of ``instruct``, or None when the
scene offers no such question. The query's ``select`` is an expression of ``promptdet.data.query``
and ``form`` names the form; a question whose answer is empty ("undamaged nuts" when every nut is
cracked) becomes an ``absent`` pair whose ``absent`` names the form, so the absent rate can be
read per form. Builders prefer questions where the boolean part matters (some nuts are cracked,
some are not), since those are the ones a detector keyed on the noun gets wrong.
"""

from __future__ import annotations

from promptdet.data.query import select_objects
from promptdet.data.synth import logic_templates as L
from promptdet.data.vocab import CATEGORIES, COLORS_BY_CATEGORY, DEFECTS_BY_CATEGORY

LOGIC_TYPES = ("negation", "exclusion", "disjunction", "conjunction", "jargon")
INFORMATIVE = 0.85  # how often a builder insists that the boolean part changes the answer


def _pick(rng, options: list):
    return options[int(rng.integers(len(options)))] if options else None


def _result(form: str, select: dict, objects: list[dict], text: str):
    targets = select_objects(objects, select)
    if targets:
        return form, {"select": select, "form": form}, targets, text
    return "absent", {"select": select, "absent": form}, [], text


def _on_kind(category: str | None, expr: dict) -> dict:
    return {"all": [{"category": category}, expr]} if category else expr


def negation_query(rng, objects: list[dict], split: str):
    """"undamaged nuts", "bottles that still have their caps", "cans other than the red ones"."""
    cats = sorted({o["category"] for o in objects})
    insist = rng.random() < INFORMATIVE
    for _ in range(6):
        cat = _pick(rng, cats) if rng.random() < 0.8 else None
        group = [o for o in objects if cat is None or o["category"] == cat]
        roll = rng.random()
        if roll < 0.3 and cat is not None:
            color = _pick(rng, sorted({o["color"] for o in group}) if insist else list(COLORS_BY_CATEGORY[cat]))
            negated, text = {"color": color}, L.negation_instruction(rng, split, cat, color=color)
        else:
            kinds = DEFECTS_BY_CATEGORY[cat] if cat else ()
            if cat is not None and not DEFECTS_BY_CATEGORY[cat]:
                continue  # "uncracked screws": screws carry no defects, so the negation says nothing
            defect = "any" if (roll < 0.75 or not kinds) else _pick(rng, list(kinds))
            negated, text = {"defect": defect}, L.negation_instruction(rng, split, cat, defect=defect)
        select = _on_kind(cat, {"not": negated})
        excluded = len(group) - len(select_objects(group, {"not": negated}))
        if insist and excluded == 0:
            continue
        return _result("negation", select, objects, text)
    return None


def exclusion_query(rng, objects: list[dict], split: str):
    """"everything but the gears", "all parts except the red cans"."""
    cats = sorted({o["category"] for o in objects})
    if len(cats) < 2 and rng.random() < INFORMATIVE:
        return None
    cat = _pick(rng, cats)
    color = None
    if rng.random() < 0.3:
        color = _pick(rng, sorted({o["color"] for o in objects if o["category"] == cat}))
    excluded = {"category": cat, "color": color} if color else {"category": cat}
    return _result("exclusion", {"not": excluded}, objects, L.exclusion_instruction(rng, split, cat, color))


def disjunction_query(rng, objects: list[dict], split: str):
    """"cans with a dent or a scratch", "blue or red boxes", "the nuts and the washers"."""
    cats = sorted({o["category"] for o in objects})
    roll = rng.random()
    if roll < 0.35:
        present = _pick(rng, cats)
        other = _pick(rng, [c for c in CATEGORIES if c != present])
        pair = tuple(sorted((present, other)) if rng.random() < 0.5 else (other, present))
        select = {"any": [{"category": c} for c in pair]}
        return _result("disjunction", select, objects, L.disjunction_instruction(rng, split, None, categories=pair))
    cat = _pick(rng, cats) if rng.random() < 0.8 else None
    if roll < 0.65 and cat is not None:
        present = _pick(rng, sorted({o["color"] for o in objects if o["category"] == cat}))
        others = [c for c in COLORS_BY_CATEGORY[cat] if c != present]
        if not others:
            return None
        colors = (present, _pick(rng, others))
        colors = colors if rng.random() < 0.5 else colors[::-1]
        select = _on_kind(cat, {"any": [{"color": c} for c in colors]})
        return _result("disjunction", select, objects, L.disjunction_instruction(rng, split, cat, colors=colors))
    kinds = list(DEFECTS_BY_CATEGORY[cat]) if cat else sorted({d for ds in DEFECTS_BY_CATEGORY.values() for d in ds})
    if len(kinds) < 2:
        return None
    seen = sorted({d for o in objects if cat is None or o["category"] == cat for d in o["defects"]})
    first = _pick(rng, seen) if seen and rng.random() < INFORMATIVE else _pick(rng, kinds)
    defects = (first, _pick(rng, [d for d in kinds if d != first]))
    defects = defects if rng.random() < 0.5 else defects[::-1]
    select = _on_kind(cat, {"any": [{"defect": d} for d in defects]})
    return _result("disjunction", select, objects, L.disjunction_instruction(rng, split, cat, defects=defects))


def conjunction_query(rng, objects: list[dict], split: str):
    """A colour and a defect on one kind: "scratched red cans"; now and then a near miss whose colour
    and defect are both in the scene, but never on one part of that kind (an empty answer)."""
    defective = [o for o in objects if o["defects"]]
    if not defective:
        return None
    if rng.random() < 0.25:
        cat = _pick(rng, sorted({o["category"] for o in defective}))
        colors = sorted({o["color"] for o in objects if o["category"] == cat})
        defects = sorted({d for o in objects if o["category"] == cat for d in o["defects"]})
        combos = [(c, d) for c in colors for d in defects
                  if not any(o["category"] == cat and o["color"] == c and d in o["defects"] for o in objects)]
        if combos:
            color, defect = _pick(rng, combos)
            select = {"category": cat, "color": color, "defect": defect}
            return _result("conjunction", select, objects,
                           L.conjunction_instruction(rng, split, cat, color, defect))
    part = _pick(rng, defective)
    defect = _pick(rng, list(part["defects"]))
    cat = part["category"] if rng.random() < 0.85 else None
    select = {"category": cat, "color": part["color"], "defect": defect} if cat else \
        {"color": part["color"], "defect": defect}
    return _result("conjunction", select, objects, L.conjunction_instruction(rng, split, cat, part["color"], defect))


def jargon_query(rng, objects: list[dict], split: str):
    """"NG bottles", "the rejects", "parts that pass QC": any defect, or none, in the inspector's words."""
    cats = sorted({o["category"] for o in objects if DEFECTS_BY_CATEGORY[o["category"]]})
    cat = _pick(rng, cats) if cats and rng.random() < 0.6 else None
    passing = rng.random() < 0.35
    select = _on_kind(cat, {"not": {"defect": "any"}}) if passing else \
        ({"category": cat, "defect": "any"} if cat else {"defect": "any"})
    return _result("jargon", select, objects, L.jargon_instruction(rng, split, cat, passing))


EMPTY_SHARE = 0.2  # how often a question whose answer turns out empty is kept (as an absent pair)


def _mostly_answered(builder):
    """The builder, retried a few times while its answer is empty: a scene offers both kinds of
    question, and empty answers should be the exception they are on a real line."""
    def build(rng, objects: list[dict], split: str):
        for _ in range(5):
            built = builder(rng, objects, split)
            if built is not None and (built[0] != "absent" or rng.random() < EMPTY_SHARE):
                return built
        return None
    build.__doc__ = builder.__doc__
    return build


BUILDERS = {name: _mostly_answered(b) for name, b in (
    ("negation", negation_query), ("exclusion", exclusion_query), ("disjunction", disjunction_query),
    ("conjunction", conjunction_query), ("jargon", jargon_query))}

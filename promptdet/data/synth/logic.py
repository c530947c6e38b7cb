"""Boolean instructions over a scene's facts: negation, exclusion, disjunction, conjunction, jargon.

Each builder returns ``(type, query, targets, text)`` like those of ``instruct``, or None when the
scene offers no such question. ``lex`` names what exists (the synthetic line's parts, or a user's
classes and attributes); a colour in the wording of the synthetic line may be any look in a user's. The query's ``select`` is an expression of ``promptdet.data.query``
and ``form`` names the form; a question whose answer is empty ("undamaged nuts" when every nut is
cracked) becomes an ``absent`` pair whose ``absent`` names the form, so the absent rate can be
read per form. Builders prefer questions where the boolean part matters (some nuts are cracked,
some are not), since those are the ones a detector keyed on the noun gets wrong.
"""

from __future__ import annotations

from promptdet.data.lexicon import Lexicon, looks_of
from promptdet.data.query import select_objects
from promptdet.data.synth import logic_templates as L
from promptdet.data.synth.templates import SYNTH

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


def _looks(objects) -> list[str]:
    return sorted({look for o in objects for look in looks_of(o)})


def negation_query(rng, objects: list[dict], split: str, lex: Lexicon = SYNTH):
    """"undamaged nuts", "bottles that still have their caps", "cans other than the red ones"."""
    cats = sorted({o["category"] for o in objects})
    insist = rng.random() < INFORMATIVE
    for _ in range(6):
        cat = _pick(rng, cats) if rng.random() < 0.8 else None
        group = [o for o in objects if cat is None or o["category"] == cat]
        roll = rng.random()
        if roll < 0.3 and cat is not None:
            color = _pick(rng, _looks(group) if insist else list(lex.looks_by_category[cat]))
            if color is None:
                continue  # no look to negate (a user's boxes may have none)
            negated, text = lex.look_leaf(color), L.negation_instruction(rng, split, cat, color=color, lex=lex)
        else:
            kinds = lex.defects_by_category[cat] if cat else ()
            if (cat is not None and not lex.defects_by_category[cat]) or not lex.defects:
                continue  # "uncracked screws": screws carry no defects, so the negation says nothing
            defect = "any" if (roll < 0.75 or not kinds) else _pick(rng, list(kinds))
            negated, text = {"defect": defect}, L.negation_instruction(rng, split, cat, defect=defect, lex=lex)
        select = _on_kind(cat, {"not": negated})
        excluded = len(group) - len(select_objects(group, {"not": negated}))
        if insist and excluded == 0:
            continue
        return _result("negation", select, objects, text)
    return None


def exclusion_query(rng, objects: list[dict], split: str, lex: Lexicon = SYNTH):
    """"everything but the gears", "all parts except the red cans"."""
    cats = sorted({o["category"] for o in objects})
    if len(cats) < 2 and rng.random() < INFORMATIVE:
        return None
    cat = _pick(rng, cats)
    color = None
    if rng.random() < 0.3:
        color = _pick(rng, _looks(o for o in objects if o["category"] == cat))
    excluded = {"category": cat, **lex.look_leaf(color)} if color else {"category": cat}
    return _result("exclusion", {"not": excluded}, objects, L.exclusion_instruction(rng, split, cat, color, lex))


def disjunction_query(rng, objects: list[dict], split: str, lex: Lexicon = SYNTH):
    """"cans with a dent or a scratch", "blue or red boxes", "the nuts and the washers"."""
    cats = sorted({o["category"] for o in objects})
    roll = rng.random()
    if roll < 0.35:
        present = _pick(rng, cats)
        other = _pick(rng, [c for c in lex.categories if c != present])
        if other is None:
            return None  # a single class: there is no second kind to name
        pair = tuple(sorted((present, other)) if rng.random() < 0.5 else (other, present))
        select = {"any": [{"category": c} for c in pair]}
        return _result("disjunction", select, objects,
                       L.disjunction_instruction(rng, split, None, categories=pair, lex=lex))
    cat = _pick(rng, cats) if rng.random() < 0.8 else None
    if roll < 0.65 and cat is not None:
        present = _pick(rng, _looks(o for o in objects if o["category"] == cat))
        if present is None:
            return None
        others = [c for c in lex.same_kind(present, lex.looks_by_category[cat]) if c != present]
        if not others:
            return None
        colors = (present, _pick(rng, others))
        colors = colors if rng.random() < 0.5 else colors[::-1]
        select = _on_kind(cat, {"any": [lex.look_leaf(c) for c in colors]})
        return _result("disjunction", select, objects,
                       L.disjunction_instruction(rng, split, cat, colors=colors, lex=lex))
    kinds = list(lex.defects_by_category[cat]) if cat else sorted({d for ds in lex.defects_by_category.values() for d in ds})
    if len(kinds) < 2:
        return None
    seen = sorted({d for o in objects if cat is None or o["category"] == cat for d in o["defects"]})
    first = _pick(rng, seen) if seen and rng.random() < INFORMATIVE else _pick(rng, kinds)
    defects = (first, _pick(rng, [d for d in kinds if d != first]))
    defects = defects if rng.random() < 0.5 else defects[::-1]
    select = _on_kind(cat, {"any": [{"defect": d} for d in defects]})
    return _result("disjunction", select, objects, L.disjunction_instruction(rng, split, cat, defects=defects, lex=lex))


def conjunction_query(rng, objects: list[dict], split: str, lex: Lexicon = SYNTH):
    """A look and a defect on one kind: "scratched red cans"; now and then a near miss whose look
    and defect are both in the scene, but never on one part of that kind (an empty answer)."""
    defective = [o for o in objects if o["defects"] and looks_of(o)]
    if not defective:
        return None
    if rng.random() < 0.25:
        cat = _pick(rng, sorted({o["category"] for o in defective}))
        colors = _looks(o for o in objects if o["category"] == cat)
        defects = sorted({d for o in objects if o["category"] == cat for d in o["defects"]})
        combos = [(c, d) for c in colors for d in defects
                  if not any(o["category"] == cat and c in looks_of(o) and d in o["defects"] for o in objects)]
        if combos:
            color, defect = _pick(rng, combos)
            select = {"category": cat, **lex.look_leaf(color), "defect": defect}
            return _result("conjunction", select, objects,
                           L.conjunction_instruction(rng, split, cat, color, defect, lex))
    part = _pick(rng, defective)
    defect = _pick(rng, list(part["defects"]))
    cat = part["category"] if rng.random() < 0.85 else None
    color = looks_of(part)[0] if len(looks_of(part)) == 1 else _pick(rng, looks_of(part))
    select = {"category": cat, **lex.look_leaf(color), "defect": defect} if cat else \
        {**lex.look_leaf(color), "defect": defect}
    return _result("conjunction", select, objects, L.conjunction_instruction(rng, split, cat, color, defect, lex))


def jargon_query(rng, objects: list[dict], split: str, lex: Lexicon = SYNTH):
    """"NG bottles", "the rejects", "parts that pass QC": any defect, or none, in the inspector's words."""
    cats = sorted({o["category"] for o in objects if lex.defects_by_category[o["category"]]})
    cat = _pick(rng, cats) if cats and rng.random() < 0.6 else None
    passing = rng.random() < 0.35
    select = _on_kind(cat, {"not": {"defect": "any"}}) if passing else \
        ({"category": cat, "defect": "any"} if cat else {"defect": "any"})
    return _result("jargon", select, objects, L.jargon_instruction(rng, split, cat, passing, lex))


EMPTY_SHARE = 0.2  # how often a question whose answer turns out empty is kept (as an absent pair)


def _mostly_answered(builder):
    """The builder, retried a few times while its answer is empty: a scene offers both kinds of
    question, and empty answers should be the exception they are on a real line."""
    def build(rng, objects: list[dict], split: str, lex: Lexicon = SYNTH):
        for _ in range(5):
            built = builder(rng, objects, split, lex)
            if built is not None and (built[0] != "absent" or rng.random() < EMPTY_SHARE):
                return built
        return None
    build.__doc__ = builder.__doc__
    return build


BUILDERS = {name: _mostly_answered(b) for name, b in (
    ("negation", negation_query), ("exclusion", exclusion_query), ("disjunction", disjunction_query),
    ("conjunction", conjunction_query), ("jargon", jargon_query))}

"""The boolean instructions (negation, exclusion, disjunction, conjunction, jargon): every box is
recomputed from the scene record by an evaluator written here, apart from promptdet.data.query, and
the wording is checked against the meaning (a negation says "not", a disjunction says "or", ...)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from promptdet.data.query import context, matches, validate
from promptdet.data.synth.instruct import generate_instructions, weighted_types
from promptdet.data.synth.logic import LOGIC_TYPES
from promptdet.data.synth.logic_templates import (
    FAIL_ADJ,
    FAIL_NOUNS,
    FAIL_POST,
    GOOD_ADJ,
    PASS_ADJ,
    PASS_POST,
)
from promptdet.data.vocab import CATEGORIES, COLORS, DEFECTS_BY_CATEGORY


def selected(obj: dict, sel: dict) -> bool:
    """An evaluator of the selection language written apart from promptdet.data.query."""
    keys = set(sel)
    if keys == {"not"}:
        return not selected(obj, sel["not"])
    if keys == {"any"}:
        return any(selected(obj, s) for s in sel["any"])
    if keys == {"all"}:
        return all(selected(obj, s) for s in sel["all"])
    ok = True
    if sel.get("category") is not None:
        ok &= obj["category"] == sel["category"]
    if sel.get("color") is not None:
        ok &= obj["color"] == sel["color"]
    if sel.get("defect") == "any":
        ok &= len(obj["defects"]) > 0
    elif sel.get("defect") is not None:
        ok &= sel["defect"] in obj["defects"]
    return ok


def random_scene(rng: np.random.Generator, n: int) -> dict:
    objects = []
    for i in range(n):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        defects = [d for d in DEFECTS_BY_CATEGORY[cat] if rng.random() < 0.25][:1]
        x, y = float(rng.integers(0, 560)), float(rng.integers(0, 400))
        objects.append({"id": i, "category": cat, "color": COLORS[int(rng.integers(len(COLORS)))], "defects": defects,
                        "bbox": [x, y, x + 40 + i, y + 40], "visible_px": 1600, "visible_frac": 1.0})
    return {"image": "x.jpg", "width": 640, "height": 480, "objects": objects}


@pytest.fixture(scope="module")
def logic_pairs():
    rng = np.random.default_rng(7)
    out = []
    for split in ("train", "test"):
        for _ in range(150):
            scene = random_scene(rng, int(rng.integers(1, 10)))
            out += [(scene, p) for p in generate_instructions(scene, rng, split, per_image=6, absent_rate=0.0,
                                                               types=LOGIC_TYPES)]
    return out


def test_every_form_occurs_and_some_answers_are_empty(logic_pairs):
    types = {p.type for _, p in logic_pairs}
    assert set(LOGIC_TYPES) <= types
    absent = [p for _, p in logic_pairs if p.type == "absent"]
    assert absent and {p.extra["query"]["absent"] for p in absent} <= set(LOGIC_TYPES)
    assert len(absent) < 0.3 * len(logic_pairs)  # empty answers are the exception


def test_every_box_recomputed_from_the_scene(logic_pairs):
    for scene, p in logic_pairs:
        q = p.extra["query"]
        validate(q["select"])
        want = sorted(o["bbox"] for o in scene["objects"] if selected(o, q["select"]))
        assert sorted(p.boxes_xyxy) == want, (p.instruction, q)
        assert (p.type == "absent") == (not want)


_NEGATING = re.compile(r"\b(not|no|non-|without|other than|except|but|excluding|apart|besides|leaving|isn't|"
                       r"free|still|capped|closed|clean|un\w+|\w+-free|intact|good|sound|flawless|OK|pass\w*|"
                       r"conforming|in-spec|within spec|acceptable|accepted|findings|meets?)", re.IGNORECASE)


@pytest.mark.parametrize("form", LOGIC_TYPES)
def test_wording_says_what_the_query_means(logic_pairs, form):
    pairs = [p for _, p in logic_pairs if p.extra["query"].get("form", p.extra["query"].get("absent")) == form]
    assert pairs
    for p in pairs:
        text, sel = p.instruction.lower(), p.extra["query"]["select"]
        if form in ("negation", "exclusion") or (form == "jargon" and "all" in sel):
            assert _NEGATING.search(text), (form, p.instruction)
        if form == "disjunction":
            assert re.search(r"\b(or|and|and/or|as well as|plus)\b", text), p.instruction
        if form == "jargon" and "all" not in sel and "not" not in sel:
            words = [w.lower() for w in FAIL_ADJ] + [w.lower() for pair in FAIL_POST + FAIL_NOUNS for w in pair]
            assert any(w in text for w in words), p.instruction
        if form == "jargon" and ("all" in sel or "not" in sel):
            words = [w.lower() for w in PASS_ADJ] + [w.lower() for pair in PASS_POST for w in pair]
            assert any(w.lower() in text for w in words), p.instruction


def test_negated_defects_are_ones_the_kind_can_have(logic_pairs):
    for _, p in logic_pairs:
        q = p.extra["query"]
        if q.get("form") == "negation" and "all" in q["select"]:
            kind, negated = q["select"]["all"][0]["category"], q["select"]["all"][1]["not"]
            if negated.get("defect") not in (None, "any"):
                assert negated["defect"] in DEFECTS_BY_CATEGORY[kind]


def test_good_words_never_name_a_defect():
    assert not set(GOOD_ADJ) & {"damaged", "defective", "faulty"}


@pytest.mark.parametrize("select, want", [
    ({}, {}),
    ({"not": {"category": "gear"}}, {}),
    ({"all": [{"category": "nut"}, {"not": {"defect": "any"}}]}, {"category": "nut"}),
    ({"any": [{"category": "nut"}, {"category": "bolt"}]}, {"any": [{"category": "nut"}, {"category": "bolt"}]}),
])
def test_context_drops_the_negations(select, want):
    assert context(select) == want


@pytest.mark.parametrize("select, message", [
    ([], "mapping"), ({"shape": "round"}, "unknown selection key"), ({"any": []}, "non-empty list"),
    ({"not": {"colour": "red"}}, "unknown selection key"), ({"any": [{}], "color": "red"}, "no other keys"),
    ({"category": 3}, "string or null"),
])
def test_bad_selections_are_named(select, message):
    with pytest.raises(ValueError, match=message):
        validate(select)


def test_deep_selections_are_refused():
    sel: dict = {"category": "nut"}
    for _ in range(12):
        sel = {"not": sel}
    with pytest.raises(ValueError, match="deeper"):
        matches({"category": "nut", "color": "red", "defects": []}, sel)


def test_forms_are_opt_in_by_weight():
    assert not set(LOGIC_TYPES) & set(weighted_types({}))
    assert weighted_types({"negation": 2}).count("negation") == 2
    with pytest.raises(ValueError, match="unknown type"):
        weighted_types({"negations": 1})


def test_weights_repeat_types_in_order_and_are_checked_whole():
    from promptdet.data.synth.instruct import ALL_TYPES, POSITIVE_TYPES

    assert weighted_types({}) == weighted_types(None) == POSITIVE_TYPES
    assert weighted_types({"defect": 3, "negation": 1}) == tuple(
        t for t in POSITIVE_TYPES for _ in range(3 if t == "defect" else 1)) + ("negation",)
    assert weighted_types({"count": 10}).count("count") == 10
    for bad in (0, 11, True, 1.5, "2"):
        with pytest.raises(ValueError) as err:
            weighted_types({"count": bad})
        assert str(err.value) == f"'count={bad}': the weight must be a whole number from 1 to 10"
    with pytest.raises(ValueError) as err:
        weighted_types({"negations": 1})
    assert str(err.value) == f"unknown type 'negations' (valid: {', '.join(ALL_TYPES)})"

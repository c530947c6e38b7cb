"""Instruction pairs: boxes recomputed from scenes.jsonl alone, by code written independently of
the generator (plain loops over the records, no import from promptdet.data.synth.instruct)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from promptdet.data.synth import templates as T
from promptdet.data.synth.logic import LOGIC_TYPES
from promptdet.data.vocab import CATEGORIES, COLORS, DEFECTS, INSTRUCTION_TYPES


def _fits(o, sel):
    if sel.get("category") and o["category"] != sel["category"]:
        return False
    if sel.get("color") and o["color"] != sel["color"]:
        return False
    if sel.get("defect") == "any":
        return len(o["defects"]) > 0
    if sel.get("defect"):
        return sel["defect"] in o["defects"]
    return True


def _cx(o):
    return (o["bbox"][0] + o["bbox"][2]) / 2


def _cy(o):
    return (o["bbox"][1] + o["bbox"][3]) / 2


def _area(o):
    return (o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1])


def expected_boxes(pair: dict, objects: list[dict]) -> list[list[float]]:
    """What the instruction's query means, computed by hand from the scene record."""
    q, kind = pair["query"], pair["type"]
    group = [o for o in objects if _fits(o, q["select"])]
    if kind in ("category", "attribute", "defect"):
        return [o["bbox"] for o in group]
    if kind == "absent":
        return []
    if kind in ("spatial", "superlative"):
        measure = {"leftmost": _cx, "rightmost": lambda o: -_cx(o), "topmost": _cy,
                   "bottommost": lambda o: -_cy(o), "largest": lambda o: -_area(o), "smallest": _area}[q["extreme"]]
        return [min(group, key=measure)["bbox"]]
    if kind == "relation":
        ref = next(o for o in objects if o["id"] == q["ref_id"])
        others = [o for o in group if o["id"] != ref["id"]]
        if q["relation"] == "next_to":
            return [min(others, key=lambda o: np.hypot(_cx(o) - _cx(ref), _cy(o) - _cy(ref)))["bbox"]]
        x1, y1, x2, y2 = ref["bbox"]
        test = {"left_of": lambda o: _cx(o) < x1, "right_of": lambda o: _cx(o) > x2,
                "above": lambda o: _cy(o) < y1, "below": lambda o: _cy(o) > y2}[q["relation"]]
        return [o["bbox"] for o in others if test(o)]
    if kind == "count":
        k, n = len(group), q["n"]
        holds = {"more_than": k > n, "at_least": k >= n, "fewer_than": k < n, "exactly": k == n}[q["op"]]
        return [o["bbox"] for o in group] if holds else []
    raise AssertionError(f"unknown type {kind}")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from promptdet.data.synth.generate import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, 40, seed=3, size_wh=(320, 240), workers=1, per_image=8, progress=False)
    return out


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_scene_schema(synth_dir):
    scenes = _read(synth_dir / "scenes.jsonl")
    assert len(scenes) == 40
    for i, s in enumerate(scenes):
        assert s["image"] == f"images/{i:06d}.jpg" and (synth_dir / s["image"]).is_file()
        assert (s["width"], s["height"]) == (320, 240)
        assert 2 <= len(s["objects"]) <= 12
        for o in s["objects"]:
            assert o["category"] in CATEGORIES and o["color"] in COLORS
            assert all(d in DEFECTS for d in o["defects"]) and len(o["defects"]) <= 1
            assert o["defects"] != ["missing_cap"] or o["category"] == "bottle"
            x1, y1, x2, y2 = o["bbox"]
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240


def test_every_box_is_right_for_every_type(synth_dir):
    scenes = {s["image"]: s for s in _read(synth_dir / "scenes.jsonl")}
    pairs = _read(synth_dir / "instructions.jsonl")
    kinds = Counter(p["type"] for p in pairs)
    # The boolean forms are asked only when named (see test_logic_instructions.py), not by default.
    assert set(kinds) == set(INSTRUCTION_TYPES) - set(LOGIC_TYPES), kinds
    for p in pairs:
        expected = expected_boxes(p, scenes[p["image"]]["objects"])
        assert sorted(p["boxes"]) == sorted(expected), p
        if p["type"] in ("spatial", "superlative", "relation"):
            assert len(p["boxes"]) == 1, p
        if p["type"] in ("category", "attribute", "defect"):
            assert p["boxes"], p


def test_absent_targets_are_nowhere_in_the_image(synth_dir):
    scenes = {s["image"]: s for s in _read(synth_dir / "scenes.jsonl")}
    absent = [p for p in _read(synth_dir / "instructions.jsonl") if p["type"] == "absent"]
    assert absent
    for p in absent:
        objects, sel = scenes[p["image"]]["objects"], p["query"]["select"]
        assert p["boxes"] == [] and p["object_ids"] == []
        assert not any(_fits(o, sel) for o in objects), p
        if "color" in sel:
            assert sel["color"] not in {o["color"] for o in objects}
        if sel.get("defect") not in (None, "any"):
            assert sel["defect"] not in {d for o in objects for d in o["defects"]}


def test_absent_rate_near_default(synth_dir):
    pairs = _read(synth_dir / "instructions.jsonl")
    rate = sum(p["type"] == "absent" for p in pairs) / len(pairs)
    assert 0.1 <= rate <= 0.32, rate


def test_object_ids_point_at_the_boxes(synth_dir):
    scenes = {s["image"]: s for s in _read(synth_dir / "scenes.jsonl")}
    for p in _read(synth_dir / "instructions.jsonl"):
        by_id = {o["id"]: o["bbox"] for o in scenes[p["image"]]["objects"]}
        assert [by_id[i] for i in p["object_ids"]] == p["boxes"]


def _sample_texts(split: str, n: int = 400) -> set[str]:
    rng = np.random.default_rng(0)
    texts = set()
    for _ in range(n):
        texts.add(T.set_instruction(rng, split, "bottle", "red"))
        texts.add(T.extreme_instruction(rng, split, "leftmost", "nut"))
        texts.add(T.count_instruction(rng, split, "more_than", 2, "washer"))
        texts.add(T.relation_instruction(rng, split, "left_of", "nut", "gear", None))
    return texts


def test_template_splits_are_disjoint():
    for frames in (T.SET_FRAMES, T.SINGLE_FRAMES, T.COUNT_FRAMES):
        assert frames["train"] and frames["test"]
        assert not set(frames["train"]) & set(frames["test"])
    train, test = _sample_texts("train"), _sample_texts("test")
    assert not train & test, sorted(train & test)[:5]


def test_instructions_vary_flan_style():
    texts = _sample_texts("train", 200)
    assert len(texts) > 300  # many wordings for the same facts
    assert any(t.endswith("?") for t in texts) and any(t.lower().startswith(("please", "kindly")) for t in texts)


@pytest.mark.parametrize("name, plural", [
    ("bottle", "bottles"), ("box", "boxes"), ("traffic light", "traffic lights"), ("person", "people"),
    ("battery", "batteries"), ("toy", "toys"), ("glass", "glasses"), ("brush", "brushes"), ("hex bolt", "hex bolts"),
])
def test_pluralize(name, plural):
    assert T.pluralize(name) == plural


def test_category_instruction_uses_the_name_and_rejects_empty():
    rng = np.random.default_rng(1)
    texts = [T.category_instruction("traffic light", rng, "test") for _ in range(50)]
    assert sum("traffic light" in t.lower() for t in texts) >= 45  # a few may carry a typo
    with pytest.raises(ValueError):
        T.category_instruction("  ", rng)
    with pytest.raises(ValueError):
        T.set_instruction(rng, "validation", "bottle")


def test_typos_never_touch_orientation_or_colour_words():
    rng = np.random.default_rng(5)
    for _ in range(300):
        text = T._typo(rng, "find the leftmost red bottle above the silver gear")
        for word in ("leftmost", "red", "above", "silver"):
            assert word in text


def test_same_seed_same_instructions_and_split_changes_wording(synth_dir, tmp_path):
    from promptdet.data.synth.generate import read_scenes, write_instructions

    scenes = read_scenes(synth_dir)
    write_instructions(scenes, tmp_path / "a.jsonl", seed=3, per_image=8)
    assert (tmp_path / "a.jsonl").read_text() == (synth_dir / "instructions.jsonl").read_text()
    write_instructions(scenes, tmp_path / "t.jsonl", seed=3, per_image=8, split="test")
    train = {p["instruction"] for p in _read(tmp_path / "a.jsonl")}
    test = {p["instruction"] for p in _read(tmp_path / "t.jsonl")}
    assert len(train & test) < 0.02 * len(test)


def test_empty_scene_gives_only_absent_pairs():
    from promptdet.data.synth.instruct import generate_instructions

    scene = {"image": "x.jpg", "width": 640, "height": 480, "objects": []}
    pairs = generate_instructions(scene, np.random.default_rng(0), per_image=4)
    assert pairs and all(p.type == "absent" and p.boxes_xyxy == [] for p in pairs)
    for rate in (1.5, -0.1):
        with pytest.raises(ValueError) as err:
            generate_instructions(scene, np.random.default_rng(0), absent_rate=rate)
        assert str(err.value) == f"absent_rate must be in [0, 1], got {rate}"
    assert all(p.type == "absent" for p in generate_instructions(scene, np.random.default_rng(0), absent_rate=1.0))
    with pytest.raises(ValueError) as err:
        generate_instructions({**scene, "objects": [{"id": 0, "category": "nut", "color": "red", "defects": [],
                                                     "bbox": [1, 1, 9, 9]}]}, np.random.default_rng(0),
                              absent_rate=0.0, types=("colour",))
    assert str(err.value).startswith("unknown instruction type 'colour'; expected one of ('category', ")


# A red scratched bottle, a clean blue can and a clean silver bolt: the near misses to ask about.
NEAR_MISS_SCENE = {"image": "x.jpg", "width": 640, "height": 480, "objects": [
    {"id": 0, "category": "bottle", "color": "red", "defects": ["scratch"], "bbox": [10, 10, 60, 120]},
    {"id": 1, "category": "can", "color": "blue", "defects": [], "bbox": [200, 50, 260, 110]},
    {"id": 2, "category": "bolt", "color": "silver", "defects": [], "bbox": [300, 300, 360, 330]}]}


def _absent_pairs(mix: str, seed: int) -> list:
    """300 draws of NEAR_MISS_SCENE's absent pairs under ``mix``; each checked to match no part."""
    from promptdet.data.synth.instruct import generate_instructions

    rng = np.random.default_rng(seed)
    pairs = [p for _ in range(300) for p in generate_instructions(NEAR_MISS_SCENE, rng, per_image=6, absent_rate=0.5,
                                                                     absent_mix=mix) if p.type == "absent"]
    for p in pairs:
        sel = p.extra["query"]["select"]
        assert not any(_fits(o, sel) for o in NEAR_MISS_SCENE["objects"]), p
        assert subject_problems({"query": p.extra["query"], "instruction": p.instruction}) == [], p
    return pairs


def test_hard_absent_mix_asks_more_near_misses_and_stays_absent():
    """The training-only "hard" and "defect" mixes name present parts with colours/defects they do not have."""
    from promptdet.data.synth.instruct import generate_instructions

    scene = NEAR_MISS_SCENE

    def absent_kinds(mix):
        pairs = _absent_pairs(mix, seed=0)
        return Counter(p.extra["query"]["absent"] for p in pairs), len(pairs)

    default, n_default = absent_kinds("default")
    hard, n_hard = absent_kinds("hard")
    assert hard["category"] / n_hard < default["category"] / n_default - 0.1
    assert (hard["color"] + hard["defect"]) / n_hard > 0.6
    defect, n_defect = absent_kinds("defect")
    assert defect["defect"] / n_defect > hard["defect"] / n_hard + 0.1
    with pytest.raises(ValueError, match="absent_mix"):
        generate_instructions(scene, np.random.default_rng(0), absent_mix="nasty")


def test_confusable_absent_mix_names_the_defective_part_with_another_defect():
    """"confusable" asks for a defect nobody has on the kind of part that carries a different one."""
    from promptdet.data.synth.instruct import generate_instructions

    scene = NEAR_MISS_SCENE

    def defect_queries(mix):
        sels = [p.extra["query"]["select"] for p in _absent_pairs(mix, seed=1) if p.extra["query"]["absent"] == "defect"]
        for sel in sels:
            assert sel["defect"] != "scratch", sel
        return sels

    confusable, defect = defect_queries("confusable"), defect_queries("defect")
    on_bottle = lambda sels: sum(s.get("category") == "bottle" for s in sels) / len(sels)
    assert on_bottle(confusable) > on_bottle(defect) + 0.15
    # A scene with no defective part falls back to absent defects of any part.
    clean = {**scene, "objects": [{**o, "defects": []} for o in scene["objects"]]}
    pairs = generate_instructions(clean, np.random.default_rng(2), per_image=6, absent_rate=1.0, absent_mix="confusable")
    assert pairs and all(p.boxes_xyxy == [] for p in pairs)


# ---- the words agree with the query, and the answer wins by the promised margin ----
# Written from what a reader of the instruction needs, apart from the generator's tables: a query
# for the topmost part must say top (or upper, highest) and never bottom; a count query must name
# its number and its comparison.

SPATIAL_MARGIN = 0.04  # the extreme part's centre beats the runner-up by 4% of the image side
SIZE_RATIO = 1.3       # the largest part has 1.3x the runner-up's area, box and visible pixels
NEXT_TO_RATIO = 1.6    # the nearest part is 1.6x closer than the next one

# query value -> (one of these must be in the text, none of these may be)
DIRECTIONS = {
    "leftmost": (("left",), ("right", "top", "bottom", "upper", "lower", "highest", "lowest")),
    "rightmost": (("right",), ("left", "top", "bottom", "upper", "lower", "highest", "lowest")),
    "topmost": (("top", "upper", "highest"), ("bottom", "lower", "lowest", "left", "right")),
    "bottommost": (("bottom", "lower", "lowest"), ("top", "upper", "highest", "left", "right")),
    "left_of": (("left",), ("right", "above", "below")),
    "right_of": (("right",), ("left", "above", "below")),
    "above": (("above",), ("below", "left", "right")),
    "below": (("below",), ("above", "left", "right")),
    "next_to": (("next to", "beside", "near", "closest", "nearest", "adjacent"), ("left", "right", "above", "below")),
}
# Sizes are not typo-proof, so they are matched word by word allowing one typo.
SIZES = {"largest": ("largest", "biggest", "bigger"), "smallest": ("smallest", "tiniest", "littlest", "smaller")}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COMPARISONS = {"more_than": (("more", "than"), ("over",), ("greater", "than")),
               "at_least": (("at", "least"), ("or", "more"), ("no", "fewer", "than")),
               "fewer_than": (("fewer", "than"), ("less", "than"), ("under",)),
               "exactly": (("exactly",), ("precisely",), ("just",))}


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def _typos(word: str) -> set[str]:
    """``word`` and every form one typo makes of it: neighbours swapped, a letter dropped or doubled."""
    out = {word}
    for j in range(len(word)):
        out |= {word[:j] + word[j + 1:], word[:j] + word[j] + word[j:]}
        if j + 1 < len(word):
            out.add(word[:j] + word[j + 1] + word[j] + word[j + 2:])
    return out


def _says(words: list[str], phrase: tuple[str, ...]) -> bool:
    """Whether ``phrase`` (a word sequence) is in ``words``, each word allowing one typo."""
    n = len(phrase)
    return any(all(words[i + j] in _typos(p) for j, p in enumerate(phrase)) for i in range(len(words) - n + 1))


def _numbers_named(words: list[str]) -> list[int]:
    return [int(w) if w.isdigit() else NUMBERS.index(w) for w in words if w.isdigit() or w in NUMBERS]


def _comparisons_named(words: list[str]) -> set[str]:
    named = {op for op, phrases in COMPARISONS.items() if any(_says(words, p) for p in phrases)}
    if _says(words, ("no", "fewer", "than")):
        named.discard("fewer_than")  # "no fewer than n" is at least n
    return named


def text_problems(pair: dict) -> list[str]:
    """What the instruction's words get wrong about its query ([] when they agree)."""
    q, text = pair["query"], pair["instruction"]
    low, words = text.lower(), _words(text)
    problems = []
    direction = q.get("extreme") if pair["type"] == "spatial" else q.get("relation")
    if direction is not None:
        must, never = DIRECTIONS[direction]
        if not any(w in low for w in must):
            problems.append(f"names no {direction} word")
        problems += [f"{direction} query says {w!r}" for w in never if w in low]
    if pair["type"] == "superlative":
        other = "smallest" if q["extreme"] == "largest" else "largest"
        if not any(_says(words, (w,)) for w in SIZES[q["extreme"]]):
            problems.append(f"names no {q['extreme']} word")
        problems += [f"{q['extreme']} query says {w!r}" for w in SIZES[other] if w in words]
    if pair["type"] == "count":
        numbers = _numbers_named(words)
        if numbers != [q["n"]] and not (numbers == [] and q["n"] < len(NUMBERS)
                                        and any(w in _typos(NUMBERS[q["n"]]) for w in words)):
            problems.append(f"n is {q['n']} but the text names {numbers}")
        if _comparisons_named(words) != {q["op"]}:
            problems.append(f"op is {q['op']} but the text names {sorted(_comparisons_named(words))}")
    return problems


def margin_problems(pair: dict, scene: dict) -> list[str]:
    """Where the answer does not win by the promised margin ([] when it does)."""
    q, objects = pair["query"], scene["objects"]
    group = [o for o in objects if _fits(o, q["select"])]
    problems = []
    if pair["type"] == "spatial":
        axis, side = (0, scene["width"]) if q["extreme"] in ("leftmost", "rightmost") else (1, scene["height"])
        centre = _cx if axis == 0 else _cy
        sign = 1 if q["extreme"] in ("leftmost", "topmost") else -1
        best, runner = sorted(group, key=lambda o: sign * centre(o))[:2]
        if abs(centre(best) - centre(runner)) < SPATIAL_MARGIN * side:
            problems.append(f"{q['extreme']} wins by {abs(centre(best) - centre(runner)):.1f} px of {side}")
    if pair["type"] == "superlative":
        by_area = sorted(group, key=_area, reverse=q["extreme"] == "largest")
        big, small = (by_area[0], by_area[1]) if q["extreme"] == "largest" else (by_area[1], by_area[0])
        if _area(big) < SIZE_RATIO * _area(small):
            problems.append(f"box areas {_area(big)} vs {_area(small)}")
        if big.get("visible_px", 1) < SIZE_RATIO * small.get("visible_px", 0):
            problems.append(f"visible pixels {big.get('visible_px')} vs {small.get('visible_px')}")
    if pair["type"] == "relation" and q["relation"] == "next_to":
        ref = next(o for o in objects if o["id"] == q["ref_id"])
        dist = sorted(np.hypot(_cx(o) - _cx(ref), _cy(o) - _cy(ref)) for o in group if o["id"] != ref["id"])
        if len(dist) > 1 and dist[1] < NEXT_TO_RATIO * dist[0]:
            problems.append(f"nearest at {dist[0]:.1f} px, the next at {dist[1]:.1f} px")
    return problems


@pytest.mark.parametrize("pair, problems", [
    ({"type": "spatial", "query": {"extreme": "topmost"}, "instruction": "the uppermost gear"}, []),
    ({"type": "spatial", "query": {"extreme": "topmost"}, "instruction": "the bottom-most gear"},
     ["names no topmost word", "topmost query says 'bottom'"]),
    ({"type": "relation", "query": {"relation": "next_to"}, "instruction": "the nut beside the gear"}, []),
    ({"type": "superlative", "query": {"extreme": "largest"}, "instruction": "the lragest bolt"}, []),  # one typo
    ({"type": "superlative", "query": {"extreme": "largest"}, "instruction": "the smallest bolt"},
     ["names no largest word", "largest query says 'smallest'"]),
    ({"type": "count", "query": {"op": "more_than", "n": 3}, "instruction": "find the nuts if there are more than three"}, []),
    ({"type": "count", "query": {"op": "more_than", "n": 3}, "instruction": "find the nuts if there are more than two"},
     ["n is 3 but the text names [2]"]),
    ({"type": "count", "query": {"op": "at_least", "n": 12}, "instruction": "12 or more nuts, box them"}, []),
    ({"type": "count", "query": {"op": "at_least", "n": 2}, "instruction": "nuts if there are no fewer than two"}, []),
    ({"type": "count", "query": {"op": "fewer_than", "n": 2}, "instruction": "nuts if there are no fewer than two"},
     ["op is fewer_than but the text names ['at_least']"]),
    ({"type": "category", "query": {"select": {}}, "instruction": ""}, []),  # nothing to name
])
def test_the_text_checker_itself(pair, problems):
    assert text_problems(pair) == problems


def test_every_instruction_names_its_query_and_wins_by_its_margin(synth_dir):
    scenes = {s["image"]: s for s in _read(synth_dir / "scenes.jsonl")}
    pairs = _read(synth_dir / "instructions.jsonl")
    checked = Counter()
    for p in pairs:
        assert text_problems(p) == [], p
        assert margin_problems(p, scenes[p["image"]]) == [], p
        checked[p["type"]] += 1
    assert all(checked[t] >= 5 for t in ("spatial", "superlative", "relation", "count")), checked


# Two parts side by side at (almost) the same height, then stacked at (almost) the same x: a part
# that wins along one axis but ties along the other must only be named along the axis it wins on.
@pytest.mark.parametrize("second, allowed", [
    ([200, 102, 230, 132], {"leftmost", "rightmost"}),
    ([12, 180, 42, 210], {"topmost", "bottommost"}),
    ([16, 105, 46, 135], set()),                                      # no clear winner either way
])
def test_a_spatial_extreme_is_only_asked_along_the_axis_it_wins_on(second, allowed):
    objects = [{"id": 0, "category": "nut", "color": "red", "defects": [], "bbox": [10, 100, 40, 130]},
               {"id": 1, "category": "nut", "color": "red", "defects": [], "bbox": second}]
    scene = {"image": "a.jpg", "width": 320, "height": 240, "objects": objects}
    from promptdet.data.synth.instruct import generate_instructions

    asked = set()
    for seed in range(30):
        for p in generate_instructions(scene, np.random.default_rng(seed), types=("spatial",), absent_rate=0.0):
            record = {**p.to_record(), "query": p.extra["query"]}
            asked.add(record["query"]["extreme"])
            assert text_problems(record) == [] and margin_problems(record, scene) == [], record
    assert asked == allowed


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("op", sorted(COMPARISONS))
def test_a_count_instruction_names_its_number_and_comparison(op, n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        text = T.count_instruction(rng, "train", op, n, "washer")
        assert text_problems({"type": "count", "query": {"op": op, "n": n}, "instruction": text}) == [], text


# ---- the same checks on scenes built here (no rendering), so every mutation of the generator is
# seen by a test that calls it: the rendered fixture above is built once per module ----

def _random_scene(rng, i: int) -> dict:
    from promptdet.data.vocab import COLORS_BY_CATEGORY, DEFECTS_BY_CATEGORY

    objects = []
    cats = list(rng.choice(CATEGORIES, size=int(rng.integers(1, 4)), replace=False))
    for k in range(int(rng.integers(2, 9))):
        cat = cats[int(rng.integers(len(cats)))]
        cols = COLORS_BY_CATEGORY[cat]
        col = cols[int(rng.integers(min(2, len(cols))))]  # few colours: colour+kind groups of two and more
        can = DEFECTS_BY_CATEGORY[cat]
        defects = [d for d in can if rng.random() < 0.2]
        w, h = (float(v) for v in rng.integers(8, 70, size=2))
        x, y = float(rng.integers(0, 320 - w)), float(rng.integers(0, 240 - h))
        objects.append({"id": k, "category": cat, "color": col, "defects": defects, "bbox": [x, y, x + w, y + h],
                        "visible_px": int(w * h * rng.uniform(0.6, 1.0))})
    return {"image": f"{i}.jpg", "width": 320, "height": 240, "objects": objects}


def _relation_problems(pair: dict, scene: dict) -> list[str]:
    """A relation's reference is unique, and its answer is the only part on that side, clear of the rest."""
    q, objects = pair["query"], scene["objects"]
    ref = next(o for o in objects if o["id"] == q["ref_id"])
    sel = {k: v for k, v in q["ref_select"].items() if v is not None}
    problems = []
    if [o["id"] for o in objects if _fits(o, sel)] != [ref["id"]]:
        problems.append(f"reference {sel} is not unique")
    if sel.get("category") != ref["category"]:
        problems.append("ref_select does not name the reference's kind")
    if q["select"]["category"] == ref["category"] and "color" not in sel:
        problems.append("'the can left of the can'")
    group = [o for o in objects if o["id"] != ref["id"] and o["category"] == q["select"]["category"]]
    target = next(o for o in objects if o["id"] == pair["object_ids"][0])
    x1, y1, x2, y2 = ref["bbox"]
    if q["relation"] == "next_to":
        dx = max(x1 - target["bbox"][2], target["bbox"][0] - x2, 0.0)
        dy = max(y1 - target["bbox"][3], target["bbox"][1] - y2, 0.0)
        if np.hypot(dx, dy) > 0.75 * max(x2 - x1, y2 - y1):
            problems.append(f"next_to a part {np.hypot(dx, dy):.1f} px away")
        return problems
    centre, ref_c, sign = {"left_of": (_cx, (x1 + x2) / 2, 1), "right_of": (_cx, (x1 + x2) / 2, -1),
                           "above": (_cy, (y1 + y2) / 2, 1), "below": (_cy, (y1 + y2) / 2, -1)}[q["relation"]]
    for o in group:
        if o is not target and sign * (centre(o) - ref_c) <= 0:
            problems.append(f"part {o['id']} is not clearly on the far side")
    return problems


def _names(text: str, phrases) -> bool:
    """Whether ``text`` holds one of ``phrases`` (singular or plural), each word allowing one typo."""
    words = _words(text)
    return any(_says(words, tuple(_words(form))) for p in phrases for form in (p, T.pluralize(p)))


def subject_problems(pair: dict) -> list[str]:
    """The part kinds, colours and defects the query selects, each named in the words."""
    q, text = pair["query"], pair["instruction"]
    named = [q["select"]] + ([q["ref_select"]] if "ref_select" in q else [])
    problems = []
    for sel in named:
        if sel.get("category") and not _names(text, T.CATEGORY_WORDS[sel["category"]]):
            problems.append(f"names no {sel['category']}")
        if sel.get("color") and not _names(text, T.COLOR_WORDS[sel["color"]]):
            problems.append(f"names no {sel['color']}")
        if sel.get("defect") and not _names(text, T.DEFECT_ADJ[sel["defect"]]
                                            + tuple(p for pair in T.DEFECT_POST[sel["defect"]] for p in pair)):
            problems.append(f"names no {sel['defect']}")
    return problems


def _check_scene_pairs(scene: dict, pairs) -> Counter:
    kinds = Counter()
    for p in pairs:
        record = {**p.to_record(), "query": p.extra["query"]}
        assert p.image == scene["image"]
        for sel in (record["query"]["select"], record["query"].get("ref_select", {})):
            assert set(sel) <= {"category", "color", "defect"}, record  # nothing a reader would not recognise
        assert sorted(p.boxes_xyxy) == sorted(expected_boxes(record, scene["objects"])), record
        by_id = {o["id"]: o["bbox"] for o in scene["objects"]}
        assert [by_id[i] for i in p.object_ids] == p.boxes_xyxy
        assert text_problems(record) == [] and margin_problems(record, scene) == [], record
        assert subject_problems(record) == [], record
        if p.type in ("spatial", "superlative", "relation"):
            assert len(p.boxes_xyxy) == 1, record
        if p.type in ("category", "attribute", "defect"):
            assert p.boxes_xyxy, record
        if p.type == "relation":
            assert _relation_problems(record, scene) == [], record
        if p.type == "count":
            k = sum(o["category"] == record["query"]["select"]["category"] for o in scene["objects"])
            assert max(1, k - 2) <= record["query"]["n"] <= k + 2, record
            kinds[("count", record["query"]["n"] - k)] += 1
            kinds[("count", "n=1")] += record["query"]["n"] == 1
            kinds[("count", record["query"]["op"])] += 1
        if p.type == "absent":
            assert not any(_fits(o, record["query"]["select"]) for o in scene["objects"]), record
        for key in ("extreme", "relation", "absent"):
            if key in record["query"]:
                kinds[(key, record["query"][key])] += 1
        kinds[p.type] += 1
    keys = [repr((p.type, sorted(p.extra["query"].items(), key=str))) for p in pairs]
    assert len(keys) == len(set(keys))  # no question twice
    return kinds


def test_every_pair_of_hand_made_scenes_is_right_and_clear():
    from promptdet.data.synth.instruct import generate_instructions

    rng = np.random.default_rng(11)
    kinds = Counter()
    for i in range(150):
        scene = _random_scene(rng, i)
        pairs = generate_instructions(scene, np.random.default_rng(i), per_image=8)
        assert len(pairs) == 8 or len(pairs) < 8 and len(scene["objects"]) <= 3
        kinds += _check_scene_pairs(scene, pairs)
    assert all(kinds[t] >= 20 for t in ("category", "attribute", "defect", "spatial", "superlative", "relation",
                                        "count", "absent")), kinds
    assert kinds["absent"] / sum(kinds[t] for t in INSTRUCTION_TYPES) == pytest.approx(0.2, abs=0.05)
    # counts: each comparison, and thresholds from 2 below to 2 above the true count
    counted = {key[1] for key in kinds if isinstance(key, tuple) and key[0] == "count"}
    assert counted == set(COMPARISONS) | {-2, -1, 0, 1, 2} | {"n=1"}
    # every extreme and every relation is asked where a scene allows it, and each kind of absent query
    asked = {key for key in kinds if isinstance(key, tuple) and key[0] != "count"}
    assert asked == {("extreme", e) for e in ("leftmost", "rightmost", "topmost", "bottommost", "largest", "smallest")} \
        | {("relation", r) for r in ("left_of", "right_of", "above", "below", "next_to")} \
        | {("absent", a) for a in ("category", "color", "defect")}, kinds


def test_set_queries_name_kinds_colours_and_defects_in_their_mix():
    from promptdet.data.synth.instruct import generate_instructions

    scene = {"image": "s.jpg", "width": 320, "height": 240, "objects": [
        {"id": 0, "category": "bottle", "color": "red", "defects": ["scratch", "dent"], "bbox": [10, 10, 50, 90]},
        {"id": 1, "category": "bottle", "color": "green", "defects": [], "bbox": [100, 10, 140, 90]},
        {"id": 2, "category": "can", "color": "red", "defects": ["dent"], "bbox": [200, 100, 240, 160]}]}
    sels = {t: Counter() for t in ("category", "attribute", "defect")}
    for seed in range(400):
        for t, counts in sels.items():
            for p in generate_instructions(scene, np.random.default_rng(seed), per_image=1, absent_rate=0.0, types=(t,)):
                counts[json.dumps(p.extra["query"]["select"], sort_keys=True)] += 1
                _check_scene_pairs(scene, [p])
    cat, attr, defect = sels["category"], sels["attribute"], sels["defect"]
    assert set(cat) == {'{"category": "bottle"}', '{"category": "can"}', "{}"}
    assert 0.015 < cat["{}"] / 400 < 0.06  # "all parts" now and then: 1 in 10 draws offer it, among 3
    assert set(attr) == {'{"category": "bottle", "color": "green"}', '{"category": "bottle", "color": "red"}',
                         '{"category": "can", "color": "red"}', '{"color": "green"}', '{"color": "red"}'}
    # "defective parts" 3 in 10 draws offer it, among 8; no selector that matches nothing (no "scratched cans")
    assert 0.02 < defect['{"defect": "any"}'] / 400 < 0.06
    assert '{"category": "can", "defect": "scratch"}' not in defect
    assert {'{"category": "bottle", "defect": "any"}', '{"category": "can", "defect": "any"}',
            '{"category": "bottle", "defect": "scratch"}', '{"category": "bottle", "defect": "dent"}',
            '{"category": "can", "defect": "dent"}', '{"defect": "dent"}', '{"defect": "scratch"}'} <= set(defect)


def test_an_empty_scene_never_names_a_part_kind_in_its_absent_queries():
    """An empty scene has no kind to tie an absent colour or defect to: "blue parts", never a crash."""
    from promptdet.data.synth.instruct import ABSENT_KINDS, generate_instructions

    scene = {"image": "x.jpg", "width": 640, "height": 480, "objects": []}
    for mix in ABSENT_KINDS:
        for seed in range(20):
            pairs = generate_instructions(scene, np.random.default_rng(seed), per_image=6, absent_mix=mix)
            assert len(pairs) >= 4 and all(p.type == "absent" and p.boxes_xyxy == [] for p in pairs)
            assert not any("category" in p.extra["query"]["select"] and p.extra["query"]["absent"] != "category"
                           for p in pairs)

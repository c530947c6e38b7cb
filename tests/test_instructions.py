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
    with pytest.raises(ValueError):
        generate_instructions(scene, np.random.default_rng(0), absent_rate=1.5)


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
    on_bottle = lambda sels: sum(s.get("category") == "bottle" for s in sels) / len(sels)  # noqa: E731
    assert on_bottle(confusable) > on_bottle(defect) + 0.15
    # A scene with no defective part falls back to absent defects of any part.
    clean = {**scene, "objects": [{**o, "defects": []} for o in scene["objects"]]}
    pairs = generate_instructions(clean, np.random.default_rng(2), per_image=6, absent_rate=1.0, absent_mix="confusable")
    assert pairs and all(p.boxes_xyxy == [] for p in pairs)

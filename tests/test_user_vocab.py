"""A user's own data: per-box attributes from COCO and YOLO, the dataset vocabulary file, and
instructions of every type worded from it. Every box is recomputed here from the labels and the
pair's query by an evaluator written apart from promptdet.data.query and the builders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from promptdet.config import ConfigError
from promptdet.data.convert import convert
from promptdet.data.formats.coco import import_coco
from promptdet.data.formats.yolo import import_yolo
from promptdet.data.pairs import DataFormatError
from promptdet.data.synth.instruct import ALL_TYPES
from promptdet.data.user_instruct import (
    plan_types,
    read_labels,
    to_scenes,
    user_instructions,
)
from promptdet.data.user_vocab import load_vocab, parse_vocab
from promptdet.errors import UsageError

VOCAB_YAML = """\
classes:
  cell: {synonyms: [solar cell, PV cell]}
  busbar_clip:
attributes:
  defective: {kind: defect, synonyms: [cracked, faulty]}
  scratched: {kind: defect}
  mono: {kind: type, synonyms: [monocrystalline]}
  poly: {kind: type, synonyms: [polycrystalline]}
  red: {kind: color}
  blue: {kind: color, synonyms: [bluish]}
"""
# The kinds as this test knows them, written out apart from the vocabulary loader.
KIND = {"defective": "defect", "scratched": "defect", "mono": "type", "poly": "type", "red": "color", "blue": "color"}
CLASS_WORDS = {"cell": ("cell", "solar cell", "PV cell"), "busbar_clip": ("busbar clip",)}


def write_image(path: Path, w: int = 400, h: int = 300) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))


# ---- attributes from COCO ----

def coco_file(tmp_path: Path, attributes: list) -> Path:
    write_image(tmp_path / "images" / "a.jpg")
    anns = [{"id": 10 + i, "image_id": 1, "category_id": 1, "bbox": [10 + 60 * i, 20, 50, 40], "iscrowd": 0,
             **({} if a is ... else {"attributes": a})} for i, a in enumerate(attributes)]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 300}], "annotations": anns,
            "categories": [{"id": 1, "name": "cell"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_attributes_list_and_mapping(tmp_path):
    src = coco_file(tmp_path, [["mono", "defective"], {"defective": True, "type": "poly", "red": False, "x": None},
                               ..., []])
    result = import_coco(src)
    (record,) = result.labels
    assert [o["attributes"] for o in record["objects"]] == [["mono", "defective"], ["defective", "poly"], [], []]
    assert [o["id"] for o in record["objects"]] == [10, 11, 12, 13]
    assert record["objects"][1]["bbox"] == [70.0, 20.0, 120.0, 60.0]
    assert (record["width"], record["height"]) == (400, 300)


@pytest.mark.parametrize("bad, field", [
    ("mono", "attributes"),
    ([1], "attributes[0]"),
    (["mono", ""], "attributes[1]"),
    (["a,b"], "attributes[0]"),
    ({"type": 3}, "attributes.type"),
])
def test_coco_malformed_attributes_name_file_record_field(tmp_path, bad, field):
    src = coco_file(tmp_path, [["mono"], bad])
    with pytest.raises(DataFormatError) as err:
        import_coco(src)
    assert "instances.json" in str(err.value) and "annotations[1]" in str(err.value)
    assert err.value.field_name == field


def test_convert_writes_labels_with_sizes_read_from_the_image(tmp_path):
    src = coco_file(tmp_path, [["mono"]])
    data = json.loads(src.read_text())
    del data["images"][0]["width"]  # the size then comes from the image file itself
    src.write_text(json.dumps(data))
    convert("coco", src, tmp_path / "out")
    (record,) = read_labels(tmp_path / "out")
    assert (record["width"], record["height"]) == (400, 300)
    assert record["image"] == "../images/a.jpg" and record["objects"][0]["attributes"] == ["mono"]


# ---- attributes from YOLO side files ----

def yolo_dir(tmp_path: Path, label: str, attrs: str | None) -> Path:
    root = tmp_path / "yolo"
    (root / "labels").mkdir(parents=True)
    write_image(root / "images" / "a.jpg", 200, 100)
    (root / "classes.txt").write_text("cell\nclip\n")
    (root / "labels" / "a.txt").write_text(label)
    if attrs is not None:
        (root / "labels" / "a.attrs.txt").write_text(attrs)
    return root


def test_yolo_side_file_line_n_is_box_n(tmp_path):
    root = yolo_dir(tmp_path, "0 0.25 0.5 0.2 0.4\n\n1 0.75 0.5 0.2 0.4\n0 0.5 0.5 0.1 0.1\n",
                    "mono, defective\n\npoly\n")
    result = import_yolo(root)
    (record,) = result.labels
    assert [(o["category"], o["attributes"]) for o in record["objects"]] == [
        ("cell", ["mono", "defective"]), ("clip", ["poly"]), ("cell", [])]
    assert record["objects"][0]["bbox"] == pytest.approx([30.0, 30.0, 70.0, 70.0])
    assert (record["width"], record["height"]) == (200, 100)
    assert "label_without_image" not in result.skipped  # the side file is not a stray label


def test_yolo_without_side_file_has_no_attributes(tmp_path):
    (record,) = import_yolo(yolo_dir(tmp_path, "0 0.25 0.5 0.2 0.4\n", None)).labels
    assert record["objects"][0]["attributes"] == []


@pytest.mark.parametrize("attrs, line", [
    ("mono\n\n\npoly\n", 4),   # more attribute lines than boxes
    ("mono\nred\n", 2),        # line 2 of the label file is blank
    ("mono,,red\n", 1),        # an empty name
])
def test_yolo_malformed_side_file_names_file_and_line(tmp_path, attrs, line):
    root = yolo_dir(tmp_path, "0 0.25 0.5 0.2 0.4\n\n1 0.75 0.5 0.2 0.4\n", attrs)
    with pytest.raises(DataFormatError) as err:
        import_yolo(root)
    assert err.value.path.endswith("a.attrs.txt") and err.value.where == line
    assert err.value.field_name == "attributes"


# ---- the vocabulary file ----

def test_vocabulary_loads_kinds_and_synonyms(tmp_path):
    path = tmp_path / "vocab.yaml"
    path.write_text(VOCAB_YAML)
    vocab = load_vocab(path)
    assert vocab.classes == {"cell": ("solar cell", "PV cell"), "busbar_clip": ()}
    assert {name: kind for name, (kind, _) in vocab.attributes.items()} == KIND
    lex = vocab.lexicon(["cell", "extra"])
    assert lex.categories == ("cell", "busbar_clip", "extra")
    assert lex.category_words["busbar_clip"] == ("busbar clip",)
    assert lex.defects == ("defective", "scratched") and lex.types == ("mono", "poly") and lex.colors == ("red", "blue")
    assert lex.look_words["blue"] == ("blue", "bluish")


@pytest.mark.parametrize("text, key", [
    ("- cell\n", "(top level)"),
    ("clases: {cell: }\n", "clases"),
    ("classes: [cell]\n", "classes"),
    ("classes: {cell: {synonym: [x]}}\n", "classes.cell.synonym"),
    ("classes: {cell: {synonyms: solar cell}}\n", "classes.cell.synonyms"),
    ("classes: {cell: {synonyms: [solar cell, '']}}\n", "classes.cell.synonyms[1]"),
    ("attributes: {mono: {synonyms: [x]}}\n", "attributes.mono.kind"),
    ("attributes: {mono: {kind: shape}}\n", "attributes.mono.kind"),
    ("attributes: {mono: type}\n", "attributes.mono"),
    ("attributes: {any: {kind: defect}}\n", "attributes.any"),
    ("attributes: {mono: {kind: type, colour: red}}\n", "attributes.mono.colour"),
])
def test_vocabulary_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "vocab.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_vocab(path)
    assert f"vocab.yaml: {key}: " in str(err.value)


# ---- instructions for a user vocabulary, checked by an evaluator written here ----

def random_labels(rng: np.random.Generator, n_images: int) -> list[dict]:
    records = []
    for i in range(n_images):
        objects = []
        kind = "mono" if rng.random() < 0.5 else "poly"  # one cell type per module, as on a real line
        for j in range(int(rng.integers(0, 7))):
            cat = "cell" if rng.random() < 0.75 else "busbar_clip"
            attrs = []
            if cat == "cell" and rng.random() < 0.9:
                attrs.append(kind)
            if rng.random() < 0.4:
                attrs.append("red" if rng.random() < 0.5 else "blue")
            attrs += [d for d in ("defective", "scratched") if rng.random() < 0.3]
            x, y = float(rng.integers(0, 540)), float(rng.integers(0, 400))
            w, h = float(rng.integers(20, 100)), float(rng.integers(20, 80))
            objects.append({"id": 100 * i + j, "category": cat, "attributes": attrs, "bbox": [x, y, x + w, y + h]})
        records.append({"image": f"img{i}.jpg", "width": 640, "height": 480, "objects": objects})
    return records


def picks(obj: dict, sel: dict) -> bool:
    """The selection language, evaluated on the raw labels (attribute names and KIND)."""
    if set(sel) == {"not"}:
        return not picks(obj, sel["not"])
    if set(sel) == {"any"}:
        return any(picks(obj, s) for s in sel["any"])
    if set(sel) == {"all"}:
        return all(picks(obj, s) for s in sel["all"])
    attrs = obj["attributes"]
    if sel.get("category") and obj["category"] != sel["category"]:
        return False
    for key in ("color", "type"):
        if sel.get(key):
            assert KIND[sel[key]] == key, sel
            if sel[key] not in attrs:
                return False
    if sel.get("defect") == "any":
        return any(KIND[a] == "defect" for a in attrs)
    if sel.get("defect"):
        assert KIND[sel["defect"]] == "defect"
        return sel["defect"] in attrs
    return True


def centre(o):
    return (o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2


def area(o):
    return (o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1])


def expected(record: dict, query: dict) -> list[dict]:
    objs = record["objects"]
    chosen = [o for o in objs if picks(o, query["select"])]
    if "op" in query:
        k, n = len(chosen), query["n"]
        holds = {"more_than": k > n, "at_least": k >= n, "fewer_than": k < n, "exactly": k == n}[query["op"]]
        return chosen if holds else []
    if "extreme" in query:
        key = {"leftmost": lambda o: centre(o)[0], "rightmost": lambda o: -centre(o)[0],
               "topmost": lambda o: centre(o)[1], "bottommost": lambda o: -centre(o)[1],
               "largest": lambda o: -area(o), "smallest": area}[query["extreme"]]
        ranked = sorted(chosen, key=key)
        assert len(ranked) >= 2 and key(ranked[1]) > key(ranked[0])  # a clear winner, never a tie
        return ranked[:1]
    if "relation" in query:
        (ref,) = [o for o in objs if o["id"] == query["ref_id"]]
        assert [o for o in objs if picks(o, query["ref_select"])] == [ref]  # the reference is unique
        group = [o for o in chosen if o is not ref]
        x1, y1, x2, y2 = ref["bbox"]
        if query["relation"] == "next_to":
            rx, ry = centre(ref)
            return [min(group, key=lambda o: np.hypot(centre(o)[0] - rx, centre(o)[1] - ry))]
        side = {"left_of": lambda o: centre(o)[0] < x1, "right_of": lambda o: centre(o)[0] > x2,
                "above": lambda o: centre(o)[1] < y1, "below": lambda o: centre(o)[1] > y2}[query["relation"]]
        hits = [o for o in group if side(o)]
        assert len(hits) == 1
        return hits
    return chosen


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.yaml"
    path.write_text(VOCAB_YAML)
    return load_vocab(path)


@pytest.fixture(scope="module")
def generated(vocab):
    labels = random_labels(np.random.default_rng(3), 160)
    by_image = {r["image"]: r for r in labels}
    out = []
    for split in ("train", "test"):
        for seed, types in ((0, None), (1, {t: 1 for t in ALL_TYPES})):
            pairs = user_instructions(labels, vocab, seed=seed, split=split, per_image=8, absent_rate=0.25, types=types)
            out += [(split, by_image[p.image], p) for p in pairs]
    return out


def test_every_type_occurs(generated):
    assert {p.type for _, _, p in generated} == set(ALL_TYPES) | {"absent"}
    absent_kinds = {p.extra["query"]["absent"] for _, _, p in generated if p.type == "absent"}
    assert {"category", "type", "color", "defect"} <= absent_kinds


def test_every_box_recomputed_from_the_labels(generated):
    for _, record, p in generated:
        want = expected(record, p.extra["query"])
        assert p.object_ids == [o["id"] for o in want], (p.instruction, p.extra["query"])
        assert p.boxes_xyxy == [o["bbox"] for o in want]
        assert (p.type == "absent") == (not want) or p.type == "count"


def test_wording_uses_the_users_words_and_the_split(generated):
    texts = {"train": set(), "test": set()}
    named = total = 0
    for split, _, p in generated:
        texts[split].add(p.instruction.lower().rstrip(".?"))
        assert not re.search(r"belt|conveyor", p.instruction)  # a user's images are not the synthetic line
        select = p.extra["query"]["select"]
        if p.type in ("category", "attribute", "defect") and select.get("category"):
            total += 1
            named += any(w.lower() in p.instruction.lower() for w in CLASS_WORDS[select["category"]])
        if p.type == "attribute" and select.get("type") == "mono" and "colour" in p.instruction:
            pytest.fail(f"a type worded as a colour: {p.instruction!r}")
    assert total and named >= 0.9 * total  # now and then a typo hides the word
    assert len(texts["train"] & texts["test"]) < 0.01 * len(texts["test"])  # disjoint sentence frames


def test_typos_never_touch_a_users_colour_words():
    from promptdet.data.synth import templates as T

    lex = parse_vocab({"attributes": {"teal": {"kind": "color", "synonyms": ["sea green"]}}}).lexicon(["cell"])
    rng = np.random.default_rng(0)
    texts = [T._finish(rng, "find every teal cell and sea green panel", typo_rate=1.0, lex=lex) for _ in range(300)]
    assert all(("teal" in t and "sea green" in t) for t in texts)
    assert any("cell" not in t or "panel" not in t or "find" not in t.lower() for t in texts)  # typos did happen


def test_generation_is_deterministic(vocab):
    labels = random_labels(np.random.default_rng(5), 10)
    runs = [[p.to_record() for p in user_instructions(labels, vocab, seed=4)] for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]


def leaf_categories(select: dict) -> list:
    if "not" in select:
        return leaf_categories(select["not"])
    for op in ("any", "all"):
        if op in select:
            return [c for s in select[op] for c in leaf_categories(s)]
    return [select.get("category")]


def test_no_question_about_a_class_whose_box_was_dropped(tmp_path, vocab):
    write_image(tmp_path / "images" / "a.jpg", 640, 480)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 300, 300], "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [400, 10, 50, 50], "iscrowd": 0,
             "attributes": ["mono"]}]
    anns += [{"id": 3 + i, "image_id": 1, "category_id": 2, "bbox": [350 + 60 * i, 300, 40 + 10 * i, 40],
              "attributes": ["red", "defective"] if i else ["blue"]} for i in range(3)]
    src = tmp_path / "instances.json"
    src.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": anns,
                               "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "busbar_clip"}]}))
    (record,) = import_coco(src).labels
    assert record["unlabelled"] == ["cell"] and len(record["objects"]) == 4
    pairs = list(user_instructions([{**record, "width": 640, "height": 480}] * 30, vocab, per_image=8))
    assert len(pairs) > 30
    for p in pairs:  # the crowd region may hold cells of any kind: only the clips can be asked about
        assert set(leaf_categories(p.extra["query"]["select"])) == {"busbar_clip"}, p.extra["query"]


def test_unknown_attribute_names_the_box(vocab):
    labels = random_labels(np.random.default_rng(1), 3)
    labels[2]["objects"] = [{"id": 1, "category": "cell", "attributes": ["mono", "rusty"], "bbox": [0, 0, 9, 9]}]
    with pytest.raises(DataFormatError) as err:
        to_scenes(labels, vocab)
    assert err.value.where == 3 and err.value.field_name == "objects[0].attributes" and "'rusty'" in str(err.value)


def test_two_colours_on_one_box_are_refused(vocab):
    labels = [{"image": "a.jpg", "width": 9, "height": 9,
               "objects": [{"id": 1, "category": "cell", "attributes": ["red", "blue"], "bbox": [0, 0, 9, 9]}]}]
    with pytest.raises(DataFormatError, match="both colours"):
        to_scenes(labels, vocab)


@pytest.mark.parametrize("yaml_text, kind, reason", [
    ("attributes: {mono: {kind: type}}\n", "defect", "no box has an attribute of kind defect"),
    ("attributes: {mono: {kind: type}}\n", "jargon", "no box has an attribute of kind defect"),
    ("attributes: {defective: {kind: defect}}\n", "attribute", "no box has an attribute of kind color or type"),
    ("attributes: {defective: {kind: defect}}\n", "conjunction", "no box has both a defect and a colour or type"),
])
def test_an_unsupported_type_is_refused_with_the_reason(yaml_text, kind, reason):
    vocab = parse_vocab(yaml.safe_load(yaml_text))
    labels = [{"image": "a.jpg", "width": 100, "height": 100, "objects": [
        {"id": i, "category": "cell", "attributes": list(vocab.attributes), "bbox": [10 * i, 0, 10 * i + 8, 8]}
        for i in range(3)]}]
    scenes = to_scenes(labels, vocab)
    with pytest.raises(UsageError, match=f"cannot make {kind} instructions: {reason}"):
        plan_types(scenes, vocab.lexicon(["cell"]), {kind: 1})
    assert kind not in plan_types(scenes, vocab.lexicon(["cell"]), None)  # nor offered by default


def test_an_asked_type_without_a_clear_answer_is_refused(vocab):
    # A grid of equal cells: no largest cell, no cell named uniquely, so neither question is clear.
    labels = [{"image": "m.jpg", "width": 400, "height": 300, "unlabelled": [], "objects": [
        {"id": 4 * r + c, "category": "cell", "attributes": ["mono"], "bbox": [100 * c, 100 * r, 100 * c + 96, 100 * r + 96]}
        for r in range(3) for c in range(4)]}]
    for kind, reason in (("superlative", "clearly largest or smallest"), ("relation", "named uniquely")):
        with pytest.raises(UsageError, match=f"cannot make {kind} instructions: no .*{reason}"):
            user_instructions(labels, vocab, types={"category": 1, kind: 1})
    assert {p.type for p in user_instructions(labels, vocab, types={"category": 1})} <= {"category", "absent"}


# ---- the command line ----

def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PROMPTDET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "promptdet.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, check=False)


@pytest.fixture
def converted(tmp_path):
    src = coco_file(tmp_path, [["mono", "defective"], ["mono"], ["mono", "red"]])
    (tmp_path / "vocab.yaml").write_text(VOCAB_YAML)
    (tmp_path / "bad.yaml").write_text("attributes: {mono: {kind: shape}}\n")
    (tmp_path / "partial.yaml").write_text("attributes: {mono: {kind: type}}\n")
    (tmp_path / "synth").mkdir()  # a synthetic folder: scenes.jsonl, no labels.jsonl
    (tmp_path / "synth" / "scenes.jsonl").write_text(json.dumps({"image": "a.jpg", "width": 9, "height": 9, "objects": []}))
    coco_file(tmp_path / "bad", [["mono"], "mono"])
    plain = tmp_path / "plain"  # labels whose attributes hold no defect
    convert("coco", coco_file(plain, [["mono"], ["poly"]]), plain / "out")
    return tmp_path, src


def test_cli_convert_and_instruct_with_a_vocabulary(converted):
    tmp, src = converted
    r = run_cli("data", "convert", src, "--from", "coco", "--out", tmp / "out", "--vocab", tmp / "vocab.yaml")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp / "out" / "instructions.jsonl").read_text().splitlines()]
    assert {"category", "absent"} < {rec["type"] for rec in records}  # more than the class-name pairs
    r = run_cli("data", "instruct", tmp / "out", "--vocab", tmp / "vocab.yaml", "--types", "defect=2,negation",
                "--absent-rate", "0")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp / "out" / "instructions.jsonl").read_text().splitlines()]
    assert records and {rec["type"] for rec in records} <= {"defect", "negation", "absent"}
    assert any(rec["type"] == "defect" for rec in records)


@pytest.mark.parametrize("args, code, needle", [
    (["instruct", "{tmp}/plain/out", "--vocab", "{tmp}/vocab.yaml", "--types", "defect"], 2,
     "cannot make defect instructions: no box has an attribute of kind defect"),
    (["instruct", "{out}", "--vocab", "{tmp}/vocab.yaml", "--types", "colour"], 2, "unknown type 'colour'"),
    (["instruct", "{out}", "--vocab", "{tmp}/bad.yaml"], 1, "attributes.mono.kind: 'shape' is not one of"),
    (["instruct", "{out}", "--vocab", "{tmp}/partial.yaml"], 1, "'defective' is not in the vocabulary"),
    (["instruct", "{out}"], 1, "pass --vocab FILE"),
    (["instruct", "{tmp}/synth", "--vocab", "{tmp}/vocab.yaml"], 2, "--vocab is for imported data"),
    (["instruct", "{tmp}/nowhere", "--vocab", "{tmp}/vocab.yaml"], 1, "no labels.jsonl at"),
    (["convert", "{src}", "--from", "coco", "--out", "{tmp}/o2", "--vocab", "{tmp}/missing.yaml"], 1,
     "vocabulary file not found"),
    (["convert", "{src}", "--from", "coco", "--out", "{tmp}/o4", "--vocab", "{tmp}/partial.yaml"], 1,
     "instances.json (image a.jpg): field 'objects[0].attributes': 'defective' is not in the vocabulary"),
    (["convert", "{tmp}/bad/instances.json", "--from", "coco", "--out", "{tmp}/o3"], 1,
     "instances.json (annotations[1]): field 'attributes': expected a list of names or a mapping"),
])
def test_cli_errors_are_one_line(converted, args, code, needle):
    tmp, src = converted
    assert run_cli("data", "convert", src, "--from", "coco", "--out", tmp / "out").returncode == 0
    before = (tmp / "out" / "instructions.jsonl").read_text()
    r = run_cli("data", *[a.format(tmp=tmp, out=tmp / "out", src=src) for a in args])
    assert r.returncode == code, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp / "out" / "instructions.jsonl").read_text() == before  # nothing written on an error

"""Importers (COCO, YOLO, RefCOCO, ODVG) -> instruction pairs, and ``convert``."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptdet.data.convert import convert
from promptdet.data.formats import IMPORTERS, get_importer
from promptdet.data.formats.jsonl import read_pairs, write_pairs
from promptdet.data.pairs import DataFormatError

FIX = Path(__file__).parent / "fixtures" / "formats"
LABEL_MAP = FIX / "odvg" / "label_map.json"

# (format, source, importer options)
SOURCES = {
    "coco": ("coco", FIX / "coco" / "instances.json", {}),
    "yolo": ("yolo", FIX / "yolo", {}),
    "refcoco": ("refcoco", FIX / "refcoco", {}),
    "odvg-od": ("odvg", FIX / "odvg" / "od.jsonl", {"label_map": LABEL_MAP}),
    "odvg-vg": ("odvg", FIX / "odvg" / "vg.jsonl", {}),
}


def run(key: str, **kw):
    fmt, src, opts = SOURCES[key]
    return IMPORTERS[fmt](src, **{**opts, **kw})


def by_instruction_category(pairs, kind="category"):
    return {p.extra["category"]: p for p in pairs if p.type == kind}


# --- boxes converted exactly (hand-computed) ------------------------------------------------------

@pytest.mark.parametrize("key, image, category, boxes, ids", [
    # COCO [x, y, w, h] -> [x, y, x + w, y + h]
    ("coco", "000001.jpg", "cat", [[10, 5, 30, 20], [0.5, 1.25, 3, 5]], [10, 11]),
    ("coco", "000001.jpg", "traffic light", [[40, 8, 46, 38]], [12]),
    ("coco", "000002.jpg", "dog", [[4, 4, 12, 12]], [13]),  # the zero-width dog box is dropped
    # YOLO on a 64x48 image: 0.5 0.5 0.25 0.5 -> cx 32, cy 24, w 16, h 24
    ("yolo", "images/a.jpg", "cat", [[24, 12, 40, 36]], None),
    ("yolo", "images/a.jpg", "traffic light", [[12, 6, 20, 18]], None),
    # ODVG boxes are already xyxy
    ("odvg-od", "a.jpg", "cat", [[1, 2, 11, 22], [30, 4, 40.5, 20]], None),
])
def test_category_boxes_exact(key, image, category, boxes, ids):
    pairs = [p for p in run(key).pairs if p.image == image and p.type == "category"]
    got = by_instruction_category(pairs)[category]
    assert got.boxes_xyxy == boxes
    assert got.object_ids == ids


@pytest.mark.parametrize("key, image, categories", [
    ("coco", "000001.jpg", {"cat", "traffic light"}),
    ("coco", "000002.jpg", {"dog"}),  # person is there only as a crowd region: no pair at all
    ("coco", "000003.jpg", set()),
    ("yolo", "images/a.jpg", {"cat", "traffic light"}),
    ("yolo", "images/b.jpg", set()),
    ("odvg-od", "b.jpg", set()),
])
def test_one_category_pair_per_category_present(key, image, categories):
    pairs = [p for p in run(key).pairs if p.image == image and p.type == "category"]
    assert {p.extra["category"] for p in pairs} == categories
    assert len(pairs) == len(categories)


def test_referring_pairs_one_per_sentence():
    res = run("refcoco")
    got = [(p.image, p.instruction, p.boxes_xyxy, p.object_ids) for p in res.pairs]
    one, two = "COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"
    assert got == [
        (one, "man on left", [[10, 10, 30, 40]], [100]),
        (one, "the left guy", [[10, 10, 30, 40]], [100]),
        (one, "red cup", [[0, 0, 5, 5]], [101]),
        (two, "person in the back", [[2.5, 4, 12.5, 16.5]], [102]),
    ]
    assert {p.type for p in res.pairs} == {"referring"}


@pytest.mark.parametrize("split, sentences", [
    (None, ["man on left", "the left guy", "red cup", "person in the back"]),
    ("train", ["man on left", "the left guy"]),
    ("testA", ["red cup"]),
    ("val", ["person in the back"]),
])
def test_refcoco_split_filter(split, sentences):
    assert [p.instruction for p in run("refcoco", split=split).pairs] == sentences


def test_refcoco_unknown_split_lists_present_ones():
    with pytest.raises(ValueError, match="testA, train, val"):
        run("refcoco", split="testB")


def test_grounding_one_pair_per_distinct_phrase():
    res = run("odvg-vg")
    got = {p.instruction: p.boxes_xyxy for p in res.pairs}
    assert got == {
        "a cat": [[0, 0, 10, 10]],
        "two dogs": [[20, 0, 30, 10], [40, 0, 50, 10], [52, 1, 60, 9]],  # "Two dogs" merges in
        "a red ball": [[12, 30, 20, 38]],  # phrase taken from the caption via tokens_positive
    }
    assert {p.type for p in res.pairs} == {"grounding"}


# --- templates, absent pairs ----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["coco", "yolo", "odvg-od"])
def test_category_names_pass_through_templates(key):
    pairs = [p for seed in range(20) for p in run(key, seed=seed, absent_rate=0.5).pairs]
    assert pairs
    from promptdet.data.synth.templates import pluralize

    # A template may add a typo now and then, so most (not all) instructions hold the word.
    hits = sum(any(w in p.instruction.lower() for w in (p.extra["category"], pluralize(p.extra["category"])))
               for p in pairs)
    assert hits >= 0.85 * len(pairs)
    assert any(p.instruction.lower() != p.extra["category"] for p in pairs)
    assert len({p.instruction for p in pairs}) > 5  # phrased in many ways, not one


@pytest.mark.parametrize("key", ["coco", "yolo", "odvg-od"])
def test_absent_pairs_are_empty_and_truly_absent(key):
    res = run(key, absent_rate=0.6)
    present = {}
    for p in res.pairs:
        if p.type == "category":
            present.setdefault(p.image, set()).add(p.extra["category"])
    # categories whose only boxes were skipped are still present
    present_too = {"coco": {"000002.jpg": {"person"}}, "yolo": {"images/a.jpg": {"dog"}}, "odvg-od": {"a.jpg": {"dog"}}}
    absent = [p for p in res.pairs if p.type == "absent"]
    assert absent
    for p in absent:
        assert p.boxes_xyxy == []
        assert p.extra["category"] not in present.get(p.image, set()) | present_too[key].get(p.image, set())


def synthetic_coco(tmp_path: Path, n_images: int, n_cats: int = 10, seed: int = 1, empty_every: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:06d}.jpg"})
        if empty_every and i % empty_every == 0:
            continue
        for c in rng.choice(n_cats, size=int(rng.integers(1, 4)), replace=False):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "bbox": [1, 1, 5, 5]})
    cats = [{"id": c + 1, "name": f"thing{c}"} for c in range(n_cats)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.5])
def test_absent_rate_is_about_right(tmp_path, rate):
    res = IMPORTERS["coco"](synthetic_coco(tmp_path, 300, empty_every=10), absent_rate=rate)
    frac = sum(p.type == "absent" for p in res.pairs) / len(res.pairs)
    assert frac == pytest.approx(rate, abs=0.03)


def test_images_without_annotations_give_absent_pairs(tmp_path):
    res = IMPORTERS["coco"](synthetic_coco(tmp_path, 8, empty_every=1), absent_rate=0.5)
    assert {p.type for p in res.pairs} == {"absent"}
    assert len({p.image for p in res.pairs}) == 8  # 0.5 -> one absent pair per positive (or empty image)


def test_bad_absent_rate(tmp_path):
    with pytest.raises(ValueError, match="absent_rate"):
        run("coco", absent_rate=1.0)


@pytest.mark.parametrize("key", list(SOURCES))
def test_deterministic_for_a_seed(key):
    a, b = run(key, seed=3), run(key, seed=3)
    assert a.pairs == b.pairs and a.skipped == b.skipped


def test_seed_changes_wording(tmp_path):
    src = synthetic_coco(tmp_path, 20)
    a, b = IMPORTERS["coco"](src, seed=0), IMPORTERS["coco"](src, seed=1)
    assert [p.instruction for p in a.pairs] != [p.instruction for p in b.pairs]


@pytest.mark.parametrize("templates", ["train", "test"])
def test_template_split_is_passed_on(monkeypatch, templates):
    from promptdet.data.synth import templates as tpl

    calls = []
    real = tpl.category_instruction
    monkeypatch.setattr(tpl, "category_instruction", lambda name, rng, split="train": calls.append(split) or real(name, rng, split))
    run("coco", templates=templates)
    assert calls and set(calls) == {templates}
    with pytest.raises(ValueError, match="templates"):
        run("coco", templates="val")


# --- skipped counts -------------------------------------------------------------------------------

@pytest.mark.parametrize("key, skipped", [
    ("coco", {"annotation_unknown_image": 1, "category_without_usable_boxes": 1, "crowd_box": 1, "degenerate_box": 1}),
    ("yolo", {"category_without_usable_boxes": 1, "degenerate_box": 1, "label_without_image": 1}),
    ("refcoco", {"empty_sentence": 1, "ref_missing_annotation": 1}),
    ("odvg-od", {"category_without_usable_boxes": 1, "degenerate_box": 1}),
    ("odvg-vg", {}),
])
def test_skipped_counts(key, skipped):
    assert run(key).skipped == skipped


# --- JSONL round trip -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(SOURCES))
def test_jsonl_round_trip(tmp_path, key):
    pairs = run(key, absent_rate=0.5).pairs
    assert pairs
    write_pairs(pairs, tmp_path / "p.jsonl")
    assert read_pairs(tmp_path / "p.jsonl") == pairs


# --- malformed input ------------------------------------------------------------------------------

def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=1))


def _set(d, keys, value):
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


def _drop(d, keys):
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


def _edit_jsonl(path: Path, line: int, fn) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[line - 1])
    fn(rec)
    lines[line - 1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")


MALFORMED = [
    # (case, fixture dir, file to break, how, importer source, options, expected message parts)
    ("coco bad json", "coco", "instances.json", lambda p: p.write_text('{"images": [\n  {"id": 1,,}\n'),
     "instances.json", {}, ["instances.json:2", "invalid JSON"]),
    ("coco missing bbox", "coco", "instances.json", lambda p: _edit_json(p, lambda d: _drop(d, ["annotations", 3, "bbox"])),
     "instances.json", {}, ["instances.json", "annotations[3]", "'bbox'", "missing"]),
    ("coco negative width", "coco", "instances.json", lambda p: _edit_json(p, lambda d: _set(d, ["annotations", 1, "bbox"], [1, 1, -2, 3])),
     "instances.json", {}, ["annotations[1]", "'bbox'", ">= 0"]),
    ("coco short bbox", "coco", "instances.json", lambda p: _edit_json(p, lambda d: _set(d, ["annotations", 0, "bbox"], [1, 2, 3])),
     "instances.json", {}, ["annotations[0]", "'bbox'", "[x, y, w, h]"]),
    ("coco string image_id", "coco", "instances.json", lambda p: _edit_json(p, lambda d: _set(d, ["annotations", 2, "image_id"], "1")),
     "instances.json", {}, ["annotations[2]", "'image_id'", "expected int"]),
    ("coco no annotations key", "coco", "instances.json", lambda p: _edit_json(p, lambda d: _drop(d, ["annotations"])),
     "instances.json", {}, ["instances.json", "'annotations'", "missing"]),
    ("yolo short line", "yolo", "labels/a.txt", lambda p: p.write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n"),
     "", {}, ["a.txt:2", "class cx cy w h"]),
    ("yolo class out of range", "yolo", "labels/a.txt", lambda p: p.write_text("7 0.5 0.5 0.2 0.2\n"),
     "", {}, ["a.txt:1", "'class'", "0..2"]),
    ("yolo pixel coordinates", "yolo", "labels/a.txt", lambda p: p.write_text("0 0.5 0.5 0.2 0.2\n\n1 32 24 10 10\n"),
     "", {}, ["a.txt:3", "'cx'", "normalised"]),
    ("yolo no names", "yolo", "data.yaml", lambda p: p.write_text("train: images\n"),
     "", {}, ["data.yaml", "'names'", "missing"]),
    ("refcoco missing ann_id", "refcoco", "refs.json", lambda p: _edit_json(p, lambda d: _drop(d, [1, "ann_id"])),
     "", {}, ["refs.json", "refs[1]", "'ann_id'", "missing"]),
    ("refcoco sentence without sent", "refcoco", "refs.json", lambda p: _edit_json(p, lambda d: _set(d, [0, "sentences"], [{"tokens": []}])),
     "", {}, ["refs.json", "refs[0].sentences[0]", "'sent'"]),
    ("refcoco bad instances bbox", "refcoco", "instances.json", lambda p: _edit_json(p, lambda d: _set(d, ["annotations", 0, "bbox"], [0, 0, "w", 1])),
     "", {}, ["instances.json", "annotations[0]", "'bbox'"]),
    ("odvg bad json line", "odvg", "od.jsonl", lambda p: p.write_text(p.read_text() + "{not json}\n"),
     "od.jsonl", {}, ["od.jsonl:3", "invalid JSON"]),
    ("odvg missing bbox", "odvg", "od.jsonl", lambda p: _edit_jsonl(p, 1, lambda r: _drop(r, ["detection", "instances", 1, "bbox"])),
     "od.jsonl", {}, ["od.jsonl:1", "'detection.instances[1].bbox'", "missing"]),
    ("odvg inverted bbox", "odvg", "od.jsonl", lambda p: _edit_jsonl(p, 1, lambda r: _set(r, ["detection", "instances", 0, "bbox"], [11, 2, 1, 22])),
     "od.jsonl", {}, ["od.jsonl:1", "'detection.instances[0].bbox'", "x2 >= x1"]),
    ("odvg missing filename", "odvg", "od.jsonl", lambda p: _edit_jsonl(p, 2, lambda r: _drop(r, ["filename"])),
     "od.jsonl", {}, ["od.jsonl:2", "'filename'", "missing"]),
    ("odvg label not in map", "odvg", "od.jsonl", lambda p: _edit_jsonl(p, 1, lambda r: _set(r, ["detection", "instances", 0, "label"], 9)),
     "od.jsonl", {"label_map": "label_map.json"}, ["od.jsonl:1", "'detection.instances[0].label'", "label map"]),
    ("odvg no category, no map", "odvg", "od.jsonl", lambda p: _edit_jsonl(p, 1, lambda r: _drop(r, ["detection", "instances", 0, "category"])),
     "od.jsonl", {}, ["od.jsonl:1", "'detection.instances[0].category'"]),
    ("odvg region without phrase", "odvg", "vg.jsonl", lambda p: _edit_jsonl(p, 1, lambda r: _set(r, ["grounding", "regions", 0], {"bbox": [0, 0, 1, 1]})),
     "vg.jsonl", {}, ["vg.jsonl:1", "'grounding.regions[0].phrase'"]),
    ("odvg region bad box list", "odvg", "vg.jsonl", lambda p: _edit_jsonl(p, 1, lambda r: _set(r, ["grounding", "regions", 1, "bbox"], [[1, 2, 3]])),
     "vg.jsonl", {}, ["vg.jsonl:1", "'grounding.regions[1].bbox'"]),
]


@pytest.mark.parametrize("case, fix_dir, target, breaker, src_name, opts, parts", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_names_file_record_field(tmp_path, case, fix_dir, target, breaker, src_name, opts, parts):
    root = tmp_path / fix_dir
    shutil.copytree(FIX / fix_dir, root)
    breaker(root / target)
    opts = {k: root / v for k, v in opts.items()}
    with pytest.raises(DataFormatError) as info:
        IMPORTERS[fix_dir](root / src_name if src_name else root, **opts)
    msg = str(info.value)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert str(root) in msg  # the full path, not just a base name


# --- pickles are never loaded ---------------------------------------------------------------------

class _Boom:
    """Unpickling this writes a marker file: proof that code ran."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("name", ["refs(unc).p", "refs.pkl", "refs.json"])  # the last is a pickle in disguise
def test_pickle_refs_refused_without_loading(tmp_path, name):
    root = tmp_path / "refcoco"
    root.mkdir()
    shutil.copy(FIX / "refcoco" / "instances.json", root)
    boom = _Boom()
    boom.marker = tmp_path / "ran.txt"
    (root / name).write_bytes(pickle.dumps([boom]))
    for src in (root / name, root):
        with pytest.raises(DataFormatError, match="pickle.*runs code.*Convert it to JSON") as info:
            IMPORTERS["refcoco"](src)
        assert name in str(info.value)
    assert not boom.marker.exists()


# --- empty datasets, unknown format, other options ------------------------------------------------

def _empty_coco(d: Path) -> Path:
    (d / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    return d / "instances.json"


def _empty_yolo(d: Path) -> Path:
    (d / "images").mkdir()
    (d / "classes.txt").write_text("cat\ndog\n")
    return d


def _empty_refcoco(d: Path) -> Path:
    (d / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    (d / "refs.json").write_text("[]")
    return d


def _empty_odvg(d: Path) -> Path:
    (d / "od.jsonl").write_text("\n")
    return d / "od.jsonl"


@pytest.mark.parametrize("fmt, make", [("coco", _empty_coco), ("yolo", _empty_yolo), ("refcoco", _empty_refcoco),
                                       ("odvg", _empty_odvg)])
def test_empty_dataset(tmp_path, fmt, make):
    src = make(tmp_path)
    res = IMPORTERS[fmt](src)
    assert res.pairs == [] and res.skipped == {} and res.num_images == 0
    report = convert(fmt, src, tmp_path / "out")
    assert report.num_pairs == 0 and report.images == 0 and report.skipped == {}
    assert (tmp_path / "out" / "instructions.jsonl").read_text() == ""


def test_unknown_format_lists_valid_ones(tmp_path):
    for call in (lambda: get_importer("voc"), lambda: convert("voc", tmp_path, tmp_path / "out")):
        with pytest.raises(ValueError, match="'voc'.*coco, odvg, refcoco, yolo"):
            call()


@pytest.mark.parametrize("fmt, src", [("coco", FIX / "coco" / "instances.json"), ("odvg", FIX / "odvg" / "od.jsonl")])
def test_split_refused_where_the_format_has_none(fmt, src):
    with pytest.raises(ValueError, match="no --split"):
        IMPORTERS[fmt](src, split="val")


@pytest.mark.parametrize("names_file, text", [
    ("data.yaml", "names: [cat, dog, traffic light]\n"),
    ("data.yaml", "names:\n  0: cat\n  1: dog\n  2: traffic light\n"),
    ("classes.txt", "cat\ndog\ntraffic light\n"),
])
def test_yolo_class_name_sources(tmp_path, names_file, text):
    root = tmp_path / "yolo"
    shutil.copytree(FIX / "yolo", root)
    (root / "data.yaml").unlink()
    (root / names_file).write_text(text)
    res = IMPORTERS["yolo"](root)
    assert {p.extra["category"] for p in res.pairs if p.type == "category"} == {"cat", "traffic light"}


def test_yolo_split_from_data_yaml(tmp_path):
    root = tmp_path / "yolo"
    for split, name in (("train", "a"), ("val", "b")):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / f"{name}.png"), np.zeros((10, 20, 3), np.uint8))
        (root / "labels" / split / f"{name}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [cat]\n")
    res = IMPORTERS["yolo"](root, split="val")
    assert [(p.image, p.boxes_xyxy) for p in res.pairs] == [("images/val/b.png", [[5, 2.5, 15, 7.5]])]
    with pytest.raises(ValueError, match="'test:'"):
        IMPORTERS["yolo"](root, split="test")


# --- convert --------------------------------------------------------------------------------------

@pytest.mark.parametrize("copy_images", [False, True])
def test_convert_yolo(tmp_path, copy_images):
    out = tmp_path / "out"
    report = convert("yolo", FIX / "yolo", out, absent_rate=0.5, copy_images=copy_images)
    pairs = read_pairs(out / "instructions.jsonl")
    assert report.num_pairs == len(pairs) and report.pairs_by_type == {"absent": 2, "category": 2}
    assert report.images == 2 and report.source_images == 2
    assert report.skipped == {"category_without_usable_boxes": 1, "degenerate_box": 1, "label_without_image": 1}
    for p in pairs:
        assert (out / p.image).is_file()
        assert not Path(p.image).is_absolute()
        assert p.image.startswith("images/") == copy_images
    if copy_images:
        assert sorted(p.image for p in pairs)[0] == "images/a.jpg"
    assert "wrote 4 pairs" in report.summary()


def test_convert_counts_missing_images_and_refuses_when_none_exist(tmp_path):
    src = FIX / "coco" / "instances.json"
    with pytest.raises(FileNotFoundError, match="images_root"):
        convert("coco", src, tmp_path / "out")
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "000001.jpg"), np.zeros((48, 64, 3), np.uint8))
    report = convert("coco", src, tmp_path / "out2", images_root=images, absent_rate=0.5)
    pairs = read_pairs(tmp_path / "out2" / "instructions.jsonl")
    assert {p.image for p in pairs} == {"../imgs/000001.jpg"}
    assert report.skipped["image_missing"] == 2  # 000002 and 000003 had pairs but no file


def test_convert_refuses_to_overwrite_and_unknown_options(tmp_path):
    convert("yolo", FIX / "yolo", tmp_path / "out")
    with pytest.raises(FileExistsError):
        convert("yolo", FIX / "yolo", tmp_path / "out")
    convert("yolo", FIX / "yolo", tmp_path / "out", overwrite=True)
    with pytest.raises(ValueError, match="takes no option 'label_map'"):
        convert("yolo", FIX / "yolo", tmp_path / "out3", label_map=LABEL_MAP)


def test_convert_odvg_with_label_map(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((48, 64, 3), np.uint8))
    report = convert("odvg", FIX / "odvg" / "od.jsonl", tmp_path / "out", images_root=tmp_path,
                     label_map=LABEL_MAP, absent_rate=0.5)
    assert report.pairs_by_type["category"] == 1
    assert report.skipped == {"category_without_usable_boxes": 1, "degenerate_box": 1}


@pytest.mark.parametrize("orientation, size_wh", [(1, (20, 10)), (3, (20, 10)), (5, (10, 20)), (6, (10, 20)),
                                                   (7, (10, 20)), (8, (10, 20))])
def test_yolo_image_size_follows_exif_orientation(tmp_path, orientation, size_wh):
    Image = pytest.importorskip("PIL.Image")
    from promptdet.data.formats.yolo import image_size_wh

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (20, 10)).save(tmp_path / "x.jpg", exif=exif.tobytes())
    assert image_size_wh(tmp_path / "x.jpg") == size_wh
    assert cv2.imread(str(tmp_path / "x.jpg")).shape[1::-1] == size_wh  # what training will load


def test_yolo_without_pillow_reads_size_with_cv2(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # makes "from PIL import Image" raise ImportError
    assert [p.boxes_xyxy for p in run("yolo").pairs if p.type == "category"] == [[[24, 12, 40, 36]], [[12, 6, 20, 18]]]


@pytest.mark.parametrize("image, dest", [
    ("a.jpg", "images/a.jpg"),
    ("images/train/a.jpg", "images/train/a.jpg"),  # no images/images/
    ("/data/x/a.jpg", "images/data/x/a.jpg"),  # never outside out_dir
    ("../x/a.jpg", "images/x/a.jpg"),
])
def test_copied_image_destination(image, dest):
    from promptdet.data.convert import _copy_dest

    assert _copy_dest(image) == dest


# --- zero and negative widths and heights, in every importer ---------------------------------------
# Each source holds one good cat box, [10, 5, 30, 20] once converted, and one bad box of size (w, h)
# at x 30, y 5 in the source's own units. A zero side is a degenerate box: skipped and counted. A
# negative side is a malformed record where the format stores a size (COCO, RefCOCO, YOLO), and a
# degenerate box where it stores corners (ODVG: x2 < x1).
GOOD_XYXY = [10.0, 5.0, 30.0, 20.0]


def _coco_source(tmp_path, w, h):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 15], "area": 300, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 5, w, h], "area": 0, "iscrowd": 0}]
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}], "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}]}))
    return tmp_path / "instances.json", {}


def _refcoco_source(tmp_path, w, h):
    _coco_source(tmp_path, w, h)
    (tmp_path / "refs.json").write_text(json.dumps([
        {"ref_id": 0, "ann_id": 1, "image_id": 1, "split": "train", "category_id": 1, "sentences": [{"sent": "the cat"}]},
        {"ref_id": 1, "ann_id": 2, "image_id": 1, "split": "train", "category_id": 1, "sentences": [{"sent": "a flat cat"}]},
    ]))
    return tmp_path, {}


def _yolo_source(tmp_path, w, h):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nnames:\n  0: cat\n")
    # normalised centre and size on the 64x48 image: the good box is centre (20, 12.5), size 20 x 15
    (tmp_path / "labels" / "a.txt").write_text(f"0 {20 / 64} {12.5 / 48} {20 / 64} {15 / 48}\n0 0.6 0.3 {w / 64} {h / 48}\n")
    return tmp_path, {}


def _odvg_od_source(tmp_path, w, h):
    rec = {"filename": "a.jpg", "height": 48, "width": 64, "detection": {"instances": [
        {"bbox": GOOD_XYXY, "label": 0, "category": "cat"}, {"bbox": [30, 5, 30 + w, 5 + h], "label": 0, "category": "cat"}]}}
    (tmp_path / "od.jsonl").write_text(json.dumps(rec) + "\n")
    return tmp_path / "od.jsonl", {}


def _odvg_vg_source(tmp_path, w, h):
    rec = {"filename": "a.jpg", "height": 48, "width": 64, "grounding": {"caption": "a cat", "regions": [
        {"bbox": [GOOD_XYXY, [30, 5, 30 + w, 5 + h]], "phrase": "a cat"}]}}
    (tmp_path / "vg.jsonl").write_text(json.dumps(rec) + "\n")
    return tmp_path / "vg.jsonl", {}


BAD_BOX_SOURCES = {"coco": ("coco", _coco_source), "refcoco": ("refcoco", _refcoco_source),
                   "yolo": ("yolo", _yolo_source), "odvg-od": ("odvg", _odvg_od_source),
                   "odvg-vg": ("odvg", _odvg_vg_source)}


@pytest.mark.parametrize("key", sorted(BAD_BOX_SOURCES))
@pytest.mark.parametrize("w, h", [(10, 0), (0, 10), (0, 0), (10, -5), (-5, 10)])
def test_zero_and_negative_sizes_in_every_importer(tmp_path, key, w, h):
    fmt, make = BAD_BOX_SOURCES[key]
    src, opts = make(tmp_path, w, h)
    if w < 0 or h < 0:
        with pytest.raises(DataFormatError, match=r"must be >= 0|normalised to|x2 >= x1 and y2 >= y1"):
            IMPORTERS[fmt](src, **opts)
        return
    res = IMPORTERS[fmt](src, **opts)
    boxes = [b for p in res.pairs for b in p.boxes_xyxy]
    assert boxes and all(b == pytest.approx(GOOD_XYXY) for b in boxes), boxes
    assert res.skipped.get("degenerate_box") == 1, res.skipped

"""Importers on tiny hand-made datasets: the exact message for each broken record, and the edge cases
(skip reasons, name clean-up, folders, options) that test_formats.py's fixtures do not reach.

A message names the file, the record and the field, then the problem, and the user fixes the data
from it alone, so each one is compared whole.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptdet.data.formats import IMPORTERS, get_importer
from promptdet.data.formats.base import ImageLabels, category_pairs, refuse_pickle
from promptdet.data.formats.jsonl import parse_record, read_pairs, write_pairs
from promptdet.data.formats.yolo import label_path, read_class_names
from promptdet.data.pairs import DataFormatError, InstructionPair

COCO = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _error(call) -> str:
    with pytest.raises(DataFormatError) as err:
        call()
    return str(err.value)


def _coco_with(tmp_path, edit) -> Path:
    data = json.loads(json.dumps(COCO))
    edit(data)
    return _json(tmp_path / "instances.json", data)


# ---------------------------------------------------------------- COCO

@pytest.mark.parametrize("edit, where", [
    (lambda d: d.pop("categories"), ": field 'categories': missing"),
    (lambda d: d.update(images={}), ": field 'images': expected list, got {}"),
    (lambda d: d["images"].__setitem__(0, 5), " (images[0]): expected a JSON object, got int"),
    (lambda d: d["images"][0].update(id="1"), " (images[0]): field 'id': expected int, got '1'"),
    (lambda d: d["images"][0].update(id=True), " (images[0]): field 'id': expected int, got True"),
    (lambda d: d["images"][1].pop("file_name"), " (images[1]): field 'file_name': missing"),
    (lambda d: d["images"][1].update(file_name=""), " (images[1]): field 'file_name': must be a non-empty string"),
    (lambda d: d["images"][1].update(id=1), " (images[1]): field 'id': duplicate image id 1"),
    (lambda d: d["categories"][1].update(name=" "), " (categories[1]): field 'name': must be a non-empty string"),
    (lambda d: d["categories"][1].update(name=3), " (categories[1]): field 'name': expected str, got 3"),
    (lambda d: d["categories"][1].update(id=1), " (categories[1]): field 'id': duplicate category id 1"),
    (lambda d: d["annotations"][0].pop("id"), " (annotations[0]): field 'id': missing"),
    (lambda d: d["annotations"][0].update(category_id=None),
     " (annotations[0]): field 'category_id': expected int, got None"),
    (lambda d: d["annotations"][0].update(bbox="1 2 3 4"), " (annotations[0]): field 'bbox': expected list, got '1 2 3 4'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), " (annotations[0]): field 'bbox': expected [x, y, w, h], got [1, 2, 3]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3, 4, 5]),
     " (annotations[0]): field 'bbox': expected [x, y, w, h], got [1, 2, 3, 4, 5]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, True, 4]),
     " (annotations[0]): field 'bbox': values must be finite numbers, got [1, 2, True, 4]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, "3", 4]),
     " (annotations[0]): field 'bbox': values must be finite numbers, got [1, 2, '3', 4]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, math.inf, 4]),
     " (annotations[0]): field 'bbox': values must be finite numbers, got [1, 2, inf, 4]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3, -0.5]),
     " (annotations[0]): field 'bbox': width and height must be >= 0, got [1, 2, 3, -0.5]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]),
     " (annotations[0]): field 'bbox': width and height must be >= 0, got [1, 2, -3, 4]"),
    (lambda d: d["annotations"][0].update(iscrowd=2), " (annotations[0]): field 'iscrowd': expected 0 or 1, got 2"),
    (lambda d: d["annotations"][0].update(iscrowd="0"), " (annotations[0]): field 'iscrowd': expected 0 or 1, got '0'"),
])
def test_coco_messages(tmp_path, edit, where):
    src = _coco_with(tmp_path, edit)
    assert _error(lambda: IMPORTERS["coco"](src)) == f"{src}{where}"


def test_coco_file_level_messages(tmp_path):
    src = _json(tmp_path / "instances.json", [COCO])
    assert _error(lambda: IMPORTERS["coco"](src)) == f"{src}: expected a COCO JSON object, got list"
    src.write_text('{"images": [\n  {"id": 1,, "x": 2}]}')
    assert _error(lambda: IMPORTERS["coco"](src)) == f"{src}:2: invalid JSON (Expecting property name enclosed in " \
                                                     "double quotes, column 12)"
    src.write_bytes(b'{"images": "\xff\xfe"}')
    assert _error(lambda: IMPORTERS["coco"](src)) == f"{src}: not UTF-8 text; expected JSON"
    with pytest.raises(FileNotFoundError) as err:
        IMPORTERS["coco"](tmp_path / "none.json")
    assert str(err.value) == f"{tmp_path / 'none.json'}: no such file"


@pytest.mark.parametrize("name", ["instances.json", "refs.PKL", "refs.p", "refs.pickle"])
def test_a_pickle_is_refused_with_the_conversion_command(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04K\x01." if name.endswith(".json") else b"[]")
    stem = path.stem
    assert _error(lambda: refuse_pickle(path)) == (
        f"{path}: is a Python pickle, and loading a pickle runs code in it, so promptdet refuses. Convert it to "
        "JSON once, in an environment you trust: python -c \"import json, pickle; "
        f"json.dump(pickle.load(open('{name}', 'rb')), open('{stem}.json', 'w'))\"")
    refuse_pickle(tmp_path / "missing.json")  # nothing to read: not a pickle
    (tmp_path / "ok.json").write_text("[]")
    refuse_pickle(tmp_path / "ok.json")


def test_coco_skips_and_name_clean_up(tmp_path):
    data = json.loads(json.dumps(COCO))
    data["categories"] = [{"id": 1, "name": " cat "}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}]
    data["annotations"] = [
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
        {"id": 6, "image_id": 1, "category_id": 3, "bbox": [10, 20, 1, 1], "iscrowd": False},  # same name, other id
        {"id": 7, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4]},  # no such image
        {"id": 8, "image_id": 2, "category_id": 4, "bbox": [1, 2, 3, 4]},  # no such category
        {"id": 9, "image_id": 2, "category_id": 2, "bbox": [1, 2, 0, 4]},  # zero width
        {"id": 10, "image_id": 2, "category_id": 2, "bbox": [1, 2, 3, 4], "iscrowd": 1},
    ]
    data["annotations"] += [{**a, "id": a["id"] + 100} for a in data["annotations"][2:]]  # each skip twice
    src = _json(tmp_path / "ann" / "instances.json", data)
    res = IMPORTERS["coco"](src, absent_rate=0.0)
    assert [(p.image, p.extra["category"], p.boxes_xyxy, p.object_ids) for p in res.pairs] == [
        ("a.jpg", "cat", [[1, 2, 4, 6], [10, 20, 11, 21]], [5, 6])]
    assert res.skipped == {"annotation_unknown_image": 2, "annotation_unknown_category": 2, "degenerate_box": 2,
                           "crowd_box": 2, "category_without_usable_boxes": 1}
    assert res.num_images == 2 and res.images_dir == tmp_path / "ann"
    (tmp_path / "ann" / "images").mkdir()
    assert IMPORTERS["coco"](src).images_dir == tmp_path / "ann" / "images"
    assert IMPORTERS["coco"](src, images_root=str(tmp_path / "pics")).images_dir == tmp_path / "pics"


def test_option_messages(tmp_path):
    src = _json(tmp_path / "instances.json", COCO)
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError) as err:
            IMPORTERS["coco"](src, absent_rate=rate)
        assert str(err.value) == f"absent_rate must be in [0, 1), got {rate}"
    with pytest.raises(ValueError) as err:
        IMPORTERS["coco"](src, templates="val")
    assert str(err.value) == "templates must be one of ('train', 'test'), got 'val'"
    with pytest.raises(ValueError) as err:
        IMPORTERS["coco"](src, split="val")
    assert str(err.value) == "the coco importer has no --split; point SRC at the split's file, e.g. instances_val2017.json"
    with pytest.raises(ValueError) as err:
        get_importer("voc")
    assert str(err.value) == "unknown data format 'voc'; valid formats: coco, odvg, refcoco, yolo"
    assert get_importer("odvg") is IMPORTERS["odvg"]
    assert len(IMPORTERS["coco"](src, absent_rate=0.0).pairs) == 1  # 0 is allowed


# ---------------------------------------------------------------- absent pairs

def _labels(*present_sets):
    out = []
    for i, present in enumerate(present_sets):
        img = ImageLabels(f"{i}.jpg")
        for name in present:
            img.add(name, [0, 0, 1, 1], 10 * i)
        out.append(img)
    return out


def test_absent_pairs_never_name_a_present_category_and_catch_up_at_most_twice_the_rate():
    skipped: Counter = Counter()
    cats = ["a", "b", "c", "d", "e", "f"]
    # two full images cannot take absent pairs; the empty one after them takes at most 2 (twice its quota 1)
    pairs = category_pairs(_labels(cats, cats, []), cats, rng=np.random.default_rng(0), templates="train",
                           absent_rate=0.5, skipped=skipped)
    by_image = Counter((p.image, p.type) for p in pairs)
    assert by_image == {("0.jpg", "category"): 6, ("1.jpg", "category"): 6, ("2.jpg", "absent"): 2}
    absent = [p for p in pairs if p.type == "absent"]
    assert all(p.boxes_xyxy == [] and p.object_ids is None for p in absent)
    assert len({p.extra["category"] for p in absent}) == 2  # drawn without replacement
    # positives come in the categories' order, each with its ids
    assert [p.extra["category"] for p in pairs[:6]] == cats and pairs[0].object_ids == [0]
    assert pairs[6].object_ids == [10]


@pytest.mark.parametrize("rate, per_image", [(0.5, 1.0), (0.2, 0.25), (0.25, 1 / 3)])
def test_absent_pairs_per_positive_follow_the_rate(rate, per_image):
    images = _labels(*[["a"]] * 120)
    pairs = category_pairs(images, ["a", "b", "c", "d"], rng=np.random.default_rng(1), templates="train",
                           absent_rate=rate, skipped=Counter())
    n_abs = sum(p.type == "absent" for p in pairs)
    assert abs(n_abs - per_image * 120) <= 1  # error diffusion: on target within one pair
    # an image with 3 positives owes 3 times the absent pairs of an image with one
    pairs = category_pairs(_labels(*[["a", "b", "c"]] * 40), list("abcdefgh"), rng=np.random.default_rng(1),
                           templates="train", absent_rate=rate, skipped=Counter())
    assert abs(sum(p.type == "absent" for p in pairs) - 3 * per_image * 40) <= 1


def test_no_absent_rate_leaves_the_wording_to_the_positives():
    from promptdet.data.synth.templates import category_instruction

    pairs = category_pairs(_labels(["a", "b"]), ["a", "b", "c"], rng=np.random.default_rng(5), templates="test",
                           absent_rate=0.0, skipped=Counter())
    rng = np.random.default_rng(5)
    assert [p.instruction for p in pairs] == [category_instruction(n, rng, "test") for n in ("a", "b")]


def test_a_present_category_without_usable_boxes_is_skipped_and_never_absent():
    img = ImageLabels("x.jpg")
    img.add("b", None)  # a crowd region
    skipped: Counter = Counter()
    pairs = category_pairs([img] * 30, ["a", "b"], rng=np.random.default_rng(2), templates="train",
                           absent_rate=0.5, skipped=skipped)
    assert skipped == {"category_without_usable_boxes": 30}
    assert {p.extra["category"] for p in pairs} == {"a"} and {p.type for p in pairs} == {"absent"}
    assert img.object_ids is None and img.boxes_xyxy == {}


# ---------------------------------------------------------------- YOLO

def _yolo(tmp_path, names="names: [cat, dog]\n", labels=None, size=(20, 10)) -> Path:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text(names)
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((size[1], size[0], 3), np.uint8))
    if labels is not None:
        (root / "labels" / "a.txt").write_text(labels)
    return root


@pytest.mark.parametrize("line, where", [
    ("0 0.5 0.5 0.2", (":1: expected 'class cx cy w h', got '0 0.5 0.5 0.2' "
                       "(segmentation and pose labels are not supported)")),
    ("c 0.5 0.5 0.2 0.2", ":1: field 'class': expected an integer, got 'c'"),
    ("2 0.5 0.5 0.2 0.2", ":1: field 'class': 2 is not a class index 0..1"),
    ("-1 0.5 0.5 0.2 0.2", ":1: field 'class': -1 is not a class index 0..1"),
    ("0 x 0.5 0.2 0.2", ":1: field 'cx': expected a number normalised to [0, 1], got 'x'"),
    ("0 0.5 1.01 0.2 0.2", ":1: field 'cy': expected a number normalised to [0, 1], got '1.01'"),
    ("0 0.5 0.5 -0.1 0.2", ":1: field 'w': expected a number normalised to [0, 1], got '-0.1'"),
    ("0 0.5 0.5 0.2 nan", ":1: field 'h': expected a number normalised to [0, 1], got 'nan'"),
])
def test_yolo_label_messages(tmp_path, line, where):
    root = _yolo(tmp_path, labels=line + "\n")
    assert _error(lambda: IMPORTERS["yolo"](root)) == f"{root / 'labels' / 'a.txt'}{where}"


def test_yolo_boxes_edges_and_skips(tmp_path):
    root = _yolo(tmp_path, labels="\n1 0 0 1 1\n0 0.5 0.5 0 0.4\n  \n1 0.25 0.5 0.5 0.2\n")
    res = IMPORTERS["yolo"](root, absent_rate=0.0)
    assert [(p.image, p.extra["category"], p.boxes_xyxy) for p in res.pairs] == [
        ("images/a.png", "dog", [[-10.0, -5.0, 10.0, 5.0], [0.0, 4.0, 10.0, 6.0]])]
    assert res.skipped == {"degenerate_box": 1, "category_without_usable_boxes": 1}
    assert res.images_dir == root and res.num_images == 1


def test_yolo_label_file_limits(tmp_path, monkeypatch):
    from promptdet.data.formats import yolo

    monkeypatch.setattr(yolo, "MAX_LABEL_LINES", 3)
    root = _yolo(tmp_path, labels="\n\n\n\n")
    lp = root / "labels" / "a.txt"
    assert _error(lambda: IMPORTERS["yolo"](root)) == f"{lp}: 4 lines; a label file is at most 3"
    lp.write_text("0 0.5 0.5 0.2 0.2\n" * 3)
    assert len(IMPORTERS["yolo"](root, absent_rate=0.0).pairs) == 1  # at the limit: fine
    lp.write_text("x" * 193)
    assert _error(lambda: IMPORTERS["yolo"](root)) == (f"{lp}: 193 bytes; a label file is at most 3 lines "
                                                       "(promptdet.limits.MAX_LABEL_LINES)")
    lp.write_text(" " * 191 + "\n")
    assert IMPORTERS["yolo"](root).pairs is not None  # 192 bytes is within 3 * 64


@pytest.mark.parametrize("text, where", [
    ("names: {0: cat, 2: dog}\n", ": field 'names': class indices must be 0..1, got [0, 2]"),
    ("names: {a: cat}\n", ": field 'names': dict keys must be class indices 0..n-1"),
    ("names: cat\n", ": field 'names': missing; expected a list or an {index: name} dict"),
    ("- cat\n", ": field 'names': missing; expected a list or an {index: name} dict"),
    ("names: [cat, ' ']\n", ": field 'names[1]': empty class name"),
])
def test_yolo_names_messages(tmp_path, text, where):
    path = tmp_path / "data.yaml"
    path.write_text(text)
    assert _error(lambda: read_class_names(path)) == f"{path}{where}"


def test_yolo_names_sources(tmp_path):
    path = tmp_path / "data.YML"
    path.write_text("names: {1: ' dog ', 0: cat}\n")
    assert read_class_names(path) == ["cat", "dog"]
    path.write_text("names: [' cat', 7]\n")
    assert read_class_names(path) == ["cat", "7"]
    txt = tmp_path / "classes.txt"
    txt.write_text("\n cat \n\n dog\n")
    assert read_class_names(txt) == ["cat", "dog"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("names: [cat\nx: {\n")
    msg = _error(lambda: read_class_names(bad))
    assert msg.startswith(f"{bad}:2: invalid YAML (") and "expected ',' or ']'" in msg


def test_yolo_finds_its_names_file(tmp_path):
    root = _yolo(tmp_path, labels="1 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").unlink()
    with pytest.raises(FileNotFoundError) as err:
        IMPORTERS["yolo"](root)
    assert str(err.value) == f"{root}: no data.yaml or classes.txt with the class names; pass the file as SRC"
    (root / "classes.txt").write_text("x\ny\n")
    (root / "dataset.yaml").write_text("names: [cat, dog]\n")  # dataset.yaml comes before classes.txt
    assert [p.extra["category"] for p in IMPORTERS["yolo"](root, absent_rate=0.0).pairs] == ["dog"]
    (root / "data.yaml").write_text("names: [a, b]\n")  # and data.yaml before both
    assert [p.extra["category"] for p in IMPORTERS["yolo"](root, absent_rate=0.0).pairs] == ["b"]
    assert [p.extra["category"] for p in IMPORTERS["yolo"](root / "classes.txt", absent_rate=0.0).pairs] == ["y"]


def test_yolo_folders(tmp_path):
    root = _yolo(tmp_path, labels="0 0.5 0.5 0.5 0.5\n")
    (root / "images" / "notes.txt").write_text("not an image")
    cv2.imwrite(str(root / "images" / "B.PNG"), np.zeros((4, 4, 3), np.uint8))  # no label: background
    (root / "labels" / "gone.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "labels" / "sub").mkdir()
    (root / "labels" / "sub" / "gone2.txt").write_text("")
    res = IMPORTERS["yolo"](root, absent_rate=0.5)
    assert res.num_images == 2 and res.skipped == {"label_without_image": 2}
    assert {p.image for p in res.pairs} == {"images/a.png", "images/B.PNG"}
    other = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError) as err:
        IMPORTERS["yolo"](root, images_root=other)
    assert str(err.value) == (f"{other}: no images/ folder; point --images (images_root) at the folder holding "
                              "images/ and labels/")


def test_yolo_splits(tmp_path):
    outside = tmp_path / "outside"
    root = _yolo(tmp_path, names=f"names: [cat]\ntrain: [images/t1, images/t2]\nval: images/v\ntest: {outside}\n",
                 labels="0 0.5 0.5 0.5 0.5\n")
    for d in ("t1", "t2"):
        (root / "images" / d).mkdir()
        cv2.imwrite(str(root / "images" / d / f"{d}.jpg"), np.zeros((4, 4, 3), np.uint8))
    res = IMPORTERS["yolo"](root, split="train", absent_rate=0.0)
    assert res.num_images == 2 and res.pairs == []
    with pytest.raises(FileNotFoundError) as err:
        IMPORTERS["yolo"](root, split="val")
    assert str(err.value) == (f"{root / 'data.yaml'}: 'val:' folder {root / 'images' / 'v'} does not exist "
                              "(image-list .txt files are not supported)")
    with pytest.raises(ValueError) as err:
        IMPORTERS["yolo"](root, split="extra")
    assert str(err.value) == (f"{root / 'data.yaml'}: no 'extra:' entry; a YOLO --split must be a data.yaml key "
                              "(train, val, test)")
    outside.mkdir()
    cv2.imwrite(str(outside / "o.jpg"), np.zeros((4, 4, 3), np.uint8))
    res = IMPORTERS["yolo"](root, split="test", absent_rate=0.5)
    assert {p.image for p in res.pairs} == {str(outside / "o.jpg")}  # not under root: kept whole
    txt = root / "classes.txt"
    txt.write_text("cat\n")
    with pytest.raises(ValueError, match="no 'train:' entry"):
        IMPORTERS["yolo"](txt, split="train")


def test_label_path():
    assert label_path(Path("/d/images/x/images/a.jpg")) == Path("/d/images/x/labels/a.txt")
    assert label_path(Path("/d/pics/a.b.png")) == Path("/d/pics/a.b.txt")
    assert label_path(Path("/d/myimages/a.jpg")) == Path("/d/myimages/a.txt")


def test_yolo_unreadable_image(tmp_path, monkeypatch):
    import sys

    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is not None:  # imported by another test, ultralytics wraps PIL's opener with a HEIF plugin install
        monkeypatch.setattr("PIL.Image.open", patches._image_open)
    root = _yolo(tmp_path, labels="0 0.5 0.5 0.5 0.5\n")
    (root / "images" / "a.png").write_bytes(b"not a png")
    msg = _error(lambda: IMPORTERS["yolo"](root))
    assert msg.startswith(f"{root / 'images' / 'a.png'}: cannot read the image to get its size (")


# ---------------------------------------------------------------- ODVG

def _odvg(tmp_path, *records, name="od.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


DET = {"filename": "a.jpg", "detection": {"instances": [{"bbox": [1, 2, 3, 4], "label": 0, "category": "cat"}]}}


def _det(**inst):
    return {"filename": "a.jpg", "detection": {"instances": [{"bbox": [1, 2, 3, 4], "label": 0, "category": "cat", **inst}]}}


def _reg(**region):
    return {"filename": "g.jpg", "grounding": {"caption": "a red ball", "regions": [{"bbox": [1, 2, 3, 4], **region}]}}


@pytest.mark.parametrize("record, where", [
    ({"detection": {}}, ":1: field 'filename': missing"),
    ({**DET, "filename": ""}, ":1: field 'filename': must be a non-empty string"),
    ({**DET, "height": -1}, ":1: field 'height': must be a finite positive number, got -1"),
    ({**DET, "width": 0}, ":1: field 'width': must be a finite positive number, got 0"),
    ({**DET, "width": "640"}, ":1: field 'width': must be a finite positive number, got '640'"),
    ({**DET, "height": True}, ":1: field 'height': must be a finite positive number, got True"),
    ({**DET, "height": math.inf}, ":1: field 'height': must be a finite positive number, got inf"),
    ({"filename": "a.jpg"}, ":1: field 'detection': a line needs 'detection' or 'grounding'"),
    ({"filename": "a.jpg", "detection": []}, ":1: field 'detection': expected dict, got []"),
    ({"filename": "a.jpg", "detection": {}}, ":1: field 'detection.instances': missing"),
    ({"filename": "a.jpg", "detection": {"instances": [5]}}, ":1: field 'detection.instances[0]': expected an object, got 5"),
    (_det(bbox=[1, 2, 3]), ":1: field 'detection.instances[0].bbox': expected [x1, y1, x2, y2], got [1, 2, 3]"),
    (_det(label="0"), ":1: field 'detection.instances[0].label': expected an integer, got '0'"),
    (_det(label=False), ":1: field 'detection.instances[0].label': expected an integer, got False"),
    (_det(category=" "), ":1: field 'detection.instances[0].category': empty; or pass a label map"),
    ({"filename": "g.jpg", "grounding": {"regions": [4]}}, ":1: field 'grounding.regions[0]': expected an object, got 4"),
    ({"filename": "g.jpg", "grounding": {}}, ":1: field 'grounding.regions': missing"),
    (_reg(tokens_positive=[[0, "x"]]),
     ":1: field 'grounding.regions[0].tokens_positive': expected [[start, end], ...], got [[0, 'x']]"),
    (_reg(tokens_positive=[5]), ":1: field 'grounding.regions[0].tokens_positive': expected [[start, end], ...], got [5]"),
    (_reg(), ":1: field 'grounding.regions[0].phrase': missing (and no tokens_positive into a caption)"),
    (_reg(phrase=" \t"), ":1: field 'grounding.regions[0].phrase': empty"),
    ({"filename": "g.jpg", "grounding": {"regions": [{"phrase": "x"}]}}, ":1: field 'grounding.regions[0].bbox': missing"),
    (_reg(phrase="x", bbox=[[1, 2, 3, 4], [1, 2]]),
     ":1: field 'grounding.regions[0].bbox': expected [x1, y1, x2, y2], got [1, 2]"),
])
def test_odvg_messages(tmp_path, record, where):
    src = _odvg(tmp_path, record)
    assert _error(lambda: IMPORTERS["odvg"](src)) == f"{src}{where}"


def test_odvg_caption_that_is_not_text_gives_no_phrase(tmp_path):
    src = _odvg(tmp_path, {"filename": "g.jpg", "grounding": {"caption": 5, "regions": [
        {"bbox": [1, 2, 3, 4], "tokens_positive": [[0, 1]]}]}})
    assert _error(lambda: IMPORTERS["odvg"](src)).endswith("field 'grounding.regions[0].phrase': missing "
                                                          "(and no tokens_positive into a caption)")


def test_odvg_label_map_messages(tmp_path):
    src = _odvg(tmp_path, DET)
    for data, where in (([], ": expected a JSON object mapping label id -> name"),
                        ({"a": "cat"}, ": field 'a': label ids must be integers"),
                        ({"0": " "}, ": field '0': expected a category name, got ' '"),
                        ({"0": 3}, ": field '0': expected a category name, got 3")):
        lm = _json(tmp_path / "lm.json", data)
        assert _error(lambda lm=lm: IMPORTERS["odvg"](src, label_map=lm)) == f"{lm}{where}"
    lm = _json(tmp_path / "lm.json", {"1": "dog"})
    assert _error(lambda: IMPORTERS["odvg"](src, label_map=lm)) == (
        f"{src}:1: field 'detection.instances[0].label': 0 is not in the label map")
    with pytest.raises(FileNotFoundError) as err:
        IMPORTERS["odvg"](tmp_path / "none.jsonl")
    assert str(err.value) == f"{tmp_path / 'none.jsonl'}: no such file (expected an ODVG .jsonl)"
    with pytest.raises(ValueError) as err:
        IMPORTERS["odvg"](src, split="val")
    assert str(err.value) == "the odvg importer has no --split; point SRC at the split's .jsonl file"


def test_odvg_categories_and_phrases(tmp_path):
    src = _odvg(tmp_path,
                {"filename": "a.jpg", "height": 10, "width": 20.5, "detection": {"instances": [
                    {"bbox": [1, 2, 3, 4], "label": 2, "category": " zebra "},
                    {"bbox": [5, 5, 5, 9], "category": "ant"},  # zero width: degenerate
                    {"bbox": [6, 5, 6, 9], "category": "ant"},
                    {"bbox": [0, 0, 2, 2], "label": 0, "category": "yak"}]}},
                {"filename": "b.jpg", "detection": {"instances": []}},
                {"filename": "g.jpg", "grounding": {"caption": "A  red ball and a cup", "regions": [
                    {"bbox": [[1, 1, 2, 2], [3, 3, 4, 4]], "tokens_positive": [[0, 1], [3, 11]]},
                    {"bbox": [5, 5, 6, 6], "phrase": "a RED  ball"},
                    {"bbox": [7, 7, 7, 8], "phrase": "a cup"}]}})
    res = IMPORTERS["odvg"](src, absent_rate=0.5, seed=1)
    assert res.num_images == 3
    assert [(p.instruction, p.boxes_xyxy, p.type) for p in res.pairs if p.type == "grounding"] == [
        ("A red ball", [[1, 1, 2, 2], [3, 3, 4, 4], [5, 5, 6, 6]], "grounding")]
    assert res.skipped == {"degenerate_box": 3, "category_without_usable_boxes": 1, "phrase_without_usable_boxes": 1}
    cats = [(p.image, p.extra["category"], p.boxes_xyxy) for p in res.pairs if p.type == "category"]
    assert cats == [("a.jpg", "yak", [[0, 0, 2, 2]]), ("a.jpg", "zebra", [[1, 2, 3, 4]])]  # label order
    absent = {p.extra["category"] for p in res.pairs if p.type == "absent"}
    assert absent <= {"yak", "zebra", "ant"} and all(p.image == "b.jpg" for p in res.pairs if p.type == "absent")
    assert res.images_dir == tmp_path
    lm = _json(tmp_path / "lm.json", {"2": " zebra ", "0": "yak", "5": "owl"})
    det = _odvg(tmp_path, {"filename": "a.jpg", "detection": {"instances": [{"bbox": [1, 2, 3, 4], "label": 5}]}},
                {"filename": "b.jpg", "detection": {"instances": []}}, name="lm.jsonl")
    res = IMPORTERS["odvg"](det, label_map=lm, absent_rate=0.5, seed=0)
    assert [p.extra["category"] for p in res.pairs if p.type == "category"] == ["owl"]
    assert {p.extra["category"] for p in res.pairs if p.type == "absent"} <= {"yak", "zebra"}
    assert IMPORTERS["odvg"](det, label_map=lm, images_root=tmp_path / "x").images_dir == tmp_path / "x"


# ---------------------------------------------------------------- RefCOCO

def _refcoco(tmp_path, refs, instances=None) -> Path:
    root = tmp_path / "rc"
    inst = instances or {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
                         "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]},
                                         {"id": 11, "image_id": 2, "category_id": 1, "bbox": [1, 2, 0, 4]},
                                         {"id": 12, "image_id": 2, "category_id": 1, "bbox": [5, 5, 5, 5]}]}
    _json(root / "instances.json", inst)
    _json(root / "refs.json", refs)
    return root


def test_refcoco_skips_and_sentences(tmp_path):
    root = _refcoco(tmp_path, [
        {"ann_id": 10, "image_id": 1, "sentences": [{"raw": " The  man "}, {"sent": " "}, {"sent": "x", "raw": "y"}]},
        {"ann_id": 99, "image_id": 1, "sentences": [{"sent": "gone"}]},
        {"ann_id": 10, "image_id": 7, "sentences": [{"sent": "no image"}]},
        {"ann_id": 10, "image_id": 2, "sentences": [{"sent": "wrong image"}]},
        {"ann_id": 11, "image_id": 2, "sentences": [{"sent": "flat"}]},
        {"ref_id": 42, "ann_id": 12, "image_id": 2, "sentences": [{"sent": "box"}]},
    ])
    refs = json.loads((root / "refs.json").read_text())
    _json(root / "refs.json", refs + [{**r, "ref_id": 50 + i, "sentences": [{"sent": ""}]} if i == 0 else r
                                      for i, r in enumerate(refs[:5])])  # each skip twice
    res = IMPORTERS["refcoco"](root)
    assert [(p.image, p.instruction, p.boxes_xyxy, p.object_ids, p.extra) for p in res.pairs] == [
        ("a.jpg", "The man", [[1, 2, 4, 6]], [10], {"ref_id": 0}),
        ("a.jpg", "x", [[1, 2, 4, 6]], [10], {"ref_id": 0}),
        ("b.jpg", "box", [[5, 5, 10, 10]], [12], {"ref_id": 42})]
    assert res.skipped == {"empty_sentence": 2, "ref_missing_annotation": 2, "ref_unknown_image": 2,
                           "ref_image_mismatch": 2, "degenerate_box": 2}
    assert res.num_images == 2 and res.images_dir == root
    assert IMPORTERS["refcoco"](root / "refs.json").pairs == res.pairs  # the refs file itself
    assert IMPORTERS["refcoco"](root, images_root=tmp_path / "pics").images_dir == tmp_path / "pics"
    refs = json.loads((root / "refs.json").read_text())
    _json(root / "refs.json", [{**r, "split": "val" if i < 3 else "train"} for i, r in enumerate(refs)])
    res = IMPORTERS["refcoco"](root, split="val")
    assert res.skipped == {"ref_not_in_split": len(refs) - 3, "empty_sentence": 1, "ref_missing_annotation": 1,
                           "ref_unknown_image": 1}
    assert [p.instruction for p in res.pairs] == ["The man", "x"]


def test_refcoco_messages(tmp_path):
    root = _refcoco(tmp_path, {"refs": []})
    ref_file = root / "refs.json"
    assert _error(lambda: IMPORTERS["refcoco"](root)) == f"{ref_file}: expected a JSON list of refs, got dict"
    _json(ref_file, [{"ann_id": 10, "image_id": 1, "sentences": ["man"]}])
    assert _error(lambda: IMPORTERS["refcoco"](root)) == (
        f"{ref_file} (refs[0].sentences[0]): expected an object with 'sent', got 'man'")
    _json(ref_file, [{"ann_id": 10, "image_id": 1, "sentences": [{"sent": 3}]}])
    assert _error(lambda: IMPORTERS["refcoco"](root)) == (
        f"{ref_file} (refs[0].sentences[0]): field 'sent': missing or not a string")
    _json(ref_file, [{"ann_id": 10, "image_id": 1, "sentences": {}}])
    assert _error(lambda: IMPORTERS["refcoco"](root)) == f"{ref_file} (refs[0]): field 'sentences': expected list, got {{}}"
    _json(ref_file, [{"ann_id": 10, "sentences": []}])
    assert _error(lambda: IMPORTERS["refcoco"](root)) == f"{ref_file} (refs[0]): field 'image_id': missing"
    _json(ref_file, [{"ann_id": 10, "image_id": 1, "sentences": []}, 3])
    with pytest.raises(ValueError) as err:
        IMPORTERS["refcoco"](root, split="val")
    assert str(err.value) == f"{ref_file}: no refs with split 'val' (splits present: None)"
    _json(ref_file, [])
    with pytest.raises(ValueError) as err:
        IMPORTERS["refcoco"](root, split="val")
    assert str(err.value) == f"{ref_file}: no refs with split 'val' (splits present: none)"


def test_refcoco_files(tmp_path):
    root = _refcoco(tmp_path, [])
    (root / "refs(google).json").write_text("[]")
    with pytest.raises(ValueError) as err:
        IMPORTERS["refcoco"](root)
    assert str(err.value) == f"{root}: several refs files (refs(google).json, refs.json); pass one as SRC"
    (root / "refs(google).json").unlink()
    (root / "refs.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        IMPORTERS["refcoco"](root)
    assert str(err.value) == f"{root}: no refs*.json file"
    (root / "refs.json").write_text("[]")
    (root / "instances.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        IMPORTERS["refcoco"](root)
    assert str(err.value) == (f"{root}: no instances.json (the COCO-style images and annotations of the refs)")
    with pytest.raises(FileNotFoundError):
        IMPORTERS["refcoco"](root / "refs.json")
    (root / "images").mkdir()
    _json(root / "instances.json", {"images": [], "annotations": []})
    assert IMPORTERS["refcoco"](root).images_dir == root / "images"


# ---------------------------------------------------------------- the project's JSONL

@pytest.mark.parametrize("rec, where", [
    ([], ":3: expected a JSON object, got list"),
    ({"instruction": "x", "boxes": []}, ":3: field 'image': missing"),
    ({"image": "a", "boxes": []}, ":3: field 'instruction': missing"),
    ({"image": "a", "instruction": "x"}, ":3: field 'boxes': missing"),
    ({"image": "", "instruction": "x", "boxes": []}, ":3: field 'image': must be a non-empty string"),
    ({"image": 5, "instruction": "x", "boxes": []}, ":3: field 'image': must be a non-empty string"),
    ({"image": "a", "instruction": " ", "boxes": []}, ":3: field 'instruction': must be a non-empty string"),
    ({"image": "a", "instruction": 1, "boxes": []}, ":3: field 'instruction': must be a non-empty string"),
    ({"image": "a", "instruction": "x", "boxes": {}}, ":3: field 'boxes': must be a list of [x1, y1, x2, y2]"),
    ({"image": "a", "instruction": "x", "boxes": [[0, 0, 1, 1]], "object_ids": [1, 2]},
     ":3: field 'object_ids': must be a list as long as 'boxes'"),
    ({"image": "a", "instruction": "x", "boxes": [], "object_ids": 1},
     ":3: field 'object_ids': must be a list as long as 'boxes'"),
    ({"image": "a", "instruction": "x", "boxes": [], "type": 3}, ":3: field 'type': must be a string"),
])
def test_jsonl_record_messages(rec, where):
    assert _error(lambda: parse_record(rec, "d/p.jsonl", 3)) == f"d/p.jsonl{where}"


def test_jsonl_records_keep_extras_and_default_the_type(tmp_path):
    pair = parse_record({"image": "a", "instruction": "x", "boxes": [[0, 0, 1, 1]], "object_ids": [4], "k": 1},
                        "p", 1)
    assert pair == InstructionPair("a", "x", [[0.0, 0.0, 1.0, 1.0]], "category", [4], {"k": 1})
    path = tmp_path / "new" / "dir" / "p.jsonl"
    assert write_pairs([pair, InstructionPair("b", "é", [], "absent")], path) == 2
    text = path.read_text(encoding="utf-8")
    assert "é" in text and text.endswith("\n") and len(text.splitlines()) == 2
    path.write_text(text.replace("\n", "\n\n  \n", 1) + '{"image": \n')
    assert _error(lambda: read_pairs(path)).startswith(f"{path}:5: invalid JSON (")
    path.write_text(text.replace("\n", "\n\n  \n", 1))
    assert read_pairs(path) == [pair, InstructionPair("b", "é", [], "absent")]


# ---------------------------------------------------------------- more edges

@pytest.mark.parametrize("fmt, src", [("coco", "coco/instances.json"), ("yolo", "yolo"), ("odvg", "odvg/od.jsonl")])
def test_the_default_seed_is_0(fmt, src):
    fix = Path(__file__).parent / "fixtures" / "formats"
    opts = {"label_map": fix / "odvg" / "label_map.json"} if fmt == "odvg" else {}
    assert IMPORTERS[fmt](fix / src, absent_rate=0.5, **opts).pairs == IMPORTERS[fmt](fix / src, absent_rate=0.5,
                                                                                      seed=0, **opts).pairs


def test_positives_follow_the_category_list_then_names():
    img = ImageLabels("x.jpg")
    for name in ("y", "a", "x", "b"):
        img.add(name, [0, 0, 1, 1])
    pairs = category_pairs([img], ["b", "a"], rng=np.random.default_rng(0), templates="train", absent_rate=0.0,
                           skipped=Counter())
    assert [p.extra["category"] for p in pairs] == ["b", "a", "x", "y"]  # names not in the list last, by name


def test_absent_catch_up_at_a_low_rate_is_one_pair_per_image():
    cats = ["a", "b", "c", "d"]
    pairs = category_pairs(_labels(*[cats] * 12, [], [], []), cats, rng=np.random.default_rng(0), templates="train",
                           absent_rate=0.2, skipped=Counter())
    # 12 full images owe 3 absent pairs they cannot take; each empty image takes at most 1 (twice 0.25, rounded up)
    assert Counter(p.image for p in pairs if p.type == "absent") == {"12.jpg": 1, "13.jpg": 1, "14.jpg": 1}


def test_absent_categories_of_an_image_are_never_repeated():
    pairs = category_pairs(_labels(*[["a", "b"]] * 60), list("abcde"), rng=np.random.default_rng(3), templates="train",
                           absent_rate=0.5, skipped=Counter())
    absent = [(p.image, p.extra["category"]) for p in pairs if p.type == "absent"]
    assert len(absent) == len(set(absent)) and len(absent) >= 110


def test_yolo_size_without_pillow_of_an_unreadable_image(tmp_path, monkeypatch):
    import sys

    root = _yolo(tmp_path, labels="0 0.5 0.5 0.5 0.5\n")
    (root / "images" / "a.png").write_bytes(b"not a png")
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert _error(lambda: IMPORTERS["yolo"](root)) == f"{root / 'images' / 'a.png'}: cannot read the image to get its size"


def test_yolo_degenerate_boxes_are_all_counted_and_a_yml_split(tmp_path):
    root = _yolo(tmp_path, names="names: [cat]\nval: images\n", labels="0 0.5 0.5 0 0.2\n0 0.5 0.5 0.2 0\n")
    (root / "data.yaml").rename(root / "data.yml")
    res = IMPORTERS["yolo"](root / "data.yml", split="val", absent_rate=0.0)
    assert res.skipped == {"degenerate_box": 2, "category_without_usable_boxes": 1} and res.num_images == 1


def test_coco_category_id_message(tmp_path):
    src = _coco_with(tmp_path, lambda d: d["categories"][0].update(id="1"))
    assert _error(lambda: IMPORTERS["coco"](src)) == f"{src} (categories[0]): field 'id': expected int, got '1'"


@pytest.mark.parametrize("record, where", [
    ({"filename": "g.jpg", "grounding": "a cat"}, ":1: field 'grounding': expected dict, got 'a cat'"),
    (_reg(phrase="x", bbox=[1, 2]), ":1: field 'grounding.regions[0].bbox': expected [x1, y1, x2, y2], got [1, 2]"),
    ({"filename": "g.jpg", "grounding": {"regions": [{"bbox": [1, 2, 3, 4], "tokens_positive": [[0, 3]]}]}},
     ":1: field 'grounding.regions[0].phrase': empty"),  # no caption: the span names nothing
])
def test_more_odvg_grounding_messages(tmp_path, record, where):
    src = _odvg(tmp_path, record)
    assert _error(lambda: IMPORTERS["odvg"](src)) == f"{src}{where}"


def test_odvg_sizes_below_one_pixel_are_still_sizes(tmp_path):
    src = _odvg(tmp_path, {**DET, "height": 0.5, "width": 1})
    assert [p.type for p in IMPORTERS["odvg"](src, absent_rate=0.0).pairs] == ["category"]

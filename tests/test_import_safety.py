"""Importers refuse what they cannot trust: image names that escape the images folder, name
collisions when copying, non-finite boxes, NUL bytes in prompts, an unbounded YOLO label file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptdet.data.convert import convert
from promptdet.data.pairs import DataFormatError, validate_box


def coco(tmp_path: Path, names: list[str]) -> Path:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    data = {"images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)],
            "annotations": [{"id": 100 + i, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
                             "iscrowd": 0} for i in range(len(names))],
            "categories": [{"id": 1, "name": "bottle"}]}
    (src / "instances.json").write_text(json.dumps(data))
    return src / "instances.json"


def test_coco_names_that_escape_the_images_folder_are_skipped_and_counted(tmp_path):
    src = coco(tmp_path, ["x.jpg", "../../etc/passwd", "/etc/hostname", "a/../../y.jpg"])
    cv2.imwrite(str(src.parent / "images" / "x.jpg"), np.zeros((48, 64, 3), np.uint8))
    out = tmp_path / "out"
    report = convert("coco", src, out, copy_images=True)
    assert report.skipped["path_outside_images"] == 3
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()) == ["images/x.jpg"]
    assert "passwd" not in (out / "instructions.jsonl").read_text()


def test_copy_images_name_collision_is_an_error(tmp_path):
    src = coco(tmp_path, ["x.jpg", "images/x.jpg"])
    img = np.zeros((48, 64, 3), np.uint8)
    cv2.imwrite(str(src.parent / "images" / "x.jpg"), img)
    (src.parent / "images" / "images").mkdir()
    cv2.imwrite(str(src.parent / "images" / "images" / "x.jpg"), img)
    with pytest.raises(ValueError, match="would both be copied to images/x.jpg"):
        convert("coco", src, tmp_path / "out", copy_images=True)


@pytest.mark.parametrize("box", [[0, 0, float("inf"), 10], [0, 0, 1e400, 10], [0, 0, 10, float("nan")],
                                 [float("-inf"), 0, 10, 10]])
def test_non_finite_boxes_are_refused_saying_so(box):
    with pytest.raises(DataFormatError, match="finite"):
        validate_box(box, "f.jsonl", 1)


def test_odvg_infinity_box_and_nan_height_are_refused(tmp_path):
    from promptdet.data.formats.odvg import import_odvg

    (tmp_path / "images").mkdir()
    inf = {"filename": "a.jpg", "height": 48, "width": 64,
           "detection": {"instances": [{"bbox": [0, 0, 1e400, 10], "label": 0, "category": "bottle"}]}}
    (tmp_path / "a.jsonl").write_text(json.dumps(inf).replace("Infinity", "Infinity") + "\n")
    with pytest.raises(DataFormatError, match="finite"):
        import_odvg(tmp_path / "a.jsonl")
    nan = dict(inf, height=float("nan"), detection={"instances": [{"bbox": [0, 0, 5, 5], "label": 0,
                                                                   "category": "bottle"}]})
    (tmp_path / "b.jsonl").write_text(json.dumps(nan) + "\n")
    with pytest.raises(DataFormatError, match="height"):
        import_odvg(tmp_path / "b.jsonl")


def test_nul_in_a_prompt_is_refused():
    from promptdet.text.prompts import PromptError, normalize_prompts

    with pytest.raises(PromptError, match="NUL"):
        normalize_prompts(["bottles\0; DROP"])


def test_too_many_prompts_are_refused():
    from promptdet.limits import MAX_PROMPTS
    from promptdet.text.prompts import PromptError, normalize_prompts

    with pytest.raises(PromptError, match="at most"):
        normalize_prompts(["bottles"] * (MAX_PROMPTS + 1))


def test_a_yolo_label_file_over_the_line_cap_is_refused(tmp_path, monkeypatch):
    from collections import Counter

    from promptdet.data.formats import yolo

    monkeypatch.setattr(yolo, "MAX_LABEL_LINES", 100, raising=False)
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.zeros((48, 64, 3), np.uint8))
    label = tmp_path / "a.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n" * 101)
    with pytest.raises(DataFormatError, match="at most 100"):
        yolo.read_label_file(label, image, ["bottle"], "a.jpg", Counter())

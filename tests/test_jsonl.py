"""The instruction JSONL: round trip, empty boxes, and errors that name file, line and field."""

from __future__ import annotations

import pytest

from promptdet.data.formats.jsonl import read_pairs, write_pairs
from promptdet.data.pairs import DataFormatError, InstructionPair


def test_round_trip_keeps_everything(tmp_path):
    pairs = [
        InstructionPair("images/000000.jpg", "find all bottles", [[1.5, 2.0, 30.25, 40.0]], "category", [3],
                        {"query": {"select": {"category": "bottle"}}}),
        InstructionPair("images/000000.jpg", "any purple gears?", [], "absent", []),
        InstructionPair("images/000001.jpg", "the leftmost nut", [[0, 0, 5, 5]], "spatial"),
    ]
    path = tmp_path / "sub" / "instructions.jsonl"
    assert write_pairs(pairs, path) == 3
    assert read_pairs(path) == pairs


def test_empty_file(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n\n")
    assert read_pairs(path) == []


@pytest.mark.parametrize("line, field, problem", [
    ('{"image": "a.jpg", "instruction": "x"}', "boxes", "missing"),
    ('{"instruction": "x", "boxes": []}', "image", "missing"),
    ('{"image": "a.jpg", "instruction": "  ", "boxes": []}', "instruction", "non-empty"),
    ('{"image": "a.jpg", "instruction": "x", "boxes": [[1, 2, 3]]}', "boxes", "expected [x1, y1, x2, y2]"),
    ('{"image": "a.jpg", "instruction": "x", "boxes": [[5, 2, 3, 4]]}', "boxes", "x2 >= x1"),
    ('{"image": "a.jpg", "instruction": "x", "boxes": [["a", 2, 3, 4]]}', "boxes", "numbers"),
    ('{"image": "a.jpg", "instruction": "x", "boxes": [], "object_ids": [1]}', "object_ids", "as long as"),
    ('{"image": "a.jpg", "instruction": "x", "boxes": {}}', "boxes", "must be a list"),
    ('{"image": "a.jpg", "instruction": "x", "boxes": [], "type": 3}', "type", "string"),
])
def test_malformed_line_names_file_line_and_field(tmp_path, line, field, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "ok.jpg", "instruction": "fine", "boxes": []}\n' + line + "\n")
    with pytest.raises(DataFormatError) as err:
        read_pairs(path)
    msg = str(err.value)
    assert f"{path}:2" in msg and f"field '{field}'" in msg and problem in msg


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "ok.jpg", "instruction": "fine", "boxes": []}\n\n{"image": \n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:3: invalid JSON"):
        read_pairs(path)

"""Read and write the instruction JSONL, the project's own data format.

One line per ``(image, instruction)`` pair::

    {"image": "images/000001.jpg", "instruction": "...", "type": "...",
     "boxes": [[x1, y1, x2, y2], ...], "object_ids": [...]}

``boxes`` may be empty. Keys beyond these are kept in ``InstructionPair.extra``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from promptdet.data.pairs import DataFormatError, InstructionPair, validate_box

_KNOWN = {"image", "instruction", "type", "boxes", "object_ids"}


def parse_record(rec: object, path: str, line_no: int) -> InstructionPair:
    if not isinstance(rec, dict):
        raise DataFormatError(path, line_no, None, f"expected a JSON object, got {type(rec).__name__}")
    for key in ("image", "instruction", "boxes"):
        if key not in rec:
            raise DataFormatError(path, line_no, key, "missing")
    if not isinstance(rec["image"], str) or not rec["image"]:
        raise DataFormatError(path, line_no, "image", "must be a non-empty string")
    if not isinstance(rec["instruction"], str) or not rec["instruction"].strip():
        raise DataFormatError(path, line_no, "instruction", "must be a non-empty string")
    if not isinstance(rec["boxes"], list):
        raise DataFormatError(path, line_no, "boxes", "must be a list of [x1, y1, x2, y2]")
    boxes = [validate_box(b, path, line_no) for b in rec["boxes"]]
    ids = rec.get("object_ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(boxes)):
        raise DataFormatError(path, line_no, "object_ids", "must be a list as long as 'boxes'")
    kind = rec.get("type", "category")
    if not isinstance(kind, str):
        raise DataFormatError(path, line_no, "type", "must be a string")
    extra = {k: v for k, v in rec.items() if k not in _KNOWN}
    return InstructionPair(rec["image"], rec["instruction"], boxes, kind, ids, extra)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, parsed_json)`` for each non-blank line; bad JSON names the line."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(str(path), line_no, None, f"invalid JSON ({exc.msg})") from None


def read_pairs(path: str | Path) -> list[InstructionPair]:
    """Read an instruction JSONL; a malformed line raises DataFormatError naming file, line and field."""
    return [parse_record(rec, str(path), n) for n, rec in iter_jsonl(path)]


def write_pairs(pairs: Iterable[InstructionPair], path: str | Path) -> int:
    """Write pairs as JSONL; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair.to_record(), ensure_ascii=False) + "\n")
            n += 1
    return n

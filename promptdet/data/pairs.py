"""The unit of instruction-tuning data: one image, one instruction, zero or more boxes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class DataFormatError(ValueError):
    """A malformed record. The message names the file, the line (or record) and the field."""

    def __init__(self, path: str, where: str | int | None, field_name: str | None, problem: str):
        self.path, self.where, self.field_name, self.problem = str(path), where, field_name, problem
        loc = str(path)
        if where is not None:
            loc += f":{where}" if isinstance(where, int) else f" ({where})"
        if field_name:
            loc += f": field '{field_name}'"
        super().__init__(f"{loc}: {problem}")


@dataclass
class InstructionPair:
    """``(image, instruction, boxes)``; ``boxes_xyxy`` may be empty (an absent target).

    boxes_xyxy (list[[x1, y1, x2, y2]]): absolute pixels in the original image.
    image: a path, relative to the dataset root that holds the JSONL.
    """

    image: str
    instruction: str
    boxes_xyxy: list[list[float]] = field(default_factory=list)
    type: str = "category"
    object_ids: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "image": self.image,
            "instruction": self.instruction,
            "type": self.type,
            "boxes": [[round(float(v), 2) for v in b] for b in self.boxes_xyxy],
        }
        if self.object_ids is not None:
            rec["object_ids"] = list(self.object_ids)
        rec.update(self.extra)
        return rec


def validate_box(box: Any, path: str, where: str | int | None, field_name: str = "boxes") -> list[float]:
    """Return ``box`` as four floats with x1 <= x2 and y1 <= y2, or raise DataFormatError."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise DataFormatError(path, where, field_name, f"expected [x1, y1, x2, y2], got {box!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DataFormatError(path, where, field_name, f"box values must be numbers, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):  # Infinity/NaN would be written as non-standard JSON
        raise DataFormatError(path, where, field_name, f"box values must be finite numbers, got {box!r}")
    if not (x2 >= x1 and y2 >= y1):
        raise DataFormatError(path, where, field_name, f"box must have x2 >= x1 and y2 >= y1, got {box!r}")
    return [x1, y1, x2, y2]

"""``Detections``: what ``model.detect`` returns for one image, and its JSON form.

JSON schema ``promptdet.detections/2`` (one object per image, or per video frame)::

    {"schema": "promptdet.detections/2",
     "image": "line.jpg",            # the path as given, or null for an in-memory image
     "frame": 12,                    # only for video files and cameras: the frame number, from 0
     "width": 640, "height": 480,    # of the image as read (after EXIF rotation)
     "prompts": ["bottles", "caps"],
     "detections": [{"box": [x1, y1, x2, y2], "score": 0.91, "prompt": "bottles", "prompt_index": 0}],
     "familiarity": 0.97,            # 0-1: how much the image resembles the model's training images
     "unfamiliar": false,            # familiarity below the model's threshold (0.5)
     "prompt_familiarity": [0.99, 0.02],  # 0-1 per prompt: does it name something the model learned?
     "unknown_prompts": [1],         # indices of prompts below the threshold (0.5)
     "abstained": true,              # boxes were withheld for the unfamiliar image or the unknown prompts
     "timing_ms": {"read": 3.1, "text": 0.2, "preprocess": 0.8, "infer": 21.0, "post": 0.4, "total": 25.6}}

Boxes are in pixels of the original image, corners ``x1 < x2``, ``y1 < y2``, clipped to the image,
rounded to 0.01 px. Scores are in 0-1 (rounded to 1e-5), sorted high to low. ``prompt_index``
indexes ``prompts``. An image where nothing matched has ``"detections": []``. ``timing_ms``:
decoding the file, encoding the prompts (near 0 when they are cached), letterbox, the forward pass,
and decoding + NMS; ``total`` is the wall time of all five.

Abstaining is an answer: by default an unfamiliar image gets no boxes at all and an unknown
prompt gets none of its own, with ``abstained`` true; with ``abstain=False`` (``--no-abstain``)
the boxes are kept and the flags still say what the model thinks of them. A model without
familiarity statistics reports 1.0 everywhere. Version 1 objects (no familiarity keys) still load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "promptdet.detections/2"
SCHEMAS_READ = ("promptdet.detections/1", SCHEMA)
TIMING_KEYS = ("read", "text", "preprocess", "infer", "post", "total")


@dataclass
class Detections:
    """Boxes found in one image for a list of prompts. Empty (N = 0) when nothing matched.

    boxes_xyxy [N, 4] float32: x1, y1, x2, y2 in original-image pixels.
    scores [N] float32 in 0-1, high to low. prompt_ids [N] int64: indices into ``prompts``.
    image_wh: (width, height) of the image. image: its path, or None for an array.
    frame: the frame number for videos and cameras, else None. image_bgr: the pixels, for ``plot``.
    familiarity: 0-1, the image's resemblance to the training images; unfamiliar: below threshold.
    prompt_familiarity [K] float32 in 0-1; unknown_prompts: indices of prompts below threshold.
    abstained: boxes were withheld because of either flag.
    """

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    prompt_ids: np.ndarray
    prompts: list[str]
    image_wh: tuple[int, int]
    image: str | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    frame: int | None = None
    image_bgr: np.ndarray | None = field(default=None, repr=False, compare=False)
    familiarity: float = 1.0
    unfamiliar: bool = False
    prompt_familiarity: np.ndarray | None = None
    unknown_prompts: list[int] = field(default_factory=list)
    abstained: bool = False

    def __post_init__(self):
        self.boxes_xyxy = np.asarray(self.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=np.int64).reshape(-1)
        self.prompts = list(self.prompts)
        self.image_wh = (int(self.image_wh[0]), int(self.image_wh[1]))
        self.familiarity, self.unfamiliar, self.abstained = float(self.familiarity), bool(self.unfamiliar), bool(self.abstained)
        if self.prompt_familiarity is None:
            self.prompt_familiarity = np.ones(len(self.prompts), np.float32)
        self.prompt_familiarity = np.asarray(self.prompt_familiarity, dtype=np.float32).reshape(-1)
        if len(self.prompt_familiarity) != len(self.prompts):
            raise ValueError(f"Detections: {len(self.prompts)} prompts, {len(self.prompt_familiarity)} prompt familiarities")
        self.unknown_prompts = sorted(int(i) for i in self.unknown_prompts)
        if any(not 0 <= i < len(self.prompts) for i in self.unknown_prompts):
            raise ValueError(f"Detections: unknown prompt indices must be in 0..{len(self.prompts) - 1}")
        n = len(self.boxes_xyxy)
        if len(self.scores) != n or len(self.prompt_ids) != n:
            raise ValueError(f"Detections: {n} boxes, {len(self.scores)} scores, {len(self.prompt_ids)} prompt ids")
        if n and (self.prompt_ids.min() < 0 or self.prompt_ids.max() >= len(self.prompts)):
            raise ValueError(f"Detections: prompt ids must be in 0..{len(self.prompts) - 1}")

    @classmethod
    def empty(cls, prompts: list[str], image_wh: tuple[int, int], **kwargs) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), prompts,
                   image_wh, **kwargs)

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        where = f"{self.image!r}" + (f" frame {self.frame}" if self.frame is not None else "")
        return f"Detections({len(self)} boxes, {len(self.prompts)} prompts, image={where}, wh={self.image_wh})"

    def for_prompt(self, index: int) -> Detections:
        """The detections of prompt ``index`` alone (prompt indices keep their meaning)."""
        keep = self.prompt_ids == index
        return Detections(self.boxes_xyxy[keep], self.scores[keep], self.prompt_ids[keep], self.prompts,
                          self.image_wh, self.image, dict(self.timing_ms), self.frame, self.image_bgr,
                          self.familiarity, self.unfamiliar, self.prompt_familiarity, self.unknown_prompts,
                          self.abstained)

    @property
    def name(self) -> str:
        """A short name for messages and file names: the image's stem (+ frame), or 'image'."""
        stem = re.sub(r"[^\w.-]+", "_", Path(self.image).stem) if self.image else "image"
        return stem if self.frame is None else f"{stem}_{self.frame:06d}"

    def to_json(self) -> dict[str, Any]:
        """This result as a ``promptdet.detections/2`` object (see the module docstring)."""
        out: dict[str, Any] = {"schema": SCHEMA, "image": self.image}
        if self.frame is not None:
            out["frame"] = int(self.frame)
        out.update(width=self.image_wh[0], height=self.image_wh[1], prompts=list(self.prompts))
        out["detections"] = [
            {"box": [round(float(v), 2) for v in box], "score": round(float(s), 5), "prompt": self.prompts[int(i)],
             "prompt_index": int(i)}
            for box, s, i in zip(self.boxes_xyxy, self.scores, self.prompt_ids)]
        out.update(familiarity=round(self.familiarity, 5), unfamiliar=self.unfamiliar,
                   prompt_familiarity=[round(float(v), 5) for v in self.prompt_familiarity],
                   unknown_prompts=list(self.unknown_prompts), abstained=self.abstained)
        out["timing_ms"] = {k: round(float(self.timing_ms.get(k, 0.0)), 3) for k in TIMING_KEYS}
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Detections:
        """The inverse of ``to_json`` (pixels are not stored, so ``plot`` needs an image then)."""
        if obj.get("schema") not in SCHEMAS_READ:
            raise ValueError(f"not a {SCHEMA} object (schema {obj.get('schema')!r})")
        dets = obj["detections"]
        return cls(np.array([d["box"] for d in dets], np.float32).reshape(-1, 4),
                   np.array([d["score"] for d in dets], np.float32),
                   np.array([d["prompt_index"] for d in dets], np.int64), obj["prompts"],
                   (obj["width"], obj["height"]), obj.get("image"), dict(obj.get("timing_ms", {})), obj.get("frame"),
                   familiarity=obj.get("familiarity", 1.0), unfamiliar=obj.get("unfamiliar", False),
                   prompt_familiarity=obj.get("prompt_familiarity"), unknown_prompts=obj.get("unknown_prompts", []),
                   abstained=obj.get("abstained", False))

    def plot(self, image_bgr: np.ndarray | None = None, line_width: int | None = None) -> np.ndarray:
        """A copy of the image (BGR uint8) with each prompt's boxes in its own colour, labelled
        with the prompt and the score. Uses the stored pixels, ``image_bgr``, or reads ``image``."""
        from promptdet.runtime.draw import draw_detections

        image = image_bgr if image_bgr is not None else self.image_bgr
        if image is None:
            if not self.image or self.frame is not None:
                raise ValueError("plot() needs the pixels: pass image_bgr=...")
            from promptdet.predict import read_image

            image = read_image(self.image)
        return draw_detections(image, self.boxes_xyxy, self.scores, self.prompt_ids, self.prompts, line_width)

    def save(self, path: str | Path) -> Path:
        """``.json`` writes ``to_json()``; an image suffix (.jpg, .png, ...) writes ``plot()``."""
        import json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
            return path
        from promptdet.runtime.draw import write_image

        write_image(path, self.plot())
        return path

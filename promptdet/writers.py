"""Writers that turn ``Detections`` into json, jsonl, csv, COCO results or YOLO txt, to stdout or a folder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from promptdet.errors import UsageError
from promptdet.structures import Detections

FORMATS = ("jsonl", "json", "csv", "coco", "yolo")

def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "prompt"


def check_output(fmt: str, out: Path | None, save: bool = False, crops: bool = False) -> None:
    """Raise UsageError for an unknown format, or for file outputs without a folder."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if out is None and (fmt == "yolo" or save or crops):
        what = "--format yolo" if fmt == "yolo" else "--save" if save else "--save-crops"
        raise UsageError(f"{what} writes files; give a folder with --out DIR")


class ResultWriter:
    """Writes each result as it comes: to ``stream`` (stdout) without ``out``, else into ``out``:
    detections.{jsonl,json,csv}; coco_results.json + coco_categories.json + coco_images.json;
    labels/<image>.txt + classes.txt (yolo); <image>.jpg annotated (``save``); crops/<k>_<prompt>/ (``crops``).
    """

    # One row per box; an image that got no box (nothing there, or an abstention) gets one row with
    # empty box fields, so its familiarity and flags are never lost.
    CSV_FIELDS = ("image", "width", "height", "prompt_index", "prompt", "score", "x1", "y1", "x2", "y2", "frame",
                  "familiarity", "unfamiliar", "unknown_prompts", "abstained")

    def __init__(self, fmt: str, prompts: list[str], out: Path | None, stream=None, save: bool = False,
                 crops: bool = False):
        check_output(fmt, out, save, crops)
        self.fmt, self.prompts, self.out, self.save, self.crops = fmt, prompts, out, save, crops
        self.files: list[Path] = []
        self._stems: dict[str, int] = {}
        self._buffer: list[dict] = []
        self._fh = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            if fmt in ("jsonl", "csv"):
                self._fh = self._open(out / f"detections.{fmt}")
            if fmt == "yolo":
                (out / "labels").mkdir(exist_ok=True)
                self._write_text(out / "classes.txt", "".join(p + "\n" for p in prompts))
        self._stream = self._fh or stream
        if fmt == "csv" and self._stream is not None:
            self._csv = csv.writer(self._stream, lineterminator="\n")
            self._csv.writerow(self.CSV_FIELDS)

    def _open(self, path: Path):
        self.files.append(path)
        return path.open("w", encoding="utf-8", newline="")

    def _write_text(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        self.files.append(path)

    def _unique(self, stem: str) -> str:
        # Two inputs with one stem (a/x.jpg, b/x.jpg) must not overwrite each other's outputs.
        n = self._stems.get(stem, 0) + 1
        self._stems[stem] = n
        return stem if n == 1 else f"{stem}_{n}"

    def write(self, det: Detections) -> None:
        obj = det.to_json()
        stem = self._unique(det.name)
        if self.fmt == "jsonl":
            self._stream.write(json.dumps(obj) + "\n")
        elif self.fmt == "csv":
            flags = [obj["familiarity"], int(obj["unfamiliar"]), ";".join(map(str, obj["unknown_prompts"])),
                     int(obj["abstained"])]
            frame = "" if det.frame is None else det.frame
            for d in obj["detections"]:
                self._csv.writerow([obj["image"], obj["width"], obj["height"], d["prompt_index"], d["prompt"],
                                    d["score"], *d["box"], frame, *flags])
            if not obj["detections"]:
                self._csv.writerow([obj["image"], obj["width"], obj["height"], "", "", "", "", "", "", "", frame,
                                    *flags])
        elif self.fmt == "yolo":
            w, h = det.image_wh
            text = ""
            for d in obj["detections"]:
                x1, y1, x2, y2 = d["box"]
                text += (f"{d['prompt_index']} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                         f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {d['score']}\n")
            self._write_text(self.out / "labels" / f"{stem}.txt", text)
        else:
            self._buffer.append(obj)
        if self._stream is not None and self._fh is None:
            self._stream.flush()  # a reader at the other end of a pipe sees each image at once
        if (self.save or self.crops) and det.image_bgr is not None:
            self._save_images(det, stem)

    def _save_images(self, det: Detections, stem: str) -> None:
        from promptdet.runtime.draw import crop, write_image

        suffix = Path(det.image).suffix.lower() if det.image and det.frame is None else ".jpg"
        suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
        if self.save:
            path = self.out / f"{stem}{suffix}"
            write_image(path, det.plot())
            self.files.append(path)
        if self.crops:
            for j, (box, k) in enumerate(zip(det.boxes_xyxy, det.prompt_ids)):
                part = crop(det.image_bgr, box)
                if part is not None:
                    folder = self.out / "crops" / f"{int(k)}_{_slug(self.prompts[int(k)])}"
                    folder.mkdir(parents=True, exist_ok=True)
                    write_image(folder / f"{stem}_{j}{suffix}", part)

    def close(self) -> list[Path]:
        """Finish the buffered formats (json, coco); returns the files written."""
        if self.fmt == "json":
            self._dump("detections.json", self._buffer)
        elif self.fmt == "coco":
            images, results = coco_results(self._buffer)
            categories = [{"id": i + 1, "name": p} for i, p in enumerate(self.prompts)]
            if self.out is None:
                self._dump(None, {"results": results, "categories": categories, "images": images})
            else:
                self._dump("coco_results.json", results)
                self._dump("coco_categories.json", categories)
                self._dump("coco_images.json", images)
        if self._fh is not None:
            self._fh.close()
        elif self._stream is not None:
            self._stream.flush()
        return self.files

    def _dump(self, name: str | None, obj: Any) -> None:
        if self.out is None:
            self._stream.write(json.dumps(obj) + "\n")
        else:
            self._write_text(self.out / name, json.dumps(obj) + "\n")


def coco_results(objs: list[dict]) -> tuple[list[dict], list[dict]]:
    """promptdet.detections/2 objects -> (COCO images, COCO results). category_id = prompt_index + 1.

    image_id is the file name's number when every input is a still image named by a distinct number
    (000000397133.jpg -> 397133, as COCO names its images), else 1, 2, ... in processing order.
    """
    stems = [Path(o["image"]).stem if o.get("image") and "frame" not in o else "" for o in objs]
    numeric = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    ids = [int(s) for s in stems] if numeric else list(range(1, len(objs) + 1))
    images, results = [], []
    for image_id, o in zip(ids, objs):
        info = {"id": image_id, "file_name": o.get("image"), "width": o["width"], "height": o["height"]}
        images.append({**info, "frame": o["frame"]} if "frame" in o else info)
        for d in o["detections"]:
            x1, y1, x2, y2 = d["box"]
            results.append({"image_id": image_id, "category_id": d["prompt_index"] + 1,
                            "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": d["score"]})
    return images, results

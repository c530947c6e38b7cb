"""The fixed-class anchor of benchmarks/finetune_elpv.py: ultralytics YOLO26n trained from scratch.

Two classes, ``cell`` (functional) and ``defective cell``: the defect question is answered by the
second class, "all cells" by both (class-agnostic NMS). Built from ``yolo26n.yaml`` with
``pretrained=False``, plots off (ultralytics fetches a font to draw them), its settings kept under
the run folder: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

NAMES = {0: "cell", 1: "defective cell"}


def write_yolo_dataset(coco_dirs: dict[str, Path], out: Path) -> Path:
    """YOLO labels beside links to the COCO split's images; returns the data YAML."""
    for split, src in coco_dirs.items():
        coco = json.loads((Path(src) / "instances.json").read_text())
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "labels").mkdir(parents=True, exist_ok=True)
        lines: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
        size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for a in coco["annotations"]:
            w, h = size[a["image_id"]]
            x, y, bw, bh = a["bbox"]
            cls = 1 if "defective" in a.get("attributes", []) else 0
            lines[a["image_id"]].append(f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        for im in coco["images"]:
            link = out / split / "images" / im["file_name"]
            if not link.exists():
                link.symlink_to((Path(src) / "images" / im["file_name"]).resolve())
            (out / split / "labels" / Path(im["file_name"]).with_suffix(".txt").name).write_text(
                "\n".join(lines[im["id"]]) + "\n")
    data = out / "data.yaml"
    data.write_text(f"path: {out.resolve()}\ntrain: train/images\nval: val/images\n"
                    f"names: {json.dumps({str(k): v for k, v in NAMES.items()})}\n")
    return data


def train_yolo26n(data_yaml: Path, out: Path, hours: float, imgsz: int, batch: int, seed: int = 0,
                  device: str = "cpu") -> tuple[Path, float]:
    """Train YOLO26n from scratch for about ``hours``; returns (best weights, wall seconds)."""
    os.environ["YOLO_CONFIG_DIR"] = str((out / "config").resolve())
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    model = YOLO("yolo26n.yaml")
    t0 = time.perf_counter()
    model.train(data=str(data_yaml), epochs=1000, time=max(hours, 1e-4), imgsz=imgsz, batch=batch,
                device=device, workers=0, plots=False, pretrained=False, amp=False, seed=seed,
                project=str(out.resolve()), name="train", exist_ok=True, verbose=False)
    wall = time.perf_counter() - t0
    weights = Path(model.trainer.best)
    return (weights if weights.is_file() else Path(model.trainer.last)), wall


def probe_results(weights: Path, probes: list[dict], images_root: Path, imgsz: int, device: str = "cpu"):
    """QueryResults of YOLO26n for the benchmark's two questions (records from ``probe_records``)."""
    from ultralytics import YOLO

    from promptdet.train.evaluate import QueryResult

    model = YOLO(str(weights))
    names = sorted({p["image"] for p in probes})
    answers: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for agnostic in (False, True):
        for name in names:
            r = model.predict(str(images_root / name), imgsz=imgsz, conf=0.001, max_det=100, device=device,
                              agnostic_nms=agnostic, verbose=False)[0]
            boxes, scores = r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy()
            cls = r.boxes.cls.cpu().numpy().astype(int)
            if agnostic:
                answers[name, "all_cells"] = boxes, scores
            else:
                answers[name, "defect_question"] = boxes[cls == 1], scores[cls == 1]
    out = []
    for i, p in enumerate(probes):
        boxes, scores = answers[p["image"], p["type"]]
        out.append(QueryResult(i, p["image"], p["type"], p["instruction"],
                               np.array(p["boxes"], np.float64).reshape(-1, 4), boxes, scores))
    return out

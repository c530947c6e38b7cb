"""A contact sheet of synthetic scenes with their boxes and labels, for a person to check."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from promptdet.data.synth.generate import read_scenes

# One colour per category (BGR), so kinds can be told apart on the sheet at a glance.
_CATEGORY_BGR = {
    "bottle": (255, 128, 0), "can": (0, 200, 255), "box": (255, 0, 255), "screw": (0, 255, 0),
    "nut": (255, 255, 0), "washer": (128, 128, 255), "gear": (0, 128, 255), "bolt": (255, 255, 255),
}


def label_for(obj: dict) -> str:
    defects = "+".join(d.replace("_", " ") for d in obj.get("defects", []))
    return f"{obj['color']} {obj['category']}" + (f" [{defects}]" if defects else "")


def draw_scene(image: np.ndarray, objects: list[dict], scale: float = 1.0) -> np.ndarray:
    out = image.copy()
    for obj in objects:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in obj["bbox"])
        colour = _CATEGORY_BGR.get(obj["category"], (0, 255, 255))
        thick = 2 if obj.get("defects") else 1
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        text = label_for(obj)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.38, 1)
        ty = y1 - 3 if y1 - th - 4 > 0 else y2 + th + 3
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + 2), (0, 0, 0), -1)
        cv2.putText(out, text, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1, cv2.LINE_AA)
    return out


def contact_sheet(data_dir: str | Path, out_png: str | Path, num: int = 16, columns: int = 4,
                  tile_width: int = 480) -> int:
    """Write a grid of the first ``num`` scenes with boxes drawn; returns how many were drawn."""
    data_dir = Path(data_dir)
    scenes = read_scenes(data_dir)[:num]
    if not scenes:
        raise ValueError(f"{data_dir}/scenes.jsonl holds no scenes")
    tiles = []
    for scene in scenes:
        image = cv2.imread(str(data_dir / scene["image"]), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read image {data_dir / scene['image']}")
        scale = tile_width / image.shape[1]
        image = cv2.resize(image, (tile_width, int(round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        tiles.append(draw_scene(image, scene["objects"], scale))
    h = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, 0, cv2.BORDER_CONSTANT) for t in tiles]
    blank = np.zeros_like(tiles[0])
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r:r + columns]
        row += [blank] * (columns - len(row))
        rows.append(np.hstack([cv2.copyMakeBorder(t, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(40, 40, 40)) for t in row]))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), np.vstack(rows)):
        raise OSError(f"could not write {out_png}")
    return len(tiles)

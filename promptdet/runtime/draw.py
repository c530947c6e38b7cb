"""Drawing boxes with OpenCV only (no torch, no fonts to download): one colour per prompt."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# BGR, chosen to stay apart from each other and from grey belts; prompt i gets PALETTE[i % len].
PALETTE = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
    (200, 149, 255), (199, 55, 255),
)
LABEL_CHARS = 48


def prompt_color(index: int) -> tuple[int, int, int]:
    """The BGR colour of prompt ``index``; the same index always gets the same colour."""
    return PALETTE[int(index) % len(PALETTE)]


def label_text(prompt: str, score: float, limit: int = LABEL_CHARS) -> str:
    """'prompt 0.87', shortened, ASCII only (OpenCV's Hershey fonts draw nothing else)."""
    text = prompt if len(prompt) <= limit else prompt[: limit - 3] + "..."
    return f"{text.encode('ascii', 'replace').decode()} {score:.2f}"


def draw_detections(image_bgr: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray, prompt_ids: np.ndarray,
                    prompts: list[str], line_width: int | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` [H, W, 3] uint8 with boxes [N, 4] xyxy (image pixels) labelled
    'prompt score' in the prompt's colour. Low scores are drawn first, so the best stay on top."""
    out = np.ascontiguousarray(image_bgr).copy()
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    h, w = out.shape[:2]
    lw = line_width or max(1, int(round((h + w) / 2 * 0.003)))
    font_scale = max(0.35, lw / 3)
    thickness = max(1, lw // 2)
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    for j in np.argsort(np.asarray(scores).reshape(-1), kind="stable"):
        color = prompt_color(int(prompt_ids[j]))
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[j])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        text = label_text(prompts[int(prompt_ids[j])], float(scores[j]))
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        # Above the box when it fits, else just inside its top edge; never off the right side.
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else min(y1, max(0, h - th - base - 2))
        left = max(0, min(x1, w - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + base + 2), color, -1)
        ink = (0, 0, 0) if sum(c * k for c, k in zip(color, (0.114, 0.587, 0.299))) > 140 else (255, 255, 255)
        cv2.putText(out, text, (left + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, thickness,
                    cv2.LINE_AA)
    return out


def crop(image_bgr: np.ndarray, box_xyxy) -> np.ndarray | None:
    """The pixels inside ``box_xyxy`` (rounded outwards, clipped), or None for an empty box."""
    h, w = image_bgr.shape[:2]
    x1, y1 = max(0, int(np.floor(box_xyxy[0]))), max(0, int(np.floor(box_xyxy[1])))
    x2, y2 = min(w, int(np.ceil(box_xyxy[2]))), min(h, int(np.ceil(box_xyxy[3])))
    if x2 <= x1 or y2 <= y1:
        return None
    return image_bgr[y1:y2, x1:x2].copy()


def write_image(path: str | Path, image_bgr: np.ndarray) -> None:
    """Write an image (format from the suffix); raises OSError when OpenCV cannot."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".jpg", image_bgr)
    if not ok:
        raise OSError(f"cannot encode an image as {path.suffix!r} for {path}")
    path.write_bytes(encoded.tobytes())

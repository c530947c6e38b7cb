"""The one letterbox, shared by training, the torch path and the ONNX runtime (numpy + OpenCV only)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # YOLO's grey, so pretrained ultralytics weights see the padding they know


@dataclass(frozen=True)
class Letterbox:
    """How an image of ``size_wh`` was placed in a square of side ``imgsz``: scale, then pad."""

    scale: float
    pad_xy: tuple[float, float]
    size_wh: tuple[int, int]
    imgsz: int

    def boxes_to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Original-image pixels -> letterboxed input pixels. boxes [N, 4] xyxy."""
        out = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4) * self.scale
        out[:, 0::2] += self.pad_xy[0]
        out[:, 1::2] += self.pad_xy[1]
        return out

    def boxes_to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Letterboxed input pixels -> original-image pixels, clipped to the image. boxes [N, 4] xyxy."""
        out = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
        out[:, 0::2] -= self.pad_xy[0]
        out[:, 1::2] -= self.pad_xy[1]
        out /= self.scale
        out[:, 0::2] = out[:, 0::2].clip(0, self.size_wh[0])
        out[:, 1::2] = out[:, 1::2].clip(0, self.size_wh[1])
        return out


def letterbox(image: np.ndarray, imgsz: int) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` [H, W, 3] so its long side is ``imgsz`` and pad it to ``imgsz`` x ``imgsz``.

    The image is centred; the aspect ratio is kept. Returns the square image and the mapping.
    """
    h, w = image.shape[:2]
    scale = imgsz / max(h, w)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (nw, nh) != (w, h):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    px, py = (imgsz - nw) / 2, (imgsz - nh) / 2
    top, left = int(round(py - 0.1)), int(round(px - 0.1))
    out = cv2.copyMakeBorder(image, top, imgsz - nh - top, left, imgsz - nw - left, cv2.BORDER_CONSTANT,
                             value=(PAD_VALUE,) * 3)
    return out, Letterbox(scale, (float(left), float(top)), (w, h), imgsz)


def to_input(image_bgr: np.ndarray, imgsz: int) -> tuple[np.ndarray, Letterbox]:
    """BGR uint8 image [H, W, 3] -> the detector's input [1, 3, imgsz, imgsz] float32 RGB in 0-1.

    The one place that defines the model's input: training, the torch predictor and the ONNX
    runtime all come through here, so they cannot drift apart.
    """
    boxed, lb = letterbox(image_bgr, imgsz)
    rgb = cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB)
    x = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    x *= np.float32(1.0 / 255.0)
    return x, lb

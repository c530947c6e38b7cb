"""What every backend's predictor shares: argument checks, preprocessing, postprocessing, timing.

A backend supplies two steps: ``_encode`` (prompts -> embeddings, cached) and ``_infer`` (one
input tensor -> candidate boxes and scores, and the image's and prompts' familiarity). Everything before and after is this file's, in numpy,
so the torch and ONNX backends give the same detections by construction.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from promptdet.errors import UsageError
from promptdet.runtime.imageio import load_input
from promptdet.runtime.postprocess import select_detections
from promptdet.runtime.preprocess import to_input
from promptdet.structures import Detections
from promptdet.text.prompts import normalize_prompts

# Below this familiarity an image is unfamiliar and a prompt unknown: the models put their
# calibrated threshold at exactly 0.5 (promptdet.model.familiarity), so one number serves all.
FAMILIARITY_MIN = 0.5


def check_thresholds(conf: Any, iou: Any, max_det: Any, imgsz: Any) -> None:
    for name, value in (("conf", conf), ("iou", iou)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must be between 0 and 1, got {value!r}")
    if isinstance(max_det, bool) or not isinstance(max_det, int) or max_det < 1:
        raise UsageError(f"max_det must be a positive integer, got {max_det!r}")
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 32 or imgsz % 32:
        raise UsageError(f"imgsz must be a multiple of 32 (at least 32), got {imgsz!r}")


class BasePredictor:
    """A fixed list of prompts and thresholds; call it on BGR images to get ``Detections``.

    conf: score threshold for every prompt. iou: NMS IoU within a prompt (prompts never suppress
    each other). max_det: most boxes per prompt per image, so prompts stay independent.
    imgsz: letterbox size, a multiple of 32. abstain: withhold the boxes of an unfamiliar image and
    of unknown prompts (the flags are set either way).
    """

    backend = "base"

    def __init__(self, prompts: str | list[str], conf: float, iou: float, max_det: int, imgsz: int,
                 abstain: bool = True):
        self.prompts = normalize_prompts(prompts)
        self.abstain = bool(abstain)
        check_thresholds(conf, iou, max_det, imgsz)
        self.conf, self.iou, self.max_det, self.imgsz = float(conf), float(iou), max_det, imgsz
        self._embeddings = None  # the prompts are fixed: encode them on the first image only

    # ---- the backend's two steps ----
    def _encode(self) -> Any:
        """Embeddings of ``self.prompts`` in the backend's own form (cached by the backend)."""
        raise NotImplementedError

    def _infer(self, x: np.ndarray, embeddings: Any) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """x [1, 3, S, S] float32 -> (boxes [K, M, 4] input pixels, scores [K, M], image familiarity,
        prompt familiarity [K]) as numpy."""
        raise NotImplementedError

    # ---- shared ----
    def predict(self, source: Any, keep_image: bool = True) -> Detections:
        """Detections for a path, a numpy BGR array or a PIL image."""
        t0 = time.perf_counter()
        image, name = load_input(source)
        return self(image, name, read_ms=(time.perf_counter() - t0) * 1e3, keep_image=keep_image)

    def __call__(self, image_bgr: np.ndarray, image: str | None = None, frame: int | None = None,
                 read_ms: float = 0.0, keep_image: bool = True) -> Detections:
        """Detections for one BGR uint8 image [H, W, 3], boxes in its pixels."""
        t0 = time.perf_counter()
        if self._embeddings is None:
            self._embeddings = self._encode()  # from the backend's cache if these prompts were seen before
        embeddings = self._embeddings
        t1 = time.perf_counter()
        x, lb = to_input(image_bgr, self.imgsz)
        t2 = time.perf_counter()
        boxes, scores, familiarity, prompt_fam = self._infer(x, embeddings)
        t3 = time.perf_counter()
        b, s, ids = select_detections(boxes, scores, self.conf, self.iou, self.max_det)
        b = lb.boxes_to_original(b)
        unfamiliar = familiarity < FAMILIARITY_MIN
        unknown = [i for i, v in enumerate(prompt_fam) if v < FAMILIARITY_MIN]
        withheld = unfamiliar or bool(unknown)
        if self.abstain and withheld:
            keep = np.zeros(len(s), bool) if unfamiliar else ~np.isin(ids, unknown)
            b, s, ids = b[keep], s[keep], ids[keep]
        t4 = time.perf_counter()
        ms = {"read": read_ms, "text": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "infer": (t3 - t2) * 1e3,
              "post": (t4 - t3) * 1e3}
        ms["total"] = read_ms + (t4 - t0) * 1e3
        h, w = image_bgr.shape[:2]
        return Detections(b, s, ids, self.prompts, (w, h), image, ms, frame, image_bgr if keep_image else None,
                          familiarity, unfamiliar, prompt_fam, unknown, self.abstain and withheld)

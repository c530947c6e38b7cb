"""Run one model at several input sizes and merge what each finds, prompt by prompt.

A small part's score can depend on the input size: on the conveyor videos a cracked nut 30 px
wide that the bundled model scores 0.1-0.3 at 640 scores 0.3-0.75 at 768, and a scratched nut
goes the other way (README, "The inspection line"). Asking at two sizes and keeping a box when
either size finds it costs one forward pass per size. numpy only, so the ONNX path stays free of
torch; the boxes of one prompt are merged with the same NMS as a single size uses.
"""

from __future__ import annotations

import numpy as np

from promptdet.runtime.postprocess import nms_per_prompt
from promptdet.structures import TIMING_KEYS, Detections


class MultiScalePredictor:
    """Calls each predictor (same prompts, conf, iou and max_det; different imgsz) on an image and
    merges their detections: per prompt, greedy NMS over the union, then ``max_det``.

    Timing is the sum over the sizes for each stage; ``read`` is counted once.
    """

    backend = "multiscale"

    def __init__(self, predictors: list):
        if not predictors:
            raise ValueError("MultiScalePredictor needs at least one predictor")
        first = predictors[0]
        for p in predictors[1:]:
            if list(p.prompts) != list(first.prompts) or (p.conf, p.iou, p.max_det) != (first.conf, first.iou, first.max_det):
                raise ValueError("the predictors of a MultiScalePredictor must share prompts, conf, iou and max_det")
        self.predictors = list(predictors)
        self.prompts, self.conf, self.iou, self.max_det = first.prompts, first.conf, first.iou, first.max_det
        self.imgsz = [p.imgsz for p in predictors]

    def __call__(self, image_bgr: np.ndarray, image: str | None = None, frame: int | None = None,
                 read_ms: float = 0.0, keep_image: bool = True) -> Detections:
        dets = [p(image_bgr, image, frame, read_ms=0.0, keep_image=False) for p in self.predictors]
        boxes, scores, ids = nms_per_prompt(np.concatenate([d.boxes_xyxy for d in dets]),
                                            np.concatenate([d.scores for d in dets]),
                                            np.concatenate([d.prompt_ids for d in dets]), self.iou, self.max_det)
        ms = {key: sum(d.timing_ms.get(key, 0.0) for d in dets) for key in TIMING_KEYS}
        ms["read"], ms["total"] = read_ms, ms["total"] + read_ms
        h, w = image_bgr.shape[:2]
        # The least familiar view speaks for the image: one size that looks unlike training is enough.
        worst = min(dets, key=lambda d: d.familiarity)
        prompt_fam = np.min(np.stack([d.prompt_familiarity for d in dets]), axis=0)
        unknown = sorted({i for d in dets for i in d.unknown_prompts})
        return Detections(boxes, scores, ids, self.prompts, (w, h), image, ms, frame,
                          image_bgr if keep_image else None, worst.familiarity, worst.unfamiliar, prompt_fam,
                          unknown, any(d.abstained for d in dets))

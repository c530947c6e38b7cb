"""From a DetectorOutput to per-prompt boxes: gather the candidates, threshold, NMS per prompt.

``candidate_boxes_scores`` is export-safe (gathers and a sigmoid only); NMS runs outside the graph.
"""

from __future__ import annotations

import torch
import torchvision

from promptdet.model.detector import DetectorOutput
from promptdet.model.fusion import gather_anchors


def candidate_boxes_scores(out: DetectorOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """-> boxes [B, K, M, 4] xyxy input pixels, scores [B, K, M] in 0-1 (0 for non-candidates)."""
    boxes = gather_anchors(out.boxes_xyxy, out.cand_idx)
    # Direct distance regression (reg_max 1, as in YOLO26) can predict a negative side early in
    # training; order the corners so every consumer sees a valid xyxy box.
    boxes = torch.cat([torch.minimum(boxes[..., :2], boxes[..., 2:]), torch.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    return boxes, out.cand_logits.sigmoid()


def nms_per_prompt(boxes: torch.Tensor, scores: torch.Tensor, conf: float = 0.25, iou: float = 0.6,
                   max_det: int = 300) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """boxes [B, K, M, 4], scores [B, K, M] -> per image (boxes [N, 4], scores [N], prompt_ids [N]).

    Boxes of different prompts never suppress each other: one part may answer several prompts.
    This is the export-safe torch form (IoU only), for graphs that must end in NMS; ``detect`` and
    ``val`` use ``runtime.postprocess.select_detections``, which also drops nested boxes.
    """
    results = []
    b, k, m = scores.shape
    prompt_ids = torch.arange(k, device=scores.device).repeat_interleave(m)
    for i in range(b):
        s = scores[i].reshape(-1)
        keep = s >= conf
        bx, sc, ids = boxes[i].reshape(-1, 4)[keep], s[keep], prompt_ids[keep]
        kept = torchvision.ops.batched_nms(bx.float(), sc.float(), ids, iou)[:max_det]
        results.append((bx[kept], sc[kept], ids[kept]))
    return results

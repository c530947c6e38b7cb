"""Run a model over a set of instruction pairs and score it (COCO AP, Acc@0.5, absent FP rate).

Pairs are grouped by image and all prompts of an image go through one forward pass; prompts are
independent, so that is the same as asking them one by one (``order_invariance`` measures it).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from promptdet.data.pairs import InstructionPair
from promptdet.model.postprocess import candidate_boxes_scores
from promptdet.runtime.postprocess import CONTAINED, select_detections
from promptdet.runtime.preprocess import to_input
from promptdet.train.evaluate import QueryResult, evaluate_queries


def encode_prompt_grid(encoder, prompts: list[list[str]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B lists of K prompts -> pooled [B, K, Dt], tokens [B, K, T, Dt], mask [B, K, T] (unique texts encoded once)."""
    unique = list(dict.fromkeys(p for row in prompts for p in row))
    enc = encoder.encode(unique)
    where = {p: i for i, p in enumerate(unique)}
    idx = torch.tensor([[where[p] for p in row] for row in prompts])
    return enc.pooled[idx].to(device), enc.token_feats[idx].to(device), enc.token_mask[idx].to(device)


def image_tensor(image_bgr: np.ndarray, imgsz: int, device) -> tuple[torch.Tensor, object]:
    x, lb = to_input(image_bgr, imgsz)
    return torch.from_numpy(x).to(device), lb


@torch.no_grad()
def predict_pairs(model, encoder, pairs: list[InstructionPair], images_root: Path, imgsz: int,
                  conf: float = 0.001, iou: float = 0.6, max_det: int = 100, device="cpu",
                  progress: bool = False, contained: float | None = CONTAINED) -> list[QueryResult]:
    """Detections for every pair, as QueryResults in original-image pixels."""
    model.eval()
    by_image: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        by_image[p.image].append(i)
    results: list[QueryResult | None] = [None] * len(pairs)
    for image_name, ids in tqdm(by_image.items(), desc="val", disable=not progress, leave=False):
        img = cv2.imread(str(images_root / image_name), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read validation image {images_root / image_name}")
        x, lb = image_tensor(img, imgsz, device)
        pooled, tokens, mask = encode_prompt_grid(encoder, [[pairs[i].instruction for i in ids]], device)
        boxes, scores = candidate_boxes_scores(model(x, pooled, tokens, mask))
        # The same selection as `detect` (runtime/postprocess.py), so validation scores what users get.
        det_boxes, det_scores, det_ids = select_detections(boxes[0].float().cpu().numpy(), scores[0].float().cpu().numpy(),
                                                           conf, iou, max_det, contained)
        det_boxes = lb.boxes_to_original(det_boxes)
        for j, i in enumerate(ids):
            keep = det_ids == j  # already highest score first and capped at max_det per prompt
            gt = np.array(pairs[i].boxes_xyxy, np.float32).reshape(-1, 4)
            results[i] = QueryResult(i, image_name, pairs[i].type, pairs[i].instruction, gt,
                                     det_boxes[keep], det_scores[keep])
    return [r for r in results if r is not None]


@torch.no_grad()
def order_invariance(model, encoder, pairs: list[InstructionPair], images_root: Path, imgsz: int, device="cpu",
                     images: int = 4) -> float:
    """Largest change of any candidate score of a prompt when other prompts are added and reordered."""
    model.eval()
    names = list(dict.fromkeys(p.image for p in pairs))[:images]
    texts = list(dict.fromkeys(p.instruction for p in pairs))
    worst = 0.0
    for name in names:
        img = cv2.imread(str(images_root / name), cv2.IMREAD_COLOR)
        x, _ = image_tensor(img, imgsz, device)
        own = [p.instruction for p in pairs if p.image == name][:3]
        extra = [t for t in texts if t not in own][:5]
        for j, prompt in enumerate(own):
            alone = model(x, *encode_prompt_grid(encoder, [[prompt]], device))
            mixed_prompts = extra[:2] + [prompt] + extra[2:]
            mixed = model(x, *encode_prompt_grid(encoder, [mixed_prompts], device))
            a = _final_scores(alone, 0)
            b = _final_scores(mixed, len(extra[:2]))  # fewer than two other prompts: it is not third
            worst = max(worst, float((a - b).abs().max()))
    return worst


def _final_scores(out, k: int) -> torch.Tensor:
    """Prompt k's final score at every anchor of image 0 (0 where it is not a candidate) [A]."""
    dense = torch.zeros(out.boxes_xyxy.shape[1], device=out.cand_logits.device)
    valid = out.cand_valid[0, k]
    return dense.index_put((out.cand_idx[0, k][valid],), out.cand_logits[0, k][valid].sigmoid())


def validate(model, encoder, pairs: list[InstructionPair], images_root: Path, imgsz: int, conf: float = 0.25,
             device="cpu", progress: bool = False, check_order: bool = True) -> dict:
    results = predict_pairs(model, encoder, pairs, images_root, imgsz, device=device, progress=progress)
    inv = order_invariance(model, encoder, pairs, images_root, imgsz, device) if check_order else None
    return evaluate_queries(results, conf=conf, order_invariance=inv)


def fitness(metrics: dict) -> float:
    """One number to pick the best epoch: mean of AP50 (set types), Acc@0.5 (single-target) and 1 - absent FP."""
    parts = []
    for name, row in metrics["types"].items():
        if row.get("acc50") is not None:
            parts.append(row["acc50"])
        elif row.get("AP50") is not None:
            parts.append(row["AP50"])
    if metrics.get("absent_fp_rate") is not None:
        parts.append(1.0 - metrics["absent_fp_rate"])
    return float(np.mean(parts)) if parts else 0.0

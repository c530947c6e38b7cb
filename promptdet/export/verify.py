"""Parity of an export folder with the torch model it came from: same inputs, largest differences.

Checked: token ids (``tokenizers`` against the transformers tokenizer), the text encoder's
outputs, and the detector on two input sizes with 1 and 5 prompts (and the baked graph, if any).
Limits for fp32 graphs: boxes within 1e-3 of imgsz, scores within 1e-4. Each prompt's candidates
are compared in score order, on scenes without flat letterbox bars (see ``parity_images``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from promptdet.export.graphs import DetectorGraph
from promptdet.runtime.onnx import OnnxModel
from promptdet.runtime.preprocess import to_input

PARITY_PROMPTS = ["find the bottles with a missing cap", "all nuts", "the scratched can left of the gear",
                  "the largest red washer", "Is there a BLUE carton?  (upper-right)"]
DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"


def _limits(precision: str, imgsz: int) -> tuple[float, float]:
    if precision == "fp32":
        return 1e-3 * imgsz, 1e-4
    return 2e-2 * imgsz, 2e-2  # fp16 weights: reported, judged loosely


def parity_images(imgsz: int, dynamic: bool) -> list[tuple[str, np.ndarray]]:
    """(label, input [1, 3, S, S]): a scene at the export size, and with a dynamic graph at another size.

    The scene fills the square (no letterbox bars): a flat bar gives many anchors exactly equal
    scores, and which of those equal peaks a top-k keeps is up to the kernel, not a parity error.
    """
    demo = sorted(DEMO.glob("*.jpg"))
    if demo:
        scene = cv2.imread(str(demo[0]), cv2.IMREAD_COLOR)
    else:  # a source checkout without assets: any textured image does
        scene = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    h, w = scene.shape[:2]
    side = min(h, w)
    square = scene[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    second = (imgsz - 64 if imgsz >= 128 else imgsz + 64) if dynamic else imgsz
    sizes = [imgsz, second] if second != imgsz else [imgsz]
    out = []
    for size in sizes:
        x, _ = to_input(cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA), size)
        out.append((f"{size}x{size}", x))
    if len(out) == 1:  # a fixed-size graph: a second, different scene of the same size
        flipped, _ = to_input(cv2.resize(cv2.flip(square, -1), (imgsz, imgsz), interpolation=cv2.INTER_AREA), imgsz)
        out.append((f"{imgsz}x{imgsz} flipped", flipped))
    return out


def compare_candidates(boxes: np.ndarray, scores: np.ndarray, ref_boxes: np.ndarray, ref_scores: np.ndarray,
                       score_tol: float) -> tuple[float, float]:
    """Largest (box, score) differences between two [.., M, 4] / [.., M] candidate lists.

    Scores are compared in sorted order. Each real candidate's box is compared with the reference
    box of the same score (within ``score_tol``) that is nearest: two peaks whose scores differ by
    1e-7 may come out in either order, and that is not a parity error.
    """
    score_diff = float(np.abs(np.sort(scores, -1) - np.sort(ref_scores, -1)).max(initial=0.0))
    box = np.abs(boxes[..., :, None, :] - ref_boxes[..., None, :, :]).max(-1)  # [.., M, M]
    same_score = np.abs(scores[..., :, None] - ref_scores[..., None, :]) <= score_tol
    nearest = np.where(same_score, box, np.inf).min(-1)  # [.., M]
    real = scores > 0  # a non-candidate (score 0) pads the list; its box means nothing
    return float(nearest[real].max(initial=0.0)), score_diff


def check_parity(model, export_dir: str | Path, detector_file: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
    """Run ONNX Runtime (CPU) and torch on the same inputs; returns the report (``passed`` and the figures)."""
    onnx_model = OnnxModel(export_dir, providers="cpu", detector_file=detector_file)
    meta = onnx_model.meta
    precision = "int8" if detector_file and "int8" in detector_file else meta.get("precision", "fp32")
    box_limit, score_limit = _limits(precision, onnx_model.imgsz)
    encoder = model.encoder
    detector = model.detector.float().eval().cpu()
    report: dict = {"precision": precision, "box_limit_px": box_limit, "score_limit": score_limit, "cases": []}

    # ---- text ----
    ids_hf, _ = encoder.tokenize(PARITY_PROMPTS)
    _, tokenizer = onnx_model._text_encoder()
    ids_same = all(tokenizer.encode(p).ids == [i for i in ids_hf[k].tolist() if i != encoder.tokenizer.pad_token_id]
                   for k, p in enumerate(PARITY_PROMPTS))
    enc = encoder.encode(PARITY_PROMPTS)
    pooled, tokens, mask = onnx_model.encode(PARITY_PROMPTS)
    t = min(tokens.shape[1], enc.token_feats.shape[1])
    text = {"token_ids_equal": ids_same, "pooled_diff": float(np.abs(pooled - enc.pooled.numpy()).max()),
            "tokens_diff": float(np.abs(tokens[:, :t] - enc.token_feats[:, :t].numpy()).max()),
            "mask_equal": bool((mask[:, :t] == enc.token_mask[:, :t].numpy()).all())}
    report["text"] = text
    text_ok = ids_same and text["mask_equal"] and text["pooled_diff"] < 1e-4 and text["tokens_diff"] < 1e-3
    log(f"text encoder: token ids {'equal' if ids_same else 'DIFFER'}, pooled max diff {text['pooled_diff']:.2e}, "
        f"tokens max diff {text['tokens_diff']:.2e}")

    # ---- detector: the same embeddings into both, so only the graph is compared ----
    graph = DetectorGraph(detector)
    ok = text_ok
    for label, x in parity_images(onnx_model.imgsz, bool(meta.get("dynamic"))):
        for k in ((1, 5) if onnx_model.takes_prompts else (len(onnx_model.baked_prompts),)):
            prompts = PARITY_PROMPTS[:k] if onnx_model.takes_prompts else onnx_model.baked_prompts
            e = encoder.encode(prompts)
            with torch.no_grad():
                ref_boxes, ref_scores, ref_fam, ref_pfam = graph(torch.from_numpy(x), e.pooled, e.token_feats,
                                                                 e.token_mask)
            boxes, scores, fam, pfam = onnx_model.run_all(x, e.pooled.numpy(), e.token_feats.numpy(),
                                                          e.token_mask.numpy())
            box_diff, score_diff = compare_candidates(boxes, scores, ref_boxes.numpy(), ref_scores.numpy(),
                                                      score_limit)
            # The familiarity scores are compared as scores are: the same limit, both sides of 0.5 alike.
            fam_diff = float(max(np.abs(fam - ref_fam.numpy()).max(initial=0.0),
                                 np.abs(pfam - ref_pfam.numpy()).max(initial=0.0)))
            score_diff = max(score_diff, fam_diff)
            passed = box_diff < box_limit and score_diff < score_limit
            ok &= passed
            report["cases"].append({"input": label, "prompts": k, "box_diff_px": box_diff, "score_diff": score_diff,
                                    "passed": passed})
            log(f"detector {label:>16} K={k}: max |box diff| {box_diff:.2e} px (limit {box_limit:.2g}), "
                f"max |score diff| {score_diff:.2e} (limit {score_limit:.0e})  {'ok' if passed else 'FAIL'}")
    report["passed"] = bool(ok)
    log(f"parity {'passed' if ok else 'FAILED'} ({precision})")
    return report

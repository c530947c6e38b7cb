"""Detection metrics per instruction type, on plain numpy results.

No torch here: the ONNX runtime path scores its predictions with the same code.
pycocotools and matplotlib are imported only where they are needed, so importing this
module costs nothing on an install without them.

Boxes are always xyxy in original image pixels: ``gt_boxes [N, 4]``, ``pred_boxes [M, 4]``,
``pred_scores [M]``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptdet.data.vocab import IMPORTED_TYPES, INSTRUCTION_TYPES, SINGLE_TARGET_TYPES
from promptdet.errors import PromptdetError

# COCO's defaults, but one area range only: small/medium/large say nothing per instruction type
# and would triple the accumulate cost.
MAX_DETS = (1, 10, 100)
_AREA_ALL = [0.0, 1e5**2]
ALL = "all"  # the summary row; reserved, so no instruction type may be called this


@dataclass
class QueryResult:
    """One (image, instruction) query and the detector's answer to it.

    gt_boxes: float [N, 4] xyxy pixels, N may be 0 (absent, or a count that did not hold).
    pred_boxes: float [M, 4] xyxy pixels; pred_scores: float [M].
    """

    query_id: int
    image_id: str
    type: str
    instruction: str
    gt_boxes: np.ndarray
    pred_boxes: np.ndarray
    pred_scores: np.ndarray


def _as_boxes(boxes, what: str, query_id) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"query {query_id}: {what} must have shape [N, 4] xyxy, got {arr.shape}")
    if not np.isfinite(arr).all() or (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"query {query_id}: {what} must be finite xyxy with x2 >= x1 and y2 >= y1")
    return arr


def _check(r: QueryResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float64 copies: gt [N, 4], pred [M, 4], scores [M]."""
    if r.type == ALL:
        raise ValueError(f"query {r.query_id}: instruction type {ALL!r} is reserved for the summary row")
    gt = _as_boxes(r.gt_boxes, "gt_boxes", r.query_id)
    pred = _as_boxes(r.pred_boxes, "pred_boxes", r.query_id)
    scores = np.asarray(r.pred_scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(pred) or not np.isfinite(scores).all():
        raise ValueError(f"query {r.query_id}: pred_scores must be {len(pred)} finite values "
                         f"(one per pred box), got shape {np.shape(r.pred_scores)}")
    return gt, pred, scores


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """IoU matrix [N, M] of boxes a [N, 4] and b [M, 4], both xyxy (no +1 pixel, as in COCO)."""
    lt = np.maximum(a_xyxy[:, None, :2], b_xyxy[None, :, :2])
    rb = np.minimum(a_xyxy[:, None, 2:], b_xyxy[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a_xyxy[:, 2:] - a_xyxy[:, :2]).prod(-1)
    area_b = (b_xyxy[:, 2:] - b_xyxy[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_matches(gt: np.ndarray, pred: np.ndarray, scores: np.ndarray, iou_thr: float = 0.5) -> int:
    """How many GT boxes the predictions match, highest score first, each GT at most once."""
    if len(gt) == 0 or len(pred) == 0:
        return 0
    ious = box_iou(pred[np.argsort(-scores, kind="stable")], gt)
    taken = np.zeros(len(gt), dtype=bool)
    for row in ious:
        row = np.where(taken, -1.0, row)
        j = int(row.argmax())
        if row[j] >= iou_thr:
            taken[j] = True
    return int(taken.sum())


def _coco_eval(queries: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """COCO box AP over queries ``(coco_image_id, gt [N, 4], pred [M, 4], scores [M])``.

    Each query is its own COCO image with one category: a box that answers two prompts is a
    positive for both, and query A's predictions can never match query B's GT.
    Returns AP50_95, AP50 (None where the queries hold no GT box) and the IoU-0.5 PR curve.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise PromptdetError("COCO-style AP needs pycocotools: pip install pycocotools "
                             "(or pip install 'promptdet[train]')") from e

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images = [{"id": qid, "width": 1, "height": 1} for qid, *_ in queries]
    cats = [{"id": 1, "name": "target"}]
    gt_anns, dt_anns = [], []
    for qid, gt, pred, scores in queries:
        for b in gt:
            bb = xywh(b)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": qid, "category_id": 1, "bbox": bb,
                            "area": bb[2] * bb[3], "iscrowd": 0})
        for b, s in zip(pred, scores):
            bb = xywh(b)
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": qid, "category_id": 1, "bbox": bb,
                            "area": bb[2] * bb[3], "iscrowd": 0, "score": float(s)})

    # Built directly rather than with COCO.loadRes, which fails on an empty result list;
    # the stdout redirect silences pycocotools' progress prints.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "categories": cats, "annotations": gt_anns}
        coco_dt.dataset = {"images": images, "categories": cats, "annotations": dt_anns}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = [qid for qid, *_ in queries]
        ev.params.maxDets = list(MAX_DETS)
        ev.params.areaRng, ev.params.areaRngLbl = [_AREA_ALL], ["all"]
        ev.evaluate()
        ev.accumulate()

    precision = ev.eval["precision"][:, :, 0, 0, -1]  # [T iou thresholds, R=101 recall thresholds]
    if not (precision > -1).any():  # -1 marks "no GT box": AP undefined, not 0
        return {"AP50_95": None, "AP50": None, "pr50": None}
    return {
        "AP50_95": float(precision.mean()),
        "AP50": float(precision[0].mean()),  # iouThrs[0] == 0.5
        "pr50": {"recall": [round(float(r), 4) for r in ev.params.recThrs],
                 "precision": [float(p) for p in precision[0]]},
    }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _row(items: list[tuple[QueryResult, np.ndarray, np.ndarray, np.ndarray]], conf: float) -> tuple[dict, dict | None]:
    """Metrics for one group of validated queries, plus its IoU-0.5 PR curve."""
    coco = _coco_eval([(i + 1, gt, pred, s) for i, (_, gt, pred, s) in enumerate(items)])
    hits = single = empty = empty_fired = gt_total = gt_matched = 0
    for r, gt, pred, scores in items:
        if len(gt) == 0:
            empty += 1
            empty_fired += bool((scores >= conf).any())
            continue
        keep = scores >= conf
        gt_total += len(gt)
        gt_matched += greedy_matches(gt, pred[keep], scores[keep])
        if r.type in SINGLE_TARGET_TYPES:
            # Top-1 regardless of conf, as in referring-expression accuracy; no box is a miss.
            single += 1
            if len(pred):
                top = int(np.argmax(scores))
                hits += bool(box_iou(pred[top:top + 1], gt).max() >= 0.5)
    row = {
        "queries": len(items),
        "gt_boxes": sum(len(gt) for _, gt, _, _ in items),
        "AP50_95": coco["AP50_95"],
        "AP50": coco["AP50"],
        "acc50": _ratio(hits, single),
        "empty_fp_rate": _ratio(empty_fired, empty),
        "recall@conf": _ratio(gt_matched, gt_total),
    }
    return row, coco["pr50"]


def _type_order(types) -> list[str]:
    known = [t for t in INSTRUCTION_TYPES + IMPORTED_TYPES if t in types]
    return known + sorted(t for t in types if t not in known)


def evaluate_queries(results: list[QueryResult], conf: float = 0.25,
                     order_invariance: float | None = None) -> dict:
    """Box AP, Accuracy@0.5, empty-GT false fires and recall at ``conf``, per instruction type.

    ``acc50`` covers single-target types (``SINGLE_TARGET_TYPES``) on queries with a GT box;
    ``empty_fp_rate`` is the share of empty-GT queries with any box scoring >= conf;
    ``recall@conf`` is the share of GT boxes matched at IoU 0.5 by boxes >= conf.
    The ``all`` row covers every query except ``absent`` ones, which have no GT to score AP on.
    ``order_invariance`` is the caller's measured max |score change| when other prompts are
    reordered; it is only stored. Values are None where a metric does not apply (JSON-safe).
    """
    checked = [(r, *_check(r)) for r in results]
    by_type: dict[str, list] = {}
    for item in checked:
        by_type.setdefault(item[0].type, []).append(item)

    types, curves = {}, {}
    for t in _type_order(by_type):
        types[t], curves[t] = _row(by_type[t], conf)
    all_row, curves[ALL] = _row([c for c in checked if c[0].type != "absent"], conf)

    absent = by_type.get("absent", [])
    absent_fired = sum(bool((s >= conf).any()) for _, _, _, s in absent)
    return {
        "types": types,
        ALL: all_row,
        "absent_fp_rate": _ratio(absent_fired, len(absent)),
        "conf": float(conf),
        "order_invariance_max_abs_score_change": None if order_invariance is None else float(order_invariance),
        # Kept for plot_pr_curves; format_table leaves them out. None where a row has no GT.
        "pr_curves": curves,
    }


_COLUMNS = (("queries", "queries"), ("GT", "gt_boxes"), ("AP50-95", "AP50_95"), ("AP50", "AP50"),
            ("Acc@0.5", "acc50"), ("empty-FP", "empty_fp_rate"), ("recall", "recall@conf"))


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return str(v) if isinstance(v, int) else f"{v:.3f}"


def format_table(metrics: dict) -> str:
    """A plain-text table: one row per type (vocab order, then extras), then ``all``; "-" = N/A."""
    rows = [(t, metrics["types"][t]) for t in _type_order(metrics["types"])]
    rows.append((ALL, metrics[ALL]))
    body = [["type"] + [c for c, _ in _COLUMNS]]
    body += [[name] + [_cell(row.get(key)) for _, key in _COLUMNS] for name, row in rows]
    widths = [max(len(line[i]) for line in body) for i in range(len(body[0]))]

    def fmt(line):
        return "  ".join([line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])])

    lines = [fmt(body[0]), "-" * len(fmt(body[0]))] + [fmt(line) for line in body[1:]]
    lines[-1:-1] = ["-" * len(lines[0])]  # rule above the summary row
    inv = metrics.get("order_invariance_max_abs_score_change")
    # Scientific notation: the interesting values (1e-6 float noise vs 1e-2 leakage) all round to 0.000.
    lines.append(f"conf {_cell(metrics.get('conf'))}   absent FP rate {_cell(metrics.get('absent_fp_rate'))}   "
                 f"order-invariance max |dscore| {'-' if inv is None else f'{inv:.2e}'}")
    return "\n".join(lines)


def save_metrics(metrics: dict, path) -> None:
    """Write ``metrics`` as JSON (strict: NaN or inf would raise, as no metric may be NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")


def plot_pr_curves(metrics_or_results, out_dir) -> list[Path]:
    """Precision-recall at IoU 0.5: ``pr_<type>.png`` per type with GT boxes, and ``pr_all.png``
    with every type's curve (plus the ``all`` row, dashed). Types with no GT box (absent) have no
    curve and get no file. Accepts a metrics dict or a list of QueryResult. Returns the paths."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PromptdetError("PR plots need matplotlib: pip install matplotlib "
                             "(or pip install 'promptdet[train]')") from e
    metrics = metrics_or_results
    if not isinstance(metrics, dict):
        metrics = evaluate_queries(list(metrics_or_results))
    curves = metrics.get("pr_curves") or {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def new_axes(title):
        # Figure + FigureCanvasAgg directly: no pyplot, so no global backend switch or figure registry.
        fig = Figure(figsize=(5, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
        ax.grid(alpha=0.3)
        return fig, ax

    def label(name, row):
        ap = row.get("AP50") if row else None
        return f"{name} (AP50 {_cell(ap)})"

    paths = []
    fig_all, ax_all = new_axes("PR @ IoU 0.5, all types")
    for t in _type_order(metrics.get("types", {})):
        curve = curves.get(t)
        if curve is None:
            continue
        fig, ax = new_axes(f"PR @ IoU 0.5: {t}")
        ax.plot(curve["recall"], curve["precision"], label=label(t, metrics["types"][t]))
        ax.legend(loc="lower left", fontsize=8)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", t)  # extra type names come from user data
        paths.append(out_dir / f"pr_{safe}.png")
        fig.savefig(paths[-1])
        ax_all.plot(curve["recall"], curve["precision"], label=label(t, metrics["types"][t]))
    if curves.get(ALL) is not None:
        ax_all.plot(curves[ALL]["recall"], curves[ALL]["precision"], "k--", label=label(ALL, metrics.get(ALL)))
    if ax_all.lines:
        ax_all.legend(loc="lower left", fontsize=7)
    paths.append(out_dir / "pr_all.png")
    fig_all.savefig(paths[-1])
    return paths

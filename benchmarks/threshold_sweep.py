"""Which score threshold? Recall per instruction type against the absent false-positive rate.

Runs a checkpoint once over a split of a dataset YAML (every query, threshold 0.001), then for
each threshold prints: the absent false-positive rate (share of absent queries with any box at or
above it), the recall of ground-truth boxes per type (greedy match at IoU 0.5), and precision, recall
and F1 over all queries, where a box on an absent query is a false positive. AP does not depend on
the threshold; this shows what one default threshold costs each type.

    python benchmarks/threshold_sweep.py --weights promptdet/assets/promptdet-n.safetensors --split test
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sweep(results, thresholds) -> list[dict]:
    from promptdet.train.evaluate import greedy_matches

    rows = []
    for conf in thresholds:
        tp = fp = fn = 0
        absent = fired = 0
        per_type: dict[str, list[int]] = {}
        for r in results:
            keep = r.pred_scores >= conf
            pred = r.pred_boxes[keep]
            hit = greedy_matches(r.gt_boxes, pred, r.pred_scores[keep])
            tp, fp, fn = tp + hit, fp + len(pred) - hit, fn + len(r.gt_boxes) - hit
            if r.type == "absent":
                absent, fired = absent + 1, fired + bool(len(pred))
            else:
                t = per_type.setdefault(r.type, [0, 0])
                t[0], t[1] = t[0] + hit, t[1] + len(r.gt_boxes)
        rows.append({"conf": conf, "absent_fp": fired / max(absent, 1), "precision": tp / max(tp + fp, 1),
                     "recall": tp / max(tp + fn, 1), "f1": 2 * tp / max(2 * tp + fp + fn, 1),
                     "recall_by_type": {k: v[0] / max(v[1], 1) for k, v in per_type.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--data", default="datasets/inspection.yaml")
    ap.add_argument("--split", default="val")
    ap.add_argument("--imgsz", type=int, default=None, help="default: the size the model was trained at")
    ap.add_argument("--thresholds", default="0.2,0.25,0.3,0.35,0.4,0.45,0.5,0.6")
    args = ap.parse_args()

    import promptdet
    from promptdet.data.sources import load_eval_split
    from promptdet.train.validate import predict_pairs

    model = promptdet.load(args.weights)
    src = load_eval_split(args.data, args.split)  # the queries `promptdet val` scores
    results = predict_pairs(model.detector, model.encoder, src.pairs, src.images_root,
                            args.imgsz or model.cfg.imgsz, progress=True)
    rows = sweep(results, [float(t) for t in args.thresholds.split(",")])
    types = [t for t in ("category", "attribute", "defect", "spatial", "superlative", "relation", "count")
             if t in rows[0]["recall_by_type"]]
    print(f"{args.weights or 'bundled model'} on {args.split}: {len(results)} queries; recall per type at IoU 0.5")
    print(f"{'conf':>5} {'absent FP':>9} {'P':>6} {'R':>6} {'F1':>6} " + " ".join(f"{t[:6]:>6}" for t in types))
    for r in rows:
        print(f"{r['conf']:5.2f} {r['absent_fp']:9.3f} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} "
              + " ".join(f"{r['recall_by_type'][t]:6.3f}" for t in types))


if __name__ == "__main__":
    main()

"""Is the int8 detector worth it here? AP50 per instruction type and CPU latency, fp32 vs int8.

Runs ``detector.onnx`` and ``detector_int8.onnx`` of an export folder through the ONNX runtime
(no torch) on the same scenes and prompts, scores both with ``promptdet.train.evaluate`` and times
both graphs on onnxruntime's CPU provider, runs interleaved so other load hits both alike.
When the folder has no detector_int8.onnx yet (or with --requantize) it is made first, calibrated
on --calib-split of --calib (default: the train split of --data, so no evaluated scene was seen
during calibration), and recorded in promptdet.json.

    python benchmarks/int8_report.py --export DIR --data datasets/inspection.yaml --split val --max-images 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptdet.config import ConfigError
from promptdet.data.sources import load_eval_split
from promptdet.export.quantize import (DEFAULT_MAX_IMAGES, INT8_FILE, _cpu_name, quantize_detector,
                                       time_graphs)
from promptdet.runtime.onnx import OnnxModel
from promptdet.runtime.preprocess import to_input
from promptdet.train.evaluate import ALL, QueryResult, evaluate_queries


def eval_pairs(data: str, split: str, max_images: int):
    """The first ``max_images`` images of ``split`` with all their instruction pairs."""
    try:
        src = load_eval_split(data, split)
    except ConfigError as exc:
        sys.exit(str(exc))
    by_image: dict[str, list] = defaultdict(list)
    for pair in src.pairs:
        by_image[pair.image].append(pair)
    names = list(by_image)[:max_images]
    return [(n, by_image[n]) for n in names], Path(src.images_root)


def predict(model: OnnxModel, groups, root: Path, conf: float = 0.001, iou: float = 0.6, max_det: int = 100,
            desc: str = "") -> list[QueryResult]:
    """The ONNX twin of ``promptdet.train.validate.predict_pairs``: one pass per image, all its prompts."""
    results, qid = [], 0
    for name, pairs in tqdm(groups, desc=desc, unit="img", leave=False):
        image = cv2.imread(str(root / name), cv2.IMREAD_COLOR)
        if image is None:
            sys.exit(f"cannot read {root / name}")
        det = model.predictor([p.instruction for p in pairs], conf=conf, iou=iou, max_det=max_det)(image)
        for j, pair in enumerate(pairs):
            keep = det.prompt_ids == j
            order = np.argsort(-det.scores[keep], kind="stable")[:max_det]
            gt = np.asarray(pair.boxes_xyxy, np.float32).reshape(-1, 4)
            results.append(QueryResult(qid, name, pair.type, pair.instruction, gt,
                                       det.boxes_xyxy[keep][order], det.scores[keep][order]))
            qid += 1
    return results


def raw_drift(fp32: OnnxModel, int8: OnnxModel, groups, root: Path, images: int = 20) -> dict:
    """How far the int8 graph's raw outputs move: scores of every candidate, boxes of the confident ones."""
    score_diff, box_shift = [], []
    for name, pairs in groups[:images]:
        x, _ = to_input(cv2.imread(str(root / name), cv2.IMREAD_COLOR), fp32.imgsz)
        emb = fp32.encode([p.instruction for p in pairs])
        b32, s32 = fp32.run(x, *emb)
        b8, s8 = int8.run(x, *emb)
        score_diff.append(np.abs(s32 - s8).ravel())
        # Candidates are picked by rank, so the two graphs may pick different anchors; compare the
        # confident fp32 boxes with the int8 box at the same slot only where both graphs agree on it.
        same = (np.abs(b32 - b8).max(-1) < 32) & (s32 > 0.25)
        if same.any():
            box_shift.append(np.abs(b32 - b8)[same].ravel())
    sd = np.concatenate(score_diff)
    bs = np.concatenate(box_shift) if box_shift else np.zeros(1)
    return {"score_abs_diff_mean": float(sd.mean()), "score_abs_diff_p99": float(np.quantile(sd, 0.99)),
            "box_px_diff_median": float(np.median(bs)), "images": min(images, len(groups))}


def record_int8(export: Path, info: dict) -> None:
    """What ``promptdet export --int8`` records: the int8 block and the file's hash."""
    meta_path = export / "promptdet.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["int8"] = info
    meta.setdefault("sha256", {})[info["file"]] = info["sha256"]
    meta_path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _fmt(v) -> str:
    return "    -" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", required=True, help="export folder (promptdet export --out DIR)")
    ap.add_argument("--data", default="datasets/inspection.yaml", help="dataset to score on")
    ap.add_argument("--split", default="val", choices=("train", "val", "test"))
    ap.add_argument("--max-images", type=int, default=100)
    ap.add_argument("--calib", default=None, help="calibration data when quantizing (default: --data)")
    ap.add_argument("--calib-split", default="train", help="split of a dataset YAML to calibrate on")
    ap.add_argument("--calib-images", type=int, default=DEFAULT_MAX_IMAGES)
    ap.add_argument("--requantize", action="store_true", help="make detector_int8.onnx again even if it exists")
    ap.add_argument("--int8-file", default=INT8_FILE, help="the int8 graph of the folder to compare")
    ap.add_argument("--also", nargs="*", default=[], help="more detector files of the folder to score and time")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                    help="intra-op thread counts to time with (0 = onnxruntime's default)")
    ap.add_argument("--runs", type=int, default=40, help="timed runs per graph and thread count")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    export = Path(args.export)
    int8_path = export / args.int8_file
    if args.requantize or not int8_path.is_file():
        info = quantize_detector(export, args.calib or args.data, split=args.calib_split,
                                 max_images=args.calib_images, output=args.int8_file, log=print)
        record_int8(export, info)
    int8_info = json.loads((export / "promptdet.json").read_text()).get("int8")

    groups, root = eval_pairs(args.data, args.split, args.max_images)
    files = ["detector.onnx", args.int8_file] + [f for f in args.also if f not in ("detector.onnx", args.int8_file)]
    metrics, models = {}, {}
    for f in files:
        models[f] = OnnxModel(export, providers="cpu", detector_file=f)
        metrics[f] = evaluate_queries(predict(models[f], groups, root, desc=f))
    drift = raw_drift(models["detector.onnx"], models[args.int8_file], groups, root)

    # A real scene and its prompts as the timing input: the reasoner's cost depends on K.
    name, pairs = groups[0]
    x, _ = to_input(cv2.imread(str(root / name), cv2.IMREAD_COLOR), models["detector.onnx"].imgsz)
    pooled, tokens, mask = models["detector.onnx"].encode([p.instruction for p in pairs])
    feed = {"images": x, "pooled": pooled, "tokens": tokens, "token_mask": mask}
    latency = {}
    for t in args.threads:
        latency[t] = time_graphs({f: export / f for f in files}, feed, runs=args.runs, threads=t or None)

    n_q = sum(len(p) for _, p in groups)
    print(f"\n{export}: imgsz {models['detector.onnx'].imgsz}, {args.split} split of {args.data}, "
          f"{len(groups)} images, {n_q} queries, {len(pairs)} prompts in the timing input")
    if int8_info:
        c = int8_info.get("calibration", {})
        print(f"int8: {int8_info.get('format')}, weights {int8_info.get('weights')}, activations "
              f"{int8_info.get('activations')}; calibrated ({c.get('method')}) on {c.get('images')} images of "
              f"{c.get('data')} [{c.get('split') or '-'}]; quantized ops: "
              f"{', '.join(int8_info.get('quantized', {}).get('op_types') or ['all'])}")
    short = {f: ("fp32" if f == "detector.onnx" else "int8" if f == args.int8_file else Path(f).stem) for f in files}
    w = max(12, *(len(v) + 2 for v in short.values()))
    head = f"{'AP50':14s}" + "".join(f"{short[f]:>{w}s}" for f in files) + f"{'int8-fp32':>12s}"
    print("\n" + head + "\n" + "-" * len(head))
    for t in list(metrics["detector.onnx"]["types"]) + [ALL]:
        row = [(metrics[f]["types"].get(t) if t != ALL else metrics[f][ALL]) or {} for f in files]
        vals = [r.get("AP50") for r in row]
        delta = None if vals[0] is None or vals[1] is None else vals[1] - vals[0]
        diff = "" if delta is None else f"{delta:+.3f}"
        print(f"{t:14s}" + "".join(f"{_fmt(v):>{w}s}" for v in vals) + f"{diff:>12s}")
    print(f"{'AP50-95 all':14s}" + "".join(f"{_fmt(metrics[f][ALL]['AP50_95']):>{w}s}" for f in files))
    acc = [metrics[f][ALL].get("acc50") for f in files]
    print(f"{'Acc@0.5 all':14s}" + "".join(f"{_fmt(v):>{w}s}" for v in acc))
    print(f"{'absent FP':14s}" + "".join(f"{_fmt(metrics[f].get('absent_fp_rate')):>{w}s}" for f in files))
    print(f"\nraw outputs, int8 vs fp32 on {drift['images']} images: |score diff| mean "
          f"{drift['score_abs_diff_mean']:.4f}, p99 {drift['score_abs_diff_p99']:.4f}; "
          f"confident boxes move {drift['box_px_diff_median']:.2f} px (median)")
    print(f"\nmedian latency of the detector graph, onnxruntime {int8_info and int8_info.get('onnxruntime') or ''} "
          f"CPUExecutionProvider on {_cpu_name()} ({os.cpu_count()} cores), {args.runs} interleaved runs:")
    for t, ms in latency.items():
        print(f"  threads {t or 'default':>7}: " + ", ".join(
            f"{short[f]} {ms[f]:.1f} ms" for f in files) + f"  -> int8 {ms['detector.onnx'] / ms[args.int8_file]:.2f}x")
    load = os.getloadavg()
    print(f"  load average during the run: {load[0]:.2f} (other processes share these cores; compare ratios, "
          "not absolute times)")
    if args.json:
        out = {"export": str(export), "data": args.data, "split": args.split, "images": len(groups), "queries": n_q,
               "int8": int8_info, "drift": drift, "load_average": load[0],
               "AP50": {short[f]: {t: metrics[f]["types"][t]["AP50"] for t in metrics[f]["types"]} | {
                   ALL: metrics[f][ALL]["AP50"]} for f in files},
               "AP50_95_all": {short[f]: metrics[f][ALL]["AP50_95"] for f in files},
               "latency_ms": {str(t): {short[f]: round(v, 2) for f, v in ms.items()} for t, ms in latency.items()}}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

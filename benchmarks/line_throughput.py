"""Inspection-line throughput and per-frame accuracy on the synthetic conveyor video.

Renders a conveyor video (``promptdet data synth-video``), then runs the line loop of
``configs/line.example.yaml`` (3 checks) on it with the ONNX backend, every frame, at each
``--imgsz``. Prints frames per second and the capture-to-verdict latency p50/p99 (ms), and, against
the video's ground truth, the share of defective frames with a FAIL verdict (target >= 90%) and of
the other frames (target <= 5%). A frame is defective when a defective part is fully in view.

    python benchmarks/line_throughput.py --export export/promptdet-n      # an existing dynamic export
                                                                           # (sizes: the recipe's, 640, 320)
    python benchmarks/line_throughput.py                                   # exports the bundled model first
    python benchmarks/line_throughput.py --export DIR --imgsz 768 --seed 0 1 2 3  # one video per seed, pooled
    python benchmarks/line_throughput.py --export DIR --speed 150          # a belt not tied to the strides

With several seeds, each video is judged on its own and the coverage figures are also pooled
over all their frames (a 20 s video holds about a dozen parts, so one part moves a single video's
figure by several points). fps and latency are per video.

The export must be ``--dynamic`` to run at several sizes. Sinks write to a temporary folder.

The anchor: ultralytics YOLOE-26n with as many classes as the recipe has checks, built and exported
in the same run as ``benchmarks/onnx_latency.py`` does (random weights; nothing downloaded), timed as
bare onnxruntime forward passes at each size of the row (summed for several sizes), once before and
once after that row's videos. ``vs YOLOE`` is the line's fps over the anchor's: the whole line loop
(decode, letterbox, model, NMS, rules, sinks) against a YOLO model's forward pass alone, so the
figure travels between machines where fps does not. ``--no-anchor`` skips it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _sizes(text: str) -> tuple[int, ...]:
    """"640" -> (640,); "640+768" -> (640, 768): the model at both sizes, boxes merged per prompt."""
    try:
        sizes = tuple(int(part) for part in text.split("+"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size or sizes joined by +, got {text!r}") from None
    if any(s < 64 or s % 32 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be multiples of 32 from 64, got {text!r}")
    return sizes


def frame_scores(records: list[dict], gt_path: Path) -> dict:
    """Per-frame FAIL coverage of defective frames and false FAIL rate on the others."""
    truth = {}
    with open(gt_path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            truth[int(row["frame"])] = bool(row["defective"])
    fail = {int(r["frame"]): r["verdict"] != "PASS" for r in records}  # ERROR rejects, as FAIL does
    bad = [f for f, d in truth.items() if d]
    good = [f for f, d in truth.items() if not d]
    hit = sum(fail.get(f, False) for f in bad)
    false = sum(fail.get(f, False) for f in good)
    return {"frames": len(truth), "judged": len(fail), "defective_frames": len(bad), "clean_frames": len(good),
            "fail_on_defective_frames": hit, "fail_on_clean_frames": false,
            "fail_on_defective": hit / max(len(bad), 1), "fail_on_clean": false / max(len(good), 1)}


class Anchor:
    """YOLOE-26n ONNX graphs with K baked classes, one per size, built on first use by onnx_latency.py's
    exporter; ``forward_ms(sizes)`` times bare forward passes at those sizes with its ``timed_pair``."""

    def __init__(self, k: int, work: Path, runs: int = 30, threads: int | None = None):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import onnx_latency

        self.bench, self.k, self.work, self.runs, self.threads = onnx_latency, k, work, runs, threads
        self.sessions = {}

    def session(self, size: int):
        if size not in self.sessions:
            folder = self.work / f"yoloe{size}"
            folder.mkdir(exist_ok=True)
            self.sessions[size] = self.bench.ort_session(self.bench.export_yoloe(self.k, size, folder), self.threads)
        return self.sessions[size]

    def forward_ms(self, sizes: tuple[int, ...]) -> list[float]:
        """``runs`` timings (ms) of one forward pass at each size, after 3 untimed ones, summed over the
        sizes. Each size is timed in its own loop: alternating two onnxruntime sessions on 2 cores
        costs nearly twice their sum (each session's idle threads spin against the other's), a cost
        promptdet's one dynamic-shape session does not pay."""
        total = np.zeros(self.runs)
        for s in sizes:
            session, feed = self.session(s), {"images": np.random.default_rng(s).random((1, 3, s, s), dtype=np.float32)}
            total += self.bench.timed_pair([lambda: session.run(None, feed)], warmup=3, runs=self.runs)[0]
        return total.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", help="a dynamic export folder (default: export the bundled model)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "line.example.yaml"))
    ap.add_argument("--imgsz", type=_sizes, nargs="+", default=None,
                    help="inference sizes (default: the recipe's, 640 and 320); 640+768 runs both and merges")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--speed", type=float, default=None,
                    help="belt speed in px/s (default: the video's, 160 = 16 px per frame, a multiple of the strides)")
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="video seeds (several: figures also pooled)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--detector-file", default=None,
                    help="another detector graph of the export folder, e.g. detector_int8.onnx (promptdet export --int8)")
    ap.add_argument("--no-anchor", action="store_true", help="skip the YOLOE-26n anchor (vs YOLOE column)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from promptdet.data.synth.video import render_conveyor
    from promptdet.line.pipeline import Inspector, LineStats, run_line
    from promptdet.line.recipe import load_recipe
    from promptdet.line.run import recipe_predictor
    from promptdet.line.sinks import JsonlSink
    from promptdet.line.sources import OpenCvSource
    from promptdet.runtime.onnx import OnnxModel

    work = Path(tempfile.mkdtemp(prefix="line_bench_"))
    export = args.export
    if export is None:
        import promptdet
        from promptdet.export.onnx import export_model

        export = str(work / "export")
        print("exporting the bundled model (dynamic) ...", file=sys.stderr)
        export_model(promptdet.load(), export, dynamic=True, verify=False, log=lambda s: print(s, file=sys.stderr))
    videos = []
    for seed in args.seed:
        video = render_conveyor(work / f"line{seed}.mp4", seconds=args.seconds, seed=seed,
                                speed_px_per_s=args.speed)
        print(f"video seed {seed}: {video.num_frames} frames, {video.num_defective_frames} defective", file=sys.stderr)
        videos.append((seed, video))
    recipe = load_recipe(args.config)
    model = OnnxModel(export, providers="cpu", threads=args.threads, detector_file=args.detector_file)
    own = tuple(s or model.imgsz for s in recipe.model.sizes)
    sizes = args.imgsz or list(dict.fromkeys([own, (640,), (320,)]))
    anchor = None if args.no_anchor else Anchor(len(recipe.checks), work, threads=args.threads)
    if anchor is not None:
        print(f"building the YOLOE-26n anchor (K = {len(recipe.checks)}) ...", file=sys.stderr)
    rows = []
    for combo in sizes:
        size = "+".join(map(str, combo)) if len(combo) > 1 else combo[0]
        r = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, imgsz=list(combo)))
        predictor = recipe_predictor(model.predictor, r)  # the recipe's conf; sizes merged as inspect does
        inspector = Inspector(r, predictor)
        inspector.warm_up()  # as inspect does before its first part
        anchor_ms = anchor.forward_ms(combo) if anchor is not None else []
        first_row = len(rows)
        for seed, video in videos:
            out = work / f"r{size}_{seed}.jsonl"
            stats = LineStats()
            source = OpenCvSource(str(video.video))
            stats.source = source.stats
            run_line(source.frames(), inspector, [JsonlSink(out)], threading.Event(), stats)
            records = [json.loads(line) for line in out.read_text().splitlines()]
            infer = np.asarray(stats.latency["infer"])
            row = {"imgsz": size, "seed": seed, "fps": stats.fps(), "p50_ms": stats.percentiles("total")[0],
                   "p99_ms": stats.percentiles("total")[2], "infer_p50_ms": float(np.median(infer)),
                   "checks": len(r.checks), **frame_scores(records, video.gt)}
            rows.append(row)
            print(f"imgsz {size} seed {seed}: {row['fps']:.1f} fps", file=sys.stderr)
        if anchor is not None:  # timed before and after the videos: the load they saw, on both sides
            anchor_fps = 1e3 / float(np.median(anchor_ms + anchor.forward_ms(combo)))
            for row in rows[first_row:]:
                row.update(anchor_fps=anchor_fps, vs_yoloe=row["fps"] / anchor_fps)

    print(f"{'imgsz':>7} {'seed':>5} {'checks':>6} {'fps':>6} {'YOLOE fps':>9} {'vs YOLOE':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'infer p50':>9} {'FAIL|defective':>14} {'FAIL|clean':>10}")
    for row in rows:
        yoloe = (f"{row['anchor_fps']:>9.1f} {row['vs_yoloe']:>7.2f}x" if "anchor_fps" in row
                 else f"{'-':>9} {'-':>8}")
        print(f"{row['imgsz']!s:>7} {row['seed']:>5} {row['checks']:>6} {row['fps']:>6.1f} {yoloe} "
              f"{row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} {row['infer_p50_ms']:>9.1f} "
              f"{row['fail_on_defective']:>14.1%} {row['fail_on_clean']:>10.1%}")
    if len(videos) > 1:
        for size in dict.fromkeys(row["imgsz"] for row in rows):
            sel = [row for row in rows if row["imgsz"] == size]
            hit, bad = (sum(row[k] for row in sel) for k in ("fail_on_defective_frames", "defective_frames"))
            false, good = (sum(row[k] for row in sel) for k in ("fail_on_clean_frames", "clean_frames"))
            print(f"pooled over {len(sel)} videos at {size}: FAIL on {hit} of {bad} defective frames "
                  f"({hit / max(bad, 1):.1%}) and on {false} of {good} others ({false / max(good, 1):.1%})")
    print("targets: >= 25 fps at 320 with 3 checks; FAIL on >= 90% of defective frames and <= 5% of the others")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Inference latency of promptdet's ONNX export against ultralytics YOLOE-26n, built in the same run (issue #5).

What it measures, at batch 1 and a square --imgsz (640 by default):

* the anchor: ultralytics YOLOE-26n, ``YOLOE("yoloe-26n.yaml")`` (random weights; latency does not
  depend on them) given K random 512-d text embeddings through ``set_classes`` and exported to ONNX by
  ultralytics' own exporter, classes baked in (one graph per K; ultralytics' default ONNX export, raw
  [1, 4+K, 8400] output with NMS left to the host: its NMS-free top-300 variant, nms=False, costs the same);
* promptdet's ``detector.onnx`` (images + K prompt embeddings -> boxes, scores) for the same K;
* each graph on every provider asked for: ``cpu`` (onnxruntime CPU, the same session options for both
  graphs) and ``openvino`` (``openvino.Core().compile_model(onnx_path, "CPU")``, input shapes fixed to
  the ones timed);
* the text encoder: ``text_encoder.onnx`` per new prompt (distinct unseen prompts, each a fresh cache
  miss) and the embedding-cache hit, through ``promptdet.runtime.onnx.OnnxModel.encode``.

Figures are medians and 90th percentiles of --runs timed calls after --warmup untimed ones, the two
graphs' calls interleaved so that both see the same load; the ratio is promptdet's median over
YOLOE-26n's on the same provider and K. Targets: <= 1.15x at K=1, <= 1.3x at K=8.
Nothing is downloaded. Notes go to stderr, the table to stdout.

    python benchmarks/onnx_latency.py                          # exports the bundled model first
    python benchmarks/onnx_latency.py --export export/ --runs 200 --providers cpu,openvino --out lat.json
    pip install -e ".[bench]"                                  # OpenVINO; without it that provider is skipped
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no update checks, no downloads
warnings.filterwarnings("ignore")
TARGETS = {1: 1.15, 8: 1.3}  # promptdet / YOLOE-26n, issue #5
PROMPTS = ["find the bottles with a missing cap", "gear", "the scratched can left of the gear", "a red screw",
           "every label that is torn", "cap", "the dented tin on the conveyor", "missing bolt"]


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed_pair(fns: list, warmup: int, runs: int) -> list[list[float]]:
    """ms per call of each fn, calls interleaved (a b a b ...) so both graphs see the same machine load."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out = [[] for _ in fns]
    for _ in range(runs):
        for fn, ms in zip(fns, out):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1e3)
    return out


def p90(xs: list[float]) -> float:
    return float(np.percentile(xs, 90))


def export_yoloe(k: int, imgsz: int, out_dir: Path) -> Path:
    """YOLOE-26n from its yaml, K random text embeddings baked in by ultralytics' ONNX exporter."""
    import torch
    from ultralytics import YOLOE
    from ultralytics.utils import LOGGER

    for handler in LOGGER.handlers:  # ultralytics logs to stdout; keep stdout for the table
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    torch.manual_seed(k)
    model = YOLOE("yoloe-26n.yaml")
    width = model.model.model[-1].embed  # 512: the text width YOLOEDetect projects into
    pe = torch.nn.functional.normalize(torch.randn(1, k, width), dim=-1)
    model.set_classes([f"class{i}" for i in range(k)], pe)
    cwd = os.getcwd()
    os.chdir(out_dir)  # the exporter writes next to the yaml's name, in the working directory
    try:
        with contextlib.redirect_stdout(sys.stderr):
            f = model.export(format="onnx", imgsz=imgsz, batch=1, device="cpu", simplify=True)
    finally:
        os.chdir(cwd)
    path = out_dir / f"yoloe-26n-k{k}.onnx"
    os.replace(out_dir / Path(f).name, path)
    return path


def ort_session(path: Path, threads: int | None, profile: bool = False):
    """The same options OnnxModel uses: full graph optimisation, intra-op threads if given."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.enable_profiling = profile
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ov_runner(path: Path, feed: dict, threads: int | None):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({name: list(arr.shape) for name, arr in feed.items()})
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda: request.infer(feed)


def profile_ops(path: Path, feed: dict, threads: int | None, runs: int) -> dict[str, float]:
    """onnxruntime's per-node profile of one graph: ms per run by op type, the first (warm-up) run left out."""
    sess = ort_session(path, threads, profile=True)
    for _ in range(runs + 1):
        sess.run(None, feed)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    first = min((e for e in events if e["name"] == "model_run"), key=lambda e: e["ts"])
    by_op: dict[str, float] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time") and ev["ts"] > first["ts"] + first["dur"]:
            op = ev.get("args", {}).get("op_name", "?")  # QuickGelu is onnxruntime's fused x * sigmoid(x) (SiLU)
            by_op[op] = by_op.get(op, 0.0) + ev["dur"] / 1e3 / runs
    return by_op


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's choice)")
    ap.add_argument("--export", default=None, help="reuse this promptdet export folder instead of exporting")
    ap.add_argument("--weights", default=None, help="promptdet weights to export (default: the bundled model)")
    ap.add_argument("--providers", default="cpu,openvino")
    ap.add_argument("--ks", default="1,8", help="prompt counts K to time")
    ap.add_argument("--prompts", type=int, default=30, help="new prompts timed through the text encoder")
    ap.add_argument("--profile", action="store_true", help="also print both graphs' onnxruntime CPU time by op type")
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="onnx_latency_") as tmp:
        bench(args, Path(tmp))


def bench(args: argparse.Namespace, work: Path) -> None:
    ks = [int(k) for k in args.ks.split(",")]
    providers = [p.strip().lower() for p in args.providers.split(",") if p.strip()]

    if args.export:
        export_dir = Path(args.export)
    else:
        import promptdet
        from promptdet.export.onnx import export_model

        export_dir = work / "promptdet"
        note(f"exporting promptdet ({args.weights or 'bundled model'}) at imgsz {args.imgsz} to {export_dir} ...")
        export_model(promptdet.load(args.weights), export_dir, imgsz=args.imgsz, verify=False, log=note)
    from promptdet.runtime.onnx import OnnxModel

    pd = OnnxModel(export_dir, providers="cpu", threads=args.threads)
    if pd.imgsz != args.imgsz and not pd.meta.get("dynamic"):
        sys.exit(f"{export_dir} was exported at imgsz {pd.imgsz}, not {args.imgsz}")
    note(f"building YOLOE-26n anchors (K = {ks}) in {work} ...")
    yoloe = {k: export_yoloe(k, args.imgsz, work) for k in ks}

    image = np.random.default_rng(0).random((1, 3, args.imgsz, args.imgsz), dtype=np.float32)
    feeds = {}
    for k in ks:
        pooled, tokens, mask = pd.encode([PROMPTS[i % len(PROMPTS)] + (f" {i}" if i >= len(PROMPTS) else "")
                                          for i in range(k)])
        feeds[("promptdet", k)] = {"images": image, "pooled": pooled, "tokens": tokens, "token_mask": mask}
        feeds[("YOLOE-26n", k)] = {"images": image}
    paths = {("promptdet", k): export_dir / pd.meta["files"].get("detector", "detector.onnx") for k in ks}
    paths.update({("YOLOE-26n", k): yoloe[k] for k in ks})

    rows = []
    for prov in providers:
        if prov == "openvino" and importlib.util.find_spec("openvino") is None:
            note("openvino is not installed (pip install openvino, or the 'bench' extra): skipping it")
            continue
        if prov not in ("cpu", "openvino"):
            note(f"unknown provider {prov!r} (cpu, openvino): skipping it")
            continue
        for k in ks:
            fns = []
            for graph in ("YOLOE-26n", "promptdet"):
                feed, path = feeds[(graph, k)], paths[(graph, k)]
                if prov == "cpu":
                    fns.append(lambda s=ort_session(path, args.threads), f=feed: s.run(None, f))
                else:
                    fns.append(ov_runner(path, feed, args.threads))
            note(f"timing YOLOE-26n and promptdet, K={k}, on {prov} ...")
            ref_ms, pd_ms = timed_pair(fns, args.warmup, args.runs)
            ref, med = statistics.median(ref_ms), statistics.median(pd_ms)
            target = TARGETS.get(k)
            rows.append({"provider": prov, "graph": "YOLOE-26n", "K": k, "median_ms": ref, "p90_ms": p90(ref_ms)})
            rows.append({"provider": prov, "graph": "promptdet", "K": k, "median_ms": med, "p90_ms": p90(pd_ms),
                         "ratio": med / ref, "target": target, "pass": None if target is None else med / ref <= target})

    note(f"timing text_encoder.onnx on {args.prompts} new prompts and the cache hit ...")
    pd.encode(["warm the text encoder up"])  # loads the tokenizer and the session once
    fresh = [f"{PROMPTS[i % len(PROMPTS)]} number {i} of the batch" for i in range(args.prompts)]
    new_ms, hit_ms = [], []
    for p in fresh:
        t0 = time.perf_counter()
        pd.encode([p])
        new_ms.append((time.perf_counter() - t0) * 1e3)
    for _ in range(max(args.runs, 10)):
        t0 = time.perf_counter()
        pd.encode([fresh[0]])
        hit_ms.append((time.perf_counter() - t0) * 1e3)
    text = {"new_prompt_median_ms": statistics.median(new_ms), "new_prompt_p90_ms": p90(new_ms),
            "cache_hit_median_ms": statistics.median(hit_ms), "cache_hit_p90_ms": p90(hit_ms)}

    for k in ks if args.profile else []:
        prof = {g: profile_ops(paths[(g, k)], feeds[(g, k)], args.threads, max(5, args.runs // 4))
                for g in ("YOLOE-26n", "promptdet")}
        a, b = prof["YOLOE-26n"], prof["promptdet"]
        note(f"onnxruntime CPU profile, K={k}, ms per run by op type (kernel totals: YOLOE-26n "
             f"{sum(a.values()):.1f}, promptdet {sum(b.values()):.1f}):\n  {'op':<22}{'YOLOE':>8}{'promptdet':>10}")
        for op in sorted(set(a) | set(b), key=lambda o: -b.get(o, 0.0))[:14]:
            note(f"  {op:<22}{a.get(op, 0.0):8.2f}{b.get(op, 0.0):10.2f}")

    print(f"\nbatch 1, imgsz {args.imgsz}, threads {args.threads or 'default'}, "
          f"{args.runs} runs after {args.warmup} warm-up, ms")
    print(f"{'provider':<9} {'graph':<10} {'K':>2} {'median':>8} {'p90':>8} {'ratio':>6} {'target':>7}  result")
    for r in rows:
        extra = "" if r["graph"] != "promptdet" else (
            f" {r['ratio']:5.2f}x {'<=' + format(r['target'], '.2f') + 'x' if r['target'] else '-':>7}  "
            f"{'-' if r['pass'] is None else 'PASS' if r['pass'] else 'FAIL'}")
        print(f"{r['provider']:<9} {r['graph']:<10} {r['K']:>2} {r['median_ms']:8.2f} {r['p90_ms']:8.2f}{extra}")
    print(f"text_encoder.onnx: new prompt {text['new_prompt_median_ms']:.2f} ms median "
          f"(p90 {text['new_prompt_p90_ms']:.2f}, {len(new_ms)} prompts); "
          f"cache hit {text['cache_hit_median_ms'] * 1e3:.1f} us median")
    if args.out:
        source = args.export or f"exported in this run from {args.weights or 'the bundled model'}"
        Path(args.out).write_text(json.dumps({"imgsz": args.imgsz, "threads": args.threads, "runs": args.runs,
                                              "warmup": args.warmup, "promptdet_export": source,
                                              "detector": rows, "text_encoder": text}, indent=2) + "\n")
        note(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Static int8 quantization of ``detector.onnx`` -> ``detector_int8.onnx`` (ONNX Runtime, QDQ format).

Only the image path is quantized: the convolutions of the backbone, the neck and the head's box and
embedding branches (their last 1x1 convolution excluded). Everything after them stays float: the
box decoding (distances to xyxy pixels), the cosine similarity with the prompt vectors, the
text projection, the top-k peak selection and gathers, and the candidate transformer. That is the
usual YOLO int8 trap (onnxruntime issues #10787 and #14233: YOLOv5 at 0 mAP after quantize_static):
an 8-bit scale fitted to box pixels (0-640) wipes out scores (0-1) and small offsets; here no tensor
that carries pixels, similarities or scores is ever quantized, and the graph's outputs are plain
float. Quantizing the whole graph instead took this model's AP50 from 0.76 to 0.03.

Calibration runs the float graph on real letterboxed scenes with their own instructions as
prompts (or a few generic prompts for a plain image folder), so the activation ranges are the
ones seen in use. int8 is an option, not a default: measure it (``benchmarks/int8_report.py``)
before assuming it is faster on a given CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from promptdet.errors import PromptdetError, UsageError

INT8_FILE = "detector_int8.onnx"
DEFAULT_MAX_IMAGES = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Prompts for a plain image folder: short and generic, so the (float) prompt path sees ordinary input.
GENERIC_PROMPTS = ["object", "the largest part", "a bottle", "a damaged part"]
MAX_PROMPTS_PER_IMAGE = 4
# The image path: only nodes whose name starts with one of these may be quantized ...
QUANTIZED_PREFIXES = ("/detector/backbone/", "/detector/neck/", "/detector/head/box.", "/detector/head/embed.")
# ... and only these operator types: the convolutions and what lies between them (SiLU's Sigmoid
# and Mul, residual Add, Concat, Split, Slice, MaxPool, Resize), so activations stay 8-bit from one
# conv to the next instead of bouncing through float. The area attention's MatMul and Softmax
# (backbone layer 10, neck layer 11) stay float: measured, int8 there was no faster.
QUANTIZED_OPS = ("Conv", "Sigmoid", "Mul", "Add", "Concat", "Split", "Slice", "MaxPool", "AveragePool", "Resize",
                 "Reshape", "Transpose")
# Named for the record: what stays float, whatever the op types asked for.
FLOAT_PARTS = ("/detector/head/box.*/box.*.2/ (box distances)",
                  "/detector/head/embed.*/embed.*.2/ (region embeddings)",
                  "MatMul and Softmax of the backbone and neck attention",
                  "/detector/head/ (anchors, box decoding)", "/detector/text_proj/", "/detector/similarity/",
                  "/detector/reasoner/ (top-k, gathers, transformer, scores)",
                  "/detector/verifier/ (crops, crop CNN and its scores, when the model has one)")


# ---------------------------------------------------------------- calibration data
def _image_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _spread(items: list, n: int) -> list:
    """``n`` items spread evenly over the list (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


def calibration_set(calib: str | Path, max_images: int = DEFAULT_MAX_IMAGES,
                    split: str = "val") -> list[tuple[Path, list[str]]]:
    """``calib`` -> up to ``max_images`` (image path, prompts) pairs, spread over the data.

    calib: a dataset YAML (its ``split`` sources), an instruction JSONL or a folder holding
    instructions.jsonl / scenes.jsonl (each image with its own instructions), or a folder of
    images (with ``GENERIC_PROMPTS``). Raises ``UsageError`` when it is none of those.
    """
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise UsageError(f"calibration needs at least one image; max_images={max_images!r}")
    if calib is None or str(calib).strip() == "":
        raise UsageError("--calib is empty: give a dataset YAML, an instruction JSONL or a folder of images")
    path = Path(calib)
    if not path.exists():
        raise UsageError(f"--calib {calib}: no such file or folder (expected a dataset YAML, an instruction "
                         "JSONL or a folder of images)")
    is_dataset = path.suffix in (".yaml", ".yml", ".jsonl") or (
        path.is_dir() and ((path / "instructions.jsonl").is_file() or (path / "scenes.jsonl").is_file()))
    if not is_dataset:
        if not path.is_dir():
            raise UsageError(f"--calib {calib}: not a dataset YAML, an instruction JSONL or a folder of images")
        images = _image_folder(path)
        if not images:
            raise UsageError(f"--calib {calib}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [(p, list(GENERIC_PROMPTS)) for p in _spread(images, max_images)]

    from promptdet.config import ConfigError
    from promptdet.data.sources import load_source, resolve_dataset

    try:
        cfg = resolve_dataset(path)
        sources = getattr(cfg, split, None) or cfg.val or cfg.train
        if not sources:
            raise ConfigError(f"{calib}: the dataset lists no {split} sources")
        per_image: dict[Path, list[str]] = defaultdict(list)
        for spec in sources:
            src = load_source(cfg, spec, split="test" if split == "test" else "train")
            for pair in src.pairs:
                per_image[Path(src.images_root) / pair.image].append(pair.instruction)
    except (PromptdetError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--calib {calib}: unusable calibration data ({first})") from None
    if not per_image:
        raise UsageError(f"--calib {calib}: no instructions found to calibrate with")
    chosen = _spread(sorted(per_image), max_images)
    missing = [p for p in chosen if not p.is_file()]
    if missing:
        raise UsageError(f"--calib {calib}: {len(missing)} of {len(chosen)} calibration images are missing, "
                         f"e.g. {missing[0]}")
    return [(p, list(dict.fromkeys(per_image[p]))[:MAX_PROMPTS_PER_IMAGE]) for p in chosen]


class SceneReader:
    """An onnxruntime ``CalibrationDataReader``: letterboxed scenes and their prompts' embeddings.

    Feeds are made lazily, one image at a time, so memory stays flat; ``progress`` shows a tqdm
    bar on stderr while the calibrator runs the float graph.
    """

    def __init__(self, items: list[tuple[Path, list[str]]], imgsz: int, encode: Callable, progress: bool = True):
        self.items, self.imgsz, self.encode, self.progress = items, imgsz, encode, progress
        self.used = 0
        self._range = (0, len(items))
        self._it: Iterator | None = None
        self._bar = None

    def __len__(self) -> int:
        return len(self.items)

    def _feeds(self) -> Iterator[dict]:
        import cv2

        from promptdet.runtime.preprocess import to_input

        for path, prompts in self.items[self._range[0]:self._range[1]]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise PromptdetError(f"cannot read calibration image {path}")
            x, _ = to_input(image, self.imgsz)
            pooled, tokens, mask = self.encode(prompts)
            self.used += 1
            if self._bar is not None:
                self._bar.update(1)
            yield {"images": x, "pooled": pooled, "tokens": tokens, "token_mask": mask}

    def get_next(self) -> dict | None:
        if self._bar is None and self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.items), desc="int8 calibration", unit="img", leave=False)
        if self._it is None:
            self._it = self._feeds()
        feed = next(self._it, None)
        if feed is None and self._bar is not None and self.used >= len(self.items):
            self._bar.close()
        return feed

    def set_range(self, start_index: int, end_index: int) -> None:
        """The calibrator's strided mode: a few images at a time, their ranges merged, so the
        intermediate tensors of only those images are held in memory."""
        self._range = (start_index, end_index)
        self._it = None

    def rewind(self) -> None:
        self._range = (0, len(self.items))
        self._it = None
        self.used = 0


def _stride(n: int, most: int = 8) -> int:
    """The largest divisor of ``n`` up to ``most`` (the strided calibrator needs an exact division)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def make_reader(items, imgsz, encode, progress=True):
    """A ``SceneReader`` that is also an ``onnxruntime.quantization.CalibrationDataReader``."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(SceneReader, CalibrationDataReader):
        pass

    return _Reader(items, imgsz, encode, progress)


# ---------------------------------------------------------------- which nodes
def _is_float_tail(name: str) -> bool:
    """The head's last 1x1 convolutions: box distances (DFL logits when reg_max > 1) and region
    embeddings, read by the box decoding and the similarity."""
    parts = name.split("/")
    # /detector/head/box.0/box.0.2/Conv, /detector/head/embed.1/embed.1.2/Conv
    return len(parts) > 4 and parts[2] == "head" and parts[4] == f"{parts[3]}.2"


def unshare_initializers(model, nodes: list[str]) -> int:
    """Give the ``nodes`` private copies of constants they share with other nodes; returns how many.

    The exporter's constant folding merges equal constants, so a conv bias may be the very tensor a
    LayerNorm of the reasoner reads. Quantizing the conv would then put a DequantizeLinear in front
    of the float LayerNorm too; with a copy, the float part keeps its exact constants.
    """
    from onnx import numpy_helper

    wanted = set(nodes)
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users[name] = users.get(name, 0) + 1
    copies = 0
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            if name in inits and users[name] > 1:
                new = f"{name}__{node.name.strip('/').replace('/', '.')}"
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), new))
                node.input[i] = new
                users[name] -= 1
                copies += 1
    return copies


def select_nodes(model, op_types: tuple[str, ...] = QUANTIZED_OPS) -> tuple[list[str], list[str]]:
    """(nodes to quantize, nodes kept float) of an ONNX ``model`` by name prefix and op type."""
    quantize, keep = [], []
    for node in model.graph.node:
        ok = (node.name.startswith(QUANTIZED_PREFIXES) and not _is_float_tail(node.name)
              and (not op_types or node.op_type in op_types))
        (quantize if ok else keep).append(node.name)
    return quantize, keep


# ---------------------------------------------------------------- timing
def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_graphs(paths: dict[str, str | Path], feed: dict, runs: int = 20, warmup: int = 3,
                threads: int | None = 1) -> dict[str, float]:
    """Median ms per graph on the CPU provider. Runs are interleaved (a, b, a, b, ...), so load from
    other processes falls on every graph alike instead of on whichever ran during a busy spell."""
    sessions = {name: _session(Path(path), threads) for name, path in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feed)
    for _ in range(runs):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def compare_latency(fp32_path: str | Path, int8_path: str | Path, feed: dict, runs: int = 20, warmup: int = 3,
                    threads: int | None = 1) -> dict:
    """Median ms of the float and the int8 graph on this CPU, and the speed-up (> 1: int8 is faster)."""
    ms = time_graphs({"fp32": fp32_path, "int8": int8_path}, feed, runs, warmup, threads)
    return {"fp32_ms": round(ms["fp32"], 2), "int8_ms": round(ms["int8"], 2),
            "speedup": round(ms["fp32"] / ms["int8"], 3), "runs": runs, "threads": threads or 0,
            "provider": "CPUExecutionProvider", "cpu": _cpu_name(), "cores": os.cpu_count()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


# ---------------------------------------------------------------- the entry point
def quantize_detector(out_dir: str | Path, calib: str | Path, log: Callable[[str], None] = print,
                      max_images: int = DEFAULT_MAX_IMAGES, split: str = "val", per_channel: bool = True,
                      op_types: tuple[str, ...] = QUANTIZED_OPS, method: str = "minmax", timing_runs: int = 20,
                      threads: int | None = 1, reduce_range: bool = False, progress: bool = True,
                      output: str = INT8_FILE) -> dict:
    """Write ``out_dir/detector_int8.onnx`` from ``out_dir/detector.onnx``; returns its metadata record.

    The record (JSON-able) holds the file name and sha256, the calibration data, what was quantized
    and what kept float, and the median latency of both graphs measured here on the CPU provider.
    The caller adds ``record["sha256"]`` to promptdet.json's ``sha256[record["file"]]``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from promptdet.export.onnx import file_sha256
    from promptdet.runtime.onnx import OnnxModel

    out = Path(out_dir)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise UsageError(f"calibration method must be one of {', '.join(methods)}, got {method!r}")
    items = calibration_set(calib, max_images, split)  # bad paths fail here, before any heavy work
    src = out / "detector.onnx"
    if not src.is_file():
        raise PromptdetError(f"{out}: detector.onnx is missing; export first")
    runtime = OnnxModel(out, providers="cpu")
    if not runtime.takes_prompts:
        raise PromptdetError(f"{src}: takes no prompt inputs; only the promptable detector is quantized")
    imgsz = runtime.imgsz

    model = onnx.load(str(src))
    to_quantize, kept = select_nodes(model, tuple(op_types))
    if not to_quantize:
        raise PromptdetError(f"{src}: no backbone or neck nodes found to quantize (node names changed?)")
    unshare_initializers(model, to_quantize)
    log(f"quantizing {src.name} -> {output}: {len(to_quantize)} backbone/neck/head nodes to int8, {len(kept)} kept "
        f"float; calibrating on {len(items)} image(s) from {calib} ...")
    reader = make_reader(items, imgsz, runtime.encode, progress)
    dst = out / output
    t0 = time.perf_counter()
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "minmax":  # a few images per pass: every activation of every image at once would take GBs
        extra["CalibStridedMinMax"] = _stride(len(items))
    # quantize_static keeps its augmented copy of the model in a temporary folder of its own.
    with _quiet_root_logger():
        quantize_static(
            model, str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=to_quantize,
            op_types_to_quantize=list(op_types) or None, calibrate_method=methods[method],
            extra_options=extra)
    if reader.used == 0:
        raise PromptdetError(f"--calib {calib}: no calibration image could be used")
    calib_s = time.perf_counter() - t0
    qmodel = onnx.load(str(dst))
    n_q = sum(n.op_type == "QuantizeLinear" for n in qmodel.graph.node)
    log(f"wrote {dst} in {calib_s:.1f} s ({n_q} QuantizeLinear nodes); timing fp32 vs int8 on the CPU ...")

    x, _ = _first_input(items[0][0], imgsz)
    feed = {"images": x}
    feed["pooled"], feed["tokens"], feed["token_mask"] = runtime.encode(items[0][1])
    latency = compare_latency(src, dst, feed, runs=timing_runs, threads=threads)
    log(f"median latency on this CPU ({latency['threads'] or 'default'} thread(s)): fp32 {latency['fp32_ms']:.1f} ms, "
        f"int8 {latency['int8_ms']:.1f} ms -> int8 is {latency['speedup']:.2f}x "
        + ("faster" if latency["speedup"] > 1 else "SLOWER here: keep using detector.onnx on this CPU"))
    return {
        "file": dst.name,
        "sha256": file_sha256(dst),
        "source": src.name,
        "format": "QDQ",
        "activations": "uint8 asymmetric",
        "weights": "int8 symmetric, " + ("per channel" if per_channel else "per tensor")
                   + (", 7-bit (reduce_range)" if reduce_range else ""),
        "calibration": {"method": method, "images": reader.used, "data": str(calib),
                        "split": split if Path(str(calib)).suffix in (".yaml", ".yml") else None,
                        "prompts": "the images' own instructions" if items[0][1] != GENERIC_PROMPTS else "generic",
                        "seconds": round(calib_s, 1)},
        "quantized": {"prefixes": list(QUANTIZED_PREFIXES), "op_types": list(op_types),
                      "nodes": len(to_quantize), "quantize_linear": n_q},
        "float": {"parts": list(FLOAT_PARTS), "nodes": len(kept)},
        "latency": latency,
        "onnxruntime": _ort_version(),
    }


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantizer logs advice ("consider pre-processing") on the root logger; the
    graph is already simplified by onnxslim, so keep that line off the user's terminal."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return "pre-processing" not in record.getMessage()

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _first_input(path: Path, imgsz: int):
    import cv2

    from promptdet.runtime.preprocess import to_input

    return to_input(cv2.imread(str(path), cv2.IMREAD_COLOR), imgsz)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__

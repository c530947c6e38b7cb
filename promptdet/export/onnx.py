"""``promptdet export``: a promptdet checkpoint -> an export folder that ONNX Runtime runs without torch.

The folder holds two graphs, so a new prompt never needs a new export:

* ``text_encoder.onnx``: ``input_ids``, ``attention_mask`` [K, T] int64 -> ``pooled`` [K, D] (unit
  norm) and ``tokens`` [K, T, Dt] (word features, zero on padding);
* ``detector.onnx``: ``images`` [B, 3, S, S] float32 RGB 0-1 plus ``pooled``, ``tokens`` and
  ``token_mask`` [K, T] bool -> ``boxes`` [B, K, M, 4] xyxy input pixels and ``scores`` [B, K, M];
  K (prompts) and T (words) are always dynamic, B and S with ``dynamic=True``;
* ``tokenizer.json`` (Hugging Face ``tokenizers``) and ``promptdet.json`` (metadata);
* with ``bake_prompts``, ``detector_baked.onnx``: ``images`` -> ``boxes``, ``scores`` for fixed prompts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from promptdet import __version__
from promptdet.errors import PromptdetError, UsageError
from promptdet.export.graphs import BakedDetectorGraph, DetectorGraph, TextEncoderGraph
from promptdet.model.head import STRIDES
from promptdet.runtime.predictor import FAMILIARITY_MIN
from promptdet.runtime.preprocess import PAD_VALUE
from promptdet.text.prompts import normalize_prompts

EXPORT_FORMAT = "promptdet-export/1"
DEFAULT_OPSET = 17
DETECTOR_INPUTS = ["images", "pooled", "tokens", "token_mask"]
DETECTOR_OUTPUTS = ["boxes", "scores", "familiarity", "prompt_familiarity"]
TEXT_INPUTS = ["input_ids", "attention_mask"]
TEXT_OUTPUTS = ["pooled", "tokens"]
# Sample prompts for tracing: several lengths, so nothing about the prompt count or length is baked in.
_TRACE_PROMPTS = ["find the bottles with a missing cap", "gear", "the scratched can left of the gear"]


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextlib.contextmanager
def _export_mode():
    """No MHA fast path (it has no ONNX form) and no tracer chatter about constants we chose."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarning, deprecation notes of the TorchScript exporter
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _to_onnx(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
             dynamic_axes: dict, opset: int) -> None:
    with _export_mode():
        # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing for these graphs.
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic_axes, do_constant_folding=True)


def _finish(path: Path, simplify: bool) -> None:
    """onnxslim (constant folding, fusions), then the ONNX checker."""
    import onnx

    model = onnx.load(str(path))
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tokenizer_json(encoder, out: Path) -> None:
    """The encoder's fast tokenizer as one tokenizer.json, with no padding or truncation set:
    the runtime sets truncation to max_tokens itself, as the torch path does."""
    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PromptdetError(f"the text encoder {encoder.name} has no fast tokenizer; the ONNX runtime needs one")
    backend = backend.__class__.from_str(backend.to_str())  # a copy; the live tokenizer keeps its settings
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(out))


def export_model(model, out_dir: str | Path, imgsz: int | None = None, dynamic: bool = False,
                 opset: int = DEFAULT_OPSET, half: bool = False, int8: bool = False, calib: str | None = None,
                 bake_prompts: str | list[str] | None = None, simplify: bool = True, verify: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Write the export folder for ``model`` (a ``PromptDet``); returns the metadata written to promptdet.json.

    ``verify`` runs the parity check (ONNX Runtime against torch) and raises if it fails.
    """
    imgsz = model.cfg.imgsz if imgsz is None else imgsz
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or imgsz < 64 or imgsz % 32:
        raise UsageError(f"--imgsz must be a multiple of 32, at least 64; got {imgsz!r}")
    if not isinstance(opset, int) or not 14 <= opset <= 21:
        raise UsageError(f"--opset must be from 14 to 21, got {opset!r}")
    if int8 and not calib:
        raise UsageError("--int8 needs --calib DATA (images or a dataset to calibrate on)")
    if half:
        # Left out for now: onnxslim's and onnxconverter-common's fp16 passes both break this graph's
        # type propagation (Resize, MaxPool), and onnxruntime's CPU provider has few fp16 kernels.
        raise UsageError("--half is not supported yet (fp16 conversion breaks the neck's Resize/MaxPool typing); "
                         "export in fp32, or use --int8 for a smaller detector")
    baked = normalize_prompts(bake_prompts) if bake_prompts else []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detector = model.detector.float().eval().cpu()
    encoder = model.encoder
    t_start = time.perf_counter()

    # ---- text encoder ----
    ids, mask = encoder.tokenize(_TRACE_PROMPTS)
    text_path = out / "text_encoder.onnx"
    log(f"exporting {text_path.name} ({encoder.name}) ...")
    _to_onnx(TextEncoderGraph(encoder).float().eval(), (ids, mask), text_path, TEXT_INPUTS, TEXT_OUTPUTS,
             {"input_ids": {0: "prompts", 1: "words"}, "attention_mask": {0: "prompts", 1: "words"},
              "pooled": {0: "prompts"}, "tokens": {0: "prompts", 1: "words"}}, opset)
    _finish(text_path, simplify)
    _tokenizer_json(encoder, out / "tokenizer.json")

    # ---- detector ----
    enc = encoder.encode(_TRACE_PROMPTS)
    images = torch.rand(1, 3, imgsz, imgsz)
    det_path = out / "detector.onnx"
    log(f"exporting {det_path.name} (imgsz {imgsz}, {'dynamic batch and size' if dynamic else 'fixed size'}) ...")
    axes = {"pooled": {0: "prompts"}, "tokens": {0: "prompts", 1: "words"}, "token_mask": {0: "prompts", 1: "words"},
            "boxes": {1: "prompts"}, "scores": {1: "prompts"}, "prompt_familiarity": {0: "prompts"}}
    if dynamic:
        axes["images"] = {0: "batch", 2: "height", 3: "width"}
        axes["boxes"][0] = axes["scores"][0] = "batch"
        axes["familiarity"] = {0: "batch"}
    _to_onnx(DetectorGraph(detector), (images, enc.pooled, enc.token_feats, enc.token_mask), det_path,
             DETECTOR_INPUTS, DETECTOR_OUTPUTS, axes, opset)
    _finish(det_path, simplify)

    files = {"text_encoder": text_path.name, "detector": det_path.name, "tokenizer": "tokenizer.json"}
    if baked:
        baked_enc = encoder.encode(baked)
        baked_path = out / "detector_baked.onnx"
        log(f"exporting {baked_path.name} with {len(baked)} fixed prompt(s) ...")
        graph = BakedDetectorGraph(detector, baked_enc.pooled, baked_enc.token_feats, baked_enc.token_mask)
        _to_onnx(graph, (images,), baked_path, ["images"], DETECTOR_OUTPUTS,
                 {"images": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch"}, "scores": {0: "batch"},
                  "familiarity": {0: "batch"}}
                 if dynamic else {}, opset)
        _finish(baked_path, simplify)
        files["detector_baked"] = baked_path.name

    meta = {
        "format": EXPORT_FORMAT,
        "promptdet_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_weights": str(getattr(model, "source", "") or ""),
        "weights_sha256": _weights_hash(model),
        "model": {"scale": model.cfg.scale, "embed_dim": model.cfg.embed_dim,
                  "max_candidates": model.cfg.max_candidates, "trained_imgsz": model.cfg.imgsz},
        "imgsz": imgsz,
        "dynamic": bool(dynamic),
        "opset": opset,
        "precision": "fp32",
        "strides": list(STRIDES),
        "text_encoder": {"name": encoder.name, "identity": encoder.identity,
                         "onnx_sha256": file_sha256(text_path), "max_tokens": encoder.max_tokens,
                         "dim": encoder.dim, "token_dim": encoder.token_dim,
                         "pooling": "clip_projection" if encoder.is_clip else "mean"},
        "thresholds": {"conf": 0.25, "iou": 0.6, "max_det": 300},
        # Below these, an image is unfamiliar (all its boxes withheld) and a prompt unknown (its
        # boxes withheld); both scores come out of detector.onnx, calibrated to cross 0.5 there.
        "abstain": {"familiarity_min": FAMILIARITY_MIN, "prompt_familiarity_min": FAMILIARITY_MIN,
                    "calibrated": bool(float(detector.familiarity.calibrated) > 0)},
        "preprocess": {"resize": "letterbox", "keep_aspect": True, "centre": True, "pad_value": PAD_VALUE,
                       "color": "RGB", "scale": 1 / 255, "layout": "NCHW", "dtype": "float32"},
        "inputs": {"images": ["batch" if dynamic else 1, 3, "height" if dynamic else imgsz,
                              "width" if dynamic else imgsz],
                   "pooled": ["prompts", encoder.dim], "tokens": ["prompts", "words", encoder.token_dim],
                   "token_mask": ["prompts", "words"]},
        "outputs": {"boxes": ["batch", "prompts", model.cfg.max_candidates, 4],
                    "scores": ["batch", "prompts", model.cfg.max_candidates],
                    "familiarity": ["batch"], "prompt_familiarity": ["prompts"]},
        "baked_prompts": baked,
        "files": files,
        # The runtime refuses a file whose hash differs (a graph or tokenizer swapped in or edited), and an
        # export without this table. The text encoder's hash is text_encoder.onnx_sha256.
        "sha256": {name: file_sha256(out / name) for key, name in files.items() if key != "text_encoder"},
    }
    _write_meta(out, meta)
    log(f"wrote {out} in {time.perf_counter() - t_start:.1f} s")

    if int8:
        from promptdet.export.quantize import quantize_detector

        meta["int8"] = quantize_detector(out, calib, log=log)
        meta["files"]["detector_int8"] = meta["int8"]["file"]
        meta["sha256"][meta["int8"]["file"]] = meta["int8"]["sha256"]
        _write_meta(out, meta)
    if verify:
        from promptdet.export.verify import check_parity

        report = check_parity(model, out, log=log)
        if baked:
            log("baked graph:")
            report["baked"] = check_parity(model, out, detector_file=files["detector_baked"], log=log)
            report["passed"] = report["passed"] and report["baked"]["passed"]
        meta["parity"] = report
        _write_meta(out, meta)
        if not report["passed"]:
            raise PromptdetError(f"parity check failed (see above); the files in {out} may be wrong")
    return meta


def _write_meta(out: Path, meta: dict) -> None:
    (out / "promptdet.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _weights_hash(model) -> str:
    """sha256 of the checkpoint file when there is one, else of the detector's tensors in order."""
    source = Path(str(getattr(model, "source", "") or ""))
    if source.is_file():
        return file_sha256(source)
    digest = hashlib.sha256()
    for name, tensor in model.detector.state_dict().items():
        digest.update(name.encode() + b"\0")
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


"""Run an export folder with ONNX Runtime: no torch, no ultralytics, no transformers.

Needs onnxruntime, numpy, OpenCV and tokenizers. ``promptdet.load("export/dir")`` returns an
``OnnxModel``; ``promptdet detect --backend onnx --weights export/dir`` uses the same class.
Any prompt works: it goes through ``text_encoder.onnx`` once and its embedding is cached in
memory (and on disk with ``cache_dir``), keyed by the encoder's identity and the text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from promptdet.errors import PromptdetError, UsageError
from promptdet.runtime.integrity import check_export_meta
from promptdet.runtime.predictor import BasePredictor
from promptdet.text.cache import EmbeddingCache
from promptdet.text.prompts import normalize_prompts, shorten

log = logging.getLogger("promptdet")

EXPORT_FORMAT = "promptdet-export/1"  # the major version this runtime reads
# Fastest first. A provider the user did not ask for is only used when onnxruntime has it.
PROVIDER_PRIORITY = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                     "CPUExecutionProvider")
_PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                     "cuda": "CUDAExecutionProvider", "gpu": "CUDAExecutionProvider",
                     "openvino": "OpenVINOExecutionProvider", "cpu": "CPUExecutionProvider"}
_GRAPH_OPT = ("disable", "basic", "extended", "all")


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise PromptdetError("the ONNX backend needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def resolve_providers(requested: str | list[str] | None, available: list[str]) -> list[str]:
    """Requested providers (names or aliases like 'cuda'; None = all available by priority) -> the ones to use.

    A requested provider that onnxruntime lacks is dropped with a warning; CPU always closes the list.
    """
    if requested is None:
        chosen = [p for p in PROVIDER_PRIORITY if p in available]
    else:
        names = [requested] if isinstance(requested, str) else list(requested)
        chosen = []
        for name in names:
            full = _PROVIDER_ALIASES.get(str(name).strip().lower(), str(name).strip())
            if full in available:
                chosen.append(full)
            else:
                warnings.warn(f"onnxruntime provider {name!r} is not available here (have: {', '.join(available)}); "
                              "falling back", stacklevel=3)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return list(dict.fromkeys(chosen))


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class OnnxModel:
    """An export folder, ready to detect. Same ``detect`` as the torch ``PromptDet``.

    providers: names or aliases ('tensorrt', 'cuda', 'openvino', 'cpu'), in priority order; None
    takes every available one in that order. threads: intra-op threads (None = onnxruntime's
    default). graph_optimization: disable, basic, extended or all. cache_dir: also keep prompt
    embeddings on disk there. detector_file: another detector graph of the folder (e.g. the int8 one).
    """

    def __init__(self, export_dir: str | Path, providers: str | list[str] | None = None, threads: int | None = None,
                 graph_optimization: str = "all", cache_dir: str | Path | None = None,
                 detector_file: str | None = None, cache_size: int = 4096):
        self.dir = Path(export_dir)
        meta_path = self.dir / "promptdet.json"
        if not meta_path.is_file():
            raise PromptdetError(f"{self.dir}: not a promptdet export folder (no promptdet.json); "
                                 "make one with: promptdet export --weights W --out DIR")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            fmt = self.meta["format"]
            files = self.meta["files"]
            self.imgsz = int(self.meta["imgsz"])
            text = self.meta["text_encoder"]
            self.max_tokens = int(text["max_tokens"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise PromptdetError(f"{meta_path}: unreadable metadata ({type(exc).__name__}: {exc})") from None
        if fmt != EXPORT_FORMAT:
            raise PromptdetError(f"{meta_path}: format {fmt!r}; this promptdet reads {EXPORT_FORMAT}")
        check_export_meta(self.meta, meta_path)  # bounds, and a hash for every file
        if graph_optimization not in _GRAPH_OPT:
            raise UsageError(f"graph_optimization must be one of {', '.join(_GRAPH_OPT)}, got {graph_optimization!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise UsageError(f"threads must be a non-negative integer (0 = onnxruntime's choice), got {threads!r}")
        ort = _ort()
        self.providers = resolve_providers(providers, ort.get_available_providers())
        self._options = (threads, graph_optimization)
        self.encoder_id = f"{text.get('identity', text.get('name', '?'))}/max_tokens={self.max_tokens}"
        self.cache = EmbeddingCache(cache_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.baked_prompts = list(self.meta.get("baked_prompts") or [])
        self.source = str(self.dir)

        det_name = detector_file or files.get("detector", "detector.onnx")
        self.detector = self._session(det_name, expected_sha=self._recorded_sha(det_name))
        self.provider = self.detector.get_providers()[0]
        log.info("promptdet onnx: %s on %s", det_name, self.provider)
        self._check_detector_io(det_name)
        self._text = None  # the text encoder and tokenizer load on the first new prompt
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.dir)!r}, provider={self.provider!r})"

    # ---- loading ----
    def _recorded_sha(self, name: str) -> str | None:
        if name == self.meta["files"].get("text_encoder"):
            return self.meta["text_encoder"].get("onnx_sha256")
        return (self.meta.get("sha256") or {}).get(name)

    def _session(self, name: str, expected_sha: str | None = None):
        ort = _ort()
        path = self.dir / name
        if not path.is_file():
            raise PromptdetError(f"{self.dir}: {name} is missing; export again")
        if expected_sha and _sha256(path) != expected_sha:
            raise PromptdetError(f"{path}: does not match {self.dir / 'promptdet.json'} (its sha256 differs); "
                                 "the file was replaced or damaged. Export again")
        opts = ort.SessionOptions()
        threads, level = self._options
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        opts.log_severity_level = 3  # onnxruntime's own warnings would bypass our one-line errors
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several private exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PromptdetError(f"{path}: not a loadable ONNX model ({first[:200]})") from None

    def _check_detector_io(self, name: str) -> None:
        got = [i.name for i in self.detector.get_inputs()]
        want = ["images"] if name == self.meta["files"].get("detector_baked") else \
            ["images", "pooled", "tokens", "token_mask"]
        outputs = [o.name for o in self.detector.get_outputs()]
        # Exports from before familiarity have two outputs: they run, reporting familiarity 1.0.
        self.has_familiarity = outputs == ["boxes", "scores", "familiarity", "prompt_familiarity"]
        if got != want or (outputs != ["boxes", "scores"] and not self.has_familiarity):
            raise PromptdetError(f"{self.dir / name}: inputs {got} are not a promptdet detector's {want}; "
                                 "wrong file, or an export from another version")
        if want[-1] == "token_mask":
            dim = self.detector.get_inputs()[1].shape[-1]
            if isinstance(dim, int) and dim != int(self.meta["text_encoder"]["dim"]):
                raise PromptdetError(f"{self.dir / name}: takes {dim}-d prompt embeddings but the text encoder "
                                     f"in promptdet.json gives {self.meta['text_encoder']['dim']}-d; mismatched files")

    @property
    def takes_prompts(self) -> bool:
        return len(self.detector.get_inputs()) == 4

    def _text_encoder(self):
        if self._text is None:
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise PromptdetError("the ONNX backend needs tokenizers: pip install tokenizers") from None
            tok_path = self.dir / self.meta["files"].get("tokenizer", "tokenizer.json")
            try:
                tokenizer = Tokenizer.from_file(str(tok_path))
            except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception
                raise PromptdetError(f"{tok_path}: not a readable tokenizer.json ({exc})") from None
            tokenizer.no_padding()
            self._text = self._session(self.meta["files"]["text_encoder"], self._recorded_sha(
                self.meta["files"]["text_encoder"]))
            self._tokenizer = tokenizer
        return self._text, self._tokenizer

    # ---- prompts ----
    def _disk_path(self, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{self.encoder_id}\0{text}".encode()).hexdigest()[:32]
        return self.cache_dir / f"{key}.npz"

    def _encode_one(self, text: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self._disk_path(text)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["key"]) == f"{self.encoder_id}\0{text}":
                        return z["tokens"], z["pooled"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is recomputed and rewritten
        session, tokenizer = self._text_encoder()
        enc = tokenizer.encode(text)
        ids = enc.ids
        if len(ids) > self.max_tokens:
            warnings.warn(f"prompt {index} {shorten(text)!r} has {len(ids)} tokens; only the first {self.max_tokens} "
                          "(max_tokens) are used", stacklevel=4)
            tokenizer.enable_truncation(self.max_tokens)
            ids = tokenizer.encode(text).ids
            tokenizer.no_truncation()
        ids = np.asarray([ids], dtype=np.int64)
        pooled, tokens = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        tokens, pooled = tokens[0].astype(np.float32), pooled[0].astype(np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, tokens=tokens, pooled=pooled, key=np.asarray(f"{self.encoder_id}\0{text}"))
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        return tokens, pooled

    def encode(self, prompts: str | list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prompts -> (pooled [K, D], tokens [K, T, Dt], token_mask [K, T] bool), from the cache when known.

        Each prompt is encoded on its own (no padding), so its embedding never depends on the others.
        """
        texts = normalize_prompts(prompts)
        rows = []
        for i, text in enumerate(texts):
            hit = self.cache.get((self.encoder_id, text))
            if hit is None:
                hit = self._encode_one(text, i)
                self.cache.put((self.encoder_id, text), hit)
            rows.append(hit)
        longest = max(r[0].shape[0] for r in rows)
        tokens = np.zeros((len(rows), longest, rows[0][0].shape[1]), np.float32)
        mask = np.zeros((len(rows), longest), bool)
        for i, (t, _) in enumerate(rows):
            tokens[i, : len(t)] = t
            mask[i, : len(t)] = True
        return np.stack([r[1] for r in rows]), tokens, mask

    # ---- detection ----
    def run(self, images: np.ndarray, pooled: np.ndarray, tokens: np.ndarray,
            token_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raw detector: images [B, 3, S, S] -> boxes [B, K, M, 4], scores [B, K, M]."""
        feed = {"images": np.ascontiguousarray(images, dtype=np.float32)}
        if self.takes_prompts and len(pooled) == 0:
            # No prompts, no candidates. (Not run through the graph: ONNX Reshape reads a 0 in a
            # target shape as "keep this dimension", so a zero-prompt batch cannot pass through it.)
            m = int(self.meta["model"]["max_candidates"])
            return np.zeros((len(images), 0, m, 4), np.float32), np.zeros((len(images), 0, m), np.float32)
        if self.takes_prompts:
            feed.update(pooled=np.ascontiguousarray(pooled, np.float32), tokens=np.ascontiguousarray(tokens, np.float32),
                        token_mask=np.ascontiguousarray(token_mask, bool))
        boxes, scores = self.run_all(images, pooled, tokens, token_mask, feed)[:2]
        return boxes, scores

    def run_all(self, images: np.ndarray, pooled: np.ndarray, tokens: np.ndarray, token_mask: np.ndarray,
                feed: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``run`` plus the image familiarity [B] and the prompt familiarity [K] (1.0 for old exports)."""
        k = len(pooled) if self.takes_prompts else len(self.baked_prompts)
        if feed is None:
            if self.takes_prompts and len(pooled) == 0:
                boxes, scores = self.run(images, pooled, tokens, token_mask)
                return boxes, scores, np.ones(len(images), np.float32), np.ones(0, np.float32)
            feed = {"images": np.ascontiguousarray(images, dtype=np.float32)}
            if self.takes_prompts:
                feed.update(pooled=np.ascontiguousarray(pooled, np.float32),
                            token_mask=np.ascontiguousarray(token_mask, bool),
                            tokens=np.ascontiguousarray(tokens, np.float32))
        outs = self.detector.run(None, feed)
        if self.has_familiarity:
            return outs[0], outs[1], outs[2], outs[3]
        return outs[0], outs[1], np.ones(len(images), np.float32), np.ones(k, np.float32)

    def predictor(self, prompts: str | list[str], conf: float | None = None, iou: float | None = None,
                  max_det: int | None = None, imgsz: int | None = None, abstain: bool = True) -> OnnxPredictor:
        return OnnxPredictor(self, prompts, conf, iou, max_det, imgsz, abstain)

    def detect(self, source, prompts: str | list[str] | None = None, conf: float | None = None,
               iou: float | None = None, max_det: int | None = None, imgsz: int | None = None, device: str | None = None,
               abstain: bool = True):
        """Like ``PromptDet.detect``: a path, numpy BGR array or PIL image (or a list of them) -> Detections.

        Thresholds default to the ones in promptdet.json. ``device`` is accepted for symmetry with
        the torch model; the providers given at load time decide where the graph runs.
        """
        if prompts is None:
            if not self.baked_prompts:
                raise UsageError("prompts are required (this export has no baked prompts)")
            prompts = self.baked_prompts
        predictor = self.predictor(prompts, conf, iou, max_det, imgsz, abstain)
        if isinstance(source, (list, tuple)):
            return [predictor.predict(s) for s in source]
        return predictor.predict(source)


class OnnxPredictor(BasePredictor):
    """The ONNX backend of ``BasePredictor``: the same preprocessing and postprocessing as torch."""

    backend = "onnx"

    def __init__(self, model: OnnxModel, prompts, conf=None, iou=None, max_det=None, imgsz=None, abstain=True):
        th = model.meta.get("thresholds", {})
        conf = th.get("conf", 0.25) if conf is None else conf
        iou = th.get("iou", 0.6) if iou is None else iou
        max_det = th.get("max_det", 300) if max_det is None else max_det
        imgsz = model.imgsz if imgsz is None else imgsz
        super().__init__(prompts, conf, iou, max_det, imgsz, abstain)
        if imgsz != model.imgsz and not model.meta.get("dynamic"):
            raise UsageError(f"imgsz {imgsz}: this export has a fixed size of {model.imgsz} "
                             "(export again with --dynamic, or leave imgsz unset)")
        if not model.takes_prompts and self.prompts != model.baked_prompts:
            raise UsageError(f"this detector has its prompts baked in ({'; '.join(model.baked_prompts)}); "
                             "use detector.onnx for other prompts")
        self.model = model

    def _encode(self):
        return self.model.encode(self.prompts) if self.model.takes_prompts else (None, None, None)

    def _infer(self, x: np.ndarray, embeddings):
        boxes, scores, familiarity, prompt_fam = self.model.run_all(x, *embeddings)
        return boxes[0], scores[0], float(familiarity[0]), prompt_fam


def is_export_dir(path: Any) -> bool:
    try:
        return Path(path).is_dir() and (Path(path) / "promptdet.json").is_file()
    except (TypeError, OSError):
        return False

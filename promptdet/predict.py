"""Detection on images, folders, globs, videos and cameras: read robustly, run the model, write results.

Reading needs numpy, OpenCV and Pillow only; torch is imported when a ``Predictor`` is built.
Reading lives in ``runtime/imageio.py`` and the writers in ``writers.py``; both are re-exported here.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptdet.errors import UsageError
from promptdet.runtime.imageio import (  # noqa: F401 - read_image and ImageReadError are re-exported
    IMAGE_EXTS, VIDEO_EXTS, ImageReadError, _quiet_opencv, load_input, read_image, to_bgr8)
from promptdet.structures import Detections
from promptdet.text.prompts import normalize_prompts
from promptdet.writers import ResultWriter, check_output, coco_results  # noqa: F401 - re-exported

def collect_prompts(prompt_options: list[str] | None, prompts_file: str | Path | None = None) -> list[str]:
    """--prompt values (each split on ';') then the lines of --prompts-file (one prompt a line;
    blank lines and lines starting with '#' are skipped)."""
    prompts = [p for text in prompt_options or [] for p in normalize_prompts(text)]
    if prompts_file is not None:
        path = Path(prompts_file)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise UsageError(f"--prompts-file {path}: cannot read it ({reason})") from None
        lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            raise UsageError(f"--prompts-file {path}: no prompts in it (one prompt a line)")
        prompts += normalize_prompts(lines)
    if not prompts:
        raise UsageError('no prompts given; pass --prompt "what to find" (repeat it, or use --prompts-file FILE)')
    return prompts


# ---------------------------------------------------------------- sources
@dataclass
class Source:
    kind: str  # "image", "video" or "camera"
    value: str | int


def expand_sources(sources: list[str]) -> tuple[list[Source], int, list[str]]:
    """Command-line sources -> (sources in order, files skipped as not images, error lines)."""
    found: list[Source] = []
    skipped, errors = 0, []
    for text in sources:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
            skipped += len(files) - len(images)
            found += [Source("image", str(p)) for p in images]
            if not images:
                errors.append(f"no images in folder {path} (looked for {', '.join(IMAGE_EXTS)})")
        elif path.is_file():
            found.append(Source("video" if path.suffix.lower() in VIDEO_EXTS else "image", text))
        elif text.strip().isdigit():
            found.append(Source("camera", int(text)))
        elif any(c in text for c in "*?["):
            files = sorted(p for p in map(Path, glob.glob(text, recursive=True)) if p.is_file())
            media = [p for p in files if p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS]
            skipped += len(files) - len(media)
            found += [Source("video" if p.suffix.lower() in VIDEO_EXTS else "image", str(p)) for p in media]
            if not media:
                errors.append(f"no images or videos match {text}")
        else:
            errors.append(f"cannot read image {text}: file not found")
    return found, skipped, errors


def _open_capture(value: str | int):
    with _quiet_opencv():
        cap = cv2.VideoCapture(value)
    return cap if cap.isOpened() else None


def iter_frames(sources: list[Source]) -> Iterator[tuple[Source, int | None, np.ndarray | None, float, str | None]]:
    """(source, frame number or None, BGR image or None, read ms, error line or None), in order."""
    for src in sources:
        t0 = time.perf_counter()
        if src.kind == "image":
            try:
                image = read_image(src.value)
            except ImageReadError as exc:
                yield src, None, None, 0.0, str(exc)
                continue
            yield src, None, image, (time.perf_counter() - t0) * 1e3, None
            continue
        what = f"camera {src.value}" if src.kind == "camera" else f"video {src.value}"
        cap = _open_capture(src.value)
        if cap is None:
            hint = " (no such device, or it is in use)" if src.kind == "camera" else " (not a video, or damaged)"
            yield src, None, None, 0.0, f"cannot open {what}{hint}"
            continue
        n = 0
        try:
            while True:
                t0 = time.perf_counter()
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                yield src, n, to_bgr8(frame), (time.perf_counter() - t0) * 1e3, None
                n += 1
        finally:
            cap.release()
        if n == 0:
            yield src, None, None, 0.0, f"cannot read {what}: it gave no frame"


# ---------------------------------------------------------------- running the model
def _device(name: str):
    from promptdet.model.device import resolve_device

    return resolve_device(name)


class Predictor:
    """A model, a fixed list of prompts and thresholds; call it on BGR images to get ``Detections``.

    conf: score threshold for every prompt. iou: NMS IoU within a prompt (prompts never suppress
    each other). max_det: most boxes per prompt per image, so prompts stay independent.
    imgsz: letterbox size, a multiple of 32 (default: the size the model was trained at).
    """

    def __init__(self, model, prompts: str | list[str], conf: float = 0.25, iou: float = 0.6, max_det: int = 300,
                 imgsz: int | None = None, device: str = "cpu"):
        self.prompts = normalize_prompts(prompts)
        for name, value in (("conf", conf), ("iou", iou)):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise UsageError(f"{name} must be between 0 and 1, got {value!r}")
        if not isinstance(max_det, int) or max_det < 1:
            raise UsageError(f"max_det must be a positive integer, got {max_det!r}")
        self.imgsz = model.cfg.imgsz if imgsz is None else imgsz
        if not isinstance(self.imgsz, int) or self.imgsz < 32 or self.imgsz % 32:
            raise UsageError(f"imgsz must be a multiple of 32 (at least 32), got {self.imgsz!r}")
        self.conf, self.iou, self.max_det = float(conf), float(iou), max_det
        self.device = _device(device)
        self.encoder = model.encoder
        self.detector = model.detector.to(self.device).eval()

    def predict(self, source: Any, keep_image: bool = True) -> Detections:
        """Detections for a path, a numpy BGR array or a PIL image."""
        t0 = time.perf_counter()
        image, name = load_input(source)
        return self(image, name, read_ms=(time.perf_counter() - t0) * 1e3, keep_image=keep_image)

    def __call__(self, image_bgr: np.ndarray, image: str | None = None, frame: int | None = None,
                 read_ms: float = 0.0, keep_image: bool = True) -> Detections:
        """Detections for one BGR uint8 image [H, W, 3], boxes in its pixels."""
        import torch

        from promptdet.model.postprocess import candidate_boxes_scores, nms_per_prompt
        from promptdet.train.validate import image_tensor

        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        with torch.inference_mode():
            t0 = time.perf_counter()
            enc = self.encoder.encode(self.prompts)  # a cache hit after the first image
            pooled, tokens, mask = (t[None].to(self.device) for t in (enc.pooled, enc.token_feats, enc.token_mask))
            t1 = time.perf_counter()
            x, lb = image_tensor(image_bgr, self.imgsz, self.device)
            sync()
            t2 = time.perf_counter()
            out = self.detector(x, pooled, tokens, mask)
            sync()
            t3 = time.perf_counter()
            boxes, scores = candidate_boxes_scores(out)
            # Every candidate may survive NMS; the cap is applied per prompt below.
            everything = scores.shape[1] * scores.shape[2]
            b, s, ids = nms_per_prompt(boxes, scores, self.conf, self.iou, max_det=everything)[0]
            b, s, ids = lb.boxes_to_original(b.float().cpu().numpy()), s.float().cpu().numpy(), ids.cpu().numpy()
            keep = np.zeros(len(s), bool)
            for k in np.unique(ids):
                keep[np.flatnonzero(ids == k)[: self.max_det]] = True
            order = np.argsort(-s[keep], kind="stable")
            t4 = time.perf_counter()
        ms = {"read": read_ms, "text": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "infer": (t3 - t2) * 1e3,
              "post": (t4 - t3) * 1e3}
        ms["total"] = read_ms + (t4 - t0) * 1e3
        h, w = image_bgr.shape[:2]
        return Detections(b[keep][order], s[keep][order], ids[keep][order], self.prompts, (w, h), image, ms, frame,
                          image_bgr if keep_image else None)


@dataclass
class RunSummary:
    processed: int = 0
    failed: int = 0
    skipped: int = 0
    per_prompt: list[int] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    stdout_closed: bool = False
    files: list[Path] = field(default_factory=list)

    @property
    def detections(self) -> int:
        return sum(self.per_prompt)


def run_sources(predictor: Predictor, sources: list[Source], writer: ResultWriter, on_error: Callable[[str], None],
                skipped: int = 0, progress: bool = False) -> RunSummary:
    """Detect in every frame of ``sources``, writing each result; a failed image is reported
    through ``on_error`` (one line) and the rest go on. Ctrl-C stops early and keeps what was written."""
    from tqdm import tqdm

    summary = RunSummary(skipped=skipped, per_prompt=[0] * len(predictor.prompts))
    t0 = time.perf_counter()
    still = all(src.kind == "image" for src in sources)  # a video's frame count is often wrong or unknown
    bar = tqdm(total=len(sources) if still else None, disable=not progress, unit="img", leave=False)
    try:
        for src, frame, image, read_ms, error in iter_frames(sources):
            if error is not None:
                summary.failed += 1
                bar.clear()
                on_error(error)
                continue
            det = predictor(image, str(src.value) if src.kind != "camera" else f"camera:{src.value}", frame,
                            read_ms, keep_image=writer.save or writer.crops)
            writer.write(det)
            summary.processed += 1
            for k in det.prompt_ids:
                summary.per_prompt[int(k)] += 1
            bar.update(1)
    except KeyboardInterrupt:
        summary.interrupted = True
    except BrokenPipeError:  # `promptdet detect ... | head`: the reader has what it wanted
        summary.stdout_closed = True
    finally:
        bar.close()
        try:
            summary.files = writer.close()
        except BrokenPipeError:
            summary.stdout_closed = True
        summary.seconds = time.perf_counter() - t0
    return summary

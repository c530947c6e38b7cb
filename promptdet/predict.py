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

import cv2
import numpy as np

from promptdet.errors import UsageError
from promptdet.runtime.imageio import (  # noqa: F401 - read_image, load_input and ImageReadError are re-exported
    IMAGE_EXTS, VIDEO_EXTS, ImageReadError, _quiet_opencv, load_input, read_image, to_bgr8)
from promptdet.runtime.predictor import BasePredictor
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


class Predictor(BasePredictor):
    """The torch backend: a ``PromptDet`` model, a fixed list of prompts and thresholds.

    See ``BasePredictor`` for the arguments; ``imgsz`` defaults to the size the model was trained at.
    """

    backend = "torch"

    def __init__(self, model, prompts: str | list[str], conf: float = 0.25, iou: float = 0.6, max_det: int = 300,
                 imgsz: int | None = None, device: str = "cpu", abstain: bool = True):
        super().__init__(prompts, conf, iou, max_det, model.cfg.imgsz if imgsz is None else imgsz, abstain)
        self.device = _device(device)
        self.encoder = model.encoder
        self.detector = model.detector.to(self.device).eval()

    def _encode(self):
        import torch

        with torch.inference_mode():
            enc = self.encoder.encode(self.prompts)
            return tuple(t[None].to(self.device) for t in (enc.pooled, enc.token_feats, enc.token_mask))

    def _infer(self, x: np.ndarray, embeddings):
        import torch

        from promptdet.model.postprocess import candidate_boxes_scores

        with torch.inference_mode():
            out = self.detector(torch.from_numpy(x).to(self.device), *embeddings)
            boxes, scores = candidate_boxes_scores(out)
            return (boxes[0].float().cpu().numpy(), scores[0].float().cpu().numpy(),
                    float(out.image_familiarity[0]), out.prompt_familiarity[0].float().cpu().numpy())


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
    unfamiliar: int = 0  # images (frames) whose familiarity was below the model's threshold
    unknown_prompts: set[int] = field(default_factory=set)

    @property
    def detections(self) -> int:
        return sum(self.per_prompt)

    def abstain_lines(self, prompts: list[str], abstained: bool) -> list[str]:
        """Why boxes were withheld (or would have been), once for the run, and what to do about it."""
        from promptdet.text.prompts import shorten

        what = "their boxes were withheld" if abstained else "boxes kept (--no-abstain)"
        lines = []
        if self.unfamiliar:
            lines.append(f"abstained: {self.unfamiliar} of {self.processed} image(s) look unlike anything the model "
                         f"was trained on (familiarity < 0.5): {what}")
        for i in sorted(self.unknown_prompts):
            lines.append(f"abstained: prompt {shorten(prompts[i], 40)!r} names nothing the model learned: {what}")
        if lines:
            lines.append("to judge these, fine-tune on your own labelled images (promptdet train --weights ... --data ...)"
                         + ("; --no-abstain shows the boxes anyway" if abstained else ""))
        return lines


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
            summary.unfamiliar += det.unfamiliar
            summary.unknown_prompts.update(det.unknown_prompts)
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

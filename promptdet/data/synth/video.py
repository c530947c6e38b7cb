"""A synthetic conveyor-line video with per-frame ground truth: the demo and test source.

Parts ride a belt left to right at a constant speed: they enter at the left edge and leave at the
right, one behind the other with a gap, so usually one to three are in view and they never overlap.
Each part is drawn once with the still-scene renderer (``render.py``: same parts, colours, defects,
light and drop shadow) and only translated afterwards, so its appearance cannot change while it
moves. The belt texture scrolls with the parts; the rails stay put.

Outputs, for ``out_path = line.mp4``:

* ``line.mp4`` (OpenCV ``mp4v``), or ``line.avi`` (MJPG) when this OpenCV cannot write mp4. An
  ``.avi`` path asks for MJPG directly.
* ``line.gt.jsonl`` beside it (the video's name with its suffix replaced by ``.gt.jsonl``, the same
  for either container): one JSON object per frame, in frame order::

      {"frame": 0, "t": 0.0, "defective": false,
       "parts": [{"id": 3, "category": "bottle", "color": "red", "defect": "missing_cap",
                  "bbox": [x1, y1, x2, y2], "fully_in_view": true, "visible_frac": 1.0,
                  "visible_px": 2473}, ...]}

  ``parts`` lists every part with at least one pixel in the frame, left to right. ``bbox`` is the
  tight box of the part's pixels that are inside the frame (integer pixels, x2/y2 exclusive, so it
  is clipped to the frame). ``fully_in_view`` means every pixel of the part is in the frame
  (``visible_frac == 1``); ``visible_px`` counts the part's pixels inside the frame. A frame is
  ``defective`` when a defective part is fully in view: the rule the inspection loop is judged by.
  ``id`` numbers parts in the order they enter.

:func:`render_frame_scenes` turns frames of such videos into a training set in the still scenes'
format (``images/``, ``scenes.jsonl``, ``instructions.jsonl``), so the model also learns the line
camera's own look: the belt, parts lined up one behind the other, and the video codec's artefacts.

Deterministic for a seed, and a shorter video is a prefix of a longer one with the same settings.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from promptdet.data.synth import render as R
from promptdet.data.vocab import CATEGORIES, COLORS_BY_CATEGORY, DEFECTS_BY_CATEGORY

DEFAULT_FPS = 10.0  # below what the line loop reaches on a 2-core CPU (benchmarks/line_throughput.py), leaving room for sinks
DEFAULT_DEFECT_RATE = 0.25  # the still renderer's overall rate
# Gap between consecutive parts as a share of the frame width. With parts ~80 px wide at 640x480
# the mean pitch is ~0.5 W, so about two parts are in view and an empty frame cannot happen.
_GAP = (0.12, 0.6)


@dataclass
class VideoReport:
    """What ``render_conveyor`` wrote."""

    video: Path
    gt: Path
    num_frames: int
    fps: float
    size_wh: tuple[int, int]
    num_parts: int  # parts seen in at least one frame
    num_defective_parts: int
    num_defective_frames: int
    codec: str
    per_category: dict[str, int] = field(default_factory=dict)

    @property
    def defective_frame_share(self) -> float:
        return self.num_defective_frames / self.num_frames if self.num_frames else 0.0

    def summary(self) -> str:
        return (f"wrote {self.num_frames} frames ({self.num_frames / self.fps:g} s at {self.fps:g} fps, "
                f"{self.size_wh[0]}x{self.size_wh[1]}, {self.codec}) with {self.num_parts} parts, "
                f"{self.num_defective_parts} defective, {100 * self.defective_frame_share:.1f}% defective frames "
                f"to {self.video}; ground truth in {self.gt}")


def gt_path_for(video_path: str | os.PathLike) -> Path:
    """``line.mp4`` -> ``line.gt.jsonl`` (also for ``line.avi``)."""
    p = Path(video_path)
    return p.with_name(p.stem + ".gt.jsonl")


def check_args(out_path, seconds, fps, size_wh, defect_rate, speed_px_per_s, categories):
    """Validate the arguments of :func:`render_conveyor`; raise ValueError with the fix.

    Returns (out_path, num_frames, (W, H), categories tuple).
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".mp4", ".avi"):
        raise ValueError(f"the video must be a .mp4 or .avi file, got {str(out_path)!r}")
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 < fps <= 240):
        raise ValueError(f"fps must be in (0, 240], got {fps!r}")
    num_frames = int(round(seconds * fps))
    if num_frames < 1:
        raise ValueError(f"{seconds} s at {fps} fps is less than one frame; make the video longer")
    try:
        W, H = (int(v) for v in size_wh)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (width, height), got {size_wh!r}") from None
    if W < 160 or H < 120 or W > 8192 or H > 8192:
        raise ValueError(f"size must be between 160x120 and 8192x8192, got {W}x{H}")
    if W % 2 or H % 2:
        # The mp4 encoder would silently drop the odd column or row and shift the boxes.
        raise ValueError(f"width and height must be even for video encoders, got {W}x{H}")
    if not (0.0 <= defect_rate <= 1.0):
        raise ValueError(f"defect rate must be in [0, 1], got {defect_rate!r}")
    if speed_px_per_s is not None and not (math.isfinite(speed_px_per_s) and speed_px_per_s > 0):
        raise ValueError(f"speed must be > 0 pixels per second, got {speed_px_per_s!r}")
    cats = tuple(CATEGORIES) if categories is None else tuple(categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown or not cats:
        raise ValueError(f"unknown categories {unknown or '(none given)'}; choose from: {', '.join(CATEGORIES)}")
    if defect_rate > 0 and not any(DEFECTS_BY_CATEGORY[c] for c in cats):
        raise ValueError(f"none of {', '.join(cats)} can carry a defect; add one of "
                         f"{', '.join(c for c in CATEGORIES if DEFECTS_BY_CATEGORY[c])} or use defect rate 0")
    return out_path, num_frames, (W, H), cats


def render_conveyor(out_path: str | os.PathLike, seconds: float = 20.0, fps: float = DEFAULT_FPS,
                    size_wh: tuple[int, int] = (640, 480), seed: int = 0,
                    defect_rate: float = DEFAULT_DEFECT_RATE, speed_px_per_s: float | None = None,
                    categories=None, defect_weights: str | None = None) -> VideoReport:
    """Render a conveyor video and its per-frame ground truth (see the module docstring).

    ``defect_rate`` is the probability that a part is defective (parts that cannot carry a defect,
    screws and bolts, are then never picked). ``speed_px_per_s`` defaults to a quarter of the frame
    width per second. ``categories`` limits the parts to some of ``vocab.CATEGORIES``.
    ``defect_weights`` ("missing_cap=4,crack=2", 1 for a kind not named) weights the kinds a
    defective part picks among, as ``data synth --defect-weights`` does; None is the uniform draw.
    """
    out_path, num_frames, (W, H), cats = check_args(out_path, seconds, fps, size_wh, defect_rate,
                                                    speed_px_per_s, categories)
    kinds = R.DefectMix.parse(None, defect_weights)  # only its kind weights are used here
    speed = float(speed_px_per_s) if speed_px_per_s is not None else W / 4.0
    scene_ss, noise_ss = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(scene_ss)
    noise_rng = np.random.default_rng(noise_ss)
    px = min(W / 640.0, H / 480.0)

    belt, (by0, by1) = R._belt(rng, W + W // 4, H, px)
    belt = _tileable(belt, W, by0, by1)
    az = math.radians(rng.uniform(-165.0, -105.0))
    lz = rng.uniform(0.55, 0.75)
    lxy = math.sqrt(1 - lz * lz)
    light = (lxy * math.cos(az), lxy * math.sin(az), lz)
    shadow_strength = rng.uniform(0.35, 0.55)
    gain = R._camera_gain(rng, W, H)

    # Lay the parts out at t = 0 from the right to the left; the belt then shifts them right.
    travel = speed * (num_frames - 1) / fps
    parts = []
    right = rng.uniform(0.3, 0.8) * W  # right edge of the first part at t = 0
    misses = 0
    while True:
        part = _make_part(rng, cats, defect_rate, light, px, by0, by1, kinds)
        if part is None:
            misses += 1
            if misses > 1000:
                raise RuntimeError(f"no part fits on the belt at {W}x{H}; use a larger size")
            continue
        part["X0"] = right - part["mask"].shape[1]
        if right + travel <= -2:  # never reaches the frame, nor does any part after it
            break
        part["id"] = len(parts)
        parts.append(part)
        right = part["X0"] - rng.uniform(*_GAP) * W

    writer, video_path, codec = _open_writer(out_path, fps, (W, H))
    gt_path = gt_path_for(out_path)
    gt_path.parent.mkdir(parents=True, exist_ok=True)
    seen, defective_frames = set(), 0
    try:
        with open(gt_path, "w", encoding="utf-8") as gt:
            for i in range(num_frames):
                t = i / fps
                shift = int(round(speed * t))
                frame = _scroll(belt, shift % W, by0, by1)
                records = []
                for p in parts:
                    X = int(round(p["X0"])) + shift
                    mh, mw = p["mask"].shape
                    if X >= W or X + mw <= 0:
                        continue
                    R._composite(frame, p["rgba"], p["shadow"], shadow_strength, X - p["box"][0], p["Y"] - p["box"][1])
                    records.append(_record(p, X, W))
                    seen.add(p["id"])
                frame = _expose(frame, gain, noise_rng)
                writer.write(frame)
                records.sort(key=lambda r: r["bbox"][0])
                bad = any(r["fully_in_view"] and r["defect"] for r in records)
                defective_frames += bad
                gt.write(json.dumps({"frame": i, "t": round(t, 6), "defective": bad, "parts": records}) + "\n")
    finally:
        writer.release()
    if not video_path.is_file() or video_path.stat().st_size == 0:
        raise RuntimeError(f"OpenCV wrote nothing to {video_path}; check the disk and the OpenCV video backend")

    shown = [p for p in parts if p["id"] in seen]
    per_category: dict[str, int] = {}
    for p in shown:
        per_category[p["category"]] = per_category.get(p["category"], 0) + 1
    return VideoReport(video=video_path, gt=gt_path, num_frames=num_frames, fps=float(fps), size_wh=(W, H),
                       num_parts=len(shown), num_defective_parts=sum(1 for p in shown if p["defect"]),
                       num_defective_frames=defective_frames, codec=codec, per_category=per_category)


def read_gt(path: str | os.PathLike) -> list[dict]:
    """The per-frame records of a ``.gt.jsonl`` file (or of the video it belongs to)."""
    p = Path(path)
    if p.suffix.lower() in (".mp4", ".avi"):
        p = gt_path_for(p)
    if not p.is_file():
        raise FileNotFoundError(f"no ground-truth file {p}; render one with `promptdet data synth-video`")
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def render_frame_scenes(out_dir: str | os.PathLike, videos: int = 20, seconds: float = 40.0, seed: int = 100,
                        every: int = 4, size_wh: tuple[int, int] = (640, 480), instruct: bool = True,
                        split: str = "train", per_image: int = 6, absent_rate: float = 0.2,
                        progress: bool | None = None, defect_rate: float = DEFAULT_DEFECT_RATE,
                        defect_weights: str | None = None):
    """Render ``videos`` conveyor videos (seeds ``seed``, ``seed + 1``, ...) and keep frames as scenes.

    Every ``every``-th frame is kept when each part in it is fully in view. A part cut by the frame
    edge may have its defect outside the frame, so its label would be a guess; such frames are
    left out rather than guessed. ``defect_rate`` and ``defect_weights`` are ``render_conveyor``'s,
    to render a defect-heavy set. Frames are decoded from the written video, codec artefacts
    included, and stored as JPEG at quality 95. Returns a ``generate.SynthReport``.
    """
    from promptdet.data.synth.generate import _progress, write_scene_set

    # Every argument is checked before anything is written or rendered.
    if videos < 1:
        raise ValueError(f"videos must be at least 1, got {videos}")
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    out = Path(out_dir)
    check_args(out / "line.mp4", seconds, DEFAULT_FPS, size_wh, defect_rate, None, None)
    R.DefectMix.parse(None, defect_weights)  # a bad weight string fails here, before any rendering
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="promptdet_frames_") as tmp, \
            _progress(videos, "videos", progress) as bar:
        for k in range(videos):
            report = render_conveyor(Path(tmp) / "line.mp4", seconds=seconds, size_wh=size_wh, seed=seed + k,
                                     defect_rate=defect_rate, defect_weights=defect_weights)
            W, H = report.size_wh
            cap = cv2.VideoCapture(str(report.video))
            try:
                for rec in read_gt(report.gt):
                    ok, frame = cap.read()
                    if not ok:
                        raise RuntimeError(f"could not read frame {rec['frame']} back from {report.video}")
                    parts = rec["parts"]
                    if rec["frame"] % every or not parts or not all(p["fully_in_view"] for p in parts):
                        continue
                    name = f"images/{seed + k:06d}_{rec['frame']:05d}.jpg"
                    if not cv2.imwrite(str(out / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                        raise OSError(f"could not write {out / name}")
                    objects = [{"id": p["id"], "category": p["category"], "color": p["color"],
                                "defects": [p["defect"]] if p["defect"] else [], "bbox": p["bbox"],
                                "visible_px": p["visible_px"], "visible_frac": p["visible_frac"]} for p in parts]
                    scenes.append({"image": name, "width": W, "height": H, "objects": objects})
            finally:
                cap.release()
            bar.update()
    if not scenes:
        raise ValueError(f"no frame of {videos} video(s) of {seconds} s had every part fully in view; "
                         "render longer videos or keep more frames (a smaller every)")
    return write_scene_set(out, scenes, instruct, seed=seed, split=split, per_image=per_image,
                           absent_rate=absent_rate)


# ---------------------------------------------------------------- parts

def _make_part(rng, cats, defect_rate, light, px, by0, by1, kinds: R.DefectMix):
    """Sample, draw (once) and place one part vertically; None if it does not fit the belt."""
    defective = defect_rate > 0 and rng.random() < defect_rate
    pool = [c for c in cats if DEFECTS_BY_CATEGORY[c]] if defective else list(cats)
    category = pool[int(rng.integers(len(pool)))]
    colors = COLORS_BY_CATEGORY[category]
    color = colors[int(rng.integers(len(colors)))]
    lo, hi = R.SIZES[category]
    defect = None
    if defective:
        defect = kinds.choose(rng, DEFECTS_BY_CATEGORY[category])
    spec = {"category": category, "color": color, "size": float(rng.uniform(lo * 0.92, hi * 1.08) * px),
            "defect": defect, "angle": float(rng.uniform(0.0, 360.0))}
    rgba, mask, box = R._render_part(rng, spec, light, px)
    if rgba is None or mask.shape[0] > by1 - by0:
        return None
    mh, mw = mask.shape
    cols = mask.any(axis=0)
    # Per mask column: first and last covered row, for exact boxes of a part cut by the frame edge.
    top = np.where(cols, mask.argmax(axis=0), mh)
    bottom = np.where(cols, mh - mask[::-1].argmax(axis=0), 0)
    return dict(spec, rgba=rgba, mask=mask, box=box, shadow=R._shadow(rgba[..., 3], spec, light, px),
                Y=int(rng.integers(by0, by1 - mh + 1)), top=top, bottom=bottom,
                col_px=np.concatenate([[0], np.cumsum(mask.sum(axis=0))]), full=int(mask.sum()))


def _record(p, X, W) -> dict:
    mw = p["mask"].shape[1]
    a, b = max(0, -X), min(mw, W - X)  # mask columns inside the frame
    cols = np.nonzero(p["top"][a:b] < p["mask"].shape[0])[0]
    if cols.size:
        c0, c1 = a + int(cols[0]), a + int(cols[-1]) + 1
        y0, y1 = int(p["top"][c0:c1].min()), int(p["bottom"][c0:c1].max())
        bbox = [X + c0, p["Y"] + y0, X + c1, p["Y"] + y1]
    else:  # only a sliver of an empty mask column: cannot happen for a tight mask, kept for safety
        bbox = [X + a, p["Y"], X + a, p["Y"]]
    vis = int(p["col_px"][b] - p["col_px"][a])
    return {"id": p["id"], "category": p["category"], "color": p["color"], "defect": p["defect"],
            "bbox": bbox, "fully_in_view": bool(a == 0 and b == mw), "visible_frac": round(vis / p["full"], 4),
            "visible_px": vis}


# ---------------------------------------------------------------- belt and camera

def _tileable(belt, W, by0, by1):
    """Cut a belt rendered wider than W into a period-W strip whose rows by0:by1 wrap without a seam."""
    extra = belt.shape[1] - W
    tile = belt[:, :W].copy()
    w = np.linspace(0.0, 1.0, extra, dtype=np.float32)[None, :, None]
    # Column 0 must continue column W - 1, as belt column W does: fade from it into the original.
    # Only the moving belt: blending the fixed rails would leave ghosts of their bolt holes.
    tile[by0:by1, :extra] = belt[by0:by1, W:W + extra] * (1 - w) + belt[by0:by1, :extra] * w
    return tile


def _scroll(belt, shift, by0, by1):
    """A float32 frame: the belt between the rails moved right by ``shift`` pixels, the rails fixed."""
    frame = belt.copy()
    if shift:
        W = belt.shape[1]
        frame[by0:by1, shift:] = belt[by0:by1, :W - shift]
        frame[by0:by1, :shift] = belt[by0:by1, W - shift:]
    return frame


def _expose(frame, gain, rng):
    """Apply the fixed gain and fresh sensor noise per frame; to uint8 BGR."""
    H, W = frame.shape[:2]
    img = cv2.multiply(frame, gain)
    amp = 7.0
    lum = (rng.random((H, W), dtype=np.float32) - 0.5) * amp
    img += cv2.cvtColor(lum, cv2.COLOR_GRAY2BGR)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _open_writer(out_path: Path, fps: float, size_wh):
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    options = [("mp4v", out_path)] if out_path.suffix.lower() == ".mp4" else []
    options.append(("MJPG", out_path.with_suffix(".avi")))
    for codec, path in options:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), tuple(size_wh))
        if writer.isOpened():
            return writer, path, codec
        writer.release()
        tried.append(f"{codec} -> {path.name}")
    raise RuntimeError(f"this OpenCV cannot write video ({'; '.join(tried)} failed); install an OpenCV "
                       "build with FFmpeg, for example `pip install opencv-python-headless`")

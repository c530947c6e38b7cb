"""Write a synthetic inspection-line data set: ``images/``, ``scenes.jsonl``, ``instructions.jsonl``.

Scene ``i`` of seed ``s`` is drawn from its own ``SeedSequence([s, i])``, so the output does not
depend on the number of workers or on the order in which they finish.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from promptdet.data.formats.jsonl import iter_jsonl, write_pairs
from promptdet.data.pairs import DataFormatError
from promptdet.data.synth.instruct import generate_instructions
from promptdet.data.synth.render import DefectMix, render_scene

_INSTRUCTION_STREAM = 7919  # keeps instruction draws independent of the rendering draws


@dataclass
class SynthReport:
    out_dir: Path
    num_images: int = 0
    num_objects: int = 0
    pairs_per_type: Counter = field(default_factory=Counter)

    @property
    def num_pairs(self) -> int:
        return sum(self.pairs_per_type.values())


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def instruction_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, _INSTRUCTION_STREAM]))


def _render_one(job: tuple) -> dict:
    seed, index, size_wh, out_dir, defect_mix = job
    rng = scene_rng(seed, index)
    image, objects = render_scene(rng, size_wh, defect_mix=defect_mix)
    name = f"images/{index:06d}.jpg"
    quality = int(rng.integers(70, 96))  # real line cameras vary; the model must not key on one quality
    if not cv2.imwrite(str(Path(out_dir) / name), image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {Path(out_dir) / name}")
    keep = ("id", "category", "color", "defects", "bbox", "visible_px", "visible_frac", "angle")
    objects = [{k: o[k] for k in keep if k in o} for o in objects]
    return {"image": name, "width": size_wh[0], "height": size_wh[1], "objects": objects}


def _progress(total: int, desc: str, show: bool | None):
    # A bar only where a person watches (stderr is a TTY), never in logs or pipes.
    disable = not (sys.stderr.isatty() if show is None else show)
    return tqdm(total=total, desc=desc, unit="img", disable=disable, file=sys.stderr)


def synthesize(out_dir: str | Path, num: int, seed: int = 0, size_wh: tuple[int, int] = (640, 480),
               workers: int = 0, instruct: bool = True, split: str = "train", per_image: int = 6,
               absent_rate: float = 0.2, progress: bool | None = None,
               defect_mix: DefectMix | None = None) -> SynthReport:
    """Render ``num`` scenes into ``out_dir`` and, unless ``instruct`` is False, their instructions.

    workers: processes to render with; 0 means one per CPU core. defect_mix: how often parts are
    damaged and which kinds (None: the default draw).
    """
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    if size_wh[0] < 160 or size_wh[1] < 120:
        raise ValueError(f"--size must be at least 160x120, got {size_wh[0]}x{size_wh[1]}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    workers = workers or (mp.cpu_count() or 1)
    jobs = [(seed, i, tuple(size_wh), str(out), defect_mix) for i in range(num)]
    scenes: list[dict] = []
    with _progress(num, "render", progress) as bar:
        if workers == 1 or num < 8:
            for job in jobs:
                scenes.append(_render_one(job))
                bar.update()
        else:
            with mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers) as pool:
                for scene in pool.imap(_render_one, jobs, chunksize=4):
                    scenes.append(scene)
                    bar.update()
    return write_scene_set(out, scenes, instruct, seed=seed, split=split, per_image=per_image,
                           absent_rate=absent_rate)


def write_scene_set(out: Path, scenes: list[dict], instruct: bool, **instruction_args) -> SynthReport:
    """Write ``scenes.jsonl`` (and ``instructions.jsonl`` unless ``instruct`` is False) for rendered scenes."""
    with (out / "scenes.jsonl").open("w", encoding="utf-8") as fh:
        for scene in scenes:
            fh.write(json.dumps(scene) + "\n")
    report = SynthReport(out, num_images=len(scenes), num_objects=sum(len(s["objects"]) for s in scenes))
    if instruct:
        report.pairs_per_type = write_instructions(scenes, out / "instructions.jsonl", **instruction_args)
    return report


def read_scenes(path: str | Path) -> list[dict]:
    """Read ``scenes.jsonl``; a malformed line raises DataFormatError naming file, line and field."""
    path = Path(path)
    if path.is_dir():
        path = path / "scenes.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no scenes file at {path}")
    scenes = []
    for n, rec in iter_jsonl(path):
        for key in ("image", "width", "height", "objects"):
            if not isinstance(rec, dict) or key not in rec:
                raise DataFormatError(str(path), n, key, "missing")
        for j, obj in enumerate(rec["objects"]):
            for key in ("id", "category", "color", "defects", "bbox"):
                if key not in obj:
                    raise DataFormatError(str(path), n, f"objects[{j}].{key}", "missing")
        scenes.append(rec)
    return scenes


def write_instructions(scenes: list[dict], path: str | Path, seed: int = 0, split: str = "train",
                       per_image: int = 6, absent_rate: float = 0.2) -> Counter:
    """Write ``instructions.jsonl`` for ``scenes``; returns the number of pairs per type."""
    counts: Counter = Counter()

    def pairs():
        for index, scene in enumerate(scenes):
            for pair in generate_instructions(scene, instruction_rng(seed, index), split, per_image, absent_rate):
                counts[pair.type] += 1
                yield pair

    write_pairs(pairs(), path)
    return counts

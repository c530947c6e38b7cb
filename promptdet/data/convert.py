"""Convert a foreign dataset into the project's instruction JSONL (``promptdet data convert``).

Writes ``out_dir/instructions.jsonl``. Its ``image`` fields are relative to ``out_dir``: a
relative path to the source image, or ``images/...`` when the images are copied. Formats with
per-box labels (coco, yolo) also write ``out_dir/labels.jsonl``: the boxes with their classes and
attributes, from which ``promptdet data instruct --vocab`` words instructions of every type.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptdet.data.formats import get_importer
from promptdet.data.formats.jsonl import write_pairs
from promptdet.data.pairs import InstructionPair
from promptdet.data.user_instruct import LABELS_NAME, to_scenes, user_instructions
from promptdet.data.user_vocab import UserVocab

OUT_NAME = "instructions.jsonl"


@dataclass
class ConvertReport:
    """pairs_by_type: instruction type -> pairs written; images: distinct images written;
    source_images: images the importer read; skipped: reason -> count."""

    out_path: Path
    pairs_by_type: dict[str, int] = field(default_factory=dict)
    images: int = 0
    source_images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_pairs(self) -> int:
        return sum(self.pairs_by_type.values())

    def summary(self) -> str:
        by_type = ", ".join(f"{k}: {v}" for k, v in sorted(self.pairs_by_type.items())) or "none"
        lines = [f"wrote {self.num_pairs} pairs ({by_type}) over {self.images} images to {self.out_path}"]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())))
        return "\n".join(lines)


def _copy_dest(image: str) -> str:
    # Keep sub-folders so equal file names cannot collide, but never nest images/images/ or let an
    # absolute or ../ path write outside out_dir.
    parts = [p for p in Path(image).parts[len(Path(image).anchor) > 0:] if p not in ("..", ".")]
    if parts and parts[0] == "images":
        parts = parts[1:]
    return Path("images", *parts).as_posix()


def _escapes(image: str) -> bool:
    """True for a name that points outside the images folder: absolute, or climbing out with '..'."""
    text = image.replace("\\", "/")
    if Path(image).is_absolute() or Path(image).drive or text.startswith("/"):
        return True
    depth = 0
    for part in text.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _out_image(src_image: Path, out_dir: Path) -> str:
    try:
        return Path(os.path.relpath(src_image, out_dir)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return src_image.resolve().as_posix()


def _labels_out(rec: dict, image: str, images_dir: Path) -> dict:
    """A labels record under its written image name, its size read from the image where the labels lack it."""
    from promptdet.data.formats.yolo import image_size_wh

    width, height = rec["width"], rec["height"]
    if width is None or height is None:
        width, height = image_size_wh(images_dir / rec["image"])
    return {**rec, "image": image, "width": width, "height": height}


def convert(fmt: str, src: Path, out_dir: Path, *, seed: int = 0, split: str | None = None,
            templates: str = "train", absent_rate: float = 0.2, copy_images: bool = False,
            images_root: Path | None = None, overwrite: bool = False, vocab: UserVocab | None = None,
            per_image: int = 6, **options: Any) -> ConvertReport:
    """Import ``src`` in format ``fmt`` and write ``out_dir/instructions.jsonl``.

    split: the dataset split to read where the format has one (refcoco, yolo); templates: the
    instruction template set ("train" or "test"). ``options`` go to the importer (odvg: label_map).
    vocab: a dataset vocabulary; instead of category and absent pairs, ``per_image`` instructions
    of every type the labels support are written (coco and yolo only).
    Pairs whose image file does not exist are left out and counted as ``image_missing`` (per image);
    if no image exists at all, that is an error, as images_root is then almost surely wrong.
    """
    importer = get_importer(fmt)
    params = inspect.signature(importer).parameters
    for key in options:
        if key not in params:
            raise ValueError(f"the {fmt} importer takes no option {key!r}")
    out_dir = Path(out_dir)
    out_path = out_dir / OUT_NAME
    for existing in (out_path, out_dir / LABELS_NAME):
        if existing.exists() and not overwrite:
            raise FileExistsError(f"{existing} exists; choose another output folder or pass overwrite")

    result = importer(Path(src), images_root=images_root, seed=seed, split=split, templates=templates,
                      absent_rate=absent_rate, **options)
    if vocab is not None:
        if result.labels is None:
            raise ValueError(f"--vocab needs per-box labels, which the {fmt} format does not have (use coco or yolo)")
        to_scenes(result.labels, vocab, str(src), by_image=True)  # every attribute declared, before any copy
    skipped = Counter(result.skipped)
    images_dir = Path(result.images_dir)

    exists: dict[str, bool] = {}
    unsafe = {p.image for p in result.pairs if _escapes(p.image)}
    if unsafe:  # '../../etc/passwd' must never be read, let alone copied into the data set
        skipped["path_outside_images"] += len(unsafe)
    for pair in result.pairs:
        if pair.image not in exists and pair.image not in unsafe:
            exists[pair.image] = (images_dir / pair.image).is_file()
    if exists and not any(exists.values()):
        example = next(iter(exists))
        raise FileNotFoundError(f"none of the {len(exists)} images were found under {images_dir} "
                                f"(e.g. {images_dir / example}); point --images (images_root) at the image folder")
    missing = sum(1 for ok in exists.values() if not ok)
    if missing:
        skipped["image_missing"] += missing

    out_dir.mkdir(parents=True, exist_ok=True)
    renamed: dict[str, str] = {}
    taken: dict[str, str] = {}
    for image, ok in exists.items():
        if not ok:
            continue
        if copy_images:
            dest = _copy_dest(image)
            if taken.setdefault(dest, image) != image:
                raise ValueError(f"images {taken[dest]!r} and {image!r} would both be copied to {dest}; "
                                 "rename one, or convert without --copy-images")
            (out_dir / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(images_dir / image, out_dir / dest)
            renamed[image] = dest
        else:
            renamed[image] = _out_image(images_dir / image, out_dir)

    labels = None
    if result.labels is not None:
        labels = [_labels_out(rec, renamed[rec["image"]], images_dir) for rec in result.labels if rec["image"] in renamed]
    if vocab is not None:
        written = user_instructions(labels, vocab, seed=seed, split=templates, per_image=per_image,
                                    absent_rate=absent_rate, path=str(out_dir / LABELS_NAME))
    else:
        written = [InstructionPair(renamed[p.image], p.instruction, p.boxes_xyxy, p.type, p.object_ids, p.extra)
                   for p in result.pairs if p.image in renamed]
    write_pairs(written, out_path)
    if labels is not None:
        with (out_dir / LABELS_NAME).open("w", encoding="utf-8") as fh:
            for rec in labels:
                fh.write(json.dumps(rec) + "\n")
    return ConvertReport(
        out_path=out_path,
        pairs_by_type=dict(sorted(Counter(p.type for p in written).items())),
        images=len({p.image for p in written}),
        source_images=result.num_images,
        skipped={k: skipped[k] for k in sorted(skipped)},
    )

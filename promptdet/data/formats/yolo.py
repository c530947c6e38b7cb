"""YOLO txt labels -> ``category`` and ``absent`` instruction pairs.

Layout (Ultralytics / Darknet)::

    root/data.yaml            names: [cat, dog] or {0: cat, 1: dog}; optional train:/val:/test: folders
      or root/classes.txt     one class name per line
    root/images/.../a.jpg
    root/labels/.../a.txt     one "class cx cy w h" per line, normalised to [0, 1]

A label path is its image path with the last ``images`` folder replaced by ``labels`` and the
suffix by ``.txt``. An image without a label file is a background image (no objects).

Per-box attributes, optional, go in a side file beside the label file, ``labels/.../a.attrs.txt``:
line n holds the comma-separated attribute names of the box on line n of ``a.txt`` (``mono,
defective``); an empty line means none. They go to ``ImportResult.labels``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from promptdet.config import safe_yaml
from promptdet.data.formats.base import (
    ImageLabels,
    ImportResult,
    as_dict,
    attribute_name,
    category_pairs,
    check_options,
    labels_record,
)
from promptdet.data.pairs import DataFormatError
from promptdet.limits import MAX_LABEL_LINES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_FIELDS = ("class", "cx", "cy", "w", "h")
_EXIF_ORIENTATION = 0x0112
ATTRS_SUFFIX = ".attrs.txt"


def read_class_names(path: Path) -> list[str]:
    """Class names from a ``data.yaml`` (``names:`` list or dict) or a ``classes.txt``; index = class id."""
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = safe_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = None if line is None else line + 1
            raise DataFormatError(str(path), where, None, f"invalid YAML ({exc})") from None
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            try:
                by_id = {int(k): str(v).strip() for k, v in names.items()}
            except (TypeError, ValueError):
                raise DataFormatError(str(path), None, "names", "dict keys must be class indices 0..n-1") from None
            if sorted(by_id) != list(range(len(by_id))):
                raise DataFormatError(str(path), None, "names",
                                      f"class indices must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
            names = [by_id[i] for i in range(len(by_id))]
        if not isinstance(names, list):
            raise DataFormatError(str(path), None, "names", "missing; expected a list or an {index: name} dict")
        names = [str(n).strip() for n in names]
    else:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, name in enumerate(names):
        if not name:
            raise DataFormatError(str(path), None, f"names[{i}]", "empty class name")
    return names


def _find_names_file(src: Path) -> Path:
    if src.is_file():
        return src
    for name in ("data.yaml", "dataset.yaml", "classes.txt"):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{src}: no data.yaml or classes.txt with the class names; pass the file as SRC")


def _split_dirs(names_file: Path, root: Path, split: str) -> list[Path]:
    data = safe_yaml(names_file.read_text(encoding="utf-8")) if names_file.suffix in (".yaml", ".yml") else None
    entry = data.get(split) if isinstance(data, dict) else None
    if entry is None:
        raise ValueError(f"{names_file}: no '{split}:' entry; a YOLO --split must be a data.yaml key "
                         "(train, val, test)")
    dirs = [root / str(e) for e in (entry if isinstance(entry, list) else [entry])]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{names_file}: '{split}:' folder {d} does not exist "
                                    "(image-list .txt files are not supported)")
    return dirs


def label_path(image: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt``; a label beside the image if no ``images`` folder."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = str(image)
    return Path(sb.join(s.rsplit(sa, 1)) if sa in s else s).with_suffix(".txt")


def image_size_wh(path: Path) -> tuple[int, int]:
    """(width, height) as an EXIF-honouring loader (cv2.imread) sees the image.

    Normalised labels are relative to that upright image, so a phone photo stored rotated must
    have width and height swapped. PIL reads only the header; cv2 decodes the whole file.
    """
    try:
        from PIL import Image
    except ImportError:
        import cv2

        im = cv2.imread(str(path))
        if im is None:
            raise DataFormatError(str(path), None, None, "cannot read the image to get its size") from None
        return im.shape[1], im.shape[0]
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                w, h = h, w
    except OSError as exc:
        raise DataFormatError(str(path), None, None, f"cannot read the image to get its size ({exc})") from None
    return w, h


def attrs_path(label: Path) -> Path:
    """``labels/a.txt`` -> ``labels/a.attrs.txt``, the side file of its boxes' attributes."""
    return label.with_name(label.stem + ATTRS_SUFFIX)


def read_attrs_file(path: Path, label_lines: list[str]) -> list[tuple[str, ...]]:
    """Attribute names per line of the label file (``()`` for a line without any)."""
    if path.stat().st_size > MAX_LABEL_LINES * 256:
        raise DataFormatError(str(path), None, None, f"{path.stat().st_size} bytes; an attributes file has at most "
                              f"{MAX_LABEL_LINES} lines (promptdet.limits.MAX_LABEL_LINES)")
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[tuple[str, ...]] = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            out.append(())
            continue
        if line_no > len(label_lines) or not label_lines[line_no - 1].strip():
            raise DataFormatError(str(path), line_no, "attributes",
                                  f"names attributes, but line {line_no} of {path.name[:-len(ATTRS_SUFFIX)]}.txt "
                                  "holds no box (line n holds the attributes of the box on line n)")
        names = [attribute_name(n, path, line_no, "attributes") for n in line.split(",")]
        out.append(tuple(dict.fromkeys(names)))
    return out + [()] * (len(label_lines) - len(out))


def read_label_file(path: Path, image: Path, names: list[str], rel: str, skipped: Counter) -> ImageLabels:
    labels = ImageLabels(rel)
    if path.stat().st_size > MAX_LABEL_LINES * 64:  # a line is 'c cx cy w h': far under 64 bytes
        raise DataFormatError(str(path), None, None, f"{path.stat().st_size} bytes; a label file is at most "
                              f"{MAX_LABEL_LINES} lines (promptdet.limits.MAX_LABEL_LINES)")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) > MAX_LABEL_LINES:
        raise DataFormatError(str(path), None, None, f"{len(lines)} lines; a label file is at most {MAX_LABEL_LINES}")
    side = attrs_path(path)
    attrs = read_attrs_file(side, lines) if side.is_file() else [()] * len(lines)
    size_wh: tuple[int, int] | None = None
    for line_no, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise DataFormatError(str(path), line_no, None, f"expected 'class cx cy w h', got {line.strip()!r} "
                                  "(segmentation and pose labels are not supported)")
        try:
            cls = int(parts[0])
        except ValueError:
            raise DataFormatError(str(path), line_no, "class", f"expected an integer, got {parts[0]!r}") from None
        if not 0 <= cls < len(names):
            raise DataFormatError(str(path), line_no, "class", f"{cls} is not a class index 0..{len(names) - 1}")
        vals = []
        for field_name, text in zip(_FIELDS[1:], parts[1:]):
            try:
                v = float(text)
            except ValueError:
                v = float("nan")
            if not 0.0 <= v <= 1.0:  # also catches nan
                raise DataFormatError(str(path), line_no, field_name,
                                      f"expected a number normalised to [0, 1], got {text!r}")
            vals.append(v)
        cx, cy, w, h = vals
        if w == 0 or h == 0:
            skipped["degenerate_box"] += 1
            labels.add(names[cls], None)
            continue
        if size_wh is None:
            size_wh = image_size_wh(image)
        iw, ih = size_wh
        labels.add(names[cls], [(cx - w / 2) * iw, (cy - h / 2) * ih, (cx + w / 2) * iw, (cy + h / 2) * ih],
                   attributes=attrs[line_no - 1])
    labels.size_wh = size_wh
    return labels


def import_yolo(src: Path, *, images_root: Path | None = None, seed: int = 0, split: str | None = None,
                templates: str = "train", absent_rate: float = 0.2) -> ImportResult:
    """A YOLO dataset -> category/absent pairs.

    src: the dataset folder, or its ``data.yaml`` / ``classes.txt``. images_root: the folder holding
    ``images/`` and ``labels/`` (default: the folder of the names file). split: a ``data.yaml`` key
    (``train``, ``val``, ``test``) naming image folders; None reads every image under ``images/``.
    A ``path:`` in data.yaml is ignored: Ultralytics resolves it against its own settings folder,
    which says nothing about where this copy lives; pass images_root instead.
    """
    src = Path(src)
    check_options(absent_rate, templates)
    names_file = _find_names_file(src)
    names = read_class_names(names_file)
    root = Path(images_root) if images_root is not None else names_file.parent
    if split is not None:
        image_dirs = _split_dirs(names_file, root, split)
    elif (root / "images").is_dir():
        image_dirs = [root / "images"]
    else:
        raise FileNotFoundError(f"{root}: no images/ folder; point --images (images_root) at the folder holding images/ and labels/")

    images = sorted({p for d in image_dirs for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()})
    skipped: Counter = Counter()
    used_labels: set[Path] = set()
    per_image: list[ImageLabels] = []
    for image in images:
        rel = image.relative_to(root).as_posix() if image.is_relative_to(root) else str(image)
        lp = label_path(image)
        if lp.is_file():
            used_labels.add(lp)
            per_image.append(read_label_file(lp, image, names, rel, skipped))
        else:
            per_image.append(ImageLabels(rel))

    # A label with no image is data the user thinks they have; report it.
    for d in image_dirs:
        label_dir = label_path(d / "x.jpg").parent
        if label_dir != d and label_dir.is_dir():
            skipped["label_without_image"] += sum(1 for p in label_dir.rglob("*.txt")
                                                  if p not in used_labels and not p.name.endswith(ATTRS_SUFFIX))

    rng = np.random.default_rng(seed)
    pairs = category_pairs(per_image, list(dict.fromkeys(names)), rng=rng, templates=templates,
                           absent_rate=absent_rate, skipped=skipped)
    return ImportResult(pairs, as_dict(skipped), root, len(images), [labels_record(img) for img in per_image])

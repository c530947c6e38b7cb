"""ELPV solar cells tiled into module images, written as COCO with per-box attributes.

The ELPV data set (PyPI ``elpv-dataset``, CC BY-NC-SA 4.0, never vendored here) holds 2,624
electroluminescence images of single cells, 300 x 300 px, 8-bit grey, each with a defect
probability (0, 1/3, 2/3 or 1) and a type (mono or poly). A production line sees modules, not
cells, so cells of one type are tiled into 3 x 4 grids, as in a real module. Every cell is a box
of class ``cell`` with attributes: its type, and ``defective`` where the probability is >= 0.5.
Cells at 1/3 (the annotators' "probably fine") are left out of every module.

Cells whose number is divisible by 4 (``cell0004``, ``cell0008``, ...) are reserved for
acceptance: no train, val or test module holds one (``check_not_reserved``). Only the acceptance
modules (``reserved=True``, built by ``finetune_elpv.py --acceptance`` for whoever accepts a
model) are made of them, and of nothing else.

Used by ``benchmarks/finetune_elpv.py`` and its tests (with fake cell arrays).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROWS, COLS = 3, 4  # a module: 3 rows of 4 cells
CELL_CLASS = "cell"
DEFECT_ATTR = "defective"
INSTALL_HINT = "pip install elpv-dataset  (or pip install -e '.[elpv]'; the data is CC BY-NC-SA 4.0)"


@dataclass(frozen=True)
class Cell:
    """One ELPV cell: ``number`` from its file name (``images/cell0042.png`` -> 42)."""

    number: int
    probability: float
    kind: str  # "mono" or "poly"

    @property
    def defective(self) -> bool:
        return self.probability >= 0.5

    @property
    def undecided(self) -> bool:
        return bool(np.isclose(self.probability, 1 / 3))


@dataclass(frozen=True)
class Module:
    name: str
    kind: str
    cells: tuple[Cell, ...]  # row-major, ROWS * COLS

    @property
    def clean(self) -> bool:
        return not any(c.defective for c in self.cells)


def is_reserved(number: int) -> bool:
    """Reserved for acceptance: never in a train, val or test module."""
    return number % 4 == 0


def check_not_reserved(cells: Iterable[Cell]) -> None:
    """Refuse any reserved cell, loudly; every module passes through here before it is drawn."""
    assert not (bad := [c.number for c in cells if is_reserved(c.number)]), f"reserved ELPV cells (number % 4 == 0) tiled: {bad[:5]}"


def check_cells(cells: Iterable[Cell], reserved: bool = False) -> None:
    """``reserved=False``: no reserved cell (train, val and test modules). ``reserved=True``: only
    reserved ones (the acceptance modules, which nothing here trains, tunes or tests on)."""
    if not reserved:
        check_not_reserved(cells)
        return
    assert not (bad := [c.number for c in cells if not is_reserved(c.number)]), \
        f"an acceptance module holds cells that are not reserved: {bad[:5]}"


def acceptance_cells(cells: Iterable[Cell]) -> list[Cell]:
    """The reserved cells that may be tiled into acceptance modules (not at probability 1/3)."""
    return [c for c in cells if is_reserved(c.number) and not c.undecided]


def cell_number(path: str) -> int:
    m = re.search(r"cell(\d+)", path)
    if not m:
        raise ValueError(f"ELPV label path without a cell number: {path!r}")
    return int(m.group(1))


def load_elpv() -> tuple[list[Cell], dict[int, np.ndarray]]:
    """Every ELPV cell and its grey image [300, 300] uint8, keyed by cell number.

    ``elpv_dataset.utils.load_dataset()`` returns (images, probabilities, types) in the row order of
    the package's ``data/labels.csv``; the cell numbers come from the same file's first column.
    """
    try:
        import elpv_dataset.utils as elpv
    except ImportError:
        raise SystemExit(f"error: the ELPV data set is not installed: {INSTALL_HINT}") from None
    images, probs, types = elpv.load_dataset()
    labels = Path(elpv.__file__).parent / "data" / "labels.csv"
    paths = [line.split()[0] for line in labels.read_text().splitlines() if line.strip()]
    if len(paths) != len(images):
        raise SystemExit(f"error: {labels} has {len(paths)} rows but load_dataset() returned {len(images)} images")
    cells = [Cell(cell_number(p), float(pr), str(t)) for p, pr, t in zip(paths, probs, types)]
    return cells, {c.number: np.asarray(im) for c, im in zip(cells, images)}


def usable_cells(cells: Iterable[Cell]) -> list[Cell]:
    """Cells that may be tiled: not reserved, and not at probability 1/3."""
    return [c for c in cells if not is_reserved(c.number) and not c.undecided]


def split_cells(cells: Sequence[Cell], seed: int = 0, val: float = 0.1, test: float = 0.2) -> dict[str, list[Cell]]:
    """Disjoint train/val/test cells, drawn with ``seed`` within each (type, defective) group so that
    every split has both types and both outcomes in the data set's proportions."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Cell]] = {"train": [], "val": [], "test": []}
    groups: dict[tuple[str, bool], list[Cell]] = {}
    for c in sorted(cells, key=lambda c: c.number):
        groups.setdefault((c.kind, c.defective), []).append(c)
    for key in sorted(groups):
        group = [groups[key][i] for i in rng.permutation(len(groups[key]))]
        n_test, n_val = round(len(group) * test), round(len(group) * val)
        out["test"] += group[:n_test]
        out["val"] += group[n_test:n_test + n_val]
        out["train"] += group[n_test + n_val:]
    return out


def plan_modules(cells: Sequence[Cell], prefix: str, seed: int = 0, clean_share: float = 0.3,
                 repeats: int = 1, reserved: bool = False) -> list[Module]:
    """Modules of one type each, ``ROWS * COLS`` cells, no cell twice within one pass.

    About ``clean_share`` of each type's modules are built from functional cells only (a random
    module of 12 cells is almost never clean, and "nothing is defective here" must be asked and
    scored); the rest mix the remaining cells at random. Cells left over after the last full
    module of a pass are unused. ``repeats`` passes, each a new draw (more layouts of the same
    cells for training; keep 1 for val and test). ``reserved``: see ``check_cells``.
    """
    check_cells(cells, reserved)
    rng = np.random.default_rng(seed)
    n = ROWS * COLS
    modules: list[Module] = []
    for _ in range(repeats):
        for kind in sorted({c.kind for c in cells}):
            of_kind = sorted((c for c in cells if c.kind == kind), key=lambda c: c.number)
            good = [c for c in of_kind if not c.defective]
            good = [good[i] for i in rng.permutation(len(good))]
            n_clean = min(round(clean_share * (len(of_kind) // n)), len(good) // n)
            groups = [good[i * n:(i + 1) * n] for i in range(n_clean)]
            rest = good[n_clean * n:] + [c for c in of_kind if c.defective]
            rest = [rest[i] for i in rng.permutation(len(rest))]
            groups += [rest[i * n:(i + 1) * n] for i in range(len(rest) // n)]
            for g in (groups[i] for i in rng.permutation(len(groups))):
                modules.append(Module(f"{prefix}_{kind}_{len(modules):04d}", kind, tuple(g)))
    return modules


def tile(module: Module, images: dict[int, np.ndarray], cell_px: int = 300, gap: int = 8,
         reserved: bool = False) -> tuple[np.ndarray, list[list[float]]]:
    """The module's grey image [H, W] uint8 (dark gaps between cells, as between real cells) and
    each cell's box [x1, y1, x2, y2] in pixels, row-major."""
    import cv2

    check_cells(module.cells, reserved)
    h, w = ROWS * cell_px + (ROWS + 1) * gap, COLS * cell_px + (COLS + 1) * gap
    canvas = np.zeros((h, w), np.uint8)
    boxes = []
    for i, cell in enumerate(module.cells):
        r, c = divmod(i, COLS)
        x, y = gap + c * (cell_px + gap), gap + r * (cell_px + gap)
        im = images[cell.number]
        if im.ndim == 3:
            im = im[..., 0]
        if im.shape != (cell_px, cell_px):
            im = cv2.resize(im, (cell_px, cell_px), interpolation=cv2.INTER_AREA)
        canvas[y:y + cell_px, x:x + cell_px] = im
        boxes.append([float(x), float(y), float(x + cell_px), float(y + cell_px)])
    return canvas, boxes


def attributes(cell: Cell) -> list[str]:
    return [cell.kind] + ([DEFECT_ATTR] if cell.defective else [])


def write_coco(out_dir: Path, modules: Sequence[Module], images: dict[int, np.ndarray], cell_px: int = 300,
               gap: int = 8, reserved: bool = False) -> dict:
    """``out_dir/images/<module>.png`` and ``out_dir/instances.json`` (COCO, one category ``cell``,
    per-box ``attributes``), plus ``out_dir/modules.json``: which cell is where. Returns counts."""
    import cv2

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": CELL_CLASS}]}
    manifest = []
    for m in modules:
        canvas, boxes = tile(m, images, cell_px, gap, reserved)
        name = f"{m.name}.png"
        cv2.imwrite(str(out_dir / "images" / name), canvas)
        image_id = len(coco["images"]) + 1
        coco["images"].append({"id": image_id, "file_name": name, "width": canvas.shape[1], "height": canvas.shape[0]})
        for cell, (x1, y1, x2, y2) in zip(m.cells, boxes):
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                "attributes": attributes(cell),
                "elpv_cell": cell.number, "defect_probability": cell.probability})
        manifest.append({"image": name, "kind": m.kind, "clean": m.clean,
                         "cells": [[c.number, c.probability] for c in m.cells]})
    (out_dir / "instances.json").write_text(json.dumps(coco))
    (out_dir / "modules.json").write_text(json.dumps(manifest, indent=1))
    return {"modules": len(modules), "clean_modules": sum(m.clean for m in modules),
            "cells": sum(len(m.cells) for m in modules),
            "defective_cells": sum(c.defective for m in modules for c in m.cells)}


def probe_records(labels_jsonl: Path, defect_prompt: str, all_prompt: str) -> list[dict]:
    """The two questions of the benchmark on every module of a converted folder, as instruction
    records: ``defect_question`` (boxes carrying ``defective``; none on a clean module) and
    ``all_cells`` (every box). Computed from ``labels.jsonl`` alone."""
    records = []
    for line in Path(labels_jsonl).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        cells = [o for o in rec["objects"] if o["category"] == CELL_CLASS]
        defective = [o["bbox"] for o in cells if DEFECT_ATTR in o["attributes"]]
        records.append({"image": rec["image"], "instruction": defect_prompt, "type": "defect_question",
                        "boxes": defective})
        records.append({"image": rec["image"], "instruction": all_prompt, "type": "all_cells",
                        "boxes": [o["bbox"] for o in cells]})
    return records

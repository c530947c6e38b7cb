"""benchmarks/finetune_elpv.py on fake ELPV cells (the real package is not needed): the modules,
their boxes and attributes, the cells reserved for acceptance, the conversion into instructions,
and a tiny fine-tune end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO / "benchmarks" / "elpv_vocab.yaml"
PROBS = (0.0, 1 / 3, 2 / 3, 1.0, 0.0, 0.0)  # cycled over the cell numbers


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


E = _load("elpv_modules")


def fake_cells(n: int = 480, px: int = 16):
    """Cells 1..n: the first half mono, the rest poly; each image a flat grey of its own value."""
    cells = [E.Cell(i, PROBS[i % len(PROBS)], "mono" if i <= n // 2 else "poly") for i in range(1, n + 1)]
    images = {c.number: np.full((px, px), 10 + c.number % 240, np.uint8) for c in cells}
    return cells, images


def test_without_the_package_one_line_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)
    with pytest.raises(SystemExit) as err:
        E.load_elpv()
    message = str(err.value)
    assert message.startswith("error: ") and "pip install elpv-dataset" in message and "\n" not in message


def test_usable_cells_leave_out_reserved_and_undecided():
    cells, _ = fake_cells()
    usable = E.usable_cells(cells)
    assert usable and all(c.number % 4 and not np.isclose(c.probability, 1 / 3) for c in usable)
    left = {c.number for c in cells} - {c.number for c in usable}
    assert left == {c.number for c in cells if c.number % 4 == 0 or np.isclose(c.probability, 1 / 3)}


def test_split_cells_are_disjoint_and_fixed_by_the_seed():
    usable = E.usable_cells(fake_cells()[0])
    a, b, c = (E.split_cells(usable, seed=s) for s in (0, 0, 1))
    assert a == b and a != c
    sets = {k: {x.number for x in v} for k, v in a.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert set().union(*sets.values()) == {x.number for x in usable}
    for split in a.values():  # both types and both outcomes everywhere
        assert {(x.kind, x.defective) for x in split} == {(k, d) for k in ("mono", "poly") for d in (True, False)}


def test_modules_are_one_type_with_clean_ones_and_no_cell_twice():
    test_cells = E.split_cells(E.usable_cells(fake_cells()[0]), seed=0)["test"]
    modules = E.plan_modules(test_cells, "test", seed=0, clean_share=0.3)
    assert modules and all(len(m.cells) == E.ROWS * E.COLS for m in modules)
    assert all(len({c.kind for c in m.cells}) == 1 == (m.kind == m.cells[0].kind) for m in modules)
    numbers = [c.number for m in modules for c in m.cells]
    assert len(numbers) == len(set(numbers)) and set(numbers) <= {c.number for c in test_cells}
    assert any(m.clean for m in modules) and any(not m.clean for m in modules)
    twice = E.plan_modules(test_cells, "train", seed=0, repeats=2)
    assert len(twice) == 2 * len(modules)


def test_reserved_cells_are_refused_wherever_they_would_be_tiled(tmp_path):
    cells, images = fake_cells()
    with_reserved = [c for c in cells if not c.undecided][:40]  # holds cells 4, 8, 12, ...
    assert any(c.number % 4 == 0 for c in with_reserved)
    with pytest.raises(AssertionError, match="reserved"):
        E.plan_modules(with_reserved, "train")
    module = E.Module("m", "mono", tuple(with_reserved[:12]))
    with pytest.raises(AssertionError, match="reserved"):
        E.tile(module, images, 16, 2)
    with pytest.raises(AssertionError, match="reserved"):
        E.write_coco(tmp_path / "x", [module], images, 16, 2)
    assert not (tmp_path / "x" / "instances.json").exists()


def test_coco_has_a_box_per_cell_with_its_attributes(tmp_path):
    cells, images = fake_cells()
    modules = E.plan_modules(E.usable_cells(cells)[:60], "test", seed=0, clean_share=0.5)
    stats = E.write_coco(tmp_path, modules, images, cell_px=16, gap=2)
    coco = json.loads((tmp_path / "instances.json").read_text())
    assert stats["modules"] == len(coco["images"]) == len(modules) and stats["clean_modules"] >= 1
    assert coco["categories"] == [{"id": 1, "name": "cell"}]
    by_number = {c.number: c for c in cells}
    for im in coco["images"]:
        assert (im["width"], im["height"]) == (4 * 16 + 5 * 2, 3 * 16 + 4 * 2)
        pixels = cv2.imread(str(tmp_path / "images" / im["file_name"]), cv2.IMREAD_GRAYSCALE)
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == 12
        for a in anns:
            cell = by_number[a["elpv_cell"]]
            assert a["attributes"] == [cell.kind] + (["defective"] if cell.probability >= 0.5 else [])
            x, y, w, h = map(int, a["bbox"])
            assert (w, h) == (16, 16) and (pixels[y:y + h, x:x + w] == images[cell.number]).all()
            assert cell.number % 4 and not cell.undecided
    assert {a["image_id"] for a in coco["annotations"] if "defective" in a["attributes"]} < {i["id"] for i in coco["images"]}


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PROMPTDET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "promptdet.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, check=False)


def test_the_coco_output_converts_into_instructions_and_questions(tmp_path):
    cells, images = fake_cells()
    modules = E.plan_modules(E.usable_cells(cells)[:96], "val", seed=0, clean_share=0.3)
    E.write_coco(tmp_path / "coco", modules, images, cell_px=16, gap=2)
    r = run_cli("data", "convert", "--from", "coco", tmp_path / "coco" / "instances.json", "--out", tmp_path / "pairs",
                "--vocab", VOCAB, "--split", "test")
    assert r.returncode == 0, r.stderr
    pairs = [json.loads(x) for x in (tmp_path / "pairs" / "instructions.jsonl").read_text().splitlines()]
    assert {"category", "defect", "attribute"} <= {p["type"] for p in pairs}
    coco = json.loads((tmp_path / "coco" / "instances.json").read_text())
    probes = E.probe_records(tmp_path / "pairs" / "labels.jsonl", "defective cells", "all cells")
    assert len(probes) == 2 * len(modules)
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        mine = {p["type"]: p for p in probes if Path(p["image"]).name == im["file_name"]}
        want = sorted([x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns if "defective" in a["attributes"]))
        assert sorted(mine["defect_question"]["boxes"]) == want
        assert len(mine["all_cells"]["boxes"]) == 12
    assert any(not p["boxes"] for p in probes if p["type"] == "defect_question")  # a clean module


def test_order_invariance_with_fewer_than_three_prompts(tmp_path):
    import torch

    from promptdet.config import ModelConfig
    from promptdet.data.pairs import InstructionPair
    from promptdet.model.detector import PromptDetector
    from promptdet.text.encoder import TextEncoder
    from promptdet.train.validate import order_invariance

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
    torch.manual_seed(0)
    model = PromptDetector(ModelConfig(imgsz=64, max_candidates=16, max_tokens=32)).eval()
    pairs = [InstructionPair("a.png", "all cells"), InstructionPair("a.png", "defective cells")]
    assert order_invariance(model, TextEncoder(None, 32), pairs, tmp_path, 64) < 1e-4


def test_a_tiny_finetune_runs_end_to_end(tmp_path, monkeypatch, save_tiny_checkpoint):
    bench = _load("finetune_elpv")
    monkeypatch.setattr(bench.E, "load_elpv", lambda: fake_cells(px=16))
    out = tmp_path / "run"
    code = bench.main(["--out", str(out), "--weights", str(save_tiny_checkpoint()), "--cell-px", "16", "--gap", "2",
                       "--max-modules", "4", "--max-steps", "1", "--imgsz", "64", "--batch", "2", "--per-image", "4",
                       "--no-anchor", "--skip-synthetic", "--no-replay"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"before", "after_no_replay"}
    assert summary["data"]["test"]["clean_modules"] >= 1
    probes = summary["models"]["after_no_replay"]["probes"]
    assert set(probes) == {"defect_AP50", "all_cells_AP50", "clean_modules_with_a_box"}
    manifest = [json.loads((out / "elpv" / s / "modules.json").read_text()) for s in ("train", "val", "test")]
    numbers = [n for m in manifest for mod in m for n, _ in mod["cells"]]
    assert numbers and all(n % 4 for n in numbers)
    import promptdet

    assert promptdet.load(out / "runs" / "no_replay").cfg.imgsz == 64
    # calibrated on the modules: the checkpoint a user deploys, and its abstention on the test modules
    abstention = summary["abstention"]
    assert abstention["test_modules"] >= 1
    for key in ("modules_called_unfamiliar", "elpv_questions_called_unknown", "foreign_questions_called_known"):
        assert 0.0 <= abstention[key] <= 1.0, key
    calibrated = promptdet.load(abstention["checkpoint"])
    assert float(calibrated.detector.familiarity.calibrated) == 1.0



def test_acceptance_modules_hold_only_reserved_cells_and_are_scored(tmp_path, monkeypatch, save_tiny_checkpoint):
    bench = _load("finetune_elpv")
    monkeypatch.setattr(bench.E, "load_elpv", lambda: fake_cells(px=16))
    out = tmp_path / "acc"
    assert bench.main(["--out", str(out), "--acceptance", str(save_tiny_checkpoint()), "--cell-px", "16", "--gap", "2",
                       "--max-modules", "3", "--imgsz", "64"]) == 0
    numbers = [n for mod in json.loads((out / "elpv" / "acceptance" / "modules.json").read_text()) for n, _ in mod["cells"]]
    assert len(numbers) == 36 and all(n % 4 == 0 for n in numbers)
    res = json.loads((out / "acceptance.json").read_text())
    assert set(res["probes"]) == {"defect_AP50", "all_cells_AP50", "clean_modules_with_a_box"}
    assert res["probes"]["all_cells_AP50"] is not None and "absent (FP rate)" in res["types"]
    assert not (out / "runs").exists()  # nothing trained
    # acceptance modules refuse any other cell, as the other modules refuse reserved ones
    cells, _ = fake_cells()
    with pytest.raises(AssertionError, match="not reserved"):
        E.plan_modules(E.usable_cells(cells)[:24], "acceptance", reserved=True)
    with pytest.raises(SystemExit, match="no such checkpoint"):
        bench.main(["--out", str(out), "--acceptance", str(tmp_path / "missing")])


def test_the_anchor_dataset_has_a_yolo_label_per_cell(tmp_path):
    A = _load("elpv_anchor")
    cells, images = fake_cells()
    modules = E.plan_modules(E.usable_cells(cells)[:60], "train", seed=0, clean_share=0.3)
    E.write_coco(tmp_path / "coco", modules, images, cell_px=16, gap=2)
    data = A.write_yolo_dataset({"train": tmp_path / "coco", "val": tmp_path / "coco"}, tmp_path / "yolo")
    assert "names:" in data.read_text()
    coco = json.loads((tmp_path / "coco" / "instances.json").read_text())
    for im in coco["images"]:
        assert (tmp_path / "yolo" / "train" / "images" / im["file_name"]).is_file()
        rows = [r.split() for r in (tmp_path / "yolo" / "train" / "labels" / im["file_name"].replace(".png", ".txt"))
                .read_text().split("\n") if r]
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert [int(r[0]) for r in rows] == [int("defective" in a["attributes"]) for a in anns]
        for r, a in zip(rows, anns):
            x, _y, w, h = a["bbox"]
            cx, _cy, _bw, bh = map(float, r[1:])
            assert cx * im["width"] == pytest.approx(x + w / 2, abs=1e-3) and bh * im["height"] == pytest.approx(h, abs=1e-3)

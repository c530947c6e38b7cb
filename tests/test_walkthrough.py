"""The README's "Fine-tune on your own data" walkthrough, run as written on a tiny labelled folder.

The commands are read from the README itself, so the docs and the command line cannot drift apart.
Only sizes are shrunk (a tiny starting model, 64 px, batch 2, one step instead of `--time`) and the
synthetic line is a tiny rendered set instead of `data/inspection`; every such swap must match the
README's text, or the test fails and names the one that no longer does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import settle_tiny_detector

REPO = Path(__file__).resolve().parents[1]
SECTION = ("## Fine-tune on your own data", "### Worked example")

VOCAB = """\
classes:
  cell: {synonyms: [solar cell]}
attributes:
  defective: {kind: defect, synonyms: [cracked]}
  mono: {kind: type}
  poly: {kind: type}
"""


def walkthrough() -> tuple[list[str], str, list[str]]:
    """(shell commands, the data YAML, the inline `promptdet ...` commands of the last step)."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION[0])
    section = text[start:text.index(SECTION[1], start)]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)
    commands = [line.strip() for lang, body in blocks if lang == "bash"
                for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    (data_yaml,) = [body for lang, body in blocks if lang == "yaml"]
    inline = re.findall(r"`(promptdet (?:detect|export) [^`]+)`", section)
    return commands, data_yaml, inline


def write_coco(path: Path, images: list[tuple[str, list[list[str]]]]) -> None:
    """One COCO file; each image holds a row of cells, one box per attribute list."""
    rng = np.random.default_rng(len(images))
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    for image_id, (name, cells) in enumerate(images, 1):
        img = rng.integers(0, 60, (96, 128, 3), np.uint8)
        for i, attrs in enumerate(cells):
            x = 8 + 40 * i
            img[24:72, x:x + 32] = 170
            if "defective" in attrs:
                img[30:66, x + 15:x + 17] = 20  # a crack
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                        "bbox": [x, 24, 32, 48], "iscrowd": 0, "attributes": attrs})
        coco["images"].append({"id": image_id, "file_name": name, "width": 128, "height": 96})
        assert cv2.imwrite(str(path.parent / "images" / name), img)
    path.write_text(json.dumps(coco))


@pytest.fixture
def labelled_folder(tmp_path, save_tiny_checkpoint):
    """A user's working folder: labels/{train,val,test}.json, vocab.yaml, a module to detect on, and
    the synthetic line (rendered tiny) that the replay and the second check use."""
    from promptdet.data.synth.generate import synthesize

    (tmp_path / "labels" / "images").mkdir(parents=True)
    cells = [["mono", "defective"], ["mono"], ["mono"]], [["poly"], ["poly", "defective"]], [["mono"], ["mono"]]
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_coco(tmp_path / "labels" / f"{split}.json",
                   [(f"{split}{i}.png", cells[i % len(cells)]) for i in range(n)])
    (tmp_path / "vocab.yaml").write_text(VOCAB)
    assert cv2.imwrite(str(tmp_path / "module.png"), np.full((96, 128, 3), 90, np.uint8))
    synth = tmp_path / "synthetic"
    synthesize(synth / "train", 6, seed=0, size_wh=(160, 120), workers=1, per_image=4, progress=False)
    synthesize(synth / "test", 3, seed=1, size_wh=(160, 120), workers=1, per_image=4, progress=False)
    (synth / "line.yaml").write_text("name: line\nroot: .\ntrain:\n  - {path: train, format: synth}\n"
                                     "val:\n  - {path: test, format: synth}\ntest:\n  - {path: test, format: synth}\n")
    import torch

    from promptdet.config import ModelConfig
    from promptdet.model.detector import PromptDetector

    torch.manual_seed(0)  # a settled model: an untrained one ties its scores and fails export's parity check
    start = save_tiny_checkpoint(settle_tiny_detector(PromptDetector(ModelConfig(imgsz=64, max_candidates=16))))
    return tmp_path, start, synth / "line.yaml"


def shrink(command: str, swaps: dict[str, str], used: set[str]) -> list[str]:
    for old, new in swaps.items():
        if old in command:
            command = command.replace(old, new)
            used.add(old)
    args = shlex.split(command)
    assert args[0] == "promptdet", command
    return [sys.executable, "-m", "promptdet.cli.main", *args[1:]]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PROMPTDET_DEBUG", None)
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600, check=False)


def test_the_walkthrough_runs_as_written(labelled_folder):
    cwd, tiny, line_yaml = labelled_folder
    commands, data_yaml, inline = walkthrough()
    # every step of the walkthrough is there: convert x3, instruct, train, val x2, calibrate; then detect, export
    verbs = [shlex.split(c)[1] for c in commands]
    assert verbs == ["data"] * 4 + ["train", "val", "val", "calibrate"], verbs
    assert [shlex.split(c)[1] for c in inline] == ["detect", "export"], inline
    (cwd / "data").mkdir()
    (cwd / "data" / "mine.yaml").write_text(data_yaml)

    swaps = {"promptdet/assets/promptdet-n.safetensors": str(tiny), "datasets/inspection.yaml": str(line_yaml),
             "--time 0.2": "--max-steps 1", "--imgsz 640": "--imgsz 64", "--batch 8": "--batch 2",
             "--per-image 24": "--per-image 6"}
    used: set[str] = set()
    for command in commands + inline:
        r = run(shrink(command, swaps, used), cwd)
        assert r.returncode == 0, f"{command}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, command
    assert used == set(swaps), f"the README no longer holds {set(swaps) - used}"

    # what each step promised is there
    for split in ("train", "val", "test"):
        assert (cwd / "data" / "mine" / split / "instructions.jsonl").stat().st_size > 0, split
    test_types = {json.loads(x)["type"] for x in (cwd / "data/mine/test/instructions.jsonl").read_text().splitlines()}
    assert "defect" in test_types, test_types
    meta = json.loads((cwd / "runs" / "mine" / "best.json").read_text())
    assert meta["train_args"]["replay"] == str(line_yaml) and meta["train_args"]["freeze_bn"] is True
    import promptdet

    model = promptdet.load(cwd / "runs" / "mine" / "calibrated.safetensors")
    assert float(model.detector.familiarity.calibrated) == 1.0
    result = model.detect(str(cwd / "module.png"), "cracked cells", abstain=False)
    assert 0.0 <= result.familiarity <= 1.0 and len(result.boxes_xyxy) == len(result.scores)
    assert any(p.suffix == ".onnx" for p in (cwd / "export" / "mine").iterdir())

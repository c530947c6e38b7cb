"""The `promptdet` command: subcommands, exit codes, one-line errors, deterministic synth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptdet.cli.main import app

runner = CliRunner()
SUBCOMMANDS = ("detect", "train", "val", "export", "data", "inspect", "checks")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PROMPTDET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "promptdet.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output


def test_data_help_names_defaults():
    result = runner.invoke(app, ["data", "synth", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "640x480" in result.output and "0.2" in result.output


def test_checks_runs():
    result = run_cli("checks")
    assert result.returncode == 0, result.stderr
    for key in ("promptdet", "onnxruntime providers", "text encoder", "torch threads"):
        assert key in result.stdout


@pytest.mark.parametrize("args, code, needle", [
    (["data", "synth", "--out", "{tmp}/s", "--num", "2", "--size", "big"], 2, "WIDTHxHEIGHT"),
    (["data", "synth", "--out", "{tmp}/s", "--num", "0"], 2, "--num"),
    (["data", "synth", "--out", "{tmp}/s", "--num", "2", "--split", "dev"], 2, "'train' or 'test'"),
    (["data", "synth", "--out", "{tmp}/s", "--num", "2", "--defect-weights", "rust=2"], 2, "unknown defect kind 'rust'"),
    (["data", "instruct", "{tmp}/missing/scenes.jsonl"], 1, "no scenes file"),
    (["data", "convert", "{tmp}/x.json", "--from", "voc", "--out", "{tmp}/o"], 2, "unknown format 'voc'"),
    (["data", "preview", "{tmp}/missing"], 1, "no scenes file"),
    (["export", "--weights", "{tmp}/missing.safetensors", "--out", "{tmp}/e"], 1, "missing.safetensors"),
    (["detect", "--prompt", "x", "--weights", "{tmp}", "--backend", "onnx", "{tmp}/a.jpg"], 2, "EXPORT_DIR"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, args, code, needle):
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_corrupt_scenes_file_names_the_line(tmp_path):
    (tmp_path / "scenes.jsonl").write_text('{"image": "a.jpg", "width": 1, "height": 1, "objects": []}\n{"image": 1}\n')
    result = run_cli("data", "instruct", str(tmp_path))
    assert result.returncode == 1
    assert "scenes.jsonl:2: field 'width': missing" in result.stderr and "Traceback" not in result.stderr


def test_synth_instruct_preview_round_trip(tmp_path):
    args = ["data", "synth", "--num", "6", "--seed", "4", "--size", "320x240", "--workers", "2"]
    a, b = run_cli(*args, "--out", str(tmp_path / "a")), run_cli(*args, "--out", str(tmp_path / "b"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    for name in ("scenes.jsonl", "instructions.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert len(list((tmp_path / "a" / "images").glob("*.jpg"))) == 6
    c = run_cli(*args[:-4], "--seed", "5", "--size", "320x240", "--out", str(tmp_path / "c"))
    assert (tmp_path / "c" / "scenes.jsonl").read_text() != (tmp_path / "a" / "scenes.jsonl").read_text()

    test_out = tmp_path / "a" / "test.jsonl"
    r = run_cli("data", "instruct", str(tmp_path / "a"), "--split", "test", "--out", str(test_out))
    assert r.returncode == 0 and test_out.is_file()
    records = [json.loads(x) for x in test_out.read_text().splitlines()]
    assert records and all({"image", "instruction", "type", "boxes", "object_ids"} <= set(r) for r in records)

    sheet = tmp_path / "sheet.png"
    r = run_cli("data", "preview", str(tmp_path / "a"), "--out", str(sheet), "--num", "4", "--columns", "2")
    assert r.returncode == 0, r.stderr
    import cv2

    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[1] > 2 * 480 and image.shape[0] > 2 * 300

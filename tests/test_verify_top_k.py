"""benchmarks/verify_top_k.py: one checkpoint scored at several verifier counts, and its errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import verify_top_k as V


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from promptdet.data.synth.generate import synthesize

    root = tmp_path_factory.mktemp("scenes")
    synthesize(root, 3, seed=1, size_wh=(160, 120), workers=1, per_image=3, progress=False)
    return root


def _checkpoint(save_tiny_checkpoint, verify_top_k: int) -> Path:
    from conftest import settle_tiny_detector

    from promptdet.config import ModelConfig
    from promptdet.model.detector import PromptDetector

    cfg = ModelConfig(imgsz=64, max_candidates=16, verify_top_k=verify_top_k, verify_crop=16)
    return save_tiny_checkpoint(settle_tiny_detector(PromptDetector(cfg)))


def test_scores_the_same_weights_at_each_count(save_tiny_checkpoint, scenes, capsys):
    ckpt = _checkpoint(save_tiny_checkpoint, 4)
    assert V.main(["--weights", str(ckpt), "--data", str(scenes), "--split", "val", "--top-k", "1,16"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["top_k"] for r in rows] == [1, 16]
    assert all(0.0 <= r["all_AP50"] <= 1.0 for r in rows)
    assert "trained with verify_top_k 4, crop 16; 9 instructions" in err


def test_refuses_bad_counts_and_a_model_without_a_verifier(save_tiny_checkpoint, scenes):
    ckpt = _checkpoint(save_tiny_checkpoint, 4)
    with pytest.raises(SystemExit, match=r"--top-k 17: from 1 to max_candidates \(16\)"):
        V.main(["--weights", str(ckpt), "--data", str(scenes), "--top-k", "8,17"])
    with pytest.raises(SystemExit, match="expected whole numbers"):
        V.main(["--weights", str(ckpt), "--data", str(scenes), "--top-k", "eight"])
    with pytest.raises(SystemExit, match="has no crop verifier"):
        V.main(["--weights", str(_checkpoint(save_tiny_checkpoint, 0)), "--data", str(scenes)])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        V.main(["--weights", str(ckpt.parent / "missing"), "--data", str(scenes)])

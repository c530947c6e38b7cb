"""ONNX export and the torch-free runtime: parity, metadata, bad files, providers, the CLI.

One tiny model (64 px, 16 candidates) is exported once per module, with dynamic sizes and a baked
graph; every test reads that folder (or a copy it damages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import settle_tiny_detector

from promptdet.cli.main import app
from promptdet.errors import PromptdetError, UsageError
from promptdet.export.verify import compare_candidates
from promptdet.structures import Detections

runner = CliRunner()
BAKED = ["red bottle", "a gear"]
NEW_PROMPT = "the chipped washer nearest the lower edge"  # never used in training


@pytest.fixture(scope="module")
def tiny_ckpt(save_tiny_checkpoint) -> Path:
    import torch

    from promptdet.config import ModelConfig
    from promptdet.model.detector import PromptDetector

    torch.manual_seed(0)
    m = settle_tiny_detector(PromptDetector(ModelConfig(imgsz=64, max_candidates=16)))
    return save_tiny_checkpoint(m)


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    import torch

    import promptdet
    from promptdet.export.onnx import export_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export") / "tiny"
    lines: list[str] = []
    model = promptdet.load(tiny_ckpt)
    meta = export_model(model, out, dynamic=True, bake_prompts=";".join(BAKED), log=lines.append)
    return out, meta, model, lines


@pytest.fixture
def scene() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = np.full((48, 80, 3), 90, np.uint8)
    cv2.rectangle(img, (10, 10), (30, 40), (40, 40, 200), -1)
    cv2.circle(img, (60, 24), 10, (200, 180, 30), -1)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- files and metadata
def test_export_writes_every_file_with_metadata(exported, tiny_ckpt):
    from promptdet.export.onnx import file_sha256

    out, meta, _, _ = exported
    for name in ("text_encoder.onnx", "detector.onnx", "detector_baked.onnx", "tokenizer.json", "promptdet.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "promptdet.json").read_text())
    assert on_disk["format"] == "promptdet-export/1"
    assert on_disk["promptdet_version"] == __import__("promptdet").__version__
    assert on_disk["imgsz"] == 64 and on_disk["strides"] == [8, 16, 32] and on_disk["dynamic"] is True
    assert on_disk["text_encoder"]["name"] == "all-MiniLM-L6-v2"
    assert on_disk["text_encoder"]["identity"].startswith("all-MiniLM-L6-v2:")
    assert on_disk["text_encoder"]["onnx_sha256"] == file_sha256(out / "text_encoder.onnx")
    assert on_disk["weights_sha256"] == file_sha256(tiny_ckpt)
    # the thresholds `promptdet detect` uses by default, so the edge runtime answers as the torch path does
    import inspect

    from promptdet.api import PromptDet

    defaults = inspect.signature(PromptDet.detect).parameters
    assert on_disk["thresholds"] == {k: defaults[k].default for k in ("conf", "iou", "max_det")}
    assert on_disk["preprocess"]["pad_value"] == 114 and on_disk["preprocess"]["color"] == "RGB"
    assert on_disk["sha256"]["detector.onnx"] == file_sha256(out / "detector.onnx")
    assert on_disk["baked_prompts"] == BAKED
    assert on_disk["parity"]["passed"] is True and meta["parity"]["passed"] is True


def test_parity_report_covers_two_sizes_and_one_and_five_prompts(exported):
    _, meta, _, lines = exported
    cases = meta["parity"]["cases"]
    assert {c["prompts"] for c in cases} == {1, 5}
    assert len({c["input"] for c in cases}) == 2
    for c in cases:
        assert c["box_diff_px"] < 1e-3 * 64 and c["score_diff"] < 1e-4, c
    assert meta["parity"]["text"]["token_ids_equal"] is True
    assert any("parity passed" in line for line in lines)


def _export_copy(exported, tmp_path, change=None) -> Path:
    """A copy of the export folder, its detector graph changed by ``change(onnx_model)`` and its hash
    in promptdet.json updated, so only parity can tell it from the real one."""
    import onnx

    from promptdet.export.onnx import file_sha256

    dst = tmp_path / "copy"
    shutil.copytree(exported[0], dst)
    if change is not None:
        graph = onnx.load(str(dst / "detector.onnx"))
        change(graph)
        onnx.save(graph, str(dst / "detector.onnx"))
        meta = json.loads((dst / "promptdet.json").read_text())
        meta["sha256"]["detector.onnx"] = file_sha256(dst / "detector.onnx")
        (dst / "promptdet.json").write_text(json.dumps(meta))
    return dst


def _scale_the_largest_weight(graph) -> None:
    from onnx import numpy_helper

    init = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3.0, init.name))


def test_parity_fails_on_a_corrupted_graph(exported, tmp_path):
    from promptdet.export.verify import check_parity

    _, _, model, _ = exported
    lines: list[str] = []
    good = check_parity(model, _export_copy(exported, tmp_path / "a"), log=lines.append)
    assert good["passed"] is True
    report = check_parity(model, _export_copy(exported, tmp_path / "b", _scale_the_largest_weight), log=lines.append)
    assert report["passed"] is False and report["text"]["token_ids_equal"] is True  # only the detector differs
    assert not all(c["passed"] for c in report["cases"])
    assert lines[-1] == "parity FAILED (fp32)" and any(line.endswith("FAIL") for line in lines)


@pytest.mark.parametrize("drift, passed", [(0.0, True), (5e-5, True), (1e-3, False), (5e-2, False)])
def test_fp32_parity_allows_scores_to_drift_by_1e_4_only(exported, tmp_path, monkeypatch, drift, passed):
    """A graph whose scores drift by ``drift`` from torch's: fp32 parity allows 1e-4 (the documented limit)."""
    from promptdet.export.verify import check_parity
    from promptdet.runtime.onnx import OnnxModel

    run_all = OnnxModel.run_all  # the parity check reads every output of the graph through it

    def drifting(self, *args, **kwargs):
        boxes, scores, familiarity, prompt_familiarity = run_all(self, *args, **kwargs)
        return boxes, np.where(scores > 0, scores + drift, scores).astype(scores.dtype), familiarity, prompt_familiarity

    monkeypatch.setattr(OnnxModel, "run_all", drifting)
    report = check_parity(exported[2], _export_copy(exported, tmp_path), log=lambda _line: None)
    assert report["score_limit"] == 1e-4 and report["box_limit_px"] == pytest.approx(1e-3 * 64)
    assert report["passed"] is passed and all(c["passed"] is passed for c in report["cases"])


@pytest.mark.parametrize("size,k", [(64, 1), (96, 5), (64, 0)])
def test_onnx_graph_matches_torch(exported, size, k):
    """Including K = 0: an empty prompt list gives empty outputs on both, not an error."""
    import torch

    from promptdet.export.graphs import DetectorGraph
    from promptdet.runtime.onnx import OnnxModel

    out, _, model, _ = exported
    onnx_model = OnnxModel(out, providers="cpu")
    prompts = ["red bottle", "all nuts", "the gear", "a scratched can", "blue cap"][:k]
    x = np.random.default_rng(k).random((1, 3, size, size), dtype=np.float32)
    if k:
        e = model.encoder.encode(prompts)
        pooled, tokens, mask = e.pooled, e.token_feats, e.token_mask
    else:
        pooled, tokens, mask = torch.zeros(0, 384), torch.zeros(0, 1, 384), torch.zeros(0, 1, dtype=torch.bool)
    with torch.no_grad():
        ref_b, ref_s = DetectorGraph(model.detector.eval())(torch.from_numpy(x), pooled, tokens, mask)[:2]
    boxes, scores = onnx_model.run(x, pooled.numpy(), tokens.numpy(), mask.numpy())
    assert boxes.shape == tuple(ref_b.shape) == (1, k, 16, 4)
    assert scores.shape == (1, k, 16)
    if k:
        box_diff, score_diff = compare_candidates(boxes, scores, ref_b.numpy(), ref_s.numpy(), 1e-4)
        assert (scores > 0).any()
        assert box_diff < 1e-3 * size and score_diff < 1e-4


def test_compare_candidates_ignores_order_of_ties_but_not_real_differences():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 6, 6]]], np.float32)
    scores = np.array([[0.5, 0.5, 0.0]], np.float32)
    swapped = boxes[:, [1, 0, 2]]
    assert compare_candidates(swapped, scores, boxes, scores, 1e-4) == (0.0, 0.0)
    moved = boxes.copy()
    moved[0, 0] += 2.0
    assert compare_candidates(moved, scores, boxes, scores, 1e-4)[0] == 2.0
    other = scores.copy()
    other[0, 1] = 0.2
    assert compare_candidates(boxes, other, boxes, scores, 1e-4)[1] == pytest.approx(0.3)


# ---------------------------------------------------------------- the runtime
def test_runtime_imports_no_torch(exported, tmp_path, scene):
    """In a subprocess where torch, ultralytics and transformers cannot be imported at all."""
    out = exported[0]
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene)
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'torchvision', 'ultralytics', 'transformers'):
                    raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        import promptdet
        model = promptdet.load({str(out)!r})
        det = model.detect({str(image)!r}, prompts=[{NEW_PROMPT!r}, 'red bottle'], conf=0.0)
        assert len(det.scores) > 0
        bad = [m for m in ('torch', 'ultralytics', 'transformers') if m in sys.modules]
        assert not bad, bad
        print('ok', type(model).__name__, len(det.scores))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok OnnxModel")


def test_onnx_and_torch_backends_agree(exported, scene):
    import promptdet

    out, _, model, _ = exported
    prompts = [NEW_PROMPT, "red bottle", "all gears"]
    a = model.detect(scene, prompts=prompts, conf=0.01)
    b = promptdet.load(out).detect(scene, prompts=prompts, conf=0.01)
    assert len(a.scores) > 0
    assert_same_detections(a, b)


def assert_same_detections(a, b, box_tol: float = 0.05, score_tol: float = 1e-4) -> None:
    """Same boxes per prompt, up to the order of boxes whose scores tie within rounding."""
    assert a.prompts == b.prompts
    for k in range(len(a.prompts)):
        ia, ib = np.flatnonzero(a.prompt_ids == k), np.flatnonzero(b.prompt_ids == k)
        assert len(ia) == len(ib), (k, len(ia), len(ib))
        box_diff, score_diff = compare_candidates(a.boxes_xyxy[ia][None], a.scores[ia][None],
                                                  b.boxes_xyxy[ib][None], b.scores[ib][None], score_tol)
        assert box_diff < box_tol and score_diff < score_tol, (k, box_diff, score_diff)


def test_baked_graph_gives_the_same_detections(exported, scene):
    from promptdet.runtime.onnx import OnnxModel

    out = exported[0]
    free = OnnxModel(out).detect(scene, prompts=BAKED, conf=0.01)
    baked_model = OnnxModel(out, detector_file="detector_baked.onnx")
    baked = baked_model.detect(scene, conf=0.01)
    assert len(free.scores) > 0
    assert_same_detections(free, baked)
    with pytest.raises(UsageError, match="baked"):
        baked_model.detect(scene, prompts=["something else"])


def test_prompt_cache_in_memory_and_on_disk(exported, tmp_path, scene):
    from promptdet.runtime.onnx import OnnxModel

    out = exported[0]
    first = OnnxModel(out, cache_dir=tmp_path / "cache")
    d1 = first.detect(scene, prompts=[NEW_PROMPT])
    d2 = first.detect(scene, prompts=[NEW_PROMPT])
    assert first.cache.hits >= 1 and first.cache.misses == 1
    assert d2.timing_ms["text"] < d1.timing_ms["text"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    second = OnnxModel(out, cache_dir=tmp_path / "cache")
    second.encode([NEW_PROMPT])
    assert second._text is None  # read from disk: the text encoder never loaded


def test_missing_provider_falls_back_with_a_warning(exported):
    from promptdet.runtime.onnx import OnnxModel, resolve_providers

    with pytest.warns(UserWarning, match="not available"):
        m = OnnxModel(exported[0], providers=["tensorrt", "cuda"])
    assert m.provider == "CPUExecutionProvider"
    assert resolve_providers(None, ["CPUExecutionProvider", "CUDAExecutionProvider"]) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def broken_copy(exported, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(exported[0], dst)
    return dst


def _rehash(folder: Path, name: str) -> None:
    from promptdet.export.onnx import file_sha256

    meta = json.loads((folder / "promptdet.json").read_text())
    meta["sha256"][name] = file_sha256(folder / name)
    (folder / "promptdet.json").write_text(json.dumps(meta))


def test_corrupt_or_mismatched_onnx_gives_a_clear_error(broken_copy):
    from promptdet.runtime.onnx import OnnxModel

    (broken_copy / "detector.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(PromptdetError, match="sha256 differs"):
        OnnxModel(broken_copy)
    _rehash(broken_copy, "detector.onnx")  # the metadata agrees, the file is still junk
    with pytest.raises(PromptdetError, match="not a loadable ONNX model"):
        OnnxModel(broken_copy)
    shutil.copy(broken_copy / "detector_baked.onnx", broken_copy / "detector.onnx")
    _rehash(broken_copy, "detector.onnx")  # a real graph, but not one that takes prompts
    with pytest.raises(PromptdetError, match="not a promptdet detector"):
        OnnxModel(broken_copy)


def test_bad_folders_are_refused(tmp_path, broken_copy):
    from promptdet.runtime.onnx import OnnxModel

    with pytest.raises(PromptdetError, match="no promptdet.json"):
        OnnxModel(tmp_path)
    meta = json.loads((broken_copy / "promptdet.json").read_text())
    (broken_copy / "promptdet.json").write_text(json.dumps(dict(meta, format="promptdet-export/99")))
    with pytest.raises(PromptdetError, match="format"):
        OnnxModel(broken_copy)


# ---------------------------------------------------------------- CLI
def test_cli_detect_onnx_matches_torch(exported, tiny_ckpt, tmp_path, scene):
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene)
    args = ["detect", "--prompt", NEW_PROMPT, "--conf", "0.01", "--quiet", str(image)]
    onnx = runner.invoke(app, [*args, "--backend", "onnx", "--weights", str(exported[0])])
    torch_ = runner.invoke(app, [*args, "--backend", "torch", "--weights", str(tiny_ckpt)])
    assert onnx.exit_code == 0 and torch_.exit_code == 0, onnx.output + torch_.output
    a, b = (Detections.from_json(json.loads(r.stdout)) for r in (onnx, torch_))
    assert len(a.scores) > 0
    assert_same_detections(a, b)


def test_cli_usage_errors(exported, tiny_ckpt, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    r = runner.invoke(app, ["detect", "--prompt", "x", "--backend", "onnx", "--weights", str(tiny_ckpt), str(image)])
    assert r.exit_code == 2 and "EXPORT_DIR" in r.output
    r = runner.invoke(app, ["detect", "--prompt", "x", "--backend", "torch", "--weights", str(exported[0]), str(image)])
    assert r.exit_code == 2 and "export folder" in r.output
    r = runner.invoke(app, ["export", "--weights", str(tiny_ckpt), "--format", "tflite", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "onnx" in r.output
    r = runner.invoke(app, ["export", "--weights", str(tiny_ckpt), "--imgsz", "100", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "multiple of 32" in r.output
    r = runner.invoke(app, ["export", "--weights", str(tiny_ckpt), "--int8", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "--calib" in r.output
    r = runner.invoke(app, ["export", "--weights", str(tiny_ckpt), "--half", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "--half is not supported" in r.output

"""Static int8 quantization of the detector: the file runs, only the image path is int8, bad input is refused.

One tiny model (64 px, 16 candidates) is exported once per module and quantized once with a
folder of a few generated scenes; every test reads that folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from promptdet.errors import UsageError

FLOAT_PREFIXES = ("/detector/reasoner/", "/detector/similarity/", "/detector/text_proj/")


def _scene(seed: int, h: int = 48, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), int(rng.integers(60, 140)), np.uint8)
    cv2.rectangle(img, (int(rng.integers(2, 20)), 8), (int(rng.integers(24, 40)), 40), (40, 40, 200), -1)
    cv2.circle(img, (int(rng.integers(50, 70)), 24), int(rng.integers(5, 12)), (200, 180, 30), -1)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, save_tiny_checkpoint) -> Path:
    import torch

    import promptdet
    from promptdet.export.onnx import export_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    ckpt = save_tiny_checkpoint()
    out = tmp_path_factory.mktemp("export") / "tiny"
    export_model(promptdet.load(ckpt), out, dynamic=True, verify=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    for i in range(4):
        cv2.imwrite(str(folder / f"scene{i}.png"), _scene(i, 48 + 8 * i, 80))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def quantized(tiny_export, calib_dir):
    from promptdet.export.quantize import quantize_detector

    lines: list[str] = []
    info = quantize_detector(tiny_export, calib_dir, log=lines.append, timing_runs=3, progress=False)
    return tiny_export, info, lines


def test_record_describes_the_file_and_is_json(quantized):
    from promptdet.export.onnx import file_sha256

    out, info, lines = quantized
    assert (out / "detector_int8.onnx").is_file()
    assert info["file"] == "detector_int8.onnx"
    assert info["sha256"] == file_sha256(out / "detector_int8.onnx")
    assert info["format"] == "QDQ"
    assert info["calibration"]["images"] == 4 and info["calibration"]["prompts"] == "generic"
    lat = info["latency"]
    assert lat["fp32_ms"] > 0 and lat["int8_ms"] > 0 and lat["speedup"] == pytest.approx(
        lat["fp32_ms"] / lat["int8_ms"], rel=0.01)
    json.loads(json.dumps(info))  # the caller stores it in promptdet.json as it is
    assert any("median latency" in line for line in lines)
    assert not (out / "augmented_model.onnx").exists()  # the calibrator's scratch model stays out


@pytest.mark.parametrize("size,prompts", [(64, ["red bottle"]), (96, ["red bottle", "a gear", "the small washer"])])
def test_int8_graph_runs_in_the_runtime(quantized, size, prompts):
    from promptdet.runtime.onnx import OnnxModel
    from promptdet.runtime.preprocess import to_input

    out, info, _ = quantized
    meta_path = out / "promptdet.json"
    meta = json.loads(meta_path.read_text())
    meta.setdefault("sha256", {})[info["file"]] = info["sha256"]  # what export records
    meta_path.write_text(json.dumps(meta))
    model = OnnxModel(out, providers="cpu", detector_file="detector_int8.onnx")
    x, _ = to_input(_scene(7), size)
    boxes, scores = model.run(x, *model.encode(prompts))
    k = len(prompts)
    assert boxes.shape == (1, k, 16, 4) and scores.shape == (1, k, 16)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    det = model.detect(_scene(8), prompts=prompts, conf=0.0)
    assert det.boxes_xyxy.shape[1] == 4 and np.isfinite(det.boxes_xyxy).all()


def test_int8_stays_close_to_fp32(quantized):
    from promptdet.runtime.onnx import OnnxModel
    from promptdet.runtime.preprocess import to_input

    out, _, _ = quantized
    fp32 = OnnxModel(out, providers="cpu")
    int8 = OnnxModel(out, providers="cpu", detector_file="detector_int8.onnx")
    x, _ = to_input(_scene(2), 64)
    emb = fp32.encode(["red bottle", "a gear"])
    b32, s32 = fp32.run(x, *emb)
    b8, s8 = int8.run(x, *emb)
    assert np.abs(s32 - s8).mean() < 0.05  # scores are never crushed by a shared 8-bit scale
    assert np.median(np.abs(b32 - b8)) < 8  # pixels of a 64-px input


def test_only_the_image_path_is_quantized(quantized):
    import onnx

    from promptdet.export.quantize import QUANTIZED_PREFIXES

    out, info, _ = quantized
    graph = onnx.load(str(out / "detector_int8.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qs = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert qs and len(qs) == info["quantized"]["quantize_linear"]

    def tail(node) -> bool:  # the head's last 1x1 convs: /detector/head/box.0/box.0.2/Conv
        parts = node.name.split("/")
        return len(parts) > 4 and parts[2] == "head" and parts[4] == f"{parts[3]}.2"

    def image_path(node) -> bool:
        return node.name.startswith(QUANTIZED_PREFIXES) and not tail(node)

    def from_qdq(name: str) -> bool:
        return name in producer and producer[name].op_type in ("DequantizeLinear", "QuantizeLinear")

    # Every QuantizeLinear reads the image or an activation of the backbone, neck or head branches ...
    for q in qs:
        src = q.input[0]
        assert src == "images" or image_path(producer[src]), (q.name, src)
    # ... and every DequantizeLinear feeds only those nodes, the head's last convs their input, or a
    # Shape (which reads no values, only the size of the feature maps for the anchors).
    for dq in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        for user in consumers.get(dq.output[0], []):
            # The familiarity statistics read the trunk's (dequantized) outputs and stay float.
            assert image_path(user) or user.op_type == "Shape" or user.name.startswith("/detector/familiarity/") or (
                tail(user) and user.input[0] == dq.output[0]), (dq.name, user.name)
    # The head's last convs (box distances, region embeddings) keep float weights and a float output.
    tails = [n for n in graph.node if tail(n)]
    assert len(tails) == 6 and all(n.op_type == "Conv" for n in tails)
    for node in tails:
        assert not any(from_qdq(i) for i in node.input[1:]), node.name
        assert all(u.op_type != "QuantizeLinear" for u in consumers[node.output[0]]), node.name
    # The float part reads no quantized tensor: reasoner, similarity, text projection, box decoding.
    float_nodes = [n for n in graph.node if n.name.startswith(FLOAT_PREFIXES) or (
        n.name.startswith("/detector/head/") and not image_path(n) and not tail(n))]
    assert any(n.name.startswith("/detector/reasoner/layers.") for n in float_nodes)
    assert any(n.op_type == "Sub" and n.name.startswith("/detector/head/") for n in float_nodes)  # dist -> xyxy
    for node in float_nodes:
        assert node.op_type == "Shape" or not any(from_qdq(i) for i in node.input), node.name
    for out_name in ("boxes", "scores"):
        assert not from_qdq(out_name)


def test_calibration_set_from_instructions(tmp_path):
    from promptdet.export.quantize import MAX_PROMPTS_PER_IMAGE, calibration_set

    (tmp_path / "images").mkdir()
    lines = []
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), _scene(i))
        for j in range(6):
            lines.append({"image": f"images/{i}.png", "instruction": f"thing {j} in scene {i}", "boxes": []})
    (tmp_path / "instructions.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    items = calibration_set(tmp_path, max_images=2)
    assert len(items) == 2
    for path, prompts in items:
        assert path.is_file() and len(prompts) == MAX_PROMPTS_PER_IMAGE
        assert all(p.endswith(f"scene {path.stem}") for p in prompts)  # each image with its own instructions
    assert len(calibration_set(tmp_path / "instructions.jsonl", max_images=10)) == 3


def test_bad_calibration_data_is_a_usage_error(tiny_export, tmp_path):
    from promptdet.export.quantize import calibration_set, quantize_detector

    before = sorted(p.name for p in tiny_export.iterdir())
    with pytest.raises(UsageError, match="no such file or folder"):
        quantize_detector(tiny_export, tmp_path / "nowhere", log=lambda _: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        quantize_detector(tiny_export, tmp_path / "empty", log=lambda _: None)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UsageError, match="not a dataset YAML"):
        calibration_set(tmp_path / "notes.txt")
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(UsageError, match="unusable calibration data"):
        calibration_set(tmp_path / "bad.jsonl")
    (tmp_path / "gone.jsonl").write_text('{"image": "a.png", "instruction": "x", "boxes": []}\n')
    with pytest.raises(UsageError, match="missing"):
        calibration_set(tmp_path / "gone.jsonl")
    with pytest.raises(UsageError):
        calibration_set(tmp_path / "empty", max_images=0)
    assert sorted(p.name for p in tiny_export.iterdir()) == before  # nothing written on failure

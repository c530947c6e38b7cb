"""Every input is bounded: image files whose size cannot be read first, checkpoint and export
metadata, YAML alias bombs, prompts. The limits themselves live in promptdet/limits.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptdet.config import ConfigError, read_yaml
from promptdet.errors import PromptdetError
from promptdet.runtime import imageio
from promptdet.runtime.imageio import ImageReadError


# ---------------------------------------------------------------- images: a Radiance HDR bomb
def hdr_bytes(width: int, height: int) -> bytes:
    """A Radiance HDR header declaring width x height, then RLE scanlines of one run each (tiny on disk)."""
    head = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    runs = b"".join(bytes([128 + 127, 7]) * (width // 127) + bytes([128 + width % 127, 7]) for _ in range(4))
    line = bytes([2, 2, width >> 8, width & 255]) + runs
    return head + line * min(height, 4)


def test_an_image_whose_size_cannot_be_read_first_is_never_decoded(tmp_path, monkeypatch):
    """Pillow cannot read an HDR header, so OpenCV used to decode it unchecked (4.4 GB for 20500 x 9000)."""
    decoded = []
    real = imageio.cv2.imdecode
    monkeypatch.setattr(imageio.cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    path = tmp_path / "bomb.hdr"
    path.write_bytes(hdr_bytes(20500, 9000))
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match="a Radiance HDR, whose size cannot be read before decoding"):
        imageio.read_image(path)
    assert decoded == [] and time.perf_counter() - t0 < 1.0


def test_the_folder_source_skips_such_a_file_with_one_event(tmp_path):
    from promptdet.line.sources import FolderSource

    (tmp_path / "a.png").write_bytes(hdr_bytes(20500, 9000))  # the extension lies
    events = []
    frames = list(FolderSource(tmp_path, watch=False, on_event=events.append).frames())
    assert frames == [] and len(events) == 1 and "Radiance HDR" in events[0]["reason"]


# ---------------------------------------------------------------- checkpoint metadata
@pytest.fixture
def ckpt(save_tiny_checkpoint, tmp_path) -> Path:
    src = save_tiny_checkpoint()
    dst = tmp_path / "c"
    dst.mkdir()
    for p in src.parent.glob("tiny.*"):
        shutil.copy(p, dst / p.name)
    return dst / "tiny.safetensors"


def edit_meta(ckpt: Path, **model) -> None:
    info = ckpt.with_suffix(".json")
    meta = json.loads(info.read_text())
    meta["model"].update(model)
    info.write_text(json.dumps(meta))


@pytest.mark.parametrize("key, value", [("max_candidates", 10**12), ("imgsz", 999968), ("embed_dim", 0),
                                        ("reason_heads", -1), ("verify_crop", 10**9)])
def test_checkpoint_metadata_out_of_bounds_is_refused(ckpt, key, value):
    import promptdet

    edit_meta(ckpt, **{key: value})
    with pytest.raises(ConfigError, match=f"{key} must be an integer from"):
        promptdet.load(ckpt)


@pytest.mark.parametrize("change", [{"embed_dim": 64}, {"scale": "s"}])
def test_checkpoint_metadata_that_does_not_match_the_tensors_is_one_line(ckpt, change):
    import promptdet

    edit_meta(ckpt, **change)
    with pytest.raises(PromptdetError, match="the metadata does not match the tensors") as err:
        promptdet.load(ckpt).detector  # noqa: B018 - the model is built on first use
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_checkpoint_metadata_that_is_not_an_object_is_refused(ckpt):
    from promptdet.train.checkpoint import CheckpointError, load_checkpoint

    ckpt.with_suffix(".json").write_text("[1, 2, 3]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        load_checkpoint(ckpt)


# ---------------------------------------------------------------- export integrity
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, save_tiny_checkpoint) -> Path:
    import torch

    import promptdet
    from promptdet.export.onnx import export_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("export") / "tiny"
    export_model(promptdet.load(save_tiny_checkpoint()), out, verify=False, log=lambda line: None)
    return out


@pytest.fixture
def export_copy(export_dir, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(export_dir, dst)
    return dst


def test_every_exported_file_is_hashed(export_dir):
    from promptdet.export.onnx import file_sha256

    meta = json.loads((export_dir / "promptdet.json").read_text())
    assert meta["sha256"]["tokenizer.json"] == file_sha256(export_dir / "tokenizer.json")
    assert set(meta["files"].values()) - {meta["files"]["text_encoder"]} <= set(meta["sha256"])


def test_a_swapped_tokenizer_is_refused(export_copy):
    from promptdet.runtime.onnx import OnnxModel

    tok = json.loads((export_copy / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["red"], vocab["blue"] = vocab["blue"], vocab["red"]  # two word ids swapped: other detections
    (export_copy / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(PromptdetError, match="tokenizer.json: does not match"):
        OnnxModel(export_copy, providers="cpu")


def test_an_export_without_its_hash_table_is_refused(export_copy):
    from promptdet.runtime.onnx import OnnxModel

    meta = json.loads((export_copy / "promptdet.json").read_text())
    del meta["sha256"]
    (export_copy / "promptdet.json").write_text(json.dumps(meta))
    data = bytearray((export_copy / "detector.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # a flipped bit that may still load
    (export_copy / "detector.onnx").write_bytes(bytes(data))
    with pytest.raises(PromptdetError, match="no sha256 table"):
        OnnxModel(export_copy, providers="cpu")


def test_export_metadata_out_of_bounds_is_refused(export_copy):
    from promptdet.runtime.onnx import OnnxModel

    meta = json.loads((export_copy / "promptdet.json").read_text())
    meta["imgsz"] = 10**7
    (export_copy / "promptdet.json").write_text(json.dumps(meta))
    with pytest.raises(PromptdetError, match="imgsz 10000000 is out of bounds"):
        OnnxModel(export_copy, providers="cpu")


# ---------------------------------------------------------------- YAML
def alias_bomb(levels: int, where: str) -> str:
    lines = ['a0: &a0 ["xxxxxxxxxxxxxxxx","xxxxxxxxxxxxxxxx","xxxxxxxxxxxxxxxx","xxxxxxxxxxxxxxxx"]']
    lines += [f"a{i}: &a{i} [*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1},*a{i - 1}]"
              for i in range(1, levels + 1)]
    body = {"uri": f"source: {{uri: *a{levels}}}", "deadline": f"deadline_ms: *a{levels}",
            "prompt": f"checks: [{{name: c, prompt: *a{levels}, fail_if: 'count >= 1'}}]"}[where]
    return "\n".join(lines) + "\nversion: 1\n" + body + "\n"


@pytest.mark.parametrize("where", ["uri", "deadline", "prompt"])
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, where):
    """9 levels of 8 aliases: 8**9 values from a 1 KB file. Refused before anything walks it."""
    from promptdet.line.recipe import load_recipe

    path = tmp_path / "line.yaml"
    path.write_text(alias_bomb(9, where))
    assert path.stat().st_size < 2048
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to over") as err:
        load_recipe(path)
    assert time.perf_counter() - t0 < 1.0 and len(str(err.value)) < 300


def test_a_long_value_is_shortened_in_the_error(tmp_path):
    from promptdet.line.recipe import load_recipe

    path = tmp_path / "line.yaml"
    path.write_text("version: 1\nchecks: []\nsource: {uri: x}\ndeadline_ms: [" + ", ".join(["1"] * 50000) + "]\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "deadline_ms" in str(err.value) and len(str(err.value)) < 300


def test_a_huge_yaml_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: '" + "x" * (2 * 1024 * 1024) + "'\n")
    with pytest.raises(ConfigError, match="at most"):
        read_yaml(path, "line recipe")


def test_a_few_aliases_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("a: &x [1, 2]\nb: *x\n")  # yaml.dump writes these for shared objects
    assert read_yaml(path, "config") == {"a": [1, 2], "b": [1, 2]}

"""`promptdet detect` and `PromptDet.detect`: robust reading, every output format parsed back,
exit codes, clean stdout, the prompt cache, and the CLI agreeing with the API. All at 64 px."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptdet.cli.main import app
from promptdet.errors import UsageError
from promptdet.predict import (
    ImageReadError, coco_results, expand_sources, read_image, to_bgr8)
from promptdet.structures import SCHEMA, Detections

runner = CliRunner()
PROMPTS = ["red bottle", "a cap"]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two OpenMP threads on a busy 2-core machine spin for seconds per forward; one thread takes ms.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(save_tiny_checkpoint) -> Path:
    return save_tiny_checkpoint()


@pytest.fixture(scope="module")
def model(tiny):
    import promptdet

    return promptdet.load(tiny)


@pytest.fixture
def cached_load(monkeypatch, tiny, model):
    """The CLI in-process, with the tiny model loaded once (other sources go to the real loader)."""
    import promptdet.api

    real = promptdet.api.load
    model.encoder  # loaded here, so its loading bar stays out of the CLI's stderr
    monkeypatch.setattr(promptdet.api, "load", lambda source=None: model if str(source) == str(tiny) else real(source))
    return tiny


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 90, np.uint8)
    for _ in range(3):
        x, y = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
        cv2.rectangle(image, (x, y), (x + 14, y + 12), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return image


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """img_a.jpg, img_b.png, img_c.jpg (different sizes), a corrupt bad.png and a notes.txt."""
    root = tmp_path_factory.mktemp("images")
    for name, (h, w) in {"img_a.jpg": (60, 80), "img_b.png": (64, 48), "img_c.jpg": (50, 90)}.items():
        cv2.imwrite(str(root / name), _scene(h, w, len(name) + h))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "notes.txt").write_text("not an image")
    return root


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PROMPTDET_DEBUG", None)
    return env


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptdet.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=_env(), timeout=300)


def invoke(*args):
    return runner.invoke(app, ["detect", *map(str, args)])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h, with one tiny damaged IDAT (decoding would need w*h*3 bytes)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- Detections
@pytest.mark.parametrize("n", [0, 1, 3])
def test_detections_json_round_trip_plot_and_save(tmp_path, n):
    boxes = np.array([[1, 2, 30, 40], [5, 5, 10, 10], [0, 0, 63, 47]], np.float32)[:n]
    det = Detections(boxes, np.linspace(0.9, 0.5, 3)[:n], [0, 1, 1][:n], PROMPTS, (64, 48), "x.jpg",
                     {"infer": 1.5}, image_bgr=np.zeros((48, 64, 3), np.uint8))
    obj = det.to_json()
    assert len(det) == n and obj["schema"] == SCHEMA and "frame" not in obj
    assert set(obj) == {"schema", "image", "width", "height", "prompts", "detections", "timing_ms", "familiarity",
                        "unfamiliar", "prompt_familiarity", "unknown_prompts", "abstained"}
    assert set(obj["timing_ms"]) == {"read", "text", "preprocess", "infer", "post", "total"}
    assert [d["prompt"] for d in obj["detections"]] == [PROMPTS[i] for i in [0, 1, 1][:n]]
    back = Detections.from_json(json.loads(json.dumps(obj)))
    np.testing.assert_allclose(back.boxes_xyxy, det.boxes_xyxy)
    assert back.prompt_ids.tolist() == det.prompt_ids.tolist() and back.image_wh == (64, 48)
    drawn = det.plot()
    assert drawn.shape == (48, 64, 3) and drawn.dtype == np.uint8 and (drawn.any() == (n > 0))
    assert cv2.imread(str(det.save(tmp_path / "a.png"))).shape == (48, 64, 3)
    assert json.loads(det.save(tmp_path / "a.json").read_text())["detections"] == obj["detections"]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"scores": [0.5, 0.4]}, "1 boxes, 2 scores"),
    ({"prompt_ids": [2]}, "prompt ids must be in 0..1"),
])
def test_detections_reject_inconsistent_arrays(kwargs, fragment):
    base = {"boxes_xyxy": [[0, 0, 1, 1]], "scores": [0.5], "prompt_ids": [0], "prompts": PROMPTS, "image_wh": (4, 4)}
    with pytest.raises(ValueError, match=fragment):
        Detections(**{**base, **kwargs})


# ---------------------------------------------------------------- reading
@pytest.mark.parametrize("array, expected_pixel", [
    (np.full((4, 5), 200, np.uint8), (200, 200, 200)),                        # grey
    (np.full((4, 5, 1), 7, np.uint8), (7, 7, 7)),                             # grey with a channel axis
    (np.dstack([np.full((4, 5), c, np.uint8) for c in (1, 2, 3)]), (1, 2, 3)),  # BGR stays BGR
    (np.dstack([np.full((4, 5), c, np.uint8) for c in (10, 20, 30, 255)]), (10, 20, 30)),  # opaque alpha
    (np.dstack([np.full((4, 5), c, np.uint8) for c in (10, 20, 30, 0)]), (114, 114, 114)),  # transparent
    (np.full((4, 5), 65535, np.uint16), (255, 255, 255)),                     # 16-bit white
    (np.full((4, 5, 3), 257 * 100, np.uint16), (100, 100, 100)),              # 16-bit colour
    (np.full((4, 5, 3), 0.5, np.float32), (128, 128, 128)),                   # float 0-1
])
def test_to_bgr8(array, expected_pixel):
    out = to_bgr8(array)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert tuple(int(v) for v in out[2, 3]) == expected_pixel


@pytest.mark.parametrize("shape", [(0, 5), (4, 5, 5), (2, 3, 4, 5)])
def test_to_bgr8_rejects_non_images(shape):
    with pytest.raises(ImageReadError, match="expected an image array"):
        to_bgr8(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("name, write, expected", [
    ("grey.png", lambda p: cv2.imwrite(str(p), np.full((6, 9), 77, np.uint8)), (77, 77, 77)),
    ("rgba.png", lambda p: cv2.imwrite(str(p), np.dstack([np.full((6, 9), c, np.uint8) for c in (0, 0, 255, 0)])),
     (114, 114, 114)),
    ("deep.png", lambda p: cv2.imwrite(str(p), np.full((6, 9, 3), 257 * 40, np.uint16)), (40, 40, 40)),
    ("deep_grey.tif", lambda p: cv2.imwrite(str(p), np.full((6, 9), 65535, np.uint16)), (255, 255, 255)),
    ("pil.webp", lambda p: Image.new("RGB", (9, 6), (255, 0, 0)).save(p, lossless=True), (0, 0, 255)),
])
def test_read_image_formats(tmp_path, name, write, expected):
    write(tmp_path / name)
    image = read_image(tmp_path / name)
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8
    assert tuple(int(v) for v in image[3, 4]) == expected


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_matches_pillow(tmp_path, orientation, fmt):
    rgb = np.zeros((20, 32, 3), np.uint8)
    rgb[:6, :10] = (255, 0, 0)  # a red corner shows where the top-left went
    rgb[14:, 28:] = (0, 0, 255)
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    Image.fromarray(rgb).save(path, fmt, exif=exif, quality=100)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))[..., ::-1]
    got = read_image(path)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).mean() < (0.01 if fmt == "PNG" else 3)


@pytest.mark.parametrize("name, content, fragment", [
    ("missing.jpg", None, "file not found"),
    ("empty.jpg", b"", "the file is empty"),
    ("garbage.jpg", b"\xff\xd8 nothing here" * 3, "not an image"),
    ("huge.png", _png_header_only(25000, 25000), "too large"),
    ("wide.png", _png_header_only(30000, 10), "too large (30000x10"),
])
def test_read_image_errors_name_the_file(tmp_path, name, content, fragment):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / name)
    assert str(info.value).startswith(f"cannot read image {tmp_path / name}:") and fragment in str(info.value)
    assert time.perf_counter() - t0 < 2  # refused from the header, nothing allocated


def test_expand_sources_mixed_folder_glob_camera_and_missing(images, tmp_path):
    (tmp_path / "clip.avi").write_bytes(b"x")
    found, skipped, errors = expand_sources([str(images), str(images / "img_*.jpg"), str(tmp_path / "clip.avi"),
                                             "0", str(tmp_path / "nope.jpg"), str(tmp_path / "*.gif")])
    names = [Path(str(s.value)).name if s.kind != "camera" else s.value for s in found]
    assert names == ["bad.png", "img_a.jpg", "img_b.png", "img_c.jpg", "img_a.jpg", "img_c.jpg", "clip.avi", 0]
    assert [s.kind for s in found][-2:] == ["video", "camera"] and skipped == 1
    assert errors == [f"cannot read image {tmp_path / 'nope.jpg'}: file not found",
                      f"no images or videos match {tmp_path / '*.gif'}"]


@pytest.mark.parametrize("stems, ids", [
    (["000000397133", "000000000042"], [397133, 42]),
    (["12", "a"], [1, 2]),
    (["7", "007"], [1, 2]),  # the same number twice: fall back to the order
    ([], []),
])
def test_coco_image_ids(stems, ids):
    objs = [{"image": f"d/{s}.jpg", "width": 4, "height": 4, "detections": []} for s in stems]
    images, results = coco_results(objs)
    assert [i["id"] for i in images] == ids and results == []


# ---------------------------------------------------------------- the Python API
def test_api_accepts_paths_arrays_and_pil_images(model, images):
    bgr = cv2.imread(str(images / "img_a.jpg"))
    rgba = Image.fromarray(np.dstack([bgr[..., ::-1], np.full(bgr.shape[:2], 255, np.uint8)]), "RGBA")
    sources = [images / "img_a.jpg", str(images / "img_a.jpg"), bgr, bgr[..., 0], (bgr.astype(np.uint16) * 257),
               np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]), rgba, rgba.convert("L")]
    results = model.detect(sources, prompts=PROMPTS, conf=0.0)
    assert isinstance(results, list) and len(results) == len(sources)
    for det in results:
        assert isinstance(det, Detections) and det.image_wh == (80, 60) and det.prompts == PROMPTS and len(det) > 0
        assert det.boxes_xyxy.dtype == np.float32 and det.prompt_ids.dtype == np.int64
        assert (det.boxes_xyxy[:, [0, 1]] >= 0).all() and (det.boxes_xyxy[:, 2] <= 80).all()
        assert (det.boxes_xyxy[:, 3] <= 60).all() and (np.diff(det.scores) <= 0).all()
        assert det.plot().shape == (60, 80, 3)
    assert results[0].image == str(images / "img_a.jpg") and results[2].image is None
    for same in results[1:3] + results[4:7]:  # the same pixels, however they came in
        np.testing.assert_allclose(same.scores, results[0].scores, atol=1e-6)
    empty = model.detect(images / "img_a.jpg", prompts="red bottle; a cap", conf=0.99)
    assert len(empty) == 0 and empty.to_json()["detections"] == [] and empty.plot().shape == (60, 80, 3)


def test_prompts_stay_independent_and_max_det_is_per_prompt(model, images):
    alone = model.detect(images / "img_c.jpg", prompts=["a cap"], conf=0.0)
    both = model.detect(images / "img_c.jpg", prompts=["red bottle", "a cap"], conf=0.0, max_det=3)
    capped = both.for_prompt(1)
    assert len(capped) == 3 and len(both.for_prompt(0)) == 3
    np.testing.assert_allclose(capped.scores, alone.scores[:3], atol=1e-4)
    np.testing.assert_allclose(capped.boxes_xyxy, alone.boxes_xyxy[:3], atol=1e-3)


def test_repeated_prompt_is_a_cache_hit(model, images):
    prompts = [f"the odd part number {time.time_ns()}"]  # never seen by this encoder
    hits = model.encoder.cache.hits
    first = model.detect(images / "img_a.jpg", prompts=prompts)
    second = model.detect(images / "img_a.jpg", prompts=prompts)
    assert model.encoder.cache.hits > hits
    assert second.timing_ms["text"] * 3 < first.timing_ms["text"], (first.timing_ms, second.timing_ms)
    assert all(second.timing_ms[k] >= 0 for k in second.timing_ms) and second.timing_ms["total"] > 0


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"prompts": ""}, UsageError, "the prompt is empty"),
    ({"prompts": ["bottles", " "]}, UsageError, "prompt at index 1 is empty"),
    ({"prompts": "a", "conf": 1.5}, UsageError, "conf must be between 0 and 1"),
    ({"prompts": "a", "imgsz": 50}, UsageError, "multiple of 32"),
    ({"prompts": "a", "max_det": 0}, UsageError, "max_det"),
    ({"prompts": "a", "source": "{dir}"}, UsageError, "is a folder"),
    ({"prompts": "a", "source": 3}, UsageError, "cannot detect in a int"),
    ({"prompts": "a", "source": "{dir}/bad.png"}, ImageReadError, "bad.png: not an image"),
])
def test_api_errors(model, images, kwargs, error, fragment):
    source = kwargs.pop("source", images / "img_a.jpg")
    source = source.format(dir=images) if isinstance(source, str) else source
    with pytest.raises(error, match=fragment):
        model.detect(source, **kwargs)


def test_huge_prompt_warns_and_still_detects(model, images):
    with pytest.warns(UserWarning, match="cut to the first 2000"), pytest.warns(UserWarning, match="max_tokens"):
        det = model.detect(images / "img_a.jpg", prompts=["bottle " * 500], conf=0.99)
    assert len(det) == 0 and len(det.prompts[0]) <= 2000


# ---------------------------------------------------------------- the CLI, in process
def _parse(fmt: str, out: Path | None, stdout: str) -> tuple[int, set[str]]:
    """(number of detections, image names) from any output format."""
    if fmt == "jsonl":
        text = (out / "detections.jsonl").read_text() if out else stdout
        objs = [json.loads(line) for line in text.splitlines()]
        assert all(o["schema"] == SCHEMA for o in objs)
        return sum(len(o["detections"]) for o in objs), {Path(o["image"]).name for o in objs}
    if fmt == "json":
        objs = json.loads((out / "detections.json").read_text() if out else stdout)
        return sum(len(o["detections"]) for o in objs), {Path(o["image"]).name for o in objs}
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO((out / "detections.csv").read_text() if out else stdout)))
        assert all(0 <= float(r["score"]) <= 1 and float(r["x1"]) <= float(r["x2"]) for r in rows)
        assert all(r["prompt"] == PROMPTS[int(r["prompt_index"])] and r["frame"] == "" for r in rows)
        return len(rows), {Path(r["image"]).name for r in rows}
    if fmt == "coco":
        from pycocotools.coco import COCO

        if out:
            results = json.loads((out / "coco_results.json").read_text())
            categories = json.loads((out / "coco_categories.json").read_text())
            coco_images = json.loads((out / "coco_images.json").read_text())
        else:
            both = json.loads(stdout)
            results, categories, coco_images = both["results"], both["categories"], both["images"]
        assert categories == [{"id": i + 1, "name": p} for i, p in enumerate(PROMPTS)]
        gt = COCO()
        gt.dataset = {"images": coco_images, "categories": categories, "annotations": [
            {"id": i + 1, "image_id": im["id"], "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0}
            for i, im in enumerate(coco_images)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        assert len(dt.anns) == len(results) and set(dt.getImgIds()) <= set(gt.getImgIds())
        assert {r["category_id"] for r in results} == {c["id"] for c in categories}
        return len(results), {Path(im["file_name"]).name for im in coco_images}
    assert (out / "classes.txt").read_text().splitlines() == PROMPTS
    rows = [line.split() for f in sorted((out / "labels").glob("*.txt")) for line in f.read_text().splitlines()]
    assert all(len(r) == 6 and int(r[0]) in (0, 1) and all(0 <= float(v) <= 1 for v in r[1:]) for r in rows)
    return len(rows), {f.stem + ".?" for f in (out / "labels").glob("*.txt")}


@pytest.mark.parametrize("fmt, to_folder", [("jsonl", False), ("jsonl", True), ("json", False), ("json", True),
                                            ("csv", False), ("csv", True), ("coco", False), ("coco", True),
                                            ("yolo", True)])
def test_every_format_parses_back(cached_load, images, tmp_path, fmt, to_folder):
    out = tmp_path / "out" if to_folder else None
    args = ["--weights", cached_load, "-p", "red bottle; a cap", "--conf", "0.0", "--max-det", "2", "--format", fmt]
    result = invoke(*args, *(["--out", out] if out else []), images / "img_a.jpg", images / "img_b.png")
    assert result.exit_code == 0, result.output
    count, names = _parse(fmt, out, result.stdout)
    assert count == 2 * 2 * 2  # 2 images x 2 prompts x max-det 2, as the conf is 0
    assert names in ({"img_a.jpg", "img_b.png"}, {"img_a.?", "img_b.?"})
    assert (result.stdout == "") == to_folder and "2 images: 8 detections" in result.stderr


def test_mixed_folder_with_a_corrupt_file(cached_load, images):
    result = invoke("--weights", cached_load, "-p", "a cap", "--conf", "0.99", images)
    assert result.exit_code == 0, result.output
    assert error_lines(result.stderr) == [f"error: cannot read image {images / 'bad.png'}: not an image, or a damaged file"]
    assert "3 images (1 failed, 1 non-image files skipped): 0 detections" in result.stderr
    assert [Path(json.loads(line)["image"]).name for line in result.stdout.splitlines()] == \
        ["img_a.jpg", "img_b.png", "img_c.jpg"]


@pytest.mark.parametrize("args, code, fragment", [
    (["--conf", "0.0", "--fail-on-detect", "{img}"], 3, "detections"),
    (["--conf", "0.99", "--fail-on-detect", "{img}"], 0, "0 detections"),
    (["--conf", "0.99", "--quiet", "{img}"], 0, None),
    (["--prompt", " ", "{img}"], 2, "error: the prompt is empty"),
    (["--prompt", "a;;b", "{img}"], 2, "prompt 2 of 3 in 'a;;b' is empty"),
    (["--backend", "onnx", "{img}"], 2, "--backend onnx needs --weights EXPORT_DIR"),
    (["--backend", "tensorrt", "{img}"], 2, "expected auto, torch or onnx"),
    (["--format", "xml", "{img}"], 2, "expected one of jsonl, json, csv, coco, yolo"),
    (["--format", "yolo", "{img}"], 2, "--format yolo writes files; give a folder with --out"),
    (["--save", "{img}"], 2, "--save writes files"),
    (["--imgsz", "50", "{img}"], 2, "multiple of 32"),
    (["--device", "gpu7", "{img}"], 2, "--device 'gpu7'"),
    (["--prompts-file", "{tmp}/none.txt", "{img}"], 2, "cannot read it"),
    ([], 2, "no SOURCE given"),
    (["{tmp}/missing.jpg"], 1, "error: cannot read image {tmp}/missing.jpg: file not found"),
    (["{images}/bad.png"], 1, "error: cannot read image {images}/bad.png: not an image"),
    (["99"], 1, "error: cannot open camera 99 (no such device"),
    (["--weights", "{tmp}", "{img}"], 1, "no best.safetensors"),
])
def test_exit_codes(cached_load, images, tmp_path, args, code, fragment):
    args = [a.format(tmp=tmp_path, images=images, img=images / "img_a.jpg") for a in args]
    weights = [] if "--weights" in args else ["--weights", cached_load]
    prompt = [] if {"--prompt", "--prompts-file"} & set(args) else ["-p", "a cap"]
    result = invoke(*weights, *prompt, *args)
    assert result.exit_code == code, result.output
    if fragment is None:
        assert result.stderr == ""
    else:
        assert fragment.format(tmp=tmp_path, images=images) in result.stderr
    assert "Traceback" not in result.output and len(error_lines(result.stderr)) == (code in (1, 2))


def test_prompts_file_and_huge_prompt_warning(cached_load, images, tmp_path):
    (tmp_path / "prompts.txt").write_text("# what to find\nred bottle\n\n  a cap  \n")
    result = invoke("--weights", cached_load, "--prompts-file", tmp_path / "prompts.txt", "-p", "x " * 1500,
                    "--conf", "0.99", images / "img_a.jpg")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompts"][1:] == PROMPTS
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned[0] == "warning: the prompt has 2999 characters; cut to the first 2000"
    assert all("max_tokens" in line for line in warned[1:])


def test_save_writes_annotated_images_and_crops(cached_load, images, tmp_path):
    out = tmp_path / "out"
    result = invoke("--weights", cached_load, "-p", "red bottle; a cap", "--conf", "0.0", "--max-det", "1",
                    "--out", out, "--save", "--save-crops", images / "img_a.jpg", images / "img_b.png")
    assert result.exit_code == 0, result.output
    for name, source in (("img_a.jpg", "img_a.jpg"), ("img_b.png", "img_b.png")):
        drawn, original = cv2.imread(str(out / name)), cv2.imread(str(images / source))
        assert drawn.shape == original.shape and np.abs(drawn.astype(int) - original).max() > 50
    assert sorted(p.name for p in (out / "crops").iterdir()) == ["0_red_bottle", "1_a_cap"]
    assert len(list((out / "crops").rglob("*.*"))) == 4
    refused = invoke("--weights", cached_load, "-p", "a cap", "--out", images, "--save", images / "img_a.jpg")
    assert refused.exit_code == 2 and "could overwrite" in refused.stderr


def test_video_frames_are_results(cached_load, tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(3):
        writer.write(_scene(48, 64, i))
    writer.release()
    result = invoke("--weights", cached_load, "-p", "a cap", "--conf", "0.0", "--max-det", "1", "--format", "csv",
                    tmp_path / "clip.avi")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["frame"] for r in rows] == ["0", "1", "2"] and {r["width"] for r in rows} == {"64"}


def test_progress_and_errors_go_to_stderr_results_to_stdout(model, images, capsys):
    import sys as _sys

    from promptdet.predict import Predictor, ResultWriter, run_sources

    found, skipped, _ = expand_sources([str(images)])
    errors = []
    summary = run_sources(Predictor(model, PROMPTS, conf=0.99), found, ResultWriter("jsonl", PROMPTS, None, _sys.stdout),
                          errors.append, skipped, progress=True)
    captured = capsys.readouterr()
    assert [json.loads(line)["detections"] for line in captured.out.splitlines()] == [[], [], []]
    assert "/4 [" in captured.err and "img/s" in captured.err and "{" not in captured.err
    assert (summary.processed, summary.failed, summary.skipped, summary.detections) == (3, 1, 1, 0)
    assert len(errors) == 1 and "bad.png" in errors[0]


# ---------------------------------------------------------------- the CLI, as users run it
def test_cli_stdout_is_clean_json_lines_and_agrees_with_the_api(tiny, model, images):
    result = run_cli("detect", "--weights", tiny, "-p", "red bottle", "-p", "a cap", "--conf", "0.0",
                     "--max-det", "5", images)
    assert result.returncode == 0, result.stderr
    objs = [json.loads(line) for line in result.stdout.splitlines()]  # every stdout line is JSON
    assert [Path(o["image"]).name for o in objs] == ["img_a.jpg", "img_b.png", "img_c.jpg"]
    # stderr: the one error line and the summary; no OpenCV log lines (the text encoder's loading bar aside)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    # The summary counts what stdout carries (an untrained model's count varies: NMS may keep fewer than 5).
    found = sum(len(o["detections"]) for o in objs)
    assert 0 < found <= 30
    assert lines == [f"error: cannot read image {images / 'bad.png'}: not an image, or a damaged file",
                     lines[1]] and lines[1].startswith(f"3 images (1 failed, 1 non-image files skipped): {found} detections")
    for obj in objs:
        api = model.detect(obj["image"], prompts=PROMPTS, conf=0.0, max_det=5).to_json()
        assert (obj["width"], obj["height"], obj["prompts"]) == (api["width"], api["height"], api["prompts"])
        assert [d["prompt_index"] for d in obj["detections"]] == [d["prompt_index"] for d in api["detections"]]
        np.testing.assert_allclose([d["box"] for d in obj["detections"]], [d["box"] for d in api["detections"]],
                                   atol=0.02)
        np.testing.assert_allclose([d["score"] for d in obj["detections"]],
                                   [d["score"] for d in api["detections"]], atol=1e-4)


@pytest.mark.parametrize("args, code, fragment", [
    (["-p", "a cap", "--conf", "0.0", "--fail-on-detect", "{images}/img_b.png"], 3, None),
    (["-p", " ", "{images}/img_a.jpg"], 2, "error: the prompt is empty"),
    (["-p", "a cap", "{images}/img_a.jpg", "--weights", "{images}/missing.safetensors"], 1,
     "error: checkpoint not found"),
])
def test_cli_exit_codes_in_a_subprocess(tiny, images, args, code, fragment):
    args = [a.format(images=images) for a in args]
    if "--weights" not in args:  # a row that names its own weights is run with those alone
        args = ["--weights", tiny, *args]
    result = run_cli("detect", *args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if fragment:
        assert error_lines(result.stderr) == [line for line in result.stderr.splitlines() if fragment in line]
        assert len(error_lines(result.stderr)) == 1 and result.stdout == ""
    else:
        assert json.loads(result.stdout)["detections"]


def test_bundled_default_model_finds_bottles_on_the_demo_scene():
    demo = Path(__file__).resolve().parents[1] / "promptdet" / "assets" / "demo" / "line1.jpg"
    result = run_cli("detect", "-p", "find all bottles", "--conf", "0.5", str(demo))  # no --weights: bundled model
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["schema"] == SCHEMA and obj["prompts"] == ["find all bottles"]
    assert len(obj["detections"]) >= 2 and all(d["prompt_index"] == 0 for d in obj["detections"])

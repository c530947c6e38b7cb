"""The synthetic conveyor video: frame count, per-frame ground truth, determinism, CLI errors."""

from __future__ import annotations

import json
from itertools import pairwise

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from promptdet.cli.main import app
from promptdet.data.synth.generate import read_scenes
from promptdet.data.synth.video import (
    gt_path_for,
    read_gt,
    render_conveyor,
    render_frame_scenes,
)
from promptdet.data.vocab import CATEGORIES, COLORS_BY_CATEGORY, DEFECTS_BY_CATEGORY

SMALL = (320, 240)  # keeps the suite fast; nothing here depends on resolution
runner = CliRunner()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "line.mp4"
    report = render_conveyor(path, seconds=2, fps=10, size_wh=SMALL, seed=3)
    return path, report


@pytest.fixture(scope="module")
def long_gt(tmp_path_factory):
    """Six seconds at the default defect rate, for the frame statistics."""
    path = tmp_path_factory.mktemp("long") / "line.mp4"
    render_conveyor(path, seconds=6, fps=10, size_wh=SMALL, seed=0)
    return read_gt(path)


def read_frames(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    promised = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return frames, promised


def test_video_opens_with_the_promised_frames(video):
    path, report = video
    assert report.video == path and report.gt == path.with_name("line.gt.jsonl") == gt_path_for(path)
    assert report.num_frames == 20 and report.codec == "mp4v"
    frames, promised = read_frames(path)
    assert promised == 20 and len(frames) == 20
    assert frames[0].shape == (SMALL[1], SMALL[0], 3)
    assert not np.array_equal(frames[0], frames[-1])  # the belt moves


def test_gt_one_line_per_frame_with_the_schema(video):
    _path, report = video
    lines = report.gt.read_text().splitlines()
    assert len(lines) == report.num_frames
    records = [json.loads(line) for line in lines]
    assert [r["frame"] for r in records] == list(range(report.num_frames))
    assert records[1]["t"] == pytest.approx(0.1)
    ids = set()
    for r in records:
        assert set(r) == {"frame", "t", "defective", "parts"}
        for p in r["parts"]:
            assert set(p) == {"id", "category", "color", "defect", "bbox", "fully_in_view", "visible_frac",
                              "visible_px"}
            x1, y1, x2, y2 = p["bbox"]
            assert 0 < p["visible_px"] <= (x2 - x1) * (y2 - y1)
            assert p["category"] in CATEGORIES and p["color"] in COLORS_BY_CATEGORY[p["category"]]
            assert p["defect"] is None or p["defect"] in DEFECTS_BY_CATEGORY[p["category"]]
            ids.add(p["id"])
        assert r["defective"] == any(p["fully_in_view"] and p["defect"] for p in r["parts"])
    assert len(ids) == report.num_parts


def test_fully_in_view_matches_the_box(long_gt):
    W, H = SMALL
    seen_partial = seen_full = False
    for r in long_gt:
        boxes = []
        for p in r["parts"]:
            x1, y1, x2, y2 = p["bbox"]
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H  # clipped to the frame, never empty
            if p["fully_in_view"]:
                seen_full = True
                assert p["visible_frac"] == 1.0
            else:
                seen_partial = True
                assert x1 == 0 or x2 == W  # cut by the edge the part enters or leaves at
                assert p["visible_frac"] < 1.0
            boxes.append((x1, x2))
        boxes.sort()
        assert all(a[1] <= b[0] for a, b in pairwise(boxes))  # parts never overlap
    assert seen_full and seen_partial


def test_parts_move_right_and_keep_their_identity(long_gt):
    last = {}
    for r in long_gt:
        for p in r["parts"]:
            if p["id"] in last and p["fully_in_view"] and last[p["id"]]["fully_in_view"]:
                prev = last[p["id"]]
                assert p["bbox"][0] > prev["bbox"][0]  # moving right
                assert p["bbox"][2] - p["bbox"][0] == prev["bbox"][2] - prev["bbox"][0]  # size fixed
                assert (p["category"], p["color"], p["defect"]) == (prev["category"], prev["color"], prev["defect"])
            last[p["id"]] = p
    first_seen = {}
    for r in long_gt:
        for p in r["parts"]:
            first_seen.setdefault(p["id"], r["frame"])
    order = sorted(first_seen, key=lambda i: (first_seen[i], i))
    assert order == sorted(first_seen)  # ids count parts in the order they enter


def test_some_defective_and_some_clean_frames(long_gt):
    flags = [r["defective"] for r in long_gt]
    assert 0.05 < sum(flags) / len(flags) < 0.95
    assert all(1 <= len(r["parts"]) <= 5 for r in long_gt)


def test_same_seed_same_output_and_prefix(tmp_path, video):
    path, report = video
    again = render_conveyor(tmp_path / "again.mp4", seconds=2, fps=10, size_wh=SMALL, seed=3)
    assert again.gt.read_text() == report.gt.read_text()
    a, _ = read_frames(path)
    b, _ = read_frames(again.video)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other = render_conveyor(tmp_path / "other.mp4", seconds=2, fps=10, size_wh=SMALL, seed=4)
    assert other.gt.read_text() != report.gt.read_text()
    short = render_conveyor(tmp_path / "short.mp4", seconds=1, fps=10, size_wh=SMALL, seed=3)
    assert report.gt.read_text().startswith(short.gt.read_text())  # a shorter video is a prefix


def test_defect_rate_and_categories(tmp_path):
    clean = render_conveyor(tmp_path / "clean.mp4", seconds=2, size_wh=SMALL, defect_rate=0.0)
    assert clean.num_defective_parts == 0 and clean.num_defective_frames == 0
    bad = render_conveyor(tmp_path / "bad.mp4", seconds=2, size_wh=SMALL, defect_rate=1.0, categories=["bottle"])
    records = read_gt(bad.video)
    parts = [p for r in records for p in r["parts"]]
    assert parts and all(p["category"] == "bottle" and p["defect"] for p in parts)


def test_defect_weights_pick_the_kind_and_none_keeps_old_videos(tmp_path, video):
    _path, report = video
    same = render_conveyor(tmp_path / "same.mp4", seconds=2, fps=10, size_wh=SMALL, seed=3, defect_weights=None)
    assert same.gt.read_text() == report.gt.read_text()  # no weights: the draw older videos were made with
    caps = render_conveyor(tmp_path / "caps.mp4", seconds=3, size_wh=SMALL, defect_rate=1.0,
                           categories=["bottle", "can"], defect_weights="missing_cap=1,dent=0,scratch=0,stain=0,crack=0")
    parts = {p["id"]: p for r in read_gt(caps.video) for p in r["parts"]}
    assert parts and all(p["defect"] == "missing_cap" for p in parts.values() if p["category"] == "bottle")
    assert all(p["defect"] is None for p in parts.values() if p["category"] == "can")  # every kind it has weighs 0
    assert any(p["category"] == "bottle" for p in parts.values())
    with pytest.raises(ValueError, match="unknown defect kind"):
        render_frame_scenes(tmp_path / "f", videos=1, seconds=1, size_wh=SMALL, defect_weights="rust=2")
    assert not (tmp_path / "f").exists()  # checked before anything is written


def test_avi_path_writes_mjpg(tmp_path):
    report = render_conveyor(tmp_path / "line.avi", seconds=0.5, fps=10, size_wh=SMALL)
    assert report.codec == "MJPG" and report.gt == tmp_path / "line.gt.jsonl"
    assert len(read_frames(report.video)[0]) == 5


def test_cli_writes_video_and_summary(tmp_path):
    out = tmp_path / "cli" / "line.mp4"
    result = runner.invoke(app, ["data", "synth-video", "--out", str(out), "--seconds", "1", "--size", "320x240"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and len(read_gt(out)) == 10
    assert "10 frames" in result.output and "line.gt.jsonl" in result.output


@pytest.mark.parametrize("args, needle", [
    (["--seconds", "0"], "seconds must be > 0"),
    (["--seconds", "-3"], "seconds must be > 0"),
    (["--size", "big"], "WIDTHxHEIGHT"),
    (["--size", "321x240"], "even"),
    (["--fps", "0"], "fps"),
    (["--defect-rate", "1.5"], "defect rate"),
    (["--categories", "spoon"], "unknown categories"),
    (["--categories", "screw,bolt"], "can carry a defect"),
    (["--defect-weights", "crack"], "KIND=NUMBER"),
])
def test_cli_bad_arguments_give_one_line_and_exit_2(tmp_path, args, needle):
    out = tmp_path / "line.mp4"
    result = runner.invoke(app, ["data", "synth-video", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert not out.exists()


def test_cli_bad_suffix(tmp_path):
    result = runner.invoke(app, ["data", "synth-video", "--out", str(tmp_path / "line.gif"), "--seconds", "1"])
    assert result.exit_code == 2 and ".mp4 or .avi" in result.output


# ---------------------------------------------------------------- frames as training scenes

def test_frame_scenes_keep_only_frames_with_every_part_in_view(tmp_path):
    report = render_frame_scenes(tmp_path / "frames", videos=2, seconds=3, seed=5, every=2, size_wh=SMALL)
    scenes = read_scenes(tmp_path / "frames")
    assert report.num_images == len(scenes) > 0 and report.num_pairs > 0
    truth = {}
    for k in range(2):  # the same videos, rendered again, are the reference
        render_conveyor(tmp_path / f"v{k}.mp4", seconds=3, size_wh=SMALL, seed=5 + k)
        truth.update({(5 + k, r["frame"]): r for r in read_gt(tmp_path / f"v{k}.mp4")})
    kept = set()
    for scene in scenes:
        seed, frame = (int(x) for x in scene["image"][len("images/"):-len(".jpg")].split("_"))
        kept.add((seed, frame))
        gt = truth[(seed, frame)]
        assert frame % 2 == 0 and all(p["fully_in_view"] for p in gt["parts"])
        assert [o["bbox"] for o in scene["objects"]] == [p["bbox"] for p in gt["parts"]]
        assert [o["defects"] for o in scene["objects"]] == [[p["defect"]] if p["defect"] else [] for p in gt["parts"]]
        image = cv2.imread(str(tmp_path / "frames" / scene["image"]))
        assert image.shape == (SMALL[1], SMALL[0], 3)
    # every frame left out had a part cut by the edge, or was not an even frame
    for (seed, frame), gt in truth.items():
        if (seed, frame) not in kept and frame % 2 == 0:
            assert not gt["parts"] or not all(p["fully_in_view"] for p in gt["parts"])
    assert {s for s, _ in kept} == {5, 6}


def test_frame_scenes_train_source_loads(tmp_path):
    from promptdet.config import load_dataset_config
    from promptdet.data.sources import load_source

    render_frame_scenes(tmp_path / "data" / "line_train", videos=1, seconds=3, seed=5, size_wh=SMALL)
    cfg_path = tmp_path / "d.yaml"
    cfg_path.write_text("root: data\ntrain:\n  - {path: line_train, format: synth}\n")
    src = load_source(load_dataset_config(cfg_path), load_dataset_config(cfg_path).train[0])
    assert src.scenes and src.pairs and all((src.images_root / p.image).is_file() for p in src.pairs[:5])


@pytest.mark.parametrize("args, needle", [
    (["--videos", "0"], "--videos"),
    (["--every", "0"], "--every"),
    (["--size", "321x240"], "even"),
    (["--defect-rate", "2"], "defect rate"),
    (["--defect-weights", "dent=-1"], "defect weight"),
])
def test_frames_cli_bad_arguments_exit_2(tmp_path, args, needle):
    res = runner.invoke(app, ["data", "synth-frames", "--out", str(tmp_path / "f"), *args])
    assert res.exit_code == 2 and needle in res.output
    assert not (tmp_path / "f" / "scenes.jsonl").exists()


def test_frames_cli_writes_scenes_and_instructions(tmp_path):
    res = runner.invoke(app, ["data", "synth-frames", "--out", str(tmp_path / "f"), "--videos", "1",
                              "--seconds", "3", "--size", "320x240"])
    assert res.exit_code == 0, res.output
    assert "frames" in res.output and (tmp_path / "f" / "instructions.jsonl").stat().st_size > 0

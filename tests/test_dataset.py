"""Training samples: native-resolution windows of synthetic scenes (``--native-crop``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from promptdet.data.dataset import PromptDataset, crop_scene, native_window


def _obj(i, bbox, defects=()):
    return {"id": i, "category": "nut", "color": "red", "defects": list(defects), "bbox": list(bbox),
            "visible_px": 100, "visible_frac": 1.0, "angle": 0.0}


def _cut(window, box) -> bool:
    x0, y0, x1, y1 = window
    inside = box[0] >= x0 and box[1] >= y0 and box[2] <= x1 and box[3] <= y1
    outside = box[2] <= x0 or box[0] >= x1 or box[3] <= y0 or box[1] >= y1
    return not (inside or outside)


@pytest.mark.parametrize("seed", range(5))
def test_native_window_cuts_no_object_and_holds_one(seed):
    rng = np.random.default_rng(seed)
    corners = rng.integers([0, 0], [600, 450], (8, 2)).tolist()
    objects = [_obj(i, (x, y, x + 30, y + 20), ["dent"] if i % 3 == 0 else []) for i, (x, y) in enumerate(corners)]
    window = native_window(objects, (640, 480), 320, np.random.default_rng(seed))
    assert window is not None  # eight small parts on a large image: a window that cuts none exists
    x0, y0, x1, y1 = window
    assert (x1 - x0, y1 - y0) == (320, 320) and 0 <= x0 and x1 <= 640 and 0 <= y0 and y1 <= 480
    assert not any(_cut(window, o["bbox"]) for o in objects)
    sub = crop_scene({"image": "a.jpg", "width": 640, "height": 480, "objects": objects}, window)
    assert sub["width"] == 320 and sub["height"] == 320 and sub["objects"]
    for o in sub["objects"]:  # shifted into the window, same size, same facts
        orig = objects[o["id"]]["bbox"]
        assert o["bbox"] == [orig[0] - x0, orig[1] - y0, orig[2] - x0, orig[3] - y0]
        assert 0 <= o["bbox"][0] < o["bbox"][2] <= 320 and 0 <= o["bbox"][1] < o["bbox"][3] <= 320


def test_native_window_none_when_nothing_qualifies_or_image_is_small():
    rng = np.random.default_rng(0)
    # A part wider than the window everywhere: every window cuts it or misses everything.
    wide = [_obj(0, (0, 100, 640, 140))]
    assert native_window(wide, (640, 480), 320, rng) is None
    assert native_window([_obj(0, (10, 10, 40, 40))], (320, 240), 320, rng) is None  # image fits the window
    assert native_window([], (640, 480), 320, rng) is None


def test_native_window_prefers_damaged_parts():
    # Two clusters far apart; only the right one has a damaged part. Both qualify as windows.
    objects = [_obj(0, (20, 200, 60, 240)), _obj(1, (560, 200, 600, 240), defects=["crack"])]
    picks = [native_window(objects, (640, 480), 200, np.random.default_rng(s), tries=200) for s in range(20)]
    assert all(w is not None and w[0] <= 560 and w[2] >= 600 for w in picks), picks
    # Without the damaged part both clusters are picked.
    plain = [_obj(0, (20, 200, 60, 240)), _obj(1, (560, 200, 600, 240))]
    sides = {native_window(plain, (640, 480), 200, np.random.default_rng(s), tries=200)[0] < 300 for s in range(20)}
    assert sides == {True, False}


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory) -> Path:
    from promptdet.data.synth.generate import synthesize

    root = tmp_path_factory.mktemp("native")
    synthesize(root, 6, seed=3, size_wh=(320, 240), workers=1, per_image=4, progress=False)
    return root


def _dataset(root: Path, native_crop: float, imgsz: int = 128) -> PromptDataset:
    from promptdet.data.sources import load_source, resolve_dataset

    (root / "d.yaml").write_text("name: d\nroot: .\ntrain:\n  - {path: ., format: synth}\n")
    cfg = resolve_dataset(str(root / "d.yaml"))
    return PromptDataset([load_source(cfg, cfg.train[0])], imgsz, prompts_per_image=6, augment=None,
                         native_crop=native_crop)


def test_native_crop_samples_keep_the_scene_pixel_scale(tiny_scenes):
    scenes = [json.loads(line) for line in (tiny_scenes / "scenes.jsonl").read_text().splitlines()]
    sizes = {(o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1]) for s in scenes for o in s["objects"]}
    native, scaled = _dataset(tiny_scenes, 1.0), _dataset(tiny_scenes, 0.0)
    n_native = 0
    for epoch in range(4):
        for ds in (native, scaled):
            ds.set_epoch(epoch)
        for i in range(len(native)):
            a, b = native[i], scaled[i]
            assert a.image.shape == b.image.shape == (128, 128, 3)
            boxes = [tuple(np.round(bx[2:] - bx[:2]).astype(int)) for ans in a.answers for bx in ans]
            if boxes and all(wh in sizes for wh in boxes):
                n_native += 1  # a window at scale 1: every answer box keeps its scene size exactly
            for ans in a.answers:  # inside the sample's image in any case
                assert (ans >= 0).all() and (ans <= 128).all()
            for bx in (bx for ans in b.answers for bx in ans):  # the whole image: scaled by 128 / 320
                assert any(np.abs((bx[2:] - bx[:2]) - 0.4 * np.array(wh)).max() < 1.0 for wh in sizes), bx
    assert n_native >= 6, n_native  # most samples are windows (a few layouts allow none)


def test_native_crop_share_is_checked(tiny_scenes):
    with pytest.raises(ValueError, match="native_crop"):
        _dataset(tiny_scenes, 1.5)


def test_samples_carry_every_part_with_its_defect_kind(tiny_scenes):
    from promptdet.data.dataset import DEFECT_KINDS
    from promptdet.data.transforms import InstructionAugment

    scenes = {s["image"]: s for s in map(json.loads, (tiny_scenes / "scenes.jsonl").read_text().splitlines())}
    plain = _dataset(tiny_scenes, 0.0)
    for i, entry in enumerate(plain.entries):
        sample, scene = plain[i], scenes[Path(entry.path).relative_to(tiny_scenes).as_posix()]
        kinds = [DEFECT_KINDS.index(o["defects"][0]) if o["defects"] else 0 for o in scene["objects"]]
        assert sample.part_kinds.tolist() == kinds
        # 320x240 letterboxed into 128: scale 0.4, 16 px of padding above and below.
        expected = np.array([o["bbox"] for o in scene["objects"]], np.float32) * 0.4 + [0, 16, 0, 16]
        assert np.allclose(sample.part_boxes, expected, atol=1e-3)
    augmented = _dataset(tiny_scenes, 0.0)
    augmented.augment = InstructionAugment(hflip=1.0, crop=1.0)
    for i in range(len(augmented)):
        s = augmented[i]
        assert len(s.part_boxes) == len(s.part_kinds) == len(plain[i].part_kinds)
        assert (s.part_boxes >= -1e-3).all() and (s.part_boxes <= 128 + 1e-3).all()
        # A flip mirrors the parts: their widths and heights are the un-flipped ones times the crop's zoom.
        wh, wh0 = s.part_boxes[:, 2:] - s.part_boxes[:, :2], plain[i].part_boxes[:, 2:] - plain[i].part_boxes[:, :2]
        ratio = wh / wh0
        assert np.allclose(ratio, ratio.mean(), rtol=0.02), ratio


def test_collate_pads_parts_with_an_ignore_kind(tiny_scenes):
    from promptdet.data.dataset import collate

    ds = _dataset(tiny_scenes, 0.0)
    samples = [ds[i] for i in range(3)]
    _, _, targets, _ = collate(samples)
    n = max(len(s.part_kinds) for s in samples)
    assert targets.part_boxes.shape == (3, n, 4) and targets.part_kinds.shape == (3, n)
    for i, s in enumerate(samples):
        assert targets.part_kinds[i, :len(s.part_kinds)].tolist() == s.part_kinds.tolist()
        assert (targets.part_kinds[i, len(s.part_kinds):] == -1).all()

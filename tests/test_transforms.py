"""Instruction-aware augmentation keeps every instruction true (promptdet.data.transforms)."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest

from promptdet.data.pairs import InstructionPair
from promptdet.data.transforms import (
    InstructionAugment,
    UnflippableText,
    can_flip_text,
    flip_text,
    names_colour,
)

H, W = 240, 320
GREY = (128, 128, 128)
RED = (0, 0, 200)       # BGR
GREEN = (0, 200, 0)
BLUE = (200, 0, 0)
YELLOW = (0, 200, 200)

# name -> (box xyxy, BGR colour); boxes are pixel-exact rectangles drawn on a grey canvas.
OBJECTS = {
    "bolt_a": ([40.0, 60.0, 80.0, 100.0], RED),
    "bolt_b": ([150.0, 30.0, 190.0, 70.0], GREEN),
    "can": ([220.0, 120.0, 280.0, 200.0], BLUE),
}
EXTRA = ([120.0, 150.0, 150.0, 180.0], YELLOW)  # an object of the scene that no pair mentions


def make_image(with_extra: bool = True) -> np.ndarray:
    img = np.full((H, W, 3), GREY, np.uint8)
    items = list(OBJECTS.values()) + ([EXTRA] if with_extra else [])
    for (x1, y1, x2, y2), col in items:
        # cv2.rectangle is inclusive of the end point: fill exactly [x1, x2) x [y1, y2).
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), col, -1)
    return img


def scene_boxes() -> list[list[float]]:
    return [list(b) for b, _ in OBJECTS.values()] + [list(EXTRA[0])]


def pair(text: str, names: list[str], type_: str = "category", **kw) -> InstructionPair:
    return InstructionPair("img.jpg", text, [list(OBJECTS[n][0]) for n in names], type_, **kw)


OFF = {"hflip": 0.0, "vflip": 0.0, "hue": 0.0, "photometric": 0.0, "crop": 0.0, "blur": 0.0, "noise": 0.0}


def only(**on) -> InstructionAugment:
    return InstructionAugment(**{**OFF, **on})


def mean_colour(img: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(v)) for v in box)  # noqa: RUF046 -- augmented boxes may be numpy floats
    return img[y1:y2, x1:x2].reshape(-1, 3).mean(0)


def count_colour(img: np.ndarray, col) -> int:
    return int(np.all(img == np.array(col, np.uint8), axis=2).sum())


def circ_hue_diff(a: float, b: float) -> float:
    d = abs(a - b) % 180
    return min(d, 180 - d)


def median_hue(img: np.ndarray, box) -> float:
    x1, y1, x2, y2 = (int(v) for v in box)
    hsv = cv2.cvtColor(img[y1 + 5:y2 - 5, x1 + 5:x2 - 5], cv2.COLOR_BGR2HSV)
    return float(np.median(hsv[..., 0]))


# ------------------------------------------------------------------------------------ text

@pytest.mark.parametrize("text, expected", [
    ("the leftmost bolt", "the rightmost bolt"),
    ("the rightmost bolt", "the leftmost bolt"),
    ("the left-most can", "the right-most can"),
    ("the left-hand gear", "the right-hand gear"),
    ("the right hand side", "the left hand side"),
    ("the bolt furthest left", "the bolt furthest right"),
    ("the nut farthest right", "the nut farthest left"),
    ("the bolt left of the can and right of the gear", "the bolt right of the can and left of the gear"),
    ("from left to right", "from right to left"),
    ("Left bolt", "Right bolt"),
    ("Rightmost can", "Leftmost can"),
    ("LEFTMOST", "RIGHTMOST"),
    ("the bolt on the LEFT", "the bolt on the RIGHT"),
    ("the bright bolt on the left", "the bright bolt on the right"),
    ("a leftover bolt, rightly so", "a leftover bolt, rightly so"),
    ("copyright notice, the left one", "copyright notice, the right one"),
    ("the bolt at the top right", "the bolt at the top left"),
    ("a right angle bracket on the left", "a right angle bracket on the right"),
    ("the largest red box", "the largest red box"),
    ("the second bolt from the left", "the second bolt from the right"),
    ("leftwards-facing bolt", "rightwards-facing bolt"),
])
def test_flip_text_horizontal(text, expected):
    assert flip_text(text, "horizontal") == expected


@pytest.mark.parametrize("text, expected", [
    ("the topmost bolt", "the bottommost bolt"),
    ("the bottommost can", "the topmost can"),
    ("the top-most gear", "the bottom-most gear"),
    ("Bottom-most nut", "Top-most nut"),
    ("the upper can", "the lower can"),
    ("the lower can", "the upper can"),
    ("the uppermost can", "the lowermost can"),
    ("the LOWERMOST can", "the UPPERMOST can"),
    ("the can above the box and below the gear", "the can below the box and above the gear"),
    ("the highest bolt", "the lowest bolt"),
    ("the lowest bolt", "the highest bolt"),
    ("a bottle lower than the can", "a bottle higher than the can"),
    ("a bottle higher than the can", "a bottle lower than the can"),
    ("the bolt at the top right", "the bolt at the bottom right"),
    ("stop at the desktop", "stop at the desktop"),
    ("the leftmost bolt", "the leftmost bolt"),
])
def test_flip_text_vertical(text, expected):
    assert flip_text(text, "vertical") == expected


def test_flip_text_is_an_involution():
    for text in ["the leftmost bolt", "the upper can above the gear", "Left-hand TOP bolt"]:
        for axis in ("horizontal", "vertical"):
            assert flip_text(flip_text(text, axis), axis) == text


@pytest.mark.parametrize("text, axis", [
    ("the north bolt", "vertical"),
    ("the east-most can", "horizontal"),
    ("the bolt turned clockwise", "horizontal"),
    ("the bolt turned anticlockwise", "vertical"),
    ("the bolt right next to the gear", "horizontal"),
    ("the nut right above the can", "horizontal"),
    ("how many bolts are left", "horizontal"),
    ("the bottle left on the belt", "horizontal"),
    ("the second bolt", "horizontal"),
    ("the last can in the row", "vertical"),
    ("the bottle on top of the box", "vertical"),
    ("the upright bottle", "vertical"),
    ("the nut under the can", "vertical"),
])
def test_unrewritable_text(text, axis):
    assert not can_flip_text(text, axis)
    with pytest.raises(UnflippableText):
        flip_text(text, axis)


@pytest.mark.parametrize("text, axis", [
    ("the north bolt", "horizontal"),   # north is unaffected by a left-right mirror
    ("the bolt right next to the gear", "vertical"),
    ("the second bolt from the top", "horizontal"),
    ("to the top right", "horizontal"),
    ("to the top right", "vertical"),
])
def test_rewritable_text(text, axis):
    assert can_flip_text(text, axis)


@pytest.mark.parametrize("text, expected", [
    ("the red bolt", True),
    ("Blue can", True),
    ("the dark green bottle", True),
    ("a light-grey washer", True),
    ("the gray nut", True),
    ("a reddish box", True),
    ("the bluish can", True),
    ("greenish gear", True),
    ("a yellowish screw", True),
    ("the silver bolt", True),
    ("the metallic can", True),
    ("the chrome screw", True),
    ("a steel-coloured bolt", True),
    ("a golden nut", True),
    ("purple box", True),
    ("the teal bottle", True),
    ("crimson can", True),
    ("turquoise box", True),
    ("which colour is the box", True),
    ("what color is the can", True),
    ("the WHITE bottle", True),
    ("the largest bolt", False),
    ("the leftmost bolt", False),
    ("the scratched can", False),
    ("predicted bored redundant box", False),
    ("the bright bolt", False),
    ("the bolt to the right", False),
])
def test_names_colour(text, expected):
    assert names_colour(text) is expected


# -------------------------------------------------------------------------------- geometry

def test_forced_hflip_moves_boxes_and_rewrites_text():
    img = make_image()
    pairs = [pair("the leftmost bolt", ["bolt_a"], "spatial"),
             pair("all bolts", ["bolt_a", "bolt_b"]),
             pair("the can", ["can"])]
    out, new = only(hflip=1.0)(img, pairs, rng=np.random.default_rng(0))
    assert out.shape == img.shape
    assert np.array_equal(out, img[:, ::-1])
    assert new[0].instruction == "the rightmost bolt"
    assert new[1].instruction == "all bolts"
    for p_old, p_new in zip(pairs, new):
        for (x1, y1, x2, y2), b in zip(p_old.boxes_xyxy, p_new.boxes_xyxy):
            assert b == pytest.approx([W - x2, y1, W - x1, y2], abs=1e-9)
    target = new[0].boxes_xyxy[0]
    everything = [b for p in new for b in p.boxes_xyxy]
    assert target[2] == max(b[2] for b in everything)  # it IS now the rightmost
    assert mean_colour(out, target) == pytest.approx(np.array(RED, float))


def test_forced_vflip_moves_boxes_and_rewrites_text():
    img = make_image()
    pairs = [pair("the topmost bolt", ["bolt_b"], "spatial"),
             pair("the can below the red bolt", ["can"], "relation")]
    out, new = only(vflip=1.0)(img, pairs, rng=np.random.default_rng(0))
    assert np.array_equal(out, img[::-1])
    assert new[0].instruction == "the bottommost bolt"
    assert new[1].instruction == "the can above the red bolt"
    x1, y1, x2, y2 = OBJECTS["bolt_b"][0]
    assert new[0].boxes_xyxy == [pytest.approx([x1, H - y2, x2, H - y1])]
    assert new[0].boxes_xyxy[0][3] == max(H - b[1] for b, _ in OBJECTS.values())  # now lowest
    assert mean_colour(out, new[0].boxes_xyxy[0]) == pytest.approx(np.array(GREEN, float))


def test_both_flips_are_a_180_rotation():
    img = make_image()
    pairs = [pair("the top left bolt", ["bolt_a"], "spatial")]
    out, new = only(hflip=1.0, vflip=1.0)(img, pairs, rng=np.random.default_rng(1))
    assert np.array_equal(out, img[::-1, ::-1])
    assert new[0].instruction == "the bottom right bolt"
    assert mean_colour(out, new[0].boxes_xyxy[0]) == pytest.approx(np.array(RED, float))


@pytest.mark.parametrize("bad_text, kind", [
    ("the bolt right next to the can", "hflip"),
    ("the easternmost bolt", "hflip"),
    ("the second bolt", "hflip"),
    ("the bolt turned clockwise", "vflip"),
    ("the bottle on top of the box", "vflip"),
])
def test_unrewritable_text_skips_the_flip_for_the_whole_image(bad_text, kind):
    img = make_image()
    pairs = [pair("the leftmost bolt above the can", ["bolt_a"], "spatial"),
             pair(bad_text, ["bolt_b"], "relation")]
    out, new = only(**{kind: 1.0})(img, pairs, rng=np.random.default_rng(0))
    assert np.array_equal(out, img)
    assert [p.instruction for p in new] == [p.instruction for p in pairs]
    assert [p.boxes_xyxy for p in new] == [p.boxes_xyxy for p in pairs]


@pytest.mark.parametrize("seed", range(6))
def test_crop_keeps_every_scene_box_whole(seed):
    img = make_image()
    pairs = [pair("the largest object", ["can"], "superlative"),
             pair("the leftmost bolt", ["bolt_a"], "spatial"),
             pair("all bolts", ["bolt_a", "bolt_b"], "count"),
             InstructionPair("img.jpg", "the scratched gear", [], "absent")]
    out, new = only(crop=1.0)(img, pairs, scene_boxes_xyxy=scene_boxes(),
                              rng=np.random.default_rng(seed))
    h, w = out.shape[:2]
    assert (h, w) != (H, W) and h <= H and w <= W
    # every box shifted by one and the same integer offset, fully inside, same pixels
    dx = new[1].boxes_xyxy[0][0] - OBJECTS["bolt_a"][0][0]
    dy = new[1].boxes_xyxy[0][1] - OBJECTS["bolt_a"][0][1]
    assert dx == int(dx) and dy == int(dy)
    for p_old, p_new in zip(pairs, new):
        assert len(p_new.boxes_xyxy) == len(p_old.boxes_xyxy)
        for b_old, b_new in zip(p_old.boxes_xyxy, p_new.boxes_xyxy):
            assert b_new == pytest.approx([b_old[0] + dx, b_old[1] + dy, b_old[2] + dx, b_old[3] + dy])
            assert 0 <= b_new[0] and 0 <= b_new[1] and b_new[2] <= w and b_new[3] <= h
    for _, col in list(OBJECTS.values()) + [EXTRA]:  # no object of the scene lost a pixel
        assert count_colour(out, col) == count_colour(img, col)
    assert new[3].boxes_xyxy == []


def test_no_crop_for_whole_image_types_without_scene_boxes():
    img = make_image()
    pairs = [pair("the leftmost bolt", ["bolt_a"], "spatial")]
    for seed in range(5):
        out, new = only(crop=1.0)(img, pairs, rng=np.random.default_rng(seed))
        assert out.shape == img.shape and np.array_equal(out, img)
        assert new[0].boxes_xyxy == pairs[0].boxes_xyxy


def test_crop_without_scene_boxes_keeps_the_pairs_boxes():
    img = make_image()
    pairs = [pair("all bolts", ["bolt_a", "bolt_b"]), pair("the can", ["can"])]
    shrunk = 0
    for seed in range(5):
        out, new = only(crop=1.0)(img, pairs, rng=np.random.default_rng(seed))
        h, w = out.shape[:2]
        shrunk += (h, w) != (H, W)
        for name, b in zip(["bolt_a", "bolt_b", "can"], new[0].boxes_xyxy + new[1].boxes_xyxy):
            assert 0 <= b[0] and 0 <= b[1] and b[2] <= w and b[3] <= h
            assert mean_colour(out, b) == pytest.approx(np.array(OBJECTS[name][1], float))
    assert shrunk == 5


# ------------------------------------------------------------------------------ photometric

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("text, type_, may_change", [
    ("the red bolt", "attribute", False),
    ("the reddish thing", "category", False),
    ("which colour is the bolt", "category", False),
    ("the dark grey can", "category", False),
    ("the bolt", "attribute", False),       # attribute pairs are colour by construction
    ("the leftmost bolt", "spatial", True),
    ("all bolts", "category", True),
])
def test_hue_never_changes_a_named_colour(seed, text, type_, may_change):
    img = make_image()
    pairs = [pair("all objects", ["bolt_a", "bolt_b", "can"]), pair(text, ["bolt_a"], type_)]
    out, _ = only(hue=1.0)(img, pairs, rng=np.random.default_rng(seed))
    box = OBJECTS["bolt_a"][0]
    diff = circ_hue_diff(median_hue(img, box), median_hue(out, box))
    if may_change:
        assert diff >= 3
    else:
        assert diff == 0 and np.array_equal(out, img)


@pytest.mark.parametrize("seed", range(8))
def test_photometric_stays_mild(seed):
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 32:] = 255
    out, _ = only(photometric=1.0, blur=0.0)(img, [pair("the can", ["can"])],
                                             rng=np.random.default_rng(seed))
    assert out[:, 40:].min() >= 0.85 * 255  # white does not turn silver
    assert out[:, :24].max() <= 0.15 * 255  # black does not turn grey


def test_noise_and_blur_change_pixels_not_boxes():
    img = make_image()
    pairs = [pair("the can", ["can"])]
    out, new = only(noise=1.0, blur=1.0)(img, pairs, rng=np.random.default_rng(3))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 12
    assert new[0].boxes_xyxy == pairs[0].boxes_xyxy


# ----------------------------------------------------------------------------- invariants

ALL_ON = {"hflip": 1.0, "vflip": 1.0, "hue": 1.0, "photometric": 1.0, "crop": 1.0, "blur": 1.0, "noise": 1.0}


@pytest.mark.parametrize("settings", [ALL_ON, {}], ids=["all_on", "defaults"])
def test_absent_pair_survives_with_no_boxes(settings):
    img = make_image()
    pairs = [InstructionPair("img.jpg", "the scratched gear on the left", [], "absent"),
             pair("all bolts", ["bolt_a", "bolt_b"])]
    aug = InstructionAugment(**settings)
    for seed in range(5):
        _, new = aug(img, pairs, scene_boxes_xyxy=scene_boxes(), rng=np.random.default_rng(seed))
        assert new[0].boxes_xyxy == [] and new[0].type == "absent"
        assert len(new[1].boxes_xyxy) == 2


def test_deterministic_given_the_seed():
    img = make_image()
    pairs = [pair("the leftmost bolt", ["bolt_a"], "spatial"), pair("all bolts", ["bolt_a", "bolt_b"])]
    aug = InstructionAugment(hflip=0.5, vflip=0.5, hue=0.5, photometric=1.0, crop=0.5, blur=0.5, noise=0.5)
    results = {}
    for seed in range(6):
        a = aug(img, pairs, scene_boxes(), rng=np.random.default_rng(seed))
        b = InstructionAugment(**vars_of(aug))(img, pairs, scene_boxes(), rng=np.random.default_rng(seed))
        assert np.array_equal(a[0], b[0])
        assert [p.to_record() for p in a[1]] == [p.to_record() for p in b[1]]
        results[seed] = a[0].tobytes()
    assert len(set(results.values())) > 1  # and different seeds differ


def vars_of(aug: InstructionAugment) -> dict:
    return {k: getattr(aug, k) for k in ("hflip", "vflip", "hue", "photometric", "crop",
                                         "crop_min_scale", "blur", "noise")}


def test_inputs_not_mutated_and_metadata_carried():
    img = make_image()
    img_before = img.copy()
    pairs = [pair("the leftmost bolt", ["bolt_a"], "spatial", object_ids=[7],
                  extra={"source": "synth", "split": "train"}),
             InstructionPair("img.jpg", "the missing gear", [], "absent")]
    pairs_before = copy.deepcopy(pairs)
    scene = scene_boxes()
    scene_before = copy.deepcopy(scene)
    for seed in range(5):
        out, new = InstructionAugment(**ALL_ON)(img, pairs, scene, rng=np.random.default_rng(seed))
        assert np.array_equal(img, img_before)
        assert pairs == pairs_before and scene == scene_before
        assert all(n is not p for n, p in zip(new, pairs))
        assert new[0].object_ids == [7] and new[0].extra == {"source": "synth", "split": "train"}
        assert new[0].image == "img.jpg" and new[0].type == "spatial"
        assert all(isinstance(v, float) for v in new[0].boxes_xyxy[0])
        out[:] = 0  # the output never aliases the input
        assert np.array_equal(img, img_before)


def test_rejects_bad_probability():
    with pytest.raises(ValueError):
        InstructionAugment(hflip=1.5)
    with pytest.raises(ValueError):
        InstructionAugment(crop_min_scale=0.0)


def test_grayscale_and_bad_dtype():
    grey = np.full((60, 80), 100, np.uint8)
    pairs = [InstructionPair("g.jpg", "the left bolt", [[10.0, 10.0, 30.0, 30.0]])]
    out, new = InstructionAugment(**ALL_ON)(grey, pairs, rng=np.random.default_rng(0))
    assert out.ndim == 2 and new[0].instruction == "the right bolt"
    with pytest.raises(ValueError):
        InstructionAugment()(grey.astype(np.float32), pairs, rng=np.random.default_rng(0))

"""The synthetic conveyor-belt renderer: determinism, vocabulary, exact visible-pixel boxes."""

from __future__ import annotations

import numpy as np
import pytest

from promptdet.data.synth.render import DefectMix, render_scene
from promptdet.data.vocab import CATEGORIES, COLORS_BY_CATEGORY, DEFECTS_BY_CATEGORY

N_SCENES = 200
SMALL = (320, 240)  # the statistics do not depend on resolution; this keeps the suite fast


@pytest.fixture(scope="module")
def scenes():
    out = []
    for seed in range(N_SCENES):
        img, objects, labels = render_scene(np.random.default_rng(seed), SMALL, return_labels=True)
        out.append((img, objects, labels))
    return out


def test_same_seed_same_scene_and_no_global_state():
    np.random.seed(1)
    img_a, obj_a = render_scene(np.random.default_rng(42))
    np.random.seed(2)  # the global RNG must play no part
    img_b, obj_b = render_scene(np.random.default_rng(42))
    assert img_a.shape == (480, 640, 3) and img_a.dtype == np.uint8
    assert np.array_equal(img_a, img_b)
    assert obj_a == obj_b


def test_different_seeds_differ():
    img_a, obj_a = render_scene(np.random.default_rng(1))
    img_b, obj_b = render_scene(np.random.default_rng(2))
    assert not np.array_equal(img_a, img_b)
    assert obj_a != obj_b


def test_small_size_works(scenes):
    for img, objects, labels in scenes[:10]:
        assert img.shape == (SMALL[1], SMALL[0], 3) and img.dtype == np.uint8
        assert labels.shape == (SMALL[1], SMALL[0])
        assert img.std() > 5  # a textured belt with parts, not a blank frame


def test_object_count(scenes):
    counts = [len(objects) for _, objects, _ in scenes]
    assert min(counts) >= 2 and max(counts) <= 12
    assert min(counts) <= 3 and max(counts) >= 11  # the whole range is used


def test_vocabulary(scenes):
    seen_categories, seen_colors = set(), set()
    for _, objects, _ in scenes:
        assert [o["id"] for o in objects] == list(range(len(objects)))
        for o in objects:
            assert o["category"] in CATEGORIES
            assert o["color"] in COLORS_BY_CATEGORY[o["category"]]
            assert len(o["defects"]) <= 1
            assert all(d in DEFECTS_BY_CATEGORY[o["category"]] for d in o["defects"])
            assert isinstance(o["angle"], float) and 0.0 <= o["angle"] < 360.0
            seen_categories.add(o["category"])
            seen_colors.add(o["color"])
    assert seen_categories == set(CATEGORIES)
    assert seen_colors == {c for cs in COLORS_BY_CATEGORY.values() for c in cs}


def test_bbox_inside_image(scenes):
    W, H = SMALL
    for _, objects, _ in scenes:
        for o in objects:
            x1, y1, x2, y2 = o["bbox"]
            assert all(isinstance(v, int) for v in o["bbox"])
            assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H


def test_bbox_is_tight_box_of_visible_pixels(scenes):
    for _, objects, labels in scenes:
        assert labels.min() >= -1 and labels.max() == len(objects) - 1
        for o in objects:
            ys, xs = np.nonzero(labels == o["id"])
            assert o["visible_px"] == xs.size > 0
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_visible_fraction(scenes):
    fracs = [o["visible_frac"] for _, objects, _ in scenes for o in objects]
    assert min(fracs) >= 0.5 and max(fracs) <= 1.0
    occluded = sum(f < 0.999 for f in fracs) / len(fracs)
    assert 0.01 < occluded < 0.2  # a few parts are partly hidden, most are not


def test_defect_rate(scenes):
    objects = [o for _, objs, _ in scenes for o in objs]
    rate = sum(bool(o["defects"]) for o in objects) / len(objects)
    assert 0.15 <= rate <= 0.35
    kinds = {d for o in objects for d in o["defects"]}
    assert kinds == {d for ds in DEFECTS_BY_CATEGORY.values() for d in ds}
    assert not any(o["defects"] for o in objects if o["category"] in ("screw", "bolt"))


def _defect_shares(mix, n=120):
    objects = [o for seed in range(n) for o in render_scene(np.random.default_rng(seed), SMALL, defect_mix=mix)[1]]
    damaged = [o["defects"][0] for o in objects if o["defects"]]
    return len(damaged) / len(objects), {k: damaged.count(k) / max(len(damaged), 1) for k in set(damaged)}


def test_defect_mix_changes_rate_and_kinds():
    rate, kinds = _defect_shares(DefectMix(rate=0.5, weights=(("missing_cap", 6.0), ("dent", 0.0))))
    base_rate, base_kinds = _defect_shares(None)
    assert 0.4 <= rate <= 0.6 and 0.15 <= base_rate <= 0.35
    assert "dent" not in kinds  # weight 0: never drawn
    assert kinds["missing_cap"] > 3 * base_kinds.get("missing_cap", 0.0)
    assert _defect_shares(DefectMix(rate=0.0), n=20)[0] == 0.0


def test_default_defect_mix_keeps_old_seeds():
    # None is the draw every existing data set was made with; it must not move by a pixel.
    img_a, obj_a = render_scene(np.random.default_rng(7), SMALL)
    img_b, obj_b = render_scene(np.random.default_rng(7), SMALL, defect_mix=None)
    assert np.array_equal(img_a, img_b) and obj_a == obj_b


@pytest.mark.parametrize("rate, weights, needle", [
    (0.9, None, "defect rate must be in"),
    (0.3, "dentt=2", "unknown defect kind 'dentt'"),
    (0.3, "crack", "KIND=NUMBER"),
    (0.3, "crack=x", "KIND=NUMBER"),
    (0.3, "crack=-1", "finite number >= 0"),
])
def test_defect_mix_rejects_bad_values(rate, weights, needle):
    with pytest.raises(ValueError, match=needle):
        DefectMix.parse(rate, weights)


def test_part_pixels_differ_from_belt(scenes):
    """Parts are drawn where the label map says they are, and stand out from the belt."""
    for img, objects, labels in scenes[:30]:
        belt = np.median(img[labels == -1].astype(np.float32), axis=0)
        for o in objects:
            if o["color"] != "silver":  # silver can sit near a bright belt's grey
                part = np.median(img[labels == o["id"]].astype(np.float32), axis=0)
                assert np.abs(part - belt).max() > 25, o

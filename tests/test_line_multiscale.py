"""A line recipe may run the model at several sizes (model.imgsz a list); the boxes are merged per prompt."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from promptdet.config import ConfigError
from promptdet.line.recipe import recipe_from_dict
from promptdet.runtime.multiscale import MultiScalePredictor
from promptdet.structures import Detections

PROMPTS = ["defective parts", "missing caps"]
MINIMAL = {"version": 1, "source": {"uri": "line.mp4"},
           "checks": [{"name": "defects", "prompt": PROMPTS[0], "fail_if": "count >= 1"},
                      {"name": "caps", "prompt": PROMPTS[1], "fail_if": "count >= 1"}]}


class SizedPredictor:
    """Stands in for one size of the model: fixed boxes, scores and prompt ids."""

    def __init__(self, imgsz, boxes, scores, ids, conf=0.25, iou=0.6, max_det=300, prompts=PROMPTS, **flags):
        self.imgsz, self.conf, self.iou, self.max_det, self.prompts = imgsz, conf, iou, max_det, list(prompts)
        self.out = (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(ids))
        self.flags = flags  # familiarity, unfamiliar, prompt_familiarity, unknown_prompts, abstained
        self.calls = []

    def __call__(self, image, name=None, frame=None, read_ms=0.0, keep_image=True):
        self.calls.append({"image": image, "name": name, "frame": frame, "read_ms": read_ms, "keep_image": keep_image})
        b, s, k = self.out
        # no "text" key: a predictor that never encodes text may leave it out
        ms = {"read": read_ms, "preprocess": 1.0, "infer": 10.0, "post": 0.5, "total": read_ms + 11.5}
        return Detections(b, s, k, self.prompts, (64, 48), name, ms, frame, image if keep_image else None,
                          **self.flags)


def test_merge_keeps_each_sizes_finds_and_one_box_per_part():
    a = SizedPredictor(640, [[10, 10, 20, 20], [30, 5, 40, 15]], [0.5, 0.3], [0, 1])
    b = SizedPredictor(768, [[11, 10, 21, 20], [0, 30, 8, 40]], [0.7, 0.4], [0, 0])
    image = np.zeros((48, 64, 3), np.uint8)
    det = MultiScalePredictor([a, b])(image, "img", 3, read_ms=2.0)
    # each size is asked once, without the read time and without keeping its own copy of the image
    for p in (a, b):
        (call,) = p.calls
        assert call.pop("image") is image
        assert call == {"name": "img", "frame": 3, "read_ms": 0.0, "keep_image": False}
    assert det.frame == 3 and det.image == "img" and det.prompts == PROMPTS
    # the same part seen at both sizes is one box, the higher score's; a part one size alone found stays
    assert det.scores.tolist() == pytest.approx([0.7, 0.4, 0.3])
    assert det.prompt_ids.tolist() == [0, 0, 1]
    assert det.boxes_xyxy[0].tolist() == [11, 10, 21, 20]
    assert det.timing_ms["infer"] == pytest.approx(20.0) and det.timing_ms["read"] == 2.0
    assert det.timing_ms["total"] == pytest.approx(25.0) and det.timing_ms["text"] == 0.0


def test_prompts_never_suppress_each_other_and_max_det_holds():
    same_box = [[10, 10, 20, 20]] * 3
    a = SizedPredictor(640, same_box + [[40, 40, 50, 50]], [0.9, 0.8, 0.6, 0.5], [0, 1, 1, 0], max_det=1)
    b = SizedPredictor(768, [], [], [], max_det=1)
    det = MultiScalePredictor([a, b])(np.zeros((48, 64, 3), np.uint8))
    assert sorted(det.prompt_ids.tolist()) == [0, 1]  # one per prompt (max_det 1), and prompt 1 kept its box
    assert det.scores.tolist() == pytest.approx([0.9, 0.8])


def test_the_image_size_and_pixels_are_the_callers():
    image = np.zeros((30, 50, 3), np.uint8)  # not the (64, 48) the stand-ins report
    pred = MultiScalePredictor([SizedPredictor(640, [], [], []), SizedPredictor(768, [], [], [])])
    det = pred(image)
    assert det.image_wh == (50, 30) and det.image_bgr is image and det.image is None and det.frame is None
    assert det.timing_ms["read"] == 0.0 and det.timing_ms["total"] == pytest.approx(23.0)
    assert pred(image, keep_image=False).image_bgr is None
    assert pred.imgsz == [640, 768] and pred.prompts == PROMPTS
    assert (pred.conf, pred.iou, pred.max_det) == (0.25, 0.6, 300)


def test_the_least_familiar_size_speaks_for_the_image():
    a = SizedPredictor(640, [[10, 10, 20, 20]], [0.5], [0], familiarity=0.9, prompt_familiarity=[0.2, 0.8],
                       unknown_prompts=[0])
    b = SizedPredictor(768, [], [], [], familiarity=0.3, unfamiliar=True, prompt_familiarity=[0.6, 0.4],
                       unknown_prompts=[1], abstained=True)
    c = SizedPredictor(896, [], [], [], familiarity=0.5, prompt_familiarity=[0.7, 0.9])
    for order in ([a, b, c], [c, b, a], [b, a, c]):
        det = MultiScalePredictor(order)(np.zeros((48, 64, 3), np.uint8))
        assert det.familiarity == pytest.approx(0.3) and det.unfamiliar
        assert det.prompt_familiarity.tolist() == pytest.approx([0.2, 0.4])  # per prompt, the lowest
        assert det.unknown_prompts == [0, 1] and det.abstained
    det = MultiScalePredictor([a, c])(np.zeros((48, 64, 3), np.uint8))
    assert det.familiarity == pytest.approx(0.5) and not det.unfamiliar and not det.abstained
    assert det.unknown_prompts == [0]
    # one size abstaining is enough
    assert MultiScalePredictor([c, b])(np.zeros((48, 64, 3), np.uint8)).abstained


def test_nothing_found_at_any_size_is_empty():
    det = MultiScalePredictor([SizedPredictor(640, [], [], []), SizedPredictor(768, [], [], [])])(
        np.zeros((48, 64, 3), np.uint8))
    assert len(det) == 0 and det.boxes_xyxy.shape == (0, 4) and det.prompts == PROMPTS


def test_predictors_must_agree():
    message = "^the predictors of a MultiScalePredictor must share prompts, conf, iou and max_det$"
    with pytest.raises(ValueError, match=message):
        MultiScalePredictor([SizedPredictor(640, [], [], []), SizedPredictor(768, [], [], [], conf=0.3)])
    with pytest.raises(ValueError, match=message):
        MultiScalePredictor([SizedPredictor(640, [], [], []), SizedPredictor(768, [], [], [], prompts=["x", "y"])])
    with pytest.raises(ValueError, match="^MultiScalePredictor needs at least one predictor$"):
        MultiScalePredictor([])


def _recipe(imgsz):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    data["model"] = {"imgsz": imgsz}
    return recipe_from_dict(data)


def test_recipe_takes_one_size_or_a_list():
    assert _recipe(768).model.sizes == [768]
    assert _recipe(None).model.sizes == [None]
    assert _recipe([640, 768]).model.sizes == [640, 768]


@pytest.mark.parametrize("imgsz, message", [
    ([], "model.imgsz: expected an integer or a list"),
    ([640, "big"], "model.imgsz: expected an integer or a list"),
    ([640, None], "model.imgsz: expected an integer or a list"),
    ([640, 700], "model.imgsz: must be a multiple of 32"),
    ([640, 640], "model.imgsz: a size is listed twice"),
    (True, "model.imgsz: expected an integer"),
])
def test_bad_sizes_are_rejected_with_the_key_named(imgsz, message):
    with pytest.raises(ConfigError, match=message):
        _recipe(imgsz)


def test_build_predictor_runs_the_bundled_model_at_each_size():
    from promptdet.line.run import build_predictor

    predictor = build_predictor(_recipe([64, 96]))
    assert isinstance(predictor, MultiScalePredictor) and predictor.imgsz == [64, 96]
    det = predictor(np.full((48, 64, 3), 127, np.uint8))
    assert det.prompts == PROMPTS and det.image_wh == (64, 48)
    assert det.timing_ms["infer"] > 0
    assert not isinstance(build_predictor(_recipe(64)), MultiScalePredictor)

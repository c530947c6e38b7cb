"""The numpy detection selection that detect (both backends) and validation share."""

import numpy as np
import pytest

from promptdet.runtime.postprocess import nms, select_detections

BOTTLE = [300.0, 230.0, 430.0, 370.0]
CAP = [305.0, 235.0, 385.0, 320.0]  # wholly inside BOTTLE, IoU with it ~0.37


def test_part_inside_a_higher_scoring_box_is_suppressed():
    boxes = np.array([BOTTLE, CAP])
    assert nms(boxes, np.array([0.9, 0.6]), iou=0.6).tolist() == [0]
    # IoU alone keeps the part: that is the flaw the containment rule fixes.
    assert nms(boxes, np.array([0.9, 0.6]), iou=0.6, contained=None).tolist() == [0, 1]


def test_a_lower_scoring_box_around_a_kept_one_is_suppressed():
    boxes = np.array([BOTTLE, CAP])
    # The small box scores higher: the loose box around it is the same answer, so only it stays.
    assert nms(boxes, np.array([0.5, 0.9]), iou=0.6).tolist() == [1]
    assert nms(boxes, np.array([0.5, 0.9]), iou=0.6, contained=None).tolist() == [1, 0]
    # A loose group box over three bottles goes; the bottles stay.
    bottles = [[10, 10, 60, 110], [80, 10, 130, 110], [150, 10, 200, 110]]
    boxes = np.array(bottles + [[0, 0, 210, 120]], float)
    assert nms(boxes, np.array([0.95, 0.9, 0.85, 0.27]), iou=0.6).tolist() == [0, 1, 2]


def test_side_by_side_and_partly_overlapping_boxes_are_kept():
    boxes = np.array([[0, 0, 100, 100], [60, 0, 160, 100], [200, 0, 260, 50]], float)
    # The second box is 40% inside the first (IoU 0.25): two objects, not a part.
    assert sorted(nms(boxes, np.array([0.9, 0.8, 0.7]), iou=0.6).tolist()) == [0, 1, 2]


def test_contained_threshold_is_respected():
    big, half_in = [0, 0, 100, 100], [50, 0, 150, 40]  # half of the second box lies inside the first
    boxes = np.array([big, half_in], float)
    assert nms(boxes, np.array([0.9, 0.8]), 0.6, contained=0.5).tolist() == [0]
    assert nms(boxes, np.array([0.9, 0.8]), 0.6, contained=0.6).tolist() == [0, 1]


def test_a_degenerate_box_elsewhere_is_not_taken_for_a_part():
    boxes = np.array([BOTTLE, [10, 10, 10, 40]], float)  # zero width, far from the bottle
    assert nms(boxes, np.array([0.9, 0.5]), 0.6).tolist() == [0, 1]


def test_empty_input_gives_empty_arrays():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.6).tolist() == []
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.6).dtype == np.int64  # indices, even when there are none
    b, s, ids = select_detections(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3), np.float32), 0.25, 0.6, 10)
    assert b.shape == (0, 4) and s.shape == (0,) and ids.shape == (0,)


@pytest.mark.parametrize("contained", [0.9, None])
def test_prompts_never_suppress_each_other(contained):
    boxes = np.array([[BOTTLE, CAP], [CAP, BOTTLE]], np.float32)  # [K=2, M=2, 4]
    scores = np.array([[0.9, 0.1], [0.8, 0.1]], np.float32)
    b, _s, ids = select_detections(boxes, scores, 0.25, 0.6, 10, contained)
    # Prompt 1's cap survives although prompt 0's bottle contains it.
    assert ids.tolist() == [0, 1] and np.allclose(b, [BOTTLE, CAP])


# IoU alone (containment off, and boxes that do not nest): the greedy rule keeps a box only when its
# IoU with every higher-scoring kept box is at most ``iou``. IoUs worked by hand: two 10x10 squares
# shifted by s along x overlap 10*(10-s) over 100+100-10*(10-s).
@pytest.mark.parametrize("boxes, scores, iou, kept", [
    ([], [], 0.5, []),                                                    # nothing in, nothing out
    ([[0, 0, 10, 10]], [0.3], 0.5, [0]),                                  # one box always stays
    ([[0, 0, 10, 10], [2, 0, 12, 10]], [0.9, 0.8], 0.5, [0]),             # IoU 80/120 = 0.667 > 0.5
    ([[0, 0, 10, 10], [2, 0, 12, 10]], [0.9, 0.8], 0.7, [0, 1]),          # 0.667 <= 0.7: both stay
    ([[0, 0, 10, 10], [3, 0, 13, 10]], [0.9, 0.8], 0.5, [0]),             # IoU 70/130 = 0.538 > 0.5
    ([[0, 0, 10, 10], [4, 0, 14, 10]], [0.9, 0.8], 0.5, [0, 1]),          # IoU 60/140 = 0.429
    ([[2, 0, 12, 10], [0, 0, 10, 10]], [0.8, 0.9], 0.5, [1]),             # the higher score wins, not the first
    ([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], [0.9, 0.8, 0.7], 0.5, [0, 2]),  # 2 goes with 1, not 0
    ([[100, 50, 110, 60], [100, 52, 110, 62]], [0.9, 0.8], 0.6, [0]),     # away from the origin, along y: 0.667
])
def test_iou_alone_suppresses_overlapping_boxes(boxes, scores, iou, kept):
    b = np.array(boxes, float).reshape(-1, 4)
    s = np.array(scores, float)
    assert nms(b, s, iou, contained=None).tolist() == kept
    # boxes of equal size never nest, so the containment rule cannot be what suppresses them here
    assert nms(b, s, iou).tolist() == kept


# Edges of the rules, by hand: exactly at the IoU threshold (kept: suppression needs more than
# ``iou``), sub-pixel boxes (areas below 1 px), and a kept box lying exactly ``contained`` inside a
# much larger one. (boxes, scores, iou, contained) -> kept.
@pytest.mark.parametrize("boxes, scores, iou, contained, kept", [
    ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], 0.5, None, [0, 1]),               # IoU exactly 0.5
    ([[0, 0, 10, 10], [0, 0, 10, 5.01]], [0.9, 0.8], 0.5, None, [0]),               # IoU 0.501
    ([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.3]], [0.9, 0.8], 0.5, None, [0]),             # IoU 0.6 on a sub-pixel box
    ([[0, 0, 0.5, 0.5], [0.1, 0.1, 0.4, 0.4]], [0.9, 0.8], 0.6, 0.9, [0]),          # IoU 0.36, wholly inside
    ([[0, 0, 10, 10], [5, 0, 100, 100]], [0.9, 0.8], 0.6, 0.5, [0]),                # half of the kept box inside
    ([[0, 0, 10, 10], [5.1, 0, 100, 100]], [0.9, 0.8], 0.6, 0.5, [0, 1]),           # just under half
])
def test_nms_at_the_edges_of_its_rules(boxes, scores, iou, contained, kept):
    assert nms(np.array(boxes, float), np.array(scores, float), iou, contained).tolist() == kept


@pytest.mark.parametrize("scores", [np.full(20, 0.5), np.tile([0.5, 0.7], 150)])
def test_equal_scores_keep_their_input_order(scores):
    # far-apart boxes, so nothing is suppressed: higher scores first, equal ones in input order (a
    # stable sort; numpy's default sort reorders ties in a long list)
    boxes = np.array([[30 * i, 0, 30 * i + 10, 10] for i in range(len(scores))], float)
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    assert nms(boxes, scores, 0.5).tolist() == order
    b, _s, _ids = select_detections(boxes[None].astype(np.float32), scores[None].astype(np.float32), 0.5, 0.5, 1000)
    np.testing.assert_array_equal(b, boxes[order])


# One image, K prompts: (candidate boxes [K, M, 4], scores [K, M], conf, max_det) -> (boxes, scores, prompt ids),
# highest score first. conf keeps a score equal to it; each prompt is suppressed and capped on its own.
@pytest.mark.parametrize("boxes, scores, conf, max_det, want", [
    (np.zeros((0, 3, 4)), np.zeros((0, 3)), 0.25, 10, ([], [], [])),                              # no prompts
    ([[BOTTLE, CAP]], [[0.1, 0.2]], 0.25, 10, ([], [], [])),                                        # all below conf
    ([[BOTTLE, CAP]], [[0.9, 0.6]], 0.25, 10, ([BOTTLE], [0.9], [0])),                              # the cap is inside
    ([[BOTTLE, [0, 0, 10, 10]]], [[0.25, 0.3]], 0.25, 10, ([[0, 0, 10, 10], BOTTLE], [0.3, 0.25], [0, 0])),
    ([[[0, 0, 10, 10], [2, 0, 12, 10], [50, 0, 60, 10]]], [[0.9, 0.8, 0.7]], 0.25, 10,              # IoU 0.67 > 0.6
     ([[0, 0, 10, 10], [50, 0, 60, 10]], [0.9, 0.7], [0, 0])),
    ([[[0, 0, 10, 10], [50, 0, 60, 10], [100, 0, 110, 10]]], [[0.9, 0.8, 0.7]], 0.25, 2,             # capped at 2
     ([[0, 0, 10, 10], [50, 0, 60, 10]], [0.9, 0.8], [0, 0])),
    ([[[0, 0, 10, 10], [50, 0, 60, 10], [100, 0, 110, 10]], [CAP, BOTTLE, [0, 0, 1, 1]]],             # two prompts,
     [[0.9, 0.8, 0.1], [0.7, 0.95, 0.5]], 0.25, 2,                                                  # 2 each at most
     ([BOTTLE, [0, 0, 10, 10], [50, 0, 60, 10], [0, 0, 1, 1]], [0.95, 0.9, 0.8, 0.5], [1, 0, 0, 1])),
])
def test_select_detections_table(boxes, scores, conf, max_det, want):
    scores = np.array(scores, np.float32)
    b, s, ids = select_detections(np.array(boxes, np.float32).reshape(*scores.shape, 4), scores, conf, 0.6, max_det)
    assert (b.dtype, s.dtype, ids.dtype) == (np.float32, np.float32, np.int64)
    assert b.shape == (len(want[0]), 4)
    np.testing.assert_allclose(b.reshape(-1, 4), np.reshape(want[0], (-1, 4)))
    np.testing.assert_allclose(s, want[1])
    assert ids.tolist() == want[2]


@pytest.mark.parametrize("contained, kept", [(0.9, [BOTTLE]), (None, [BOTTLE, CAP])])
def test_select_detections_passes_the_containment_rule_on(contained, kept):
    b, _, _ = select_detections(np.array([[BOTTLE, CAP]], np.float32), np.array([[0.9, 0.6]], np.float32),
                                0.25, 0.6, 10, contained)
    np.testing.assert_allclose(b, kept)

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
    b, s, ids = select_detections(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3), np.float32), 0.25, 0.6, 10)
    assert b.shape == (0, 4) and s.shape == (0,) and ids.shape == (0,)


@pytest.mark.parametrize("contained", [0.9, None])
def test_prompts_never_suppress_each_other(contained):
    boxes = np.array([[BOTTLE, CAP], [CAP, BOTTLE]], np.float32)  # [K=2, M=2, 4]
    scores = np.array([[0.9, 0.1], [0.8, 0.1]], np.float32)
    b, s, ids = select_detections(boxes, scores, 0.25, 0.6, 10, contained)
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

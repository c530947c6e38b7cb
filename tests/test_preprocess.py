"""The letterbox every backend shares: where the image lands in the square, and boxes mapped back.

Both backends go through the same ``Letterbox``, so backend parity cannot catch a wrong mapping:
these coordinates are worked out by hand from the image size and ``imgsz``.
"""

import numpy as np
import pytest

from promptdet.runtime.preprocess import PAD_VALUE, letterbox, to_input


# (w, h), imgsz -> scale, (left, top) padding. Wide images are padded top and bottom, tall ones left
# and right; an odd leftover puts the extra pixel after the image (12.5 -> 12 above, 13 below).
@pytest.mark.parametrize("size_wh, imgsz, scale, pad_xy", [
    ((640, 480), 320, 0.5, (0, 40)),
    ((300, 600), 320, 320 / 600, (80, 0)),
    ((100, 61), 64, 0.64, (0, 12)),
    ((61, 100), 64, 0.64, (12, 0)),          # the odd leftover across: 12 left, 13 right
    ((1000, 1), 64, 0.064, (0, 31)),         # a 1 px high image stays 1 px high, not 0
    ((64, 64), 64, 1.0, (0, 0)),
])
def test_letterbox_places_the_image_where_the_mapping_says(size_wh, imgsz, scale, pad_xy):
    w, h = size_wh
    square, lb = letterbox(np.full((h, w, 3), 255, np.uint8), imgsz)
    assert square.shape == (imgsz, imgsz, 3)
    assert lb.scale == pytest.approx(scale) and lb.pad_xy == pad_xy and lb.size_wh == (w, h) and lb.imgsz == imgsz
    content = np.argwhere((square != PAD_VALUE).all(-1))
    (y0, x0), (y1, x1) = content.min(0), content.max(0)
    assert (x0, y0) == pad_xy  # the first image pixel sits just after the padding
    assert x1 + 1 == pad_xy[0] + max(1, round(w * scale)) and y1 + 1 == pad_xy[1] + max(1, round(h * scale))


# Original-image boxes and the same boxes in the letterboxed input, by hand.
@pytest.mark.parametrize("size_wh, imgsz, original, boxed", [
    ((640, 480), 320, [[100, 50, 300, 250]], [[50, 65, 150, 165]]),              # y + 40
    ((300, 600), 320, [[30, 60, 150, 300]], [[96, 32, 160, 160]]),                # x + 80
    ((100, 61), 64, [[10, 10, 50, 40], [0, 0, 100, 61]], [[6.4, 18.4, 32, 37.6], [0, 12, 64, 51.04]]),
    ((640, 480), 320, np.zeros((0, 4)), np.zeros((0, 4))),                        # no boxes
])
def test_boxes_round_trip_through_a_non_square_letterbox(size_wh, imgsz, original, boxed):
    w, h = size_wh
    _, lb = letterbox(np.zeros((h, w, 3), np.uint8), imgsz)
    assert lb.boxes_to_input(original).dtype == lb.boxes_to_original(boxed).dtype == np.float32
    np.testing.assert_allclose(lb.boxes_to_input(original), np.reshape(boxed, (-1, 4)), atol=1e-4)
    np.testing.assert_allclose(lb.boxes_to_original(boxed), np.reshape(original, (-1, 4)), atol=1e-3)


def test_boxes_reaching_into_the_padding_are_clipped_to_the_image():
    _, lb = letterbox(np.zeros((480, 640, 3), np.uint8), 320)  # 40 px bars above and below
    back = lb.boxes_to_original([[-5, 0, 330, 320], [10, 0, 20, 30]])
    np.testing.assert_allclose(back, [[0, 0, 640, 480], [20, 0, 40, 0]])  # the second lies in the top bar


def test_to_input_is_rgb_in_0_1_with_the_same_mapping():
    image = np.zeros((61, 100, 3), np.uint8)
    image[..., 0] = 255  # pure blue in BGR
    x, lb = to_input(image, 64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    assert lb.pad_xy == (0, 12)
    np.testing.assert_allclose(x[0, :, 30, 30], [0, 0, 1])  # inside the image: blue is the last channel
    np.testing.assert_allclose(x[0, :, 0, 30], [PAD_VALUE / 255] * 3)  # the top bar


# Shrinking averages pixels (INTER_AREA: no aliasing on fine texture), enlarging interpolates (INTER_LINEAR).
@pytest.mark.parametrize("size_wh, imgsz, interpolation", [
    ((200, 100), 64, "INTER_AREA"),
    ((40, 20), 64, "INTER_LINEAR"),
])
def test_letterbox_resizes_with_the_right_interpolation(size_wh, imgsz, interpolation):
    import cv2

    w, h = size_wh
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    square, lb = letterbox(image, imgsz)
    nw, nh = round(w * lb.scale), round(h * lb.scale)
    left, top = (int(v) for v in lb.pad_xy)
    expected = cv2.resize(image, (nw, nh), interpolation=getattr(cv2, interpolation))
    np.testing.assert_array_equal(square[top:top + nh, left:left + nw], expected)

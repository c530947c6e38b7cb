"""export/verify's parity check on stand-ins: what it compares, its limits, its report and its log.

No export here: a fake ONNX model answers with the fake torch graph's outputs plus a chosen drift,
so each limit is probed from both sides in milliseconds (test_export.py runs the real thing once).
"""

from __future__ import annotations

import math
from typing import ClassVar

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from promptdet.export import verify
from promptdet.export.verify import (
    PARITY_PROMPTS,
    check_parity,
    compare_candidates,
    parity_images,
)

DIM, M = 4, 6  # text feature width (fewer than the longest prompt's tokens), candidates per prompt


def _ids(prompt: str) -> list[int]:
    return [len(w) + 1 for w in prompt.split()]


class Encoding:
    def __init__(self, prompts):
        k, t = len(prompts), max(len(_ids(p)) for p in prompts)
        self.pooled = torch.tensor([[len(p) / 40 + d / 10 for d in range(DIM)] for p in prompts])
        self.token_feats = torch.arange(k * t * DIM, dtype=torch.float32).reshape(k, t, DIM) / 100
        self.token_mask = torch.tensor([[i < len(_ids(p)) for i in range(t)] for p in prompts])


class Encoder:
    """The torch text encoder: ids right-padded with 0, features from the prompts' lengths."""

    class tokenizer:
        pad_token_id = 0

    def __init__(self):
        self.encoded = []

    def tokenize(self, prompts):
        t = max(len(_ids(p)) for p in prompts)
        ids = torch.tensor([_ids(p) + [0] * (t - len(_ids(p))) for p in prompts])
        return ids, ids > 0

    def encode(self, prompts):
        self.encoded.append(list(prompts))
        return Encoding(prompts)


class Detector:
    def __init__(self):
        self.calls = []

    def float(self):
        self.calls.append("float")
        return self

    def eval(self):
        self.calls.append("eval")
        return self

    def cpu(self):
        self.calls.append("cpu")
        return self


class Model:
    def __init__(self):
        self.encoder, self.detector = Encoder(), Detector()


def graph_outputs(x, pooled, tokens, mask):
    """boxes [1, K, M, 4], scores [1, K, M] (the last candidate a 0-score pad), familiarity [1], [K]."""
    x, pooled = np.asarray(x, np.float32), np.asarray(pooled, np.float32)
    k = len(pooled)
    base = float(x.mean()) * x.shape[-1] + float((np.asarray(tokens).sum(-1) * np.asarray(mask)).sum()) / 100
    boxes = np.zeros((1, k, M, 4), np.float32)
    boxes[0] = base + 10 * np.arange(k)[:, None, None] + 3 * np.arange(M)[None, :, None] + np.arange(4)
    scores = np.zeros((1, k, M), np.float32)
    scores[0, :, :-1] = (0.9 - 0.1 * np.arange(M - 1))[None] * (0.5 + 0.1 * np.tanh(pooled.sum(-1)))[:, None]
    return boxes, scores, np.array([0.7], np.float32), np.linspace(0.3, 0.9, k).astype(np.float32)


class Graph:
    made_with: ClassVar[list] = []

    def __init__(self, detector):
        Graph.made_with.append(detector)

    def __call__(self, x, pooled, tokens, mask):
        assert not torch.is_grad_enabled()  # the reference runs without autograd
        return tuple(torch.from_numpy(a) for a in graph_outputs(x.numpy(), pooled.numpy(), tokens.numpy(),
                                                                mask.numpy()))


class Onnx:
    """The export folder as the parity check sees it; ``drift`` says what differs from torch."""

    drift: ClassVar[dict] = {}
    meta: ClassVar[dict] = {"precision": "fp32", "dynamic": True}
    imgsz = 64
    takes_prompts = True
    baked_prompts: ClassVar[list] = []
    opened: ClassVar[list] = []

    def __init__(self, export_dir, providers=None, detector_file=None):
        type(self).opened.append((export_dir, providers, detector_file))
        self.runs = []

    def _text_encoder(self):
        d = self.drift

        class Tok:
            def encode(self, prompt):
                ids = _ids(prompt)
                if d.get("ids") and prompt == PARITY_PROMPTS[-1]:
                    ids = ids[:-1] + [ids[-1] + 1]
                return type("Encoded", (), {"ids": ids})

        return None, Tok()

    def encode(self, prompts):
        e = Encoding(prompts)
        pooled = e.pooled.numpy() + self.drift.get("pooled", 0.0)
        tokens = e.token_feats.numpy().copy()
        tokens[-1, len(_ids(prompts[-1])) - 1, 0] += self.drift.get("tokens", 0.0)  # the last word's feature
        mask = e.token_mask.numpy().copy()
        if self.drift.get("mask"):
            mask[0, 0] = not mask[0, 0]
        extra = self.drift.get("extra_tokens", 0)  # the ONNX encoder may pad to more tokens
        if extra:
            tokens = np.concatenate([tokens, np.full((len(prompts), extra, DIM), 5.0, np.float32)], 1)
            mask = np.concatenate([mask, np.zeros((len(prompts), extra), bool)], 1)
        return pooled, tokens, mask

    def run_all(self, x, pooled, tokens, mask):
        self.runs.append((x.shape, len(pooled)))
        boxes, scores, fam, pfam = graph_outputs(x, pooled, tokens, mask)
        d = self.drift
        boxes = boxes + d.get("boxes", 0.0)
        scores = np.where(scores > 0, scores + d.get("scores", 0.0), scores)
        if d.get("pad_boxes"):
            boxes[..., -1, :] += d["pad_boxes"]  # the 0-score pad: its box means nothing
        return boxes, scores, fam + d.get("fam", 0.0), pfam + d.get("pfam", 0.0)


@pytest.fixture
def onnx(monkeypatch):
    class Case(Onnx):
        drift, meta, opened = {}, {"precision": "fp32", "dynamic": True}, []

    Graph.made_with = []
    monkeypatch.setattr(verify, "OnnxModel", Case)
    monkeypatch.setattr(verify, "DetectorGraph", Graph)
    return Case


def _check(model=None, detector_file=None):
    lines = []
    report = check_parity(model or Model(), "some/export", detector_file=detector_file, log=lines.append)
    return report, lines


def test_an_exact_export_passes_with_every_case_reported(onnx):
    model = Model()
    report, lines = _check(model)
    assert onnx.opened == [("some/export", "cpu", None)]
    assert Graph.made_with == [model.detector] and model.detector.calls == ["float", "eval", "cpu"]
    assert report["passed"] is True and report["precision"] == "fp32"
    assert report["box_limit_px"] == pytest.approx(0.064) and report["score_limit"] == 1e-4
    assert report["text"] == {"token_ids_equal": True, "pooled_diff": 0.0, "tokens_diff": 0.0, "mask_equal": True}
    # a dynamic 64 px graph: 64 and 128 px inputs, each with 1 and 5 prompts
    assert [(c["input"], c["prompts"], c["passed"]) for c in report["cases"]] == [
        ("64x64", 1, True), ("64x64", 5, True), ("128x128", 1, True), ("128x128", 5, True)]
    assert all(c["box_diff_px"] == 0.0 and c["score_diff"] == 0.0 for c in report["cases"])
    # the text check encodes all five prompts, then each case its own
    assert model.encoder.encoded == [PARITY_PROMPTS] + [PARITY_PROMPTS[:1], PARITY_PROMPTS] * 2
    assert lines == [
        "text encoder: token ids equal, pooled max diff 0.00e+00, tokens max diff 0.00e+00",
        "detector            64x64 K=1: max |box diff| 0.00e+00 px (limit 0.064), max |score diff| 0.00e+00 (limit 1e-04)  ok",
        "detector            64x64 K=5: max |box diff| 0.00e+00 px (limit 0.064), max |score diff| 0.00e+00 (limit 1e-04)  ok",
        "detector          128x128 K=1: max |box diff| 0.00e+00 px (limit 0.064), max |score diff| 0.00e+00 (limit 1e-04)  ok",
        "detector          128x128 K=5: max |box diff| 0.00e+00 px (limit 0.064), max |score diff| 0.00e+00 (limit 1e-04)  ok",
        "parity passed (fp32)"]


@pytest.mark.parametrize("drift, passed", [
    ({"scores": 5e-5}, True), ({"scores": 1.5e-4}, False), ({"scores": -1.5e-4}, False),
    ({"boxes": 0.05}, True), ({"boxes": 0.08}, False), ({"boxes": -0.08}, False),
    ({"fam": 5e-5}, True), ({"fam": 2e-4}, False), ({"pfam": -2e-4}, False),
    ({"pad_boxes": 50.0}, True),  # a 0-score pad's box is never compared
])
def test_the_detector_limits_fp32(onnx, drift, passed):
    onnx.drift = drift
    report, lines = _check()
    assert report["passed"] is passed and [c["passed"] for c in report["cases"]] == [passed] * 4
    assert report["text"]["token_ids_equal"] and report["text"]["pooled_diff"] == 0.0
    size = abs(next(iter(drift.values())))
    key = "box_diff_px" if {"boxes", "pad_boxes"} & set(drift) else "score_diff"
    assert all(c[key] == pytest.approx(0.0 if "pad_boxes" in drift else size, rel=1e-3, abs=1e-6)
               for c in report["cases"])
    assert lines[-1] == f"parity {'passed' if passed else 'FAILED'} (fp32)"
    assert all(line.endswith("  ok" if passed else "  FAIL") for line in lines[1:-1])


@pytest.mark.parametrize("drift, field, passed", [
    ({"ids": True}, "token_ids_equal", False),
    ({"mask": True}, "mask_equal", False),
    ({"pooled": 5e-5}, "pooled_diff", True),
    ({"pooled": 2e-4}, "pooled_diff", False),
    ({"tokens": 5e-4}, "tokens_diff", True),
    ({"tokens": 2e-3}, "tokens_diff", False),
    ({"extra_tokens": 3}, "tokens_diff", True),  # compared over the tokens both sides have
])
def test_the_text_encoder_limits(onnx, drift, field, passed):
    onnx.drift = drift
    report, lines = _check()
    assert report["passed"] is passed
    assert all(c["passed"] for c in report["cases"])  # the detector gets the same embeddings either way
    value = report["text"][field]
    if isinstance(value, bool):
        assert value is False
        assert ("token ids DIFFER" in lines[0]) is (field == "token_ids_equal")
    else:
        assert value == pytest.approx(0.0 if "extra_tokens" in drift else next(iter(drift.values())), rel=1e-2)
    assert lines[-1] == f"parity {'passed' if passed else 'FAILED'} (fp32)"


def test_the_text_log_line_shows_the_differences(onnx):
    onnx.drift = {"pooled": 2.5e-5, "tokens": 3e-4}
    _, lines = _check()
    assert lines[0] == "text encoder: token ids equal, pooled max diff 2.50e-05, tokens max diff 3.00e-04"


def test_a_failing_case_is_logged_with_its_figures(onnx):
    onnx.drift = {"scores": 3e-4}
    report, lines = _check()
    # scores this far apart are no longer ties, so no box is paired with its own: inf
    assert lines[2] == ("detector            64x64 K=5: max |box diff| inf px (limit 0.064), "
                        "max |score diff| 3.00e-04 (limit 1e-04)  FAIL")
    assert lines[-1] == "parity FAILED (fp32)" and report["passed"] is False


@pytest.mark.parametrize("meta, detector_file, precision, box_limit, score_limit", [
    ({"precision": "fp16"}, None, "fp16", 2e-2 * 96, 2e-2),
    ({"precision": "fp32"}, "detector.int8.onnx", "int8", 2e-2 * 96, 2e-2),
    ({"precision": "fp32"}, "detector_baked.onnx", "fp32", 1e-3 * 96, 1e-4),
    ({}, None, "fp32", 1e-3 * 96, 1e-4),  # an older export without the key
])
def test_precision_sets_the_limits(onnx, meta, detector_file, precision, box_limit, score_limit):
    onnx.meta, onnx.imgsz = meta, 96
    onnx.drift = {"scores": 1e-3}  # within fp16's limit, outside fp32's
    report, lines = _check(detector_file=detector_file)
    assert onnx.opened == [("some/export", "cpu", detector_file)]
    assert report["precision"] == precision
    assert report["box_limit_px"] == pytest.approx(box_limit) and report["score_limit"] == score_limit
    assert report["passed"] is (precision != "fp32")
    assert lines[-1] == f"parity {'passed' if precision != 'fp32' else 'FAILED'} ({precision})"
    # a fixed-size graph (no "dynamic"): the scene and the flipped scene, both at the export size
    assert [c["input"] for c in report["cases"]] == ["96x96", "96x96", "96x96 flipped", "96x96 flipped"]


def test_a_difference_equal_to_the_limit_fails(onnx):
    onnx.meta, onnx.imgsz = {"precision": "fp16"}, 800  # limit 2e-2 * 800 = 16 px, exact in float32
    onnx.drift = {"boxes": 16.0}
    report, _ = _check()
    assert report["box_limit_px"] == 16.0 and [c["box_diff_px"] for c in report["cases"]] == [16.0] * 4
    assert report["passed"] is False
    onnx.drift = {"boxes": 15.5}
    assert _check()[0]["passed"] is True


def test_a_baked_graph_is_checked_with_its_own_prompts(onnx):
    onnx.takes_prompts, onnx.baked_prompts = False, ["red bottle", "a gear", "blue cap"]
    model = Model()
    report, _ = _check(model)
    assert report["passed"] is True
    assert [(c["input"], c["prompts"]) for c in report["cases"]] == [("64x64", 3), ("128x128", 3)]
    assert model.encoder.encoded[1:] == [["red bottle", "a gear", "blue cap"]] * 2


# ---------------------------------------------------------------- the inputs and the limits

def test_limits_per_precision():
    assert verify._limits("fp32", 640) == pytest.approx((0.64, 1e-4))
    assert verify._limits("fp16", 640) == pytest.approx((12.8, 2e-2))
    assert verify._limits("int8", 320) == pytest.approx((6.4, 2e-2))


def _scene_dir(tmp_path, names=("b.jpg",), tall=False):
    """A 64 x 128 image (128 x 64 if ``tall``): red and blue bars 32 px wide either side of a green
    square with white dots in its top-left and bottom-right corners (on JPEG's 16 px blocks, so the
    colours do not bleed across)."""
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, :32] = (0, 0, 255)
    img[:, 96:] = (255, 0, 0)
    img[:, 32:96] = (0, 255, 0)
    img[0:16, 32:48] = 255
    img[48:64, 80:96] = 255
    if tall:
        img = np.ascontiguousarray(img.transpose(1, 0, 2))
    for name in names:
        cv2.imwrite(str(tmp_path / name), img)
    return tmp_path


@pytest.mark.parametrize("tall", [False, True])
@pytest.mark.parametrize("imgsz, dynamic, sizes", [
    (64, True, [64, 128]), (128, True, [128, 64]), (160, True, [160, 96]), (96, False, [96, 96]),
])
def test_parity_images_are_the_centre_square_without_bars(monkeypatch, tmp_path, imgsz, dynamic, sizes, tall):
    monkeypatch.setattr(verify, "DEMO", _scene_dir(tmp_path, tall=tall))
    out = parity_images(imgsz, dynamic)
    want = [f"{s}x{s}" for s in sizes]
    if not dynamic:
        want[1] += " flipped"
    assert [label for label, _ in out] == want
    for (_, x), s in zip(out, sizes):
        assert x.shape == (1, 3, s, s) and x.dtype == np.float32
        r, g, b = x[0]
        for edge in (np.s_[:, 0], np.s_[:, -1], np.s_[0], np.s_[-1]):  # green to the edges: no bar, no letterbox
            g_mid, r_mid, b_mid = (np.median(c[edge]) for c in (g, r, b))  # the median: past the corner dots
            assert g_mid > 0.7 and g_mid - max(r_mid, b_mid) > 0.4
    (_, first), (_, second) = out
    s = sizes[0]
    dot = first[0, 0] > 0.5  # red is only in the white dots, each a quarter of the square's side
    assert dot[: s // 4, : s // 4].mean() > 0.9 and dot[-(s // 4):, -(s // 4):].mean() > 0.9
    assert dot.mean() == pytest.approx(2 / 16, abs=0.02)
    if not dynamic:  # the second scene is the first turned upside down
        assert np.allclose(second, first[..., ::-1, ::-1], atol=0.02)


def test_parity_images_take_the_first_demo_image(monkeypatch, tmp_path):
    scenes = _scene_dir(tmp_path, ("a.jpg",))
    cv2.imwrite(str(scenes / "z.jpg"), np.zeros((64, 128, 3), np.uint8))  # black: would fail the green check
    monkeypatch.setattr(verify, "DEMO", scenes)
    (_, x), _ = parity_images(64, True)
    assert x[0, 1].mean() > 0.9


def test_parity_images_without_demo_images_use_a_fixed_textured_scene(monkeypatch, tmp_path):
    monkeypatch.setattr(verify, "DEMO", tmp_path)
    a, b = parity_images(64, False), parity_images(64, False)
    assert [label for label, _ in a] == ["64x64", "64x64 flipped"]
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    x = a[0][1]
    assert x.shape == (1, 3, 64, 64)
    assert x.std() > 0.01 and 0.45 < x.mean() < 0.55  # 0-255 noise, averaged down: textured, not flat or dark
    assert not np.allclose(a[0][1], a[1][1])


# ---------------------------------------------------------------- compare_candidates

def test_compare_candidates_pads_ties_and_batches():
    boxes = np.array([[[[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 6, 6]]]], np.float32)  # [1, 1, 3, 4]
    scores = np.array([[[0.5, 0.5, 0.0]]], np.float32)
    assert compare_candidates(boxes, scores, boxes, scores, 1e-4) == (0.0, 0.0)
    # the pad (score 0) may have any box
    padded = boxes.copy()
    padded[..., 2, :] = 99
    assert compare_candidates(padded, scores, boxes, scores, 1e-4) == (0.0, 0.0)
    # equal scores within the tolerance are ties; the nearest box of a tie is the one compared
    near = scores + np.float32(5e-5) * (scores > 0)
    swapped = boxes[..., [1, 0, 2], :]
    box_diff, score_diff = compare_candidates(swapped, near, boxes, scores, 1e-4)
    assert box_diff == 0.0 and score_diff == pytest.approx(5e-5, rel=1e-2)
    # outside the tolerance the boxes of different scores are never paired: no box counts
    far = scores + np.float32(1e-3) * (scores > 0)
    box_diff, score_diff = compare_candidates(boxes, far, boxes, scores, 1e-4)
    assert math.isinf(box_diff) and score_diff == pytest.approx(1e-3, rel=1e-2)
    # a box moved by 2 px in y alone, in a second prompt of the batch
    two = np.concatenate([boxes, boxes], 1)
    two_scores = np.concatenate([scores, np.array([[[0.9, 0.3, 0.0]]], np.float32)], 1)
    moved = two.copy()
    moved[0, 1, 1, 3] += 2
    assert compare_candidates(moved, two_scores, two, two_scores, 1e-4) == (2.0, 0.0)
    # scores are compared sorted, per prompt
    assert compare_candidates(two, two_scores[..., [1, 0, 2]], two, two_scores, 1e-4)[1] == 0.0


def test_compare_candidates_boundaries():
    a, b = [0, 0, 10, 10], [50, 50, 60, 60]
    # a score exactly the tolerance away still counts as a tie: the boxes are compared
    boxes = np.array([[a]], np.float32)
    assert compare_candidates(boxes, np.array([[0.5]], np.float32), boxes, np.array([[0.75]], np.float32), 0.25) == (
        0.0, 0.25)
    # each candidate of the export is matched in the reference, not the other way round: a box torch
    # has twice is no excuse for a box only the export has
    scores = np.array([[0.5, 0.5]], np.float32)
    assert compare_candidates(np.array([[a, b]], np.float32), scores, np.array([[a, a]], np.float32), scores,
                              1e-4) == (50.0, 0.0)


def test_compare_candidates_on_no_candidates_is_zero():
    empty_b, empty_s = np.zeros((1, 0, 16, 4), np.float32), np.zeros((1, 0, 16), np.float32)
    assert compare_candidates(empty_b, empty_s, empty_b, empty_s, 1e-4) == (0.0, 0.0)
    pads_b, pads_s = np.ones((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3), np.float32)
    assert compare_candidates(pads_b, pads_s, pads_b * 5, pads_s, 1e-4) == (0.0, 0.0)

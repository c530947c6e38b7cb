"""fail_if rules: a hand-written parser (never eval), ROI filtering, and the verdict with its fail-safes."""

from __future__ import annotations

import numpy as np
import pytest

from promptdet.line.rules import RuleError, decide, evaluate_check, parse_rule, roi_keep


@pytest.mark.parametrize("expr, count, max_score, fails", [
    ("count >= 1", 0, 0.0, False),
    ("count >= 1", 1, 0.3, True),
    ("count > 1", 1, 0.9, False),
    ("count <= 2", 3, 0.9, False),
    ("count < 2", 1, 0.9, True),
    ("count == 0", 0, 0.0, True),
    ("count != 2", 2, 0.5, False),
    ("1 <= count", 1, 0.5, True),                      # the variable may stand on the right
    ("max_score > .5", 1, 0.6, True),
    ("max_score >= 0.75", 1, 0.7, False),
    ("count == 0 or max_score < 0.4", 0, 0.0, True),
    ("count == 0 or max_score < 0.4", 1, 0.3, True),
    ("count == 0 or max_score < 0.4", 1, 0.5, False),
    ("count >= 1 and max_score > 0.5", 2, 0.4, False),
    ("count >= 1 and max_score > 0.5", 2, 0.6, True),
    ("not count >= 1", 0, 0.0, True),
    ("not not count >= 1", 0, 0.0, False),
    ("not (count >= 2 and max_score > 0.9)", 3, 0.95, False),
    ("not (count >= 2 and max_score > 0.9)", 3, 0.5, True),
    # 'not' binds tighter than 'and' and 'or': it takes one comparison, not the rest of the clause
    ("not count >= 1 and max_score > 0.5", 0, 0.0, False),   # (not False) and False; not (False and False) is True
    ("not count >= 1 and max_score > 0.5", 2, 0.9, False),
    ("not count == 0 or max_score > 0.8", 0, 0.0, False),    # (not True) or False
    ("not count == 0 or max_score > 0.8", 1, 0.3, True),
    ("max_score > 0.5 and not count >= 3", 2, 0.9, True),
    ("max_score > 0.5 and not count >= 3", 3, 0.9, False),
    # 'and' binds tighter than 'or'; parentheses change that
    ("count == 1 or count == 2 and max_score > 0.9", 1, 0.1, True),
    ("(count == 1 or count == 2) and max_score > 0.9", 1, 0.1, False),
    ("  ( ( count>=3 ) )  ", 3, 0.0, True),
])
def test_rule_table(expr, count, max_score, fails):
    assert parse_rule(expr, "c").fails(count, max_score) is fails


@pytest.mark.parametrize("expr, problem", [
    ("__import__('os').system('true')", "unknown name '__import__'"),
    ("count.__class__", "unexpected character '.'"),
    ("open('x') or count > 1", "unknown name 'open'"),
    ("count >= 1; import os", "unexpected character ';'"),
    ("count >= 1 and", "ends early"),
    ("count >=", "ends early"),
    ("(count > 1", "expected ')'"),
    ("count > 1)", "unexpected ')'"),
    ("count", "expected a comparison"),
    ("count >= count2", "unknown name 'count2'"),
    ("1 > 0", "needs count or max_score"),
    ("count => 1", "unexpected character '='"),
    ("count >= (1)", "expected count, max_score or a number, got '('"),
    ("count >= 1 && max_score > 0", "unexpected character '&'"),
    ("lambda: 1", "unknown name 'lambda'"),
    ("", "non-empty"),
    ("count > 1 or " * 30 + "count > 1", "longer than"),
])
def test_bad_rules_name_check_and_expression(expr, problem):
    with pytest.raises(RuleError) as err:
        parse_rule(expr, "missing_cap")
    message = str(err.value)
    assert problem in message and "check 'missing_cap'" in message
    if expr and len(expr) < 200:
        assert repr(expr) in message


def test_roi_keeps_boxes_by_centre_and_handles_empty():
    boxes = np.array([[0, 0, 10, 10], [90, 90, 130, 130], [50, 50, 60, 60]], np.float32)  # centres 5, 110, 55
    assert roi_keep(boxes, [20, 20, 110, 110]).tolist() == [False, True, True]   # edge counts as inside
    assert roi_keep(boxes, None).tolist() == [True, True, True]
    assert roi_keep(np.zeros((0, 4)), [0, 0, 1, 1]).shape == (0,)


def test_roi_inside_mode_keeps_only_whole_boxes():
    # A part cut by the frame edge (x1 = 0), a whole part near the edge, one straddling the ROI's right edge.
    boxes = np.array([[0, 10, 40, 50], [3, 10, 45, 50], [600, 10, 645, 50]], np.float32)
    assert roi_keep(boxes, [2, 0, 638, 480], "inside").tolist() == [False, True, False]
    assert roi_keep(boxes, [2, 0, 638, 480], "centre").tolist() == [True, True, True]
    assert roi_keep(boxes, [2, 0, 45, 50], "inside").tolist() == [False, True, False]  # edges included
    with pytest.raises(ValueError, match="roi mode"):
        roi_keep(boxes, [0, 0, 1, 1], "overlap")
    rule = parse_rule("count >= 1", "parts")
    assert evaluate_check("parts", rule, boxes[:1], [0.9], roi_xyxy=[2, 0, 638, 480], roi_mode="inside").failed is False


def test_evaluate_check_filters_conf_then_roi():
    rule = parse_rule("count >= 3", "parts")
    boxes = [[0, 0, 10, 10], [40, 40, 60, 60], [45, 45, 55, 55]]
    scores = [0.9, 0.8, 0.2]
    assert evaluate_check("parts", rule, boxes, scores).failed is True
    low_dropped = evaluate_check("parts", rule, boxes, scores, conf=0.5)
    assert low_dropped.failed is False and low_dropped.count == 2
    in_roi = evaluate_check("parts", rule, boxes, scores, roi_xyxy=[30, 30, 70, 70])
    assert in_roi.count == 2 and in_roi.failed is False and in_roi.max_score == pytest.approx(0.8)
    empty = evaluate_check("parts", parse_rule("count == 0", "parts"), np.zeros((0, 4)), [])
    assert empty.failed is True and empty.max_score == 0.0 and empty.boxes_xyxy.shape == (0, 4)


def _results(*failing):
    rule = parse_rule("count >= 1", "x")
    return [evaluate_check(name, rule, [[0, 0, 5, 5]] if name in failing else [], [0.9] if name in failing else [])
            for name in ("defective_parts", "missing_cap")]


def test_decide_pass_fail_timeout_error():
    ok = decide(_results(), deadline_ms=500, elapsed_ms=120, part_id="p1")
    assert ok.verdict == "PASS" and ok.reasons == []
    bad = decide(_results("missing_cap"), 500, 120)
    assert bad.verdict == "FAIL" and bad.reasons == ["failed: missing_cap"]
    late = decide(_results(), 500, 500.1)  # all checks passed, but too late to act on: fail-safe
    assert late.verdict == "FAIL" and late.reasons == ["timeout"]
    assert decide(_results(), 500, 500.0).verdict == "PASS"  # exactly on the deadline is in time
    assert decide(_results(), 500, float("nan")).reasons == ["timeout"]
    late_and_bad = decide(_results("defective_parts"), 500, 900)
    assert late_and_bad.reasons == ["timeout", "failed: defective_parts"]
    broken = decide(_results(), 500, 10, error="camera frame lost")
    assert broken.verdict == "ERROR" and broken.reasons == ["error: camera frame lost"]
    assert decide([], 500, 10).verdict == "ERROR"


def test_record_is_json_ready():
    import json

    record = decide(_results("missing_cap"), 500, 42.5, part_id="frame-7", ts=1000.0).to_record()
    again = json.loads(json.dumps(record))
    assert again["verdict"] == "FAIL" and again["part_id"] == "frame-7" and again["latency_ms"] == 42.5
    assert list(again["checks"]) == ["defective_parts", "missing_cap"]
    assert again["checks"]["missing_cap"] == {"passed": False, "count": 1, "max_score": 0.9, "rule": "count >= 1",
                                              "boxes": [[0.0, 0.0, 5.0, 5.0]], "scores": [0.9]}


def test_record_schema_exactly():
    """The stored record, key by key: every sink and every reader of results.db depend on it."""
    rule = parse_rule("count >= 1", "scratch")
    hit = evaluate_check("scratch", rule, [[1.234567, 2, 3.0051, 4]], [0.9876543])
    empty = evaluate_check("cap", parse_rule("count == 0", "cap"), [], [])
    errored = evaluate_check("dent", rule, [], [])
    errored.error, errored.failed = "model output missing", None
    record = decide([hit, empty, errored], 500, 42.123456, part_id="p-9", ts=1000.1234567).to_record()
    assert record == {
        "schema": "promptdet.verdict/1", "part_id": "p-9", "ts": 1000.123457, "verdict": "ERROR",
        "reasons": ["error: dent: model output missing", "failed: scratch", "failed: cap"],
        "latency_ms": 42.123, "deadline_ms": 500,
        "checks": {
            "scratch": {"passed": False, "count": 1, "max_score": 0.98765, "rule": "count >= 1",
                        "boxes": [[1.23, 2.0, 3.01, 4.0]], "scores": [0.98765]},
            "cap": {"passed": False, "count": 0, "max_score": 0.0, "rule": "count == 0", "boxes": [], "scores": []},
            "dent": {"passed": False, "count": 0, "max_score": 0.0, "rule": "count >= 1", "boxes": [], "scores": [],
                     "error": "model output missing"},
        }}


def test_a_bad_rule_message_in_full():
    with pytest.raises(RuleError) as err:
        parse_rule("count >= 1 and", "cap")
    assert str(err.value) == ("check 'cap': fail_if 'count >= 1 and': ends early: expected count, max_score or a "
                              "number at column 15 (allowed: count, max_score, numbers, >= <= == != > <, and, or, "
                              "not, parentheses)")


# ROI [10, 20, 50, 60], edges included. (box, kept by "centre", kept by "inside"); the boxes are
# lopsided so that a centre taken from the wrong corners lands elsewhere.
ROI = [10, 20, 50, 60]


@pytest.mark.parametrize("box, centre, inside", [
    ([10, 20, 10, 20], True, True),        # a point on the ROI's corner
    ([10, 20, 50, 60], True, True),        # the ROI itself
    ([0, 30, 20, 40], True, False),        # centre (10, 35): on the left edge; the box pokes out
    ([20, 0, 40, 10], False, False),       # centre x in, y above
    ([60, 30, 80, 40], False, False),      # centre y in, x to the right
    ([44, 20, 60, 30], False, False),      # centre (52, 25): just right of the ROI
    ([20, 60, 30, 70], False, False),      # centre (25, 65): just below it
    ([10, 10, 20, 30], True, False),       # starts above the ROI
    ([12, 22, 48, 58], True, True),
])
def test_roi_table(box, centre, inside):
    assert roi_keep([box], ROI, "centre").tolist() == [centre]
    assert roi_keep([box], ROI, "inside").tolist() == [inside]


@pytest.mark.parametrize("rule, scores, fails", [
    ("max_score < 0.5", [], True),           # no detection: max_score is 0.0
    ("max_score > 0.5", [0.9], True),
    ("count == 1", [0.25], True),            # a score equal to conf counts
    ("count == 0", [0.2499], True),
])
def test_evaluate_check_feeds_the_rule(rule, scores, fails):
    result = evaluate_check("c", parse_rule(rule, "c"), [[0, 0, 1, 1]] * len(scores), scores, conf=0.25)
    assert result.failed is fails


def test_bad_roi_mode_and_mismatched_lengths_are_named():
    with pytest.raises(ValueError, match=r"^roi mode must be one of centre, inside, got 'middle'$"):
        roi_keep([[0, 0, 1, 1]], ROI, "middle")
    with pytest.raises(ValueError, match=r"^check 'c': 2 boxes but 1 scores$"):
        evaluate_check("c", parse_rule("count >= 1", "c"), [[0, 0, 1, 1]] * 2, [0.9])

"""Metrics per instruction type on tiny hand-computed cases (boxes are xyxy pixels)."""

import json
from pathlib import Path

import numpy as np
import pytest

from promptdet.train.evaluate import (
    QueryResult,
    box_iou,
    evaluate_queries,
    format_table,
    plot_pr_curves,
    save_metrics,
)

A = [10, 10, 50, 50]
B = [100, 100, 160, 140]
C = [200, 20, 260, 90]
EMPTY = np.zeros((0, 4))


def q(type_, gt, pred=(), scores=(), qid=0, image="img0"):
    return QueryResult(query_id=qid, image_id=image, type=type_, instruction=f"{type_} query",
                       gt_boxes=np.asarray(gt, dtype=float).reshape(-1, 4),
                       pred_boxes=np.asarray(pred, dtype=float).reshape(-1, 4),
                       pred_scores=np.asarray(scores, dtype=float))


def test_perfect_predictions():
    results = [
        q("category", [A, B], [A, B], [0.9, 0.8], qid=1),
        q("spatial", [C], [C], [0.95], qid=2),
        q("superlative", [B], [B, A], [0.9, 0.1], qid=3),
        q("absent", EMPTY, [A], [0.1], qid=4),  # below conf: not a false fire
    ]
    m = evaluate_queries(results, conf=0.25)
    for t in ("category", "spatial", "superlative"):
        assert m["types"][t]["AP50"] == pytest.approx(1.0)
        assert m["types"][t]["AP50_95"] == pytest.approx(1.0)
        assert m["types"][t]["recall@conf"] == pytest.approx(1.0)
    assert m["types"]["spatial"]["acc50"] == 1.0
    assert m["types"]["superlative"]["acc50"] == 1.0
    assert m["types"]["category"]["acc50"] is None  # not a single-target type
    assert m["absent_fp_rate"] == 0.0
    assert m["all"]["AP50"] == pytest.approx(1.0)
    assert m["all"]["queries"] == 3  # absent is left out of the summary row
    assert m["all"]["gt_boxes"] == 4


def test_ap50_by_hand_with_101_point_interpolation():
    # GT A and B; A found at 0.9, a false positive at 0.8, B missed.
    # Envelope: precision 1.0 up to recall 0.5, nothing beyond, so 51 of 101 thresholds score 1.
    m = evaluate_queries([q("category", [A, B], [A, C], [0.9, 0.8])])
    row = m["types"]["category"]
    assert row["AP50"] == pytest.approx(51 / 101)
    assert row["AP50_95"] == pytest.approx(51 / 101)  # the match is exact at every IoU threshold
    assert row["recall@conf"] == pytest.approx(0.5)
    pr = m["pr_curves"]["category"]
    assert len(pr["recall"]) == len(pr["precision"]) == 101
    assert pr["precision"][:51] == pytest.approx([1.0] * 51)  # pycocotools divides by tp + fp + eps
    assert pr["precision"][51:] == [0.0] * 50


# IoU 0.62 (not exactly 0.6, which would tie with the 0.60 threshold): matched at 0.50, 0.55,
# 0.60 and missed at 0.65..0.95, so AP50-95 = 3/10. The same pair at the origin and shifted away
# from it: at the origin x2,y2 equal width,height, so only a shifted pair tells xyxy from xywh
# (taken as xywh, the shifted pair overlaps fully and would score 1.0).
@pytest.mark.parametrize("gt, pred", [
    ([0, 0, 10, 10], [0, 0, 10, 6.2]),
    ([100, 40, 110, 50], [100, 40, 110, 46.2]),       # shifted along both axes
    ([30, 200, 40, 210], [33.8, 200, 40, 210]),       # shrunk from the left, far down the image
])
def test_iou_between_thresholds_counts_for_ap50_only(gt, pred):
    assert box_iou(np.array([gt], float), np.array([pred], float))[0, 0] == pytest.approx(0.62)
    row = evaluate_queries([q("category", [gt], [pred], [0.9])])["types"]["category"]
    assert row["AP50"] == pytest.approx(1.0)
    assert 0.0 < row["AP50_95"] < row["AP50"]
    assert row["AP50_95"] == pytest.approx(0.3)


def test_a_shifted_box_that_misses_scores_zero_away_from_the_origin():
    # IoU 0.25 at every threshold: no match, AP 0; read as xywh, both would be large overlapping boxes.
    gt, pred = [100, 100, 140, 140], [120, 100, 180, 140]
    assert box_iou(np.array([gt], float), np.array([pred], float))[0, 0] == pytest.approx(0.25)
    row = evaluate_queries([q("category", [gt], [pred], [0.9])])["types"]["category"]
    assert row["AP50"] == 0.0 and row["AP50_95"] == 0.0


def test_predictions_never_match_another_querys_gt():
    # Same image, two prompts, each prompt's prediction sits exactly on the other's GT.
    results = [
        q("attribute", [A], [B], [0.9], qid=1, image="shared"),
        q("attribute", [B], [A], [0.9], qid=2, image="shared"),
    ]
    row = evaluate_queries(results)["types"]["attribute"]
    assert row["AP50"] == 0.0 and row["AP50_95"] == 0.0
    assert row["recall@conf"] == 0.0


def test_one_box_answers_two_prompts():
    # "all bottles" and "the red bottle" both have A as a positive: both must count it.
    results = [q("category", [A, B], [A, B], [0.9, 0.8], qid=1), q("attribute", [A], [A], [0.9], qid=2)]
    m = evaluate_queries(results)
    assert m["all"]["AP50"] == pytest.approx(1.0)


@pytest.mark.parametrize("pred, scores, expected", [
    ([C, A], [0.9, 0.8], 0.0),    # top-1 wrong, the right box is 2nd: a miss
    ([A, C], [0.8, 0.9], 0.0),    # same, order in the array must not matter, only score
    ([], [], 0.0),                # no prediction: a miss
    ([A, C], [0.9, 0.8], 1.0),    # top-1 right
    ([A], [0.01], 1.0),           # top-1 counts whatever its score (conf does not apply)
])
def test_accuracy_at_05(pred, scores, expected):
    m = evaluate_queries([q("relation", [A], pred, scores)])
    assert m["types"]["relation"]["acc50"] == expected


@pytest.mark.parametrize("conf, expected", [(0.25, 0.25), (0.15, 0.5), (0.5, 0.0), (0.3, 0.25)])  # 0.3: >= conf fires
def test_absent_false_positive_rate(conf, expected):
    results = [
        q("absent", EMPTY, [A], [0.3], qid=1),
        q("absent", EMPTY, [A, B], [0.2, 0.1], qid=2),
        q("absent", EMPTY, qid=3),
        q("absent", EMPTY, qid=4),
    ]
    m = evaluate_queries(results, conf=conf)
    assert m["absent_fp_rate"] == pytest.approx(expected)
    assert m["types"]["absent"]["empty_fp_rate"] == pytest.approx(expected)
    assert m["types"]["absent"]["AP50"] is None and m["types"]["absent"]["AP50_95"] is None
    assert m["pr_curves"]["absent"] is None
    json.dumps(m, allow_nan=False)


def test_count_empty_queries_show_false_fires_and_lower_precision():
    # A count query whose condition did not hold (no GT) but the model fires: the
    # detection is a false positive ranked above the true one, so AP50 drops below 1.
    results = [q("count", [A], [A], [0.5], qid=1), q("count", EMPTY, [B], [0.9], qid=2)]
    row = evaluate_queries(results)["types"]["count"]
    assert row["empty_fp_rate"] == 1.0
    assert row["recall@conf"] == 1.0
    # PR: (recall 0, precision 0) then (1, 0.5); envelope 0.5 at every threshold.
    assert row["AP50"] == pytest.approx(0.5)


@pytest.mark.parametrize("results", [
    [],
    [q("absent", EMPTY, qid=1)],
    [q("absent", EMPTY, [A], [0.9], qid=1), q("count", EMPTY, qid=2)],
])
def test_no_gt_gives_none_and_strict_json(results, tmp_path):
    m = evaluate_queries(results, order_invariance=None)
    assert m["all"]["AP50"] is None and m["all"]["AP50_95"] is None
    for row in m["types"].values():
        assert row["AP50"] is None and row["recall@conf"] is None and row["acc50"] is None
    json.dumps(m, allow_nan=False)
    save_metrics(m, tmp_path / "sub" / "metrics.json")
    assert json.loads((tmp_path / "sub" / "metrics.json").read_text()) == m
    assert "all" in format_table(m)


@pytest.mark.parametrize("gt, pred, scores, expected", [
    ([[0, 0, 10, 10]], [[0, 0, 10, 6.2]], [0.9], 1.0),           # IoU 0.62 >= 0.5
    ([[0, 0, 10, 10]], [[0, 0, 10, 4.0]], [0.9], 0.0),           # IoU 0.40 < 0.5
    ([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.2], 0.0),            # below conf 0.25
    ([A, B], [A, A, B], [0.9, 0.8, 0.3], 1.0),                    # a duplicate does not take B's match
    # 2nd box overlaps the taken GT most (0.90) but the free one enough (0.74): it takes the free one
    ([[0, 0, 10, 10], [2, 0, 12, 10]], [[0, 0, 10, 10], [0.5, 0, 10.5, 10]], [0.9, 0.8], 1.0),
    # greedy by score, not by array order: the 0.9 box takes GT 1 first, the 0.3 box fits only GT 1
    ([[0, 0, 10, 10], [2, 0, 12, 10]], [[-3, 0, 7, 10], [0.5, 0, 10.5, 10]], [0.3, 0.9], 0.5),
    ([A, B], [A, A], [0.9, 0.8], 0.5),                            # one box matches one GT only
    ([A, B, C], [], [], 0.0),
])
def test_recall_at_conf(gt, pred, scores, expected):
    row = evaluate_queries([q("category", gt, pred, scores)], conf=0.25)["types"]["category"]
    assert row["recall@conf"] == pytest.approx(expected)


def test_gt_without_predictions_scores_zero_not_none():
    row = evaluate_queries([q("defect", [A])])["types"]["defect"]
    assert row["AP50"] == 0.0 and row["recall@conf"] == 0.0


def test_order_invariance_is_stored():
    m = evaluate_queries([q("category", [A], [A], [0.9])], order_invariance=np.float32(0.002))
    assert m["order_invariance_max_abs_score_change"] == pytest.approx(0.002)
    assert isinstance(m["order_invariance_max_abs_score_change"], float)


@pytest.mark.parametrize("bad, match", [
    (dict(gt_boxes=np.zeros((2, 3))), "gt_boxes"),
    (dict(pred_scores=np.array([0.5, 0.4])), "pred_scores"),
    (dict(pred_boxes=np.array([[10, 10, 5, 20.0]])), "pred_boxes"),
    (dict(type="all"), "reserved"),
])
def test_bad_input_fails_with_the_field_named(bad, match):
    r = q("category", [A], [A], [0.9])
    for k, v in bad.items():
        setattr(r, k, v)
    with pytest.raises(ValueError, match=match):
        evaluate_queries([r])


def test_format_table_rows_and_placeholders():
    results = [
        q("referring", [A], [A], [0.9], qid=1),  # imported type
        q("category", [A], [A], [0.9], qid=2),
        q("absent", EMPTY, [B], [0.5], qid=3),
        q("my_custom", [B], [B], [0.7], qid=4),  # an extra type from user data
    ]
    m = evaluate_queries(results, order_invariance=0.001)
    table = format_table(m)
    lines = table.splitlines()
    names = [line.split()[0] for line in lines if line.split() and line.split()[0] in m["types"]]
    assert names == ["category", "absent", "referring", "my_custom"]  # vocab order, then extras
    absent_line = next(line for line in lines if line.startswith("absent"))
    assert absent_line.split()[3:5] == ["-", "-"]  # AP50-95 and AP50 do not apply
    assert next(line for line in lines if line.startswith("category")).split()[5] == "-"  # no Acc@0.5
    assert "pr_curves" not in table and "precision" not in table
    assert "1.00e-03" in table  # tiny score changes must not print as 0.000


def test_plot_pr_curves_writes_pngs(tmp_path):
    results = [q("category", [A, B], [A, C], [0.9, 0.8], qid=1), q("spatial", [A], [A], [0.9], qid=2),
               q("absent", EMPTY, [A], [0.9], qid=3)]
    paths = plot_pr_curves(evaluate_queries(results), tmp_path)
    assert sorted(p.name for p in paths) == ["pr_all.png", "pr_category.png", "pr_spatial.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    # A results list works too, and an empty one still gives the summary plot.
    assert [p.name for p in plot_pr_curves([], tmp_path / "empty")] == ["pr_all.png"]


# IoU by hand, including sub-pixel boxes (intersections below 1 px^2) and zero-area boxes.
@pytest.mark.parametrize("a, b, iou", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
    ([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25], 0.5),           # inter 0.125 px^2
    ([0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5], 1 / 3),
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
    ([5, 5, 5, 5], [5, 5, 5, 5], 0.0),                     # two points: no area, no union, IoU 0
    ([5, 5, 5, 9], [0, 0, 10, 10], 0.0),                   # a zero-width box inside another
])
def test_box_iou_by_hand(a, b, iou):
    got = box_iou(np.array([a], float), np.array([b], float))
    assert got.shape == (1, 1) and got[0, 0] == pytest.approx(iou)


@pytest.mark.parametrize("gt, pred, scores, iou_thr, matched", [
    ([], [A], [0.9], 0.5, 0),
    ([A], [], [], 0.5, 0),
    ([A, B], [A, A], [0.9, 0.8], 0.5, 1),                  # one GT is matched once
    ([A], [[10, 10, 50, 30]], [0.9], 0.5, 1),              # IoU exactly 0.5 matches
    ([A], [[10, 10, 50, 29.9]], [0.9], 0.5, 0),
])
def test_greedy_matches(gt, pred, scores, iou_thr, matched):
    from promptdet.train.evaluate import greedy_matches

    g, p = np.array(gt, float).reshape(-1, 4), np.array(pred, float).reshape(-1, 4)
    assert greedy_matches(g, p, np.array(scores, float), iou_thr) == matched


@pytest.mark.parametrize("field, value, message", [
    ("gt_boxes", [[0, 0, 5]], "query 7: gt_boxes must have shape [N, 4] xyxy, got (1, 3)"),
    ("gt_boxes", [[5, 0, 4, 5]], "query 7: gt_boxes must be finite xyxy with x2 >= x1 and y2 >= y1"),
    ("pred_boxes", [[0, 5, 5, 4]], "query 7: pred_boxes must be finite xyxy with x2 >= x1 and y2 >= y1"),
    ("pred_boxes", [[0, 0, 5, float("nan")]], "query 7: pred_boxes must be finite xyxy"),
])
def test_bad_boxes_are_refused_with_the_query_and_field(field, value, message):
    fields = {"gt_boxes": np.array([A], float), "pred_boxes": np.array([A], float), "pred_scores": np.array([0.9])}
    fields[field] = np.array(value, float)
    with pytest.raises(ValueError) as err:
        evaluate_queries([QueryResult(query_id=7, image_id="i", type="category", instruction="x", **fields)])
    assert str(err.value).startswith(message)


def test_zero_width_and_single_boxes_are_accepted():
    # a zero-width or zero-height box is a valid (empty) box, and one box may come unnested
    m = evaluate_queries([q("category", [A, [5, 5, 5, 9]], [A, [5, 5, 9, 5]], [0.9, 0.1], qid=1),
                          q("category", A, A, 0.9, qid=2)])
    assert m["types"]["category"]["queries"] == 2


@pytest.mark.parametrize("gt, pred, ap50_95", [
    ([0, 0, 10, 10], [2, 0, 12, 10], 0.4),              # IoU 0.667: matched at 0.50 to 0.65
    ([20, 30, 30, 40], [20, 32, 30, 42], 0.4),          # the same shift along y, away from the origin
    ([20, 30, 30, 40], [22, 32, 32, 42], 0.0),          # both: IoU 64/136 = 0.47, never matched
])
def test_ap_of_a_box_shifted_along_one_axis(gt, pred, ap50_95):
    row = evaluate_queries([q("category", [gt], [pred], [0.9])])["types"]["category"]
    assert row["AP50_95"] == pytest.approx(ap50_95)
    assert row["AP50"] == pytest.approx(1.0 if ap50_95 else 0.0)


def test_without_pycocotools_the_message_says_how_to_install(monkeypatch):
    import sys

    from promptdet.errors import PromptdetError

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    with pytest.raises(PromptdetError) as err:
        evaluate_queries([q("category", [A], [A], [0.9])])
    assert str(err.value) == ("COCO-style AP needs pycocotools: pip install pycocotools "
                              "(or pip install 'promptdet[train]')")


def test_format_table_layout_by_hand():
    row = {"queries": 3, "gt_boxes": 12, "AP50_95": 0.41234, "AP50": 0.75, "acc50": None,
           "empty_fp_rate": float("nan"), "recall@conf": 1.0}
    m = {"types": {"category": row}, "all": {**row, "queries": 10}, "conf": 0.25, "absent_fp_rate": 0.05,
         "order_invariance_max_abs_score_change": None}
    lines = format_table(m).splitlines()
    # columns right-aligned to their widest cell, two spaces apart; rules as wide as the header
    assert lines[0] == "type      queries  GT  AP50-95   AP50  Acc@0.5  empty-FP  recall"
    assert lines[1] == lines[3] == "-" * len(lines[0])  # under the header, and above the summary row
    assert lines[2] == "category        3  12    0.412  0.750        -         -   1.000"
    assert lines[4] == "all            10  12    0.412  0.750        -         -   1.000"
    assert lines[5] == "conf 0.250   absent FP rate 0.050   order-invariance max |dscore| -"
    assert len(lines) == 6


def test_save_metrics_is_strict_json_in_a_new_folder(tmp_path):
    path = tmp_path / "a" / "b" / "metrics.json"
    save_metrics({"x": 1.5, "n": None}, path)
    assert path.read_text() == '{\n  "x": 1.5,\n  "n": null\n}\n'
    with pytest.raises(ValueError):
        save_metrics({"x": float("nan")}, tmp_path / "nan.json")


def _plotted(monkeypatch, metrics, out_dir):
    """plot_pr_curves' figures as saved, by file name, with the paths it returned."""
    from matplotlib.figure import Figure

    saved, save = {}, Figure.savefig

    def record(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return plot_pr_curves(metrics, out_dir), saved


def _legend(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()], legend


def test_plot_pr_curves_draws_each_types_curve_with_its_ap(monkeypatch, tmp_path):
    import matplotlib.colors as mcolors

    results = [q("category", [A, B], [A, C], [0.9, 0.8], qid=1), q("spatial", [A], [A], [0.9], qid=2),
               q("absent", EMPTY, [A], [0.9], qid=3), q("odd type/name", [B], [C], [0.5], qid=4)]
    metrics = evaluate_queries(results)
    paths, figs = _plotted(monkeypatch, metrics, tmp_path / "plots")
    # vocabulary order, then extras; a type name made safe for a file name; the summary last
    assert paths == [tmp_path / "plots" / n for n in ("pr_category.png", "pr_spatial.png", "pr_odd_type_name.png",
                                                      "pr_all.png")]
    assert sorted(figs) == sorted(p.name for p in paths) and all(p.is_file() for p in paths)
    curves = metrics["pr_curves"]
    for name, t, ap in (("pr_category.png", "category", "0.505"), ("pr_spatial.png", "spatial", "1.000"),
                        ("pr_odd_type_name.png", "odd type/name", "0.000")):
        fig = figs[name]
        assert tuple(fig.get_size_inches()) == (5, 4) and fig.dpi == 100
        (ax,) = fig.axes
        assert ax.get_title() == f"PR @ IoU 0.5: {t}"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("recall", "precision")
        assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1.02)
        assert all(g.get_visible() and g.get_alpha() == 0.3 for g in ax.xaxis.get_gridlines() + ax.yaxis.get_gridlines())
        (line,) = ax.lines
        assert line.get_xdata().tolist() == curves[t]["recall"] and line.get_ydata().tolist() == curves[t]["precision"]
        texts, legend = _legend(ax)
        assert texts == [f"{t} (AP50 {ap})"] and legend._loc == 3  # lower left
        assert legend.get_texts()[0].get_fontsize() == 8
    (ax,) = figs["pr_all.png"].axes
    assert tuple(figs["pr_all.png"].get_size_inches()) == (5, 4)
    assert ax.get_title() == "PR @ IoU 0.5, all types" and ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1.02)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("recall", "precision")
    texts, legend = _legend(ax)
    all_ap = f"{metrics['all']['AP50']:.3f}"
    assert texts == ["category (AP50 0.505)", "spatial (AP50 1.000)", "odd type/name (AP50 0.000)",
                     f"all (AP50 {all_ap})"]
    assert legend._loc == 3 and legend.get_texts()[0].get_fontsize() == 7
    for line, t in zip(ax.lines, ("category", "spatial", "odd type/name", "all")):
        assert line.get_xdata().tolist() == curves[t]["recall"] and line.get_ydata().tolist() == curves[t]["precision"]
    # the types in colour, solid; the all row black and dashed
    assert [line.get_linestyle() for line in ax.lines] == ["-", "-", "-", "--"]
    assert mcolors.to_hex(ax.lines[-1].get_color()) == "#000000"
    assert "#000000" not in {mcolors.to_hex(line.get_color()) for line in ax.lines[:-1]}


def test_plot_pr_curves_without_curves_draws_an_empty_summary(monkeypatch, tmp_path):
    # a metrics dict without the curves (an older metrics.json), and one whose rows have no GT box
    paths, figs = _plotted(monkeypatch, {"types": {"category": {"AP50": 0.5}}, "all": {"AP50": 0.5}}, tmp_path)
    assert paths == [tmp_path / "pr_all.png"] and len(figs["pr_all.png"].axes[0].lines) == 0
    assert figs["pr_all.png"].axes[0].get_legend() is None
    metrics = evaluate_queries([q("absent", EMPTY, [A], [0.9])])
    paths, figs = _plotted(monkeypatch, metrics, tmp_path / "absent")
    assert [p.name for p in paths] == ["pr_all.png"] and len(figs["pr_all.png"].axes[0].lines) == 0


def test_plot_pr_curves_all_row_without_metrics_shows_a_dash(monkeypatch, tmp_path):
    curve = {"recall": [0.0, 1.0], "precision": [1.0, 0.5]}
    metrics = {"types": {"category": {"AP50": 0.25}}, "pr_curves": {"category": curve, "all": curve}}
    _, figs = _plotted(monkeypatch, metrics, tmp_path)
    assert _legend(figs["pr_all.png"].axes[0])[0] == ["category (AP50 0.250)", "all (AP50 -)"]


def test_without_matplotlib_the_message_says_how_to_install(monkeypatch, tmp_path):
    import sys

    from promptdet.errors import PromptdetError

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(PromptdetError) as err:
        plot_pr_curves([], tmp_path / "plots")
    assert str(err.value) == "PR plots need matplotlib: pip install matplotlib (or pip install 'promptdet[train]')"
    assert not (tmp_path / "plots").exists()


def test_ap_counts_up_to_100_detections_per_query():
    # 12 GT boxes, each found by its own prediction: with only 10 detections read, AP50 would be 10/12 at best
    gt = [[20 * i, 0, 20 * i + 10, 10] for i in range(12)]
    scores = [0.9 - 0.01 * i for i in range(12)]
    row = evaluate_queries([q("category", gt, gt, scores)])["types"]["category"]
    assert row["AP50"] == pytest.approx(1.0) and row["AP50_95"] == pytest.approx(1.0)


def test_iou_052_is_a_match_at_050_only():
    gt, pred = [100, 40, 110, 50], [100, 40, 110, 45.2]  # IoU 0.52: above the 0.50 threshold, below 0.55
    assert box_iou(np.array([gt], float), np.array([pred], float))[0, 0] == pytest.approx(0.52)
    m = evaluate_queries([q("category", [gt], [pred], [0.9])])
    assert m["types"]["category"]["AP50"] == pytest.approx(1.0)
    assert m["types"]["category"]["AP50_95"] == pytest.approx(0.1)
    assert m["pr_curves"]["category"]["precision"] == pytest.approx([1.0] * 101)


def test_pr_curve_recall_is_the_101_coco_points_and_nothing_is_printed(capsys):
    m = evaluate_queries([q("category", [A, B], [A, C], [0.9, 0.8]), q("category", [C], [C], [0.7], qid=1)])
    assert m["pr_curves"]["category"]["recall"] == [i / 100 for i in range(101)]
    assert m["conf"] == 0.25 and evaluate_queries([], conf=0.4)["conf"] == 0.4
    assert capsys.readouterr() == ("", "")  # pycocotools' progress prints are silenced


def test_recall_and_accuracy_add_up_over_queries_of_a_type():
    # recall: 2 of 3 GT boxes over two queries; acc50: top-1 right in 1 of 2 queries
    results = [q("referring", [A, B], [A, C], [0.9, 0.8], qid=1), q("referring", [C], [A], [0.9], qid=2)]
    row = evaluate_queries(results)["types"]["referring"]
    assert row["recall@conf"] == pytest.approx(1 / 3) and row["acc50"] == 0.5
    results = [q("referring", [C], [A], [0.9], qid=2), q("referring", [A, B], [A, B], [0.9, 0.8], qid=1)]
    row = evaluate_queries(results)["types"]["referring"]
    assert row["recall@conf"] == pytest.approx(2 / 3) and row["acc50"] == 0.5


def test_a_score_equal_to_conf_counts_and_iou_05_is_a_hit():
    half = [10, 10, 50, 90]  # IoU with [10, 10, 50, 50] is exactly 0.5
    assert box_iou(np.array([A], float), np.array([half], float))[0, 0] == 0.5
    row = evaluate_queries([q("referring", [A], [half], [0.25])], conf=0.25)["types"]["referring"]
    assert row["recall@conf"] == 1.0 and row["acc50"] == 1.0


def test_boxes_given_as_plain_empty_lists():
    r = QueryResult(query_id=7, image_id="img", type="category", instruction="x", gt_boxes=[A],
                    pred_boxes=[], pred_scores=[])
    row = evaluate_queries([r])["types"]["category"]
    assert row["AP50"] == 0.0 and row["recall@conf"] == 0.0 and row["gt_boxes"] == 1
    r = QueryResult(query_id=8, image_id="img", type="absent", instruction="x", gt_boxes=[], pred_boxes=[[1, 2, 3, 4]],
                    pred_scores=[0.5])
    assert evaluate_queries([r])["absent_fp_rate"] == 1.0
    r.gt_boxes = [5.0]  # one number is not an empty list of boxes
    with pytest.raises(ValueError, match=r"^query 8: gt_boxes must have shape \[N, 4\] xyxy, got \(1,\)$"):
        evaluate_queries([r])


def test_bad_scores_name_their_shape():
    r = q("category", [A], [A, B], [0.9, 0.8])
    r.pred_scores = np.array([[0.5, 0.4, 0.3]])
    with pytest.raises(ValueError) as err:
        evaluate_queries([r])
    assert str(err.value) == "query 0: pred_scores must be 2 finite values (one per pred box), got shape (1, 3)"


def test_plot_pr_curves_into_a_new_nested_folder_and_uppercase_type_names(monkeypatch, tmp_path):
    metrics = evaluate_queries([q("Odd Type", [A], [A], [0.9])])
    paths, _ = _plotted(monkeypatch, metrics, tmp_path / "a" / "b")
    assert [p.name for p in paths] == ["pr_Odd_Type.png", "pr_all.png"] and all(p.is_file() for p in paths)
    paths, figs = _plotted(monkeypatch, {}, tmp_path / "c")  # no types at all
    assert [p.name for p in paths] == ["pr_all.png"] and len(figs["pr_all.png"].axes[0].lines) == 0

"""The inspection loop end to end: one record per part in JSONL and SQLite, SIGTERM losing nothing,
the deadline giving FAIL/timeout, a broken sink not stalling the line, and `inspect report`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptdet.cli.main import app
from promptdet.errors import UsageError
from promptdet.line.pipeline import Inspector, LineStats, run_line
from promptdet.line.recipe import recipe_from_dict
from promptdet.line.sinks import JsonlSink, Sink
from promptdet.line.sources import Frame

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_ckpt(save_tiny_checkpoint) -> Path:
    return save_tiny_checkpoint()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from promptdet.data.synth.video import render_conveyor

    out = tmp_path_factory.mktemp("video") / "line.avi"
    return render_conveyor(out, seconds=3, fps=10, size_wh=(160, 120), seed=3).video


def recipe_dict(weights: Path, source: Path, out: Path, **extra) -> dict:
    d = {"version": 1, "model": {"weights": str(weights), "backend": "torch", "conf": 0.25},
         "checks": [{"name": "defects", "prompt": "find the defective parts", "fail_if": "count >= 1"},
                    {"name": "bottles", "prompt": "the bottles", "fail_if": "count == 0"}],
         "source": {"uri": str(source), "trigger": "every-frame"},
         "sinks": {"jsonl": {"path": str(out / "results.jsonl")}, "sqlite": {"path": str(out / "results.db")},
                   "spool_dir": str(out / "spool")},
         "deadline_ms": 60000}
    d.update(extra)
    return d


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_record_per_frame_in_jsonl_and_sqlite_and_report(tiny_ckpt, video, tmp_path):
    import cv2

    cfg = tmp_path / "line.yaml"
    cfg.write_text(yaml.safe_dump(recipe_dict(tiny_ckpt, video, tmp_path / "unused")))
    res = runner.invoke(app, ["inspect", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    cap = cv2.VideoCapture(str(video))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    records = read_jsonl(tmp_path / "run" / "results.jsonl")  # --out re-roots the file sinks
    assert len(records) == frames == 30
    assert [r["frame"] for r in records] == list(range(frames))
    rules = {"defects": lambda n: n >= 1, "bottles": lambda n: n == 0}
    for r in records:
        # the model judged every frame: no ERROR, and each verdict follows from its checks' counts
        assert set(r["checks"]) == set(rules) and not any(x.startswith("error") for x in r["reasons"]), r
        failed = [name for name, c in r["checks"].items() if rules[name](c["count"])]
        assert [name for name, c in r["checks"].items() if not c["passed"]] == failed, r
        assert r["verdict"] == ("FAIL" if failed or "timeout" in r["reasons"] else "PASS"), r
    with sqlite3.connect(tmp_path / "run" / "results.db") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == frames
    rep = runner.invoke(app, ["inspect", "report", str(tmp_path / "run" / "results.db")])
    assert rep.exit_code == 0, rep.output
    table = {" ".join(line.split()[:-1]): line.split()[-1] for line in rep.stdout.splitlines() if line.strip()}
    verdicts = [r["verdict"] for r in records]
    assert table["parts"] == str(frames)
    assert [table[v] for v in ("PASS", "FAIL", "ERROR")] == [str(verdicts.count(v)) for v in ("PASS", "FAIL", "ERROR")]
    assert table["pass rate"] == f"{verdicts.count('PASS') / frames * 100:.2f}%" and "p99" in table


def test_sigterm_mid_run_loses_no_record(tiny_ckpt, tmp_path):
    """A folder source that keeps watching; SIGTERM while parts are flowing. Every part the loop
    judged (its count, from the final stats line) has exactly one JSONL line and one SQLite row."""
    import cv2

    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(40):
        cv2.imwrite(str(parts / f"p{i:03d}.png"), np.full((96, 128, 3), 40 + i, np.uint8))
    d = recipe_dict(tiny_ckpt, parts, tmp_path)
    d["source"]["trigger"] = "free-run"  # a watched folder: runs until stopped
    d["source"]["kind"] = "folder"
    d["stats"] = {"interval_s": 0.2}
    cfg = tmp_path / "line.yaml"
    cfg.write_text(yaml.safe_dump(d))
    proc = subprocess.Popen([sys.executable, "-m", "promptdet.cli.main", "inspect", "--config", str(cfg)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    jsonl = tmp_path / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not _has_records(jsonl):  # parts are flowing
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stopping (SIGTERM)" in err and "warmed up in" in err
    last = [line for line in err.splitlines() if " parts " in line][-1]
    judged = int(last.split()[0])
    records = read_jsonl(jsonl)
    assert judged >= 1 and len(records) == judged
    assert len({r["part_id"] for r in records}) == judged  # exactly one record per part
    with sqlite3.connect(tmp_path / "results.db") as db:
        assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == judged


def _has_records(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


class FixedPredictor:
    """Stands in for the model: fixed detections, optional delay."""

    backend = "fake"

    def __init__(self, prompts, delay_s=0.0, fail_on=None, cold_s=0.0):
        self.prompts, self.delay_s, self.fail_on, self.cold_s = prompts, delay_s, fail_on, cold_s
        self.calls = 0

    def __call__(self, image, name=None, frame=None, read_ms=0.0, keep_image=True):
        from promptdet.structures import Detections

        self.calls += 1
        time.sleep(self.delay_s + (self.cold_s if self.calls == 1 else 0.0))  # a session's slow first run
        if self.fail_on is not None and frame == self.fail_on:
            raise RuntimeError("inference blew up")
        return Detections(np.array([[10, 10, 20, 20]], np.float32), np.array([0.9], np.float32),
                          np.array([0]), self.prompts, (64, 48), name, {"infer": 1.0}, frame)


def frames(n: int):
    for i in range(n):
        yield Frame(np.zeros((48, 64, 3), np.uint8), i, time.time())


def small_recipe(tmp_path, deadline_ms=1000):
    return recipe_from_dict(recipe_dict(Path("w"), tmp_path, tmp_path, deadline_ms=deadline_ms))


def test_deadline_gives_fail_with_reason_timeout(tmp_path):
    recipe = small_recipe(tmp_path, deadline_ms=5)
    sink = JsonlSink(tmp_path / "r.jsonl")
    run_line(frames(3), Inspector(recipe, FixedPredictor(recipe.prompts, delay_s=0.02)), [sink],
             threading.Event(), LineStats())
    records = read_jsonl(tmp_path / "r.jsonl")
    assert [r["verdict"] for r in records] == ["FAIL"] * 3
    assert all("timeout" in r["reasons"] for r in records)


@pytest.mark.parametrize("warm", [False, True])
def test_warm_up_keeps_a_cold_first_run_from_failing_the_first_part(tmp_path, warm):
    recipe = small_recipe(tmp_path, deadline_ms=300)
    predictor = FixedPredictor(recipe.prompts, cold_s=0.6)
    inspector = Inspector(recipe, predictor)
    if warm:
        assert inspector.warm_up(runs=2) >= 600
        assert predictor.calls == 2
    sink = JsonlSink(tmp_path / "r.jsonl")
    run_line(frames(3), inspector, [sink], threading.Event(), LineStats())
    first = read_jsonl(tmp_path / "r.jsonl")[0]
    assert ("timeout" in first["reasons"]) is not warm


def test_a_model_that_fails_its_warm_up_stops_the_line_at_start_up(tmp_path):
    recipe = small_recipe(tmp_path)

    class BrokenPredictor(FixedPredictor):
        def __call__(self, *args, **kwargs):
            raise RuntimeError("inference blew up")

    with pytest.raises(UsageError, match="warm-up run: RuntimeError: inference blew up"):
        Inspector(recipe, BrokenPredictor(recipe.prompts)).warm_up()


def test_failed_inference_is_an_error_record_and_the_line_goes_on(tmp_path):
    recipe = small_recipe(tmp_path)
    sink = JsonlSink(tmp_path / "r.jsonl")
    stats = run_line(frames(4), Inspector(recipe, FixedPredictor(recipe.prompts, fail_on=1)), [sink],
                     threading.Event(), LineStats())
    records = read_jsonl(tmp_path / "r.jsonl")
    assert [r["verdict"] for r in records] == ["FAIL", "ERROR", "FAIL", "FAIL"]  # 'bottles' finds none -> FAIL
    assert "inference blew up" in records[1]["reasons"][0]
    assert stats.parts == 4 and stats.verdicts["ERROR"] == 1


class TablePredictor(FixedPredictor):
    """Stands in for the model: for prompt i, the boxes and scores of ``table[i]``."""

    def __init__(self, prompts, table):
        super().__init__(prompts)
        self.table = table

    def __call__(self, image, name=None, frame=None, read_ms=0.0, keep_image=True):
        from promptdet.structures import Detections

        boxes = [b for rows in self.table for b, _ in rows]
        scores = [s for rows in self.table for _, s in rows]
        ids = [i for i, rows in enumerate(self.table) for _ in rows]
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                          np.array(ids, np.int64), self.prompts, (64, 48), name, {"infer": 1.0}, frame)


# Each check's own filter, applied by the inspector: (check's extra keys, its prompt's detections,
# the boxes the check keeps). model.conf is 0.2. A box's centre decides "centre"; "inside" needs all of it.
INSPECTOR_CHECKS = [
    ({"conf": 0.6}, [([1, 1, 5, 5], 0.5), ([1, 1, 6, 6], 0.7)], [[1, 1, 6, 6]]),
    ({}, [([1, 1, 5, 5], 0.1), ([1, 1, 6, 6], 0.3)], [[1, 1, 6, 6]]),            # model.conf applies
    ({"conf": 0.0}, [([1, 1, 5, 5], 0.1)], [[1, 1, 5, 5]]),                       # 0.0 is a conf, not "unset"
    ({"roi": [0, 0, 50, 50]}, [([40, 40, 60, 60], 0.9), ([52, 0, 60, 8], 0.9)], [[40, 40, 60, 60]]),
    ({"roi": [0, 0, 50, 50], "roi_mode": "inside"}, [([40, 40, 60, 60], 0.9), ([10, 10, 20, 20], 0.9)],
     [[10, 10, 20, 20]]),
    ({"roi": [0, 0, 50, 50], "conf": 0.5}, [([10, 10, 20, 20], 0.4), ([60, 0, 64, 8], 0.9)], []),
    ({}, [], []),                                                                 # nothing found
]


def test_the_inspector_applies_each_checks_conf_roi_and_roi_mode(tmp_path):
    d = recipe_dict(Path("w"), tmp_path, tmp_path)
    d["model"]["conf"] = 0.2
    d["checks"] = [{"name": f"c{i}", "prompt": f"prompt {i}", "fail_if": "count >= 1", **extra}
                   for i, (extra, _, _) in enumerate(INSPECTOR_CHECKS)]
    recipe = recipe_from_dict(d)
    inspector = Inspector(recipe, TablePredictor(recipe.prompts, [dets for _, dets, _ in INSPECTOR_CHECKS]))
    record, _ = inspector(next(frames(1)))
    for i, (_, _, kept) in enumerate(INSPECTOR_CHECKS):
        check = record["checks"][f"c{i}"]
        assert check["boxes"] == kept and check["count"] == len(kept) and check["passed"] is (not kept), (i, check)
    assert record["verdict"] == "FAIL"
    assert record["reasons"] == [f"failed: c{i}" for i, (_, _, kept) in enumerate(INSPECTOR_CHECKS) if kept]


class HangingSink(Sink):
    kind = "hanging"

    def write(self, payloads):
        time.sleep(30)

    def prepare(self, record):
        return record


def test_a_hanging_sink_does_not_stall_the_line(tmp_path):
    recipe = small_recipe(tmp_path)
    good = JsonlSink(tmp_path / "r.jsonl")
    slow = HangingSink(spool_dir=tmp_path / "spool", queue_size=4)
    t0 = time.monotonic()
    run_line(frames(50), Inspector(recipe, FixedPredictor(recipe.prompts)), [slow, good], threading.Event(),
             LineStats(), sink_timeout_s=0.5)
    assert time.monotonic() - t0 < 10
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 50
    spooled = read_jsonl(tmp_path / "spool" / "hanging.jsonl")
    assert len(spooled) >= 40  # the rest were in flight or queued when it was abandoned


def test_bad_recipe_key_is_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    d = recipe_dict(Path("w"), tmp_path, tmp_path)
    d["sinks"]["jsonl"]["pth"] = "x"
    cfg.write_text(yaml.safe_dump(d))
    res = runner.invoke(app, ["inspect", "--config", str(cfg)])
    # one error line naming the file and the key, from a clean exit: a crash would leave its exception here
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1, res.exception
    assert res.output.strip() == f"error: {cfg}: sinks.jsonl: unknown key 'pth' (did you mean 'path'?)"


@pytest.mark.parametrize("make", ["missing", "not_export"])
def test_onnx_backend_without_an_export_says_how_to_make_it(tmp_path, make):
    weights = tmp_path / "export"
    if make == "not_export":
        weights.mkdir()
    cfg = tmp_path / "line.yaml"
    d = recipe_dict(weights, tmp_path, tmp_path)
    d["model"]["backend"] = "onnx"
    cfg.write_text(yaml.safe_dump(d))
    res = runner.invoke(app, ["inspect", "--config", str(cfg)])
    assert res.exit_code == 2
    found = "does not exist" if make == "missing" else "is not an export folder"
    assert found in res.output and f"promptdet export --out {weights} --dynamic" in res.output
    assert "Traceback" not in res.output


def test_stats_line_before_and_after_the_first_part():
    stats = LineStats()
    assert "nan" not in stats.line() and "total -/-/-" in stats.line()
    stats.add("FAIL", True, {"infer": 4.0, "total": 5.0})
    line = stats.line()
    assert line.startswith("1 parts") and "FAIL 1" in line and "(timeouts 1)" in line and "total 5.0/5.0/5.0" in line


def test_onnx_recipe_naming_a_detector_graph_the_export_lacks(tmp_path):
    from promptdet.line.run import build_predictor

    weights = tmp_path / "export"
    weights.mkdir()
    (weights / "promptdet.json").write_text("{}")  # enough for is_export_dir; never read further
    d = recipe_dict(weights, tmp_path, tmp_path)
    d["model"].update(backend="onnx", detector="detector_int8.onnx")
    with pytest.raises(UsageError, match=r"model.detector detector_int8.onnx is not in .*--int8 --calib"):
        build_predictor(recipe_from_dict(d))


def test_onnx_recipe_runs_the_detector_graph_it_names(tiny_ckpt, video, tmp_path):
    """model.detector picks another graph of the export folder (the int8 one in practice): with the
    default graph removed, only the named copy can have served the records."""
    import shutil

    import promptdet
    from promptdet.export.onnx import export_model

    export = tmp_path / "export"
    export_model(promptdet.load(tiny_ckpt), export, dynamic=True, verify=False, log=lambda _: None)
    shutil.move(export / "detector.onnx", export / "detector_other.onnx")
    cfg = tmp_path / "line.yaml"
    d = recipe_dict(export, video, tmp_path)
    d["model"].update(backend="onnx", detector="detector_other.onnx", imgsz=[64, 96])
    cfg.write_text(yaml.safe_dump(d))
    res = runner.invoke(app, ["inspect", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 0, res.output
    records = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(records) == 30 and all(r["verdict"] in ("PASS", "FAIL") for r in records)

"""The audit sinks never lose or tear a record: a write that fails midway, a torn tail left by a crash,
and a full disk (a real small tmpfs, as root)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from promptdet.line import durable
from promptdet.line.sinks import ImageSink, JsonlSink, SqliteSink

ROOT = Path(__file__).resolve().parents[1]


def record(i: int, verdict: str = "PASS", pad: int = 300) -> dict:
    return {"schema": "promptdet.verdict/1", "part_id": f"p{i:04d}", "ts": 1000.0 + i, "verdict": verdict,
            "reasons": [], "checks": {"c": {"boxes": [[1, 2, 3, 4]], "scores": [0.5], "pad": "x" * pad}},
            "latency_ms": 1.0}


def valid_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file ends in a torn line"
    return [json.loads(line) for line in data.decode().splitlines()]


_PARTIAL_WRITE = textwrap.dedent("""
    import json, resource, signal, sys, time
    from promptdet.line.sinks import JsonlSink
    path, fsync = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, like ENOSPC on a full disk
    rec = lambda i: {"part_id": f"p{i}", "ts": 1.0 + i, "verdict": "PASS", "pad": "x" * 300}
    line = len(json.dumps(rec(0), separators=(",", ":"))) + 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(2.5 * line), resource.RLIM_INFINITY))
    sink = JsonlSink(path, fsync=fsync, retries=40, backoff_s=0.02, backoff_max_s=0.05)
    for i in range(5):
        sink.put(rec(i))
    t0 = time.time()
    while sink.counts["errors"] == 0 and time.time() - t0 < 10:
        time.sleep(0.002)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space again
    while sink.counts["written"] + sink.counts["dropped"] < 5 and time.time() - t0 < 10:
        time.sleep(0.002)
    sink.close()
    print(json.dumps(sink.counts))
""")


@pytest.mark.parametrize("fsync", ["batch", "record"])
def test_jsonl_retry_after_a_partial_write_leaves_no_partial_line(tmp_path, fsync):
    """A write that fails midway (the file hits a size limit mid-line, as on a full disk) is cut
    back, and the retry writes the rest: 5 records give exactly 5 lines, each valid JSON."""
    path = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _PARTIAL_WRITE, str(path), fsync], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["errors"] >= 1  # the fault did happen
    lines = valid_lines(path)
    assert [r["part_id"] for r in lines] == [f"p{i}" for i in range(5)]
    assert counts["written"] == 5 and counts["dropped"] == 0


def test_torn_tail_is_cut_at_start_and_kept_aside(tmp_path):
    """A crash or a full disk left half a line: the next run cuts it back to the last newline, keeps
    the cut bytes in a side file and says so; the new records are not glued onto it."""
    path = tmp_path / "results.jsonl"
    whole = b"".join(json.dumps(record(i)).encode() + b"\n" for i in range(2))
    torn = json.dumps(record(2)).encode()[:57]
    path.write_bytes(whole + torn)
    sink = JsonlSink(path)
    for i in range(3, 6):
        sink.put(record(i))
    assert sink.close()
    lines = valid_lines(path)
    assert [r["part_id"] for r in lines] == ["p0000", "p0001", "p0003", "p0004", "p0005"]
    side = list(tmp_path.glob("results.jsonl.torn-*"))
    assert len(side) == 1 and side[0].read_bytes() == torn
    assert sink.counts["repaired"] == 1


def test_repair_tail_leaves_whole_files_alone(tmp_path):
    path = tmp_path / "a.jsonl"
    assert durable.repair_tail(path) == 0  # missing
    path.write_bytes(b"")
    assert durable.repair_tail(path) == 0  # empty
    path.write_bytes(b'{"a":1}\n')
    assert durable.repair_tail(path) == 0 and path.read_bytes() == b'{"a":1}\n'
    path.write_bytes(b'{"a":')  # no newline at all: everything is torn
    assert durable.repair_tail(path) == 5 and path.read_bytes() == b""


# ---------------------------------------------------------------- a full disk: a real 2 MB tmpfs
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs; needs root (mount), skipped otherwise."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a 2 MB tmpfs needs root and mount(8); the full-disk test runs where it can")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # ~250 KB as JPEG


def run_sinks(out: Path, spool: Path, n: int = 150) -> tuple[JsonlSink, SqliteSink, ImageSink]:
    jsonl = JsonlSink(out / "results.jsonl", spool_dir=spool, retries=2, backoff_s=0.01)
    db = SqliteSink(out / "results.db", spool_dir=spool, retries=2, backoff_s=0.01)
    images = ImageSink(out / "fail", max_files=1000, retries=1, backoff_s=0.01, queue_size=n)
    image = noise_image(0)
    for i in range(n):  # one part at a time, as a line delivers them: images and records interleave
        rec = record(i, "FAIL")
        jsonl.put(rec)
        db.put(rec)
        images.put(rec, image)
        t0 = time.monotonic()
        while any(s.stats()["queued"] for s in (jsonl, db, images)) and time.monotonic() - t0 < 5:
            time.sleep(0.002)
    for sink in (images, jsonl, db):
        sink.close(60)
    return jsonl, db, images


def test_full_disk_images_give_way_to_the_audit_records(small_disk, tmp_path):
    """Output on a 2 MB disk, FAIL images on, 150 parts: every record is in JSONL and SQLite, and the
    images stop at the free-space floor instead of starving them."""
    jsonl, db, images = run_sinks(small_disk, tmp_path / "spool")
    assert len(valid_lines(small_disk / "results.jsonl")) == 150
    with sqlite3.connect(small_disk / "results.db") as con:
        assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 150
    assert images.counts["skipped"] > 0  # the floor (64 MB) is above this whole disk: no image is written
    assert jsonl.counts["dropped"] == db.counts["dropped"] == 0


def test_full_disk_with_the_spool_elsewhere_replays_everything(small_disk, tmp_path):
    """The disk is full before the run: both audit sinks spool to another disk, lose nothing, and a
    later run (space again) replays every record."""
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    spool = tmp_path / "spool"
    jsonl, db, _ = run_sinks(small_disk, spool, n=40)
    assert jsonl.counts["dropped"] == db.counts["dropped"] == 0
    assert jsonl.counts["written"] + jsonl.counts["spooled"] >= 40
    ballast.unlink()
    again = JsonlSink(small_disk / "results.jsonl", spool_dir=spool)
    again_db = SqliteSink(small_disk / "results.db", spool_dir=spool)
    again.start(), again_db.start()
    again.close(30), again_db.close(30)
    ids = {r["part_id"] for r in valid_lines(small_disk / "results.jsonl")}
    assert ids == {f"p{i:04d}" for i in range(40)}
    with sqlite3.connect(small_disk / "results.db") as con:
        assert {r[0] for r in con.execute("SELECT part_id FROM results")} == ids


def test_full_disk_with_nowhere_to_spool_counts_the_loss(small_disk):
    """Output and spool on one full disk: the records that could not be written or spooled are counted,
    named in the stats line and in /health, and the run ends with an error."""
    from promptdet.errors import PromptdetError
    from promptdet.line.health import check_no_loss, sink_health, sink_summary

    ballast = small_disk / "ballast"
    with open(ballast, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    jsonl, db, images = run_sinks(small_disk, small_disk / "spool", n=20)
    assert jsonl.counts["dropped"] > 0
    assert "lost" in sink_summary([jsonl, db, images])
    assert sink_health([jsonl, db, images])["lost"] == jsonl.counts["dropped"] + db.counts["dropped"]
    with pytest.raises(PromptdetError, match="could not be written or spooled"):
        check_no_loss([jsonl, db, images])


# ---------------------------------------------------------------- runs
def test_records_carry_a_run_id_and_a_restarted_video_gets_new_part_ids(tmp_path):
    """A restart counts a video's frames from 0 again; its records must not pass for the earlier run's,
    and `inspect report --run latest` reads the last run only."""
    import threading

    from promptdet.line.pipeline import Inspector, LineStats, run_line
    from promptdet.line.recipe import recipe_from_dict
    from promptdet.line.report import summarise
    from promptdet.line.sources import Frame

    class Fixed:
        backend, imgsz = "fake", 64

        def __init__(self, prompts):
            self.prompts = prompts

        def __call__(self, image, name=None, frame=None, read_ms=0.0, keep_image=True):
            from promptdet.structures import Detections

            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                              self.prompts, (64, 48), name, {}, frame)

    recipe = recipe_from_dict({"version": 1, "checks": [{"name": "c", "prompt": "bottles", "fail_if": "count >= 1"}],
                               "source": {"uri": "v.mp4"}})
    runs = []
    for _ in range(2):  # the same video, twice
        inspector = Inspector(recipe, Fixed(recipe.prompts))
        frames = (Frame(np.zeros((48, 64, 3), np.uint8), i, time.time()) for i in range(3))
        run_line(frames, inspector, [JsonlSink(tmp_path / "r.jsonl"), SqliteSink(tmp_path / "r.db")],
                 threading.Event(), LineStats())
        runs.append(inspector.run_id)
    records = valid_lines(tmp_path / "r.jsonl")
    assert runs[0] != runs[1] and [r["run_id"] for r in records] == [runs[0]] * 3 + [runs[1]] * 3
    assert len({r["part_id"] for r in records}) == 6
    assert summarise(tmp_path / "r.db")["runs"] == 2
    assert summarise(tmp_path / "r.db", run="latest")["parts"] == 3

"""Each sink's own part, called directly on the test's thread: what it writes, where, and how it fails.

test_line_sinks.py covers the worker thread, the spool and the report; here each sink's ``prepare``,
``_connect``, ``write`` and ``_disconnect`` are checked byte for byte, row for row and pixel for pixel.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from promptdet.errors import PromptdetError
from promptdet.line import durable, sinks
from promptdet.line.recipe import (
    ImagesSinkSpec,
    JsonlSinkSpec,
    MqttSinkSpec,
    SinksSpec,
    SqliteSinkSpec,
    WebhookSinkSpec,
)
from promptdet.line.sinks import (
    ImageSink,
    JsonlSink,
    MqttSink,
    SqliteSink,
    WebhookSink,
    build_sinks,
    draw_verdict,
)
from promptdet.runtime.draw import draw_detections

FAST = {"retries": 2, "backoff_s": 0.001, "backoff_max_s": 0.002}


def _record(i: int, verdict: str = "PASS", **extra) -> dict:
    return {"part_id": f"p{i}", "ts": 1000.0 + i, "verdict": verdict, **extra}


# ---------------------------------------------------------------- JSONL

def test_jsonl_options():
    with pytest.raises(PromptdetError) as err:
        JsonlSink("x.jsonl", fsync="sometimes")
    assert str(err.value) == "jsonl sink: fsync must be 'record' or 'batch', got 'sometimes'"
    assert JsonlSink("x.jsonl", rotate_mb=1).rotate_bytes == 1024 * 1024
    assert JsonlSink("x.jsonl", rotate_mb=0.5).rotate_bytes == 512 * 1024
    assert JsonlSink("x.jsonl", rotate_mb=0).rotate_bytes == 0 and JsonlSink("x.jsonl", rotate_mb=None).rotate_bytes == 0
    assert JsonlSink("x.jsonl", fsync="record").fsync == "record"
    default = JsonlSink("x.jsonl")  # the recipe's defaults: batch fsync, a new file past 100 MB
    assert default.fsync == "batch" and default.rotate_bytes == 100 * 1024 * 1024


def test_jsonl_line_is_compact_utf8():
    line = JsonlSink("x.jsonl").prepare({"part_id": "Müller-7", "ts": 1.5, "checks": {"a": [1, 2]}})
    assert line == '{"part_id":"Müller-7","ts":1.5,"checks":{"a":[1,2]}}\n'.encode()


def test_jsonl_connect_makes_folders_and_cuts_a_torn_line(tmp_path, caplog):
    path = tmp_path / "a" / "b" / "results.jsonl"
    sink = JsonlSink(path, name="audit")
    sink._connect()
    assert path.is_file() and sink.counts.get("repaired", 0) == 0
    sink.write([sink.prepare(_record(0))])
    sink._disconnect()
    assert sink._fd is None
    sink._disconnect()  # twice is harmless
    with path.open("ab") as fh:
        fh.write(b'{"part_id":"p1","ts"')  # a crash in the middle of a line
    with caplog.at_level(logging.WARNING, logger="promptdet.line.sinks"):
        sink._connect()
    cut = len(b'{"part_id":"p1","ts"')
    assert sink.counts["repaired"] == 1
    assert caplog.messages == [(f"sink audit: {path} ended in a torn line; cut {cut} bytes off "
                                "(kept in results.jsonl.torn-*)")]
    sink.write([sink.prepare(_record(2))])
    sink._disconnect()
    assert [json.loads(x)["part_id"] for x in path.read_text().splitlines()] == ["p0", "p2"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("fsync, left, lines", [("record", 2, 2), ("batch", 4, 0)])
def test_jsonl_failed_write_keeps_what_was_synced_and_leaves_no_half_line(tmp_path, monkeypatch, fsync, left, lines):
    path = tmp_path / "r.jsonl"
    sink = JsonlSink(path, fsync=fsync)
    sink._connect()
    payloads = [sink.prepare(_record(i)) for i in range(4)]
    real, n = durable.write_all, []

    def third_fails(fd, data):
        n.append(1)
        if len(n) == 3:
            os.write(fd, data[:7])  # half a line, then the disk is full
            raise OSError("No space left on device")
        real(fd, data)

    monkeypatch.setattr(durable, "write_all", third_fails)
    with pytest.raises(OSError, match="No space"):
        sink.write(payloads)
    # 'record': the two synced lines are done (gone from the batch); 'batch': the whole batch is retried
    assert len(payloads) == left and payloads[0] == sink.prepare(_record(4 - left))
    assert path.read_bytes().count(b"\n") == lines and path.read_bytes().endswith(b"\n" if lines else b"")
    assert sink._fd is not None  # the cut-back worked: the file stays open
    monkeypatch.setattr(durable, "write_all", real)
    sink.write(payloads)
    sink._disconnect()
    assert [json.loads(x)["part_id"] for x in path.read_text().splitlines()] == [f"p{i}" for i in range(4)]


def test_jsonl_failed_cut_back_reopens(tmp_path, monkeypatch):
    sink = JsonlSink(tmp_path / "r.jsonl")
    sink._connect()
    sink._connected = True  # as the worker marks it
    monkeypatch.setattr(durable, "write_all", lambda fd, data: (_ for _ in ()).throw(OSError("io error")))
    monkeypatch.setattr(durable, "rollback", lambda fd, size: False)
    with pytest.raises(OSError):
        sink.write([b"x\n"])
    assert sink._fd is None  # disconnected: the next attempt reconnects and repairs the tail


def test_jsonl_rotates_exactly_past_the_limit(tmp_path):
    path = tmp_path / "r.jsonl"
    (tmp_path / "r.3.jsonl").write_text("old\n")
    (tmp_path / "r.x.jsonl").write_text("not a rotation\n")
    (tmp_path / "other.9.jsonl").write_text("another log\n")
    sink = JsonlSink(path)
    line = sink.prepare(_record(0))
    sink.rotate_bytes = 2 * len(line)
    sink._connect()
    sink.write([line, line])  # exactly at the limit: no rotation yet
    assert not (tmp_path / "r.4.jsonl").exists() and path.stat().st_size == 2 * len(line)
    sink.write([sink.prepare(_record(1))])
    assert (tmp_path / "r.4.jsonl").read_bytes() == line * 2
    assert path.read_bytes() == sink.prepare(_record(1))
    assert oct(path.stat().st_mode & 0o777) == oct(0o644 & ~_umask())  # the new file as the first
    sink._disconnect()
    # a file holding just one byte is past an empty one: a line that does not fit still rotates it
    (tmp_path / "one.jsonl").write_bytes(b"\n")
    one = JsonlSink(tmp_path / "one.jsonl")
    one.rotate_bytes = len(line)
    one._connect()
    one.write([line])
    one._disconnect()
    assert (tmp_path / "one.1.jsonl").read_bytes() == b"\n" and (tmp_path / "one.jsonl").read_bytes() == line
    # a line longer than the limit goes into a fresh file as it is, with no empty file rotated out
    big = JsonlSink(tmp_path / "big.jsonl")
    big.rotate_bytes = 10
    big._connect()
    big.write([line])
    big._disconnect()
    assert (tmp_path / "big.jsonl").read_bytes() == line and not list(tmp_path.glob("big.*.jsonl"))


@pytest.mark.parametrize("fsync", ["batch", "record"])
def test_jsonl_rotation_drops_synced_lines_from_the_batch(tmp_path, monkeypatch, fsync):
    sink = JsonlSink(tmp_path / "r.jsonl", fsync=fsync)
    line = sink.prepare(_record(0))
    sink.rotate_bytes = 2 * len(line)
    sink._connect()
    payloads = [sink.prepare(_record(i)) for i in range(6)]
    real, n = durable.write_all, []

    def fourth_fails(fd, data):
        n.append(1)
        if len(n) == 4:
            raise OSError("gone")
        real(fd, data)

    monkeypatch.setattr(durable, "write_all", fourth_fails)
    with pytest.raises(OSError):
        sink.write(payloads)
    # p0, p1 were synced into the rotated file before the rotation: they are done. 'batch' retries p2 on,
    # and cuts p2 back; 'record' had synced p2 too
    left = 2 if fsync == "batch" else 3
    assert payloads == [sink.prepare(_record(i)) for i in range(left, 6)]
    assert (tmp_path / "r.1.jsonl").read_bytes() == sink.prepare(_record(0)) + sink.prepare(_record(1))
    assert (tmp_path / "r.jsonl").read_bytes() == b"".join(sink.prepare(_record(i)) for i in range(2, left))
    monkeypatch.setattr(durable, "write_all", real)
    sink.write(payloads)
    sink._disconnect()
    lines = [json.loads(x)["part_id"] for p in ("r.1.jsonl", "r.2.jsonl", "r.jsonl") for x in
             (tmp_path / p).read_text().splitlines()]
    assert lines == [f"p{i}" for i in range(6)]


# ---------------------------------------------------------------- SQLite

def test_sqlite_row_from_a_record():
    sink = SqliteSink("x.db")
    assert sink.prepare({"part_id": 7, "ts": "12.5", "verdict": "FAIL", "reasons": ["a", "b"],
                         "checks": {"c": {"passed": False}}, "latency_ms": 3, "run_id": "r1"}) == (
        "7", 12.5, "FAIL", '["a", "b"]', '{"c": {"passed": false}}', 3.0, "r1")
    assert sink.prepare({"part_id": "p", "ts": 1, "verdict": "PASS"}) == ("p", 1.0, "PASS", "[]", "{}", None, None)
    with pytest.raises(ValueError) as err:
        sink.prepare({"part_id": "p"})
    assert str(err.value) == "missing ts, verdict"


def test_sqlite_connect_creates_and_upgrades(tmp_path):
    old = tmp_path / "a" / "b" / "results.db"
    old.parent.mkdir(parents=True)
    with sqlite3.connect(old) as db:  # a file of a line from before run_id
        db.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, part_id TEXT NOT NULL, ts REAL NOT NULL, "
                   "verdict TEXT NOT NULL, reasons TEXT NOT NULL, checks TEXT NOT NULL, latency_ms REAL)")
        db.execute("INSERT INTO results (part_id, ts, verdict, reasons, checks) VALUES ('old', 1, 'PASS', '[]', '{}')")
    db.close()
    sink = SqliteSink(old)
    sink._connect()
    assert sink._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sink._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    sink.write([sink.prepare(_record(1, run_id="r9"))])
    sink._disconnect()
    assert sink._db is None
    sink._disconnect()
    sink._connect()  # the upgraded file opens again as it is
    sink._disconnect()
    with sqlite3.connect(old) as db:
        assert db.execute("SELECT part_id, run_id FROM results ORDER BY id").fetchall() == [("old", None), ("p1", "r9")]
        assert "results_ts" in {r[1] for r in db.execute("PRAGMA index_list(results)")}
    db.close()
    fresh = SqliteSink(tmp_path / "c" / "d" / "new.db")
    fresh._connect()
    cols = [r[1] for r in fresh._db.execute("PRAGMA table_info(results)")]
    fresh._disconnect()
    assert cols == ["id", "part_id", "ts", "verdict", "reasons", "checks", "latency_ms", "run_id"]


def test_sqlite_batch_is_all_or_nothing(tmp_path):
    sink = SqliteSink(tmp_path / "r.db")
    sink._connect()
    good = sink.prepare(_record(0))
    bad = (None, 1.0, "PASS", "[]", "{}", None, None)  # part_id NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        sink.write([good, bad])
    sink.write([good, sink.prepare(_record(1))])
    rows = sink._db.execute("SELECT part_id, ts, verdict, reasons, checks, latency_ms FROM results").fetchall()
    sink._disconnect()
    assert rows == [("p0", 1000.0, "PASS", "[]", "{}", None), ("p1", 1001.0, "PASS", "[]", "{}", None)]


# ---------------------------------------------------------------- images

def test_image_sink_options(tmp_path):
    sink = ImageSink(tmp_path, spool_dir=tmp_path / "spool", min_free_mb=2.5)
    assert sink.spool_path is None  # images are never spooled
    assert sink._queue.maxsize == 16 and ImageSink(tmp_path, queue_size=4)._queue.maxsize == 4
    assert sink.min_free_bytes == int(2.5 * 1024 * 1024) and sink.max_files == 1000 and sink.ext == ".jpg"
    assert sink.draw is draw_verdict and len(sink._files) == 0


@pytest.mark.parametrize("record, name", [
    ({"part_id": "p/7 a", "ts": 1234.5678}, "0000001234567_p_7_a.jpg"),
    ({"part_id": "Ab-9_x.y", "ts": 1}, "0000000001000_Ab-9_x.y.jpg"),
    ({"ts": 2}, "0000000002000_.jpg"),
    ({"part_id": "x" * 80, "ts": 0.5}, "0000000000500_" + "x" * 64 + ".jpg"),
])
def test_image_file_names(tmp_path, record, name):
    image = np.zeros((4, 4, 3), np.uint8)
    path, rec, img = ImageSink(tmp_path / "img").prepare((record, image))
    assert path == tmp_path / "img" / name and rec is record and img is image


def test_image_sink_rotation_counts_files_already_there(tmp_path):
    folder = tmp_path / "a" / "img"
    folder.mkdir(parents=True)
    for name in ("0000000000001_old.png", "0000000000002_old.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    drawn = []

    def draw(image, record):
        drawn.append(record["part_id"])
        return np.full_like(image, 200)

    sink = ImageSink(folder, max_files=3, draw=draw, ext=".png")
    sink._connect()
    (folder / "0000000000002_old.png").unlink()  # deleted by hand meanwhile: rotation does not trip on it
    image = np.zeros((8, 8, 3), np.uint8)
    for i in range(3):
        sink.write([sink.prepare((_record(i, "FAIL"), image))])
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["0000001000000_p0.png", "0000001001000_p1.png", "0000001002000_p2.png", "notes.txt"]
    assert drawn == ["p0", "p1", "p2"] and cv2.imread(str(folder / names[0]))[0, 0].tolist() == [200, 200, 200]
    nested = ImageSink(tmp_path / "b" / "c")
    nested._connect()
    assert (tmp_path / "b" / "c").is_dir()


def test_image_sink_skips_on_a_full_disk_with_one_warning(tmp_path, monkeypatch, caplog):
    sink = ImageSink(tmp_path / "img", min_free_mb=50, name="fails")
    sink._connect()
    usage = type("Usage", (), {"free": 49 * 1024 * 1024})
    monkeypatch.setattr(sinks.shutil, "disk_usage", lambda path: usage)
    image = np.zeros((8, 8, 3), np.uint8)
    payloads = [sink.prepare((_record(i, "FAIL"), image)) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="promptdet.line.sinks"):
        sink.write(payloads)
        sink.write([sink.prepare((_record(3, "FAIL"), image))])
    assert payloads == [] and sink.counts["skipped"] == 4 and not list((tmp_path / "img").iterdir())
    assert caplog.messages == [(f"sink fails: under 50 MB free on {tmp_path / 'img'}; FAIL images are skipped "
                                "while it lasts")]
    usage.free = 50 * 1024 * 1024  # exactly the floor is enough
    sink.write([sink.prepare((_record(4, "FAIL"), image))])
    assert [p.name for p in (tmp_path / "img").iterdir()] == ["0000001004000_p4.jpg"]


def test_draw_verdict_boxes_per_check_and_the_banner():
    image = np.full((120, 200, 3), 60, np.uint8)
    record = {"verdict": "FAIL", "part_id": "p7", "reasons": ["failed: cap", "scratch ü"],
              "checks": {"cap": {"boxes": [[20, 40, 60, 80]], "scores": [0.9]},
                         "empty": {"passed": True},
                         "scratch": {"boxes": [[100, 50, 150, 100], [120, 30, 190, 60]], "scores": [0.5, 0.7]}}}
    out = draw_verdict(image, record)
    assert out.shape == image.shape and (image == 60).all()  # a copy
    want = draw_detections(image, np.array([[20, 40, 60, 80], [100, 50, 150, 100], [120, 30, 190, 60]], np.float32),
                           np.array([0.9, 0.5, 0.7], np.float32), np.array([0, 2, 2]), ["cap", "empty", "scratch"])
    assert np.array_equal(out[23:], want[23:])  # below the banner: the checks' boxes, a colour per check
    banner = want.copy()
    cv2.rectangle(banner, (0, 0), (200, 22), (0, 0, 200), -1)
    cv2.putText(banner, "FAIL p7: failed: cap; scratch ?", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    assert np.array_equal(out, banner)


def test_draw_verdict_of_a_bare_record_and_a_long_banner():
    image = np.zeros((40, 1200, 3), np.uint8)
    out = draw_verdict(image, {})
    want = image.copy()
    cv2.rectangle(want, (0, 0), (1200, 22), (0, 0, 200), -1)
    cv2.putText(want, "? : ", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    assert np.array_equal(out, want)
    long = draw_verdict(image, {"verdict": "FAIL", "part_id": "p", "reasons": ["x" * 300]})
    want = image.copy()
    cv2.rectangle(want, (0, 0), (1200, 22), (0, 0, 200), -1)
    cv2.putText(want, ("FAIL p: " + "x" * 300)[:120], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    assert np.array_equal(long, want)


# ---------------------------------------------------------------- webhook

class _Hook(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list] = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((self.command, self.path, dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    class Handler(_Hook):
        got, status = [], 200

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Handler, f"http://127.0.0.1:{server.server_address[1]}/verdicts"
    server.shutdown()
    server.server_close()


def test_webhook_posts_each_record_as_compact_json(hook):
    handler, url = hook
    sink = WebhookSink(url, headers={"Authorization": "Bearer t"})
    assert sink.headers == {"Content-Type": "application/json", "Authorization": "Bearer t"}
    payloads = [sink.prepare(_record(0, reasons=["a"])), sink.prepare(_record(1))]
    assert payloads[0] == b'{"part_id":"p0","ts":1000.0,"verdict":"PASS","reasons":["a"]}'
    sink.write(payloads)
    assert payloads == []
    assert [(m, p, b) for m, p, _, b in handler.got] == [
        ("POST", "/verdicts", b'{"part_id":"p0","ts":1000.0,"verdict":"PASS","reasons":["a"]}'),
        ("POST", "/verdicts", b'{"part_id":"p1","ts":1000.0,"verdict":"PASS"}'.replace(b"1000.0", b"1001.0"))]
    headers = handler.got[0][2]
    assert headers["Content-Type"] == "application/json" and headers["Authorization"] == "Bearer t"


def test_webhook_error_status_fails_and_keeps_the_record(hook):
    handler, url = hook
    handler.status = 500
    sink = WebhookSink(url)
    payloads = [sink.prepare(_record(0)), sink.prepare(_record(1))]
    with pytest.raises(OSError, match="500"):
        sink.write(payloads)
    assert len(payloads) == 2 and len(handler.got) == 1


def test_webhook_times_out(tmp_path):
    import socket
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # accepts the connection, never answers
    try:
        sink = WebhookSink(f"http://127.0.0.1:{server.getsockname()[1]}/x", timeout_s=0.3)
        t0 = time.monotonic()
        with pytest.raises(OSError):
            sink.write([b"{}"])
        assert time.monotonic() - t0 < 5
    finally:
        server.close()


def test_webhook_urls():
    assert WebhookSink("https://example.com/hook", timeout_s=1.5).timeout_s == 1.5
    assert WebhookSink("http://example.com/hook").timeout_s == 2.0
    for url in ("file:///etc/passwd", "ftp://host/x", "HTTP://host/x"):
        with pytest.raises(PromptdetError) as err:
            WebhookSink(url)
        assert str(err.value) == f"webhook sink: url must start with http:// or https://, got {url!r}"


# ---------------------------------------------------------------- MQTT without a broker

def test_mqtt_without_paho_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_paho(name, *args, **kwargs):
        if name.startswith("paho"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_paho)
    with pytest.raises(PromptdetError) as err:
        MqttSink("localhost")
    assert str(err.value) == "the MQTT sink needs paho-mqtt: pip install 'paho-mqtt>=2'"


def test_mqtt_publish_failure_names_the_broker():
    pytest.importorskip("paho.mqtt.client", reason="optional: pip install 'paho-mqtt>=2'")
    default = MqttSink("broker.local")
    assert (default.port, default.topic, default.qos, default.timeout_s) == (1883, "promptdet/verdicts", 1, 5.0)
    sink = MqttSink("broker.local", port=1884, topic="line1/v", qos=2, timeout_s=0.01)
    assert (sink.host, sink.port, sink.topic, sink.qos, sink.timeout_s) == ("broker.local", 1884, "line1/v", 2, 0.01)
    published = []

    class Info:
        rc = 4

        def wait_for_publish(self, timeout):
            published.append(timeout)

        def is_published(self):
            return False

    class Client:
        def publish(self, topic, payload, qos):
            published.append((topic, payload, qos))
            return Info()

    sink._client = Client()
    payloads = [sink.prepare(_record(0)), b"2"]
    assert payloads[0] == b'{"part_id":"p0","ts":1000.0,"verdict":"PASS"}'
    with pytest.raises(OSError) as err:
        sink.write(payloads)
    assert str(err.value) == "MQTT publish to broker.local:1884/line1/v failed (rc=4)"
    assert published == [("line1/v", payloads[0], 2), 0.01] and len(payloads) == 2
    Info.rc = 0  # accepted, but not acknowledged within the timeout
    with pytest.raises(OSError, match=r"\(rc=0\)"):
        sink.write(payloads)
    Info.is_published = lambda self: True
    sink.write(payloads)
    assert payloads == []


# ---------------------------------------------------------------- from a recipe

def test_build_sinks_from_a_recipe_section(tmp_path):
    spec = SinksSpec(jsonl=JsonlSinkSpec(str(tmp_path / "r.jsonl"), fsync="record", rotate_mb=2),
                     sqlite=SqliteSinkSpec(str(tmp_path / "r.db")),
                     images=ImagesSinkSpec(str(tmp_path / "img"), max_files=5, min_free_mb=3),
                     webhook=WebhookSinkSpec("http://127.0.0.1:9/v", timeout_s=0.7),
                     spool_dir=str(tmp_path / "spool"))
    built = build_sinks(spec, retries=7)
    assert [type(s) for s in built] == [JsonlSink, SqliteSink, ImageSink, WebhookSink]
    jsonl, sqlite, images, webhook = built
    assert jsonl.path == tmp_path / "r.jsonl" and jsonl.fsync == "record" and jsonl.rotate_bytes == 2 * 1024 * 1024
    assert sqlite.path == tmp_path / "r.db"
    assert images.dir == tmp_path / "img" and images.max_files == 5 and images.min_free_bytes == 3 * 1024 * 1024
    assert images.spool_path is None
    assert webhook.url == "http://127.0.0.1:9/v" and webhook.timeout_s == 0.7
    assert all(s.retries == 7 for s in built)
    assert [s.spool_path for s in (jsonl, sqlite, webhook)] == [tmp_path / "spool" / f"{k}.jsonl"
                                                                for k in ("jsonl", "sqlite", "webhook")]
    assert build_sinks(SinksSpec()) == []
    other = build_sinks(SinksSpec(sqlite=SqliteSinkSpec("x.db")), spool_dir=tmp_path / "mine")
    assert other[0].spool_path == tmp_path / "mine" / "sqlite.jsonl"


def test_build_sinks_adds_the_plc_sinks(tmp_path):
    from promptdet.line.plc import ModbusSink, OpcuaSink
    from promptdet.line.recipe import ModbusSinkSpec, OpcuaSinkSpec

    modbus = ModbusSinkSpec("plc.local", port=5020, coil=3)
    built = build_sinks(SinksSpec(sqlite=SqliteSinkSpec("x.db"), modbus=modbus, spool_dir=str(tmp_path)), retries=5)
    assert [type(s) for s in built] == [SqliteSink, ModbusSink]
    assert built[1].spool_path == tmp_path / "modbus.jsonl" and built[1].retries == 5
    opcua = OpcuaSinkSpec("opc.tcp://plc.local:4840", "ns=2;s=Verdict")
    assert [type(s) for s in build_sinks(SinksSpec(opcua=opcua))] == [OpcuaSink]
    assert [type(s) for s in build_sinks(SinksSpec(opcua=opcua, modbus=modbus))] == [OpcuaSink, ModbusSink]


def test_build_sinks_mqtt():
    pytest.importorskip("paho.mqtt.client", reason="optional: pip install 'paho-mqtt>=2'")
    (mqtt,) = build_sinks(SinksSpec(mqtt=MqttSinkSpec("h", port=1884, topic="t/v", qos=0)))
    assert isinstance(mqtt, MqttSink) and (mqtt.host, mqtt.port, mqtt.topic, mqtt.qos) == ("h", 1884, "t/v", 0)
    assert mqtt.spool_path == Path("runs/line/spool") / "mqtt.jsonl"

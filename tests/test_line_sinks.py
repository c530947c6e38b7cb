"""Sinks never block the line, never lose a record silently, and the report agrees with numpy."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from promptdet.errors import PromptdetError
from promptdet.line.report import format_summary, summarise
from promptdet.line.sinks import ImageSink, JsonlSink, MqttSink, Sink, SqliteSink, WebhookSink

FAST = {"retries": 3, "backoff_s": 0.001, "backoff_max_s": 0.002}


def _record(i: int, verdict: str = "PASS", latency: float = 10.0, reasons=(), checks=None) -> dict:
    return {"schema": "promptdet.verdict/1", "part_id": f"p{i}", "ts": 1000.0 + i, "verdict": verdict,
            "reasons": list(reasons), "latency_ms": latency, "deadline_ms": 500.0, "checks": checks or {}}


class BrokenSink(Sink):
    kind = "memory"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def write(self, payloads):
        self.calls += 1
        raise ConnectionError("broker down")


class MemorySink(Sink):
    kind = "memory"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.got = []

    def write(self, payloads):
        self.got += payloads


class HangingSink(Sink):
    kind = "memory"

    def __init__(self, release: threading.Event, **kwargs):
        super().__init__(**kwargs)
        self.release = release

    def write(self, payloads):
        self.release.wait(30)  # a PLC that stopped answering


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _spooled(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_failing_sink_spools_and_a_new_instance_replays_exactly(tmp_path):
    broken = BrokenSink(spool_dir=tmp_path, batch_size=4, **FAST)
    for i in range(10):
        assert broken.put(_record(i))
    _wait_for(lambda: broken.counts["spooled"] == 10)  # close() cuts retries short, so let them run first
    assert broken.close(timeout=5)
    assert broken.calls >= 3 and broken.calls % 3 == 0  # every batch was tried 3 times before spooling
    assert broken.counts["spooled"] == 10 and broken.counts["written"] == 0
    assert broken.counts["errors"] == broken.calls
    assert [r["part_id"] for r in _spooled(tmp_path / "memory.jsonl")] == [f"p{i}" for i in range(10)]

    healed = MemorySink(spool_dir=tmp_path, batch_size=4, **FAST)
    healed.put(_record(10))
    assert healed.close(timeout=5)
    assert sorted(r["part_id"] for r in healed.got) == sorted(f"p{i}" for i in range(11))
    assert healed.counts["replayed"] == 10 and healed.counts["written"] == 11 and healed.counts["spooled"] == 0
    assert not list(tmp_path.glob("*.jsonl"))  # the spool is gone once delivered

    again = MemorySink(spool_dir=tmp_path, **FAST)  # nothing left to replay: no duplicates
    assert again.close(timeout=5) and again.got == [] and again.counts["replayed"] == 0


def test_hanging_sink_never_blocks_put_and_loses_nothing(tmp_path):
    release = threading.Event()
    sink = HangingSink(release, spool_dir=tmp_path, queue_size=100, batch_size=10, **FAST)
    try:
        start = time.perf_counter()
        accepted = sum(sink.put(_record(i)) for i in range(1000))
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"put blocked for {elapsed:.2f} s"
        assert accepted <= 100 + 10  # the queue plus the batch the worker took
        assert sink.close(timeout=0.2) is False  # gave up on the hung write
        spooled = _spooled(tmp_path / "memory.jsonl")
        assert len(spooled) == 1000 == sink.counts["spooled"]
        assert sorted(int(r["part_id"][1:]) for r in spooled) == list(range(1000))
    finally:
        release.set()
    sink._thread.join(5)
    assert sink.counts["written"] == 0  # the abandoned write is not counted twice


def test_sink_without_spool_counts_dropped():
    release = threading.Event()
    sink = HangingSink(release, queue_size=5, batch_size=1, **FAST)
    try:
        for i in range(50):
            sink.put(_record(i))
        sink.close(timeout=0.1)
        assert sink.counts["dropped"] == 50 and sink.counts["spooled"] == 0
    finally:
        release.set()


def test_malformed_record_is_dropped_not_retried(tmp_path):
    sink = SqliteSink(tmp_path / "r.db", spool_dir=tmp_path / "spool", **FAST)
    sink.put({"part_id": "x"})  # no ts, no verdict
    sink.put(_record(1))
    assert sink.close(timeout=5)
    assert sink.counts["dropped"] == 1 and sink.counts["written"] == 1 and sink.counts["errors"] == 0


@pytest.mark.parametrize("fsync", ["record", "batch"])
def test_jsonl_writes_exactly_n_lines(tmp_path, fsync):
    path = tmp_path / "out" / "results.jsonl"
    sink = JsonlSink(path, fsync=fsync, rotate_mb=0, batch_size=16, **FAST)
    for i in range(137):
        sink.put(_record(i))
    assert sink.close(timeout=10)
    lines = path.read_text().splitlines()
    assert len(lines) == 137 and [json.loads(x)["part_id"] for x in lines] == [f"p{i}" for i in range(137)]


def test_jsonl_rotates_by_size_and_keeps_every_line(tmp_path):
    path = tmp_path / "results.jsonl"
    line_bytes = len(json.dumps(_record(0), separators=(",", ":"))) + 1
    sink = JsonlSink(path, rotate_mb=10 * line_bytes / 2**20, batch_size=7, **FAST)  # ~10 lines per file
    for i in range(45):
        sink.put(_record(i))
    assert sink.close(timeout=10)
    rotated = sorted(tmp_path.glob("results.*.jsonl"), key=lambda p: int(p.name.split(".")[1]))
    assert [p.name for p in rotated] == [f"results.{n}.jsonl" for n in range(1, len(rotated) + 1)]
    assert len(rotated) >= 4
    ids = [json.loads(x)["part_id"] for p in [*rotated, path] for x in p.read_text().splitlines()]
    assert ids == [f"p{i}" for i in range(45)]  # oldest file first, nothing lost or repeated
    assert all(p.stat().st_size <= 10 * line_bytes + 20 for p in rotated)


def test_sqlite_sink_and_report_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    latencies = rng.gamma(4.0, 20.0, size=200)
    records = []
    for i, lat in enumerate(latencies):
        if i % 10 == 0:
            rec = _record(i, "FAIL", lat, ["failed: missing_cap"], {"missing_cap": {"passed": False},
                                                                  "defective_parts": {"passed": True}})
        elif i % 25 == 1:
            rec = _record(i, "FAIL", lat, ["timeout"], {"missing_cap": {"passed": True}})
        elif i % 50 == 3:
            rec = _record(i, "ERROR", lat, ["error: camera frame lost"])
        else:
            rec = _record(i, "PASS", lat, [], {"missing_cap": {"passed": True}})
        records.append(rec)
    db = tmp_path / "line" / "results.db"
    with SqliteSink(db, **FAST) as sink:
        for rec in records:
            sink.put(rec)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 200

    s = summarise(db)
    verdicts = [r["verdict"] for r in records]
    assert s["parts"] == 200 and s["pass"] == verdicts.count("PASS") and s["fail"] == verdicts.count("FAIL")
    assert s["error"] == verdicts.count("ERROR") == 4
    assert s["pass_rate"] == pytest.approx(verdicts.count("PASS") / 200)
    assert s["failures_per_check"] == {"missing_cap": 20}
    assert s["reasons"] == {"failed: missing_cap": 20, "timeout": 8, "error: camera frame lost": 4}
    for q in (50, 95, 99):
        assert s["latency_ms"][f"p{q}"] == pytest.approx(np.percentile(latencies, q))
    assert s["latency_ms"]["max"] == pytest.approx(latencies.max())
    text = format_summary(s)
    assert "pass rate" in text and "missing_cap" in text and "p99" in text


def test_report_on_empty_and_missing_databases(tmp_path):
    db = tmp_path / "empty.db"
    SqliteSink(db).close()  # never started: nothing written, no file
    with pytest.raises(PromptdetError, match="results database not found"):
        summarise(db)
    sink = SqliteSink(db, **FAST)
    sink.start()
    sink.put(_record(0))
    sink.close()
    assert summarise(db, since_ts=5000.0) == {"parts": 0, "pass": 0, "fail": 0, "error": 0, "pass_rate": None,
                                              "failures_per_check": {}, "reasons": {}, "latency_ms": None,
                                              "first_ts": None, "last_ts": None}
    assert "no results" in format_summary(summarise(db, since_ts=5000.0))
    (tmp_path / "junk.db").write_text("not sqlite")
    with pytest.raises(PromptdetError, match="not a promptdet results database"):
        summarise(tmp_path / "junk.db")


def test_image_sink_keeps_fail_images_only_with_rotation(tmp_path):
    image = np.zeros((64, 96, 3), np.uint8)
    checks = {"missing_cap": {"passed": False, "boxes": [[10, 10, 40, 40]], "scores": [0.9]}}
    sink = ImageSink(tmp_path / "img", max_files=3, **FAST)
    for i in range(6):
        assert sink.put(_record(i, "FAIL", checks=checks, reasons=["failed: missing_cap"]), image)
    assert not sink.put(_record(99, "PASS"), image)  # PASS parts are not kept
    assert not sink.put(_record(98, "FAIL"))          # no frame, nothing to draw
    assert sink.close(timeout=10)
    kept = sorted(p.name for p in (tmp_path / "img").iterdir())
    assert len(kept) == 3 and [k.split("_", 1)[1] for k in kept] == ["p3.jpg", "p4.jpg", "p5.jpg"]


def test_webhook_rejects_non_http_and_spools_when_unreachable(tmp_path):
    with pytest.raises(PromptdetError, match="http"):
        WebhookSink("file:///etc/passwd")
    sink = WebhookSink("http://127.0.0.1:9/verdicts", timeout_s=0.5, spool_dir=tmp_path, **FAST)  # port 9: discard
    sink.put(_record(0))
    assert sink.close(timeout=10)
    assert sink.counts["spooled"] == 1 and len(_spooled(tmp_path / "webhook.jsonl")) == 1


def test_mqtt_sink_without_paho_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_paho(name, *args, **kwargs):
        if name.startswith("paho"):
            raise ImportError("No module named 'paho'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_paho)
    with pytest.raises(PromptdetError, match=r"pip install 'paho-mqtt>=2'"):
        MqttSink("localhost")


def _fake_broker(received: list) -> int:
    """A one-client MQTT 3.1.1 broker: CONNACK, PUBACK for QoS 1, collects (topic, payload)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def read_packet(conn):
        head = conn.recv(1)
        if not head:
            return None, b""
        length, shift = 0, 0
        while True:
            byte = conn.recv(1)[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            body += conn.recv(length - len(body))
        return head[0], body

    def serve():
        conn, _ = server.accept()
        with conn:
            while True:
                kind, body = read_packet(conn)
                if kind is None or kind >> 4 == 14:  # closed or DISCONNECT
                    break
                if kind >> 4 == 1:
                    conn.sendall(b"\x20\x02\x00\x00")
                elif kind >> 4 == 3:
                    qos = (kind >> 1) & 3
                    n = int.from_bytes(body[:2], "big")
                    topic, rest = body[2:2 + n].decode(), body[2 + n:]
                    if qos:
                        conn.sendall(b"\x40\x02" + rest[:2])
                        rest = rest[2:]
                    received.append((topic, rest))
                elif kind >> 4 == 12:
                    conn.sendall(b"\xd0\x00")
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_mqtt_sink_publishes_json_with_qos1():
    pytest.importorskip("paho.mqtt.client", reason="optional: pip install 'paho-mqtt>=2'")
    received: list = []
    port = _fake_broker(received)
    sink = MqttSink("127.0.0.1", port=port, topic="line1/verdicts", qos=1, **FAST)
    for i in range(5):
        sink.put(_record(i, "FAIL" if i == 2 else "PASS"))
    assert sink.close(timeout=10)
    assert sink.counts["written"] == 5 and sink.counts["errors"] == 0
    assert [t for t, _ in received] == ["line1/verdicts"] * 5
    assert [json.loads(p)["verdict"] for _, p in received] == ["PASS", "PASS", "FAIL", "PASS", "PASS"]


@pytest.fixture
def mosquitto(tmp_path):
    """A real broker: Debian's mosquitto on a free local port, started for the test."""
    import shutil
    import socket
    import subprocess

    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; CI installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"mosquitto did not start: {proc.stderr.read().decode()[-500:]}")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_mqtt_delivery_through_a_real_mosquitto_broker(mosquitto):
    mqtt = pytest.importorskip("paho.mqtt.client", reason="optional: pip install 'paho-mqtt>=2'")
    got: list = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("line1/#", qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, msg: got.append((msg.topic, json.loads(msg.payload)))
    sub.connect("127.0.0.1", mosquitto)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        sink = MqttSink("127.0.0.1", port=mosquitto, topic="line1/verdicts", qos=1, **FAST)
        for i in range(20):
            sink.put(_record(i, "FAIL" if i % 5 == 0 else "PASS"))
        assert sink.close(timeout=10)
        deadline = time.time() + 10
        while len(got) < 20 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert sink.counts["written"] == 20 and sink.counts["spooled"] == 0
    assert [t for t, _ in got] == ["line1/verdicts"] * 20
    assert sorted(r["part_id"] for _, r in got) == sorted(_record(i, "PASS")["part_id"] for i in range(20))
    assert sum(r["verdict"] == "FAIL" for _, r in got) == 4

"""The software trigger and the HTTP endpoint under abuse: stdin at EOF, a trigger flood, stale frames,
bad and stalled requests, a token, and a port in use."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptdet.errors import UsageError
from promptdet.line import server as server_mod
from promptdet.line.pipeline import Inspector
from promptdet.line.recipe import recipe_from_dict
from promptdet.line.sources import Frame, SoftwareTrigger, SourceStats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakePredictor:
    backend, imgsz = "fake", 64

    def __init__(self, prompts):
        self.prompts = prompts

    def __call__(self, image, name=None, frame=None, read_ms=0.0, keep_image=True):
        from promptdet.structures import Detections

        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                          self.prompts, (image.shape[1], image.shape[0]), name, {"infer": 1.0}, frame)


def recipe(tmp_path: Path, uri: str, **extra) -> dict:
    d = {"version": 1, "checks": [{"name": "c", "prompt": "the bottles", "fail_if": "count >= 1"}],
         "source": {"uri": uri, "trigger": "software"},
         "sinks": {"jsonl": {"path": str(tmp_path / "r.jsonl")}, "spool_dir": str(tmp_path / "spool")},
         "deadline_ms": 100}
    d.update(extra)
    return d


def post(port: int, path: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_port(port: int, timeout: float = 20.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the endpoint never came up")


# ---------------------------------------------------------------- stdin at EOF
def test_stdin_at_eof_does_not_end_a_line_whose_http_trigger_is_on(tmp_path, monkeypatch):
    """`promptdet inspect < /dev/null` with trigger software and stats.port, and kind auto: the line waits
    for POST /trigger instead of ending at once with 0 parts."""
    from promptdet.line import run

    video = tmp_path / "v.avi"
    out = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        out.write(np.full((48, 64, 3), i * 40, np.uint8))
    out.release()
    port = free_port()
    r = recipe_from_dict(recipe(tmp_path, str(video), stats={"port": port}, deadline_ms=5000))
    monkeypatch.setattr(run, "build_predictor", lambda rec: FakePredictor(rec.prompts))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # EOF at once, like < /dev/null

    def trigger_later():
        wait_port(port)
        time.sleep(0.5)  # well after stdin's EOF
        post(port, "/trigger?part_id=A17")

    threading.Thread(target=trigger_later, daemon=True).start()
    stats = run.inspect_line(r, quiet=True, max_parts=1)
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert stats.parts == 1 and [x["part_id"] for x in lines] == ["A17"]


def test_stdin_at_eof_ends_a_line_triggered_by_stdin_only():
    trig = SoftwareTrigger()
    trig.listen_stdin(io.StringIO("A1\n"), close_on_eof=True).join(2)
    frames = iter([Frame(np.zeros((4, 4, 3), np.uint8), 0, time.time())])
    got = list(trig.frames(frames, SourceStats(), threading.Event()))
    assert [f.part_id for f in got] == ["A1"]


# ---------------------------------------------------------------- a trigger flood, stale frames
def test_trigger_flood_is_bounded_and_answered_503():
    trig = SoftwareTrigger(max_pending=4)
    srv = server_mod.serve(free_port(), lambda: {"ok": True}, lambda: "", trig.trigger)
    try:
        codes = [post(srv.server_port, f"/trigger?part_id=P{i}") for i in range(10)]
    finally:
        srv.shutdown()
    assert codes == [202] * 4 + [503] * 6
    assert trig.refused == 6


def slow_frames(delay_s: float, n: int = 3):
    for i in range(n):
        time.sleep(delay_s)
        yield Frame(np.zeros((48, 64, 3), np.uint8), i, time.time())


def test_the_deadline_runs_from_the_trigger(tmp_path):
    """A trigger whose frame comes 300 ms later misses a 100 ms deadline: FAIL, reason timeout, and the
    record's latency counts from the trigger."""
    r = recipe_from_dict(recipe(tmp_path, "0", deadline_ms=100))
    trig = SoftwareTrigger()
    trig.trigger("late")
    frame = next(trig.frames(slow_frames(0.3), SourceStats(), threading.Event()))
    record, _ = Inspector(r, FakePredictor(r.prompts))(frame)
    assert record["part_id"] == "late" and record["verdict"] == "FAIL" and "timeout" in record["reasons"]
    assert record["latency_ms"] >= 250


def test_a_trigger_without_a_frame_in_time_is_an_error_record(tmp_path):
    r = recipe_from_dict(recipe(tmp_path, "0", deadline_ms=100))
    trig = SoftwareTrigger(frame_timeout_s=0.1)
    trig.trigger("nothing")
    frame = next(trig.frames(slow_frames(1.0), SourceStats(), threading.Event()))
    record, _ = Inspector(r, FakePredictor(r.prompts))(frame)
    assert record["part_id"] == "nothing" and record["verdict"] == "ERROR"
    assert any("no frame within 100 ms" in reason for reason in record["reasons"])


# ---------------------------------------------------------------- bad requests
def raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return data


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setattr(server_mod, "HTTP_READ_TIMEOUT_S", 0.5, raising=False)
    got: list = []
    srv = server_mod.serve(free_port(), lambda: {"ok": True}, lambda: "", lambda part: got.append(part) or True)
    yield srv.server_port, got
    srv.shutdown()


@pytest.mark.parametrize("length, code", [("-1", b"400"), ("abc", b"400"), (str(300 * 2**20), b"413")])
def test_bad_or_huge_content_length_is_refused_with_one_log_line(endpoint, caplog, capfd, length, code):
    port, got = endpoint
    with caplog.at_level(logging.WARNING, logger="promptdet.line.server"):
        reply = raw(port, f"POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        time.sleep(0.1)
    assert reply.split(b" ")[1] == code
    assert got == []
    assert len([r for r in caplog.records if r.name == "promptdet.line.server"]) == 1
    assert "Traceback" not in capfd.readouterr().err


def test_a_stalled_client_is_dropped_after_the_read_timeout(endpoint, caplog, capfd):
    port, got = endpoint
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="promptdet.line.server"):
        raw(port, b"POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"part", timeout=10)
    assert time.monotonic() - t0 < 5  # the server hung up, after about 0.5 s
    assert got == []
    assert "Traceback" not in capfd.readouterr().err


def test_trigger_token(monkeypatch):
    got: list = []
    srv = server_mod.serve(free_port(), lambda: {"ok": True}, lambda: "", lambda p: got.append(p) or True,
                           token="s3cret")
    try:
        assert post(srv.server_port, "/trigger?part_id=A") == 401
        assert post(srv.server_port, "/trigger?part_id=B", {"Authorization": "Bearer wrong"}) == 401
        assert post(srv.server_port, "/trigger?part_id=C", {"Authorization": "Bearer s3cret"}) == 202
    finally:
        srv.shutdown()
    assert got == ["C"]


def test_a_port_in_use_names_stats_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UsageError, match=r"stats\.port \d+: cannot listen"):
            server_mod.serve(s.getsockname()[1], dict, lambda: "")

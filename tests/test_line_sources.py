"""Line sources: a stream that dies and comes back, video files, watched folders, trigger modes."""

from __future__ import annotations

import io
import threading
import time

import cv2
import numpy as np
import pytest

from promptdet.errors import UsageError
from promptdet.line.sources import (Backoff, FolderSource, OpenCvSource, SoftwareTrigger, SourceStats,
                                    latest_frames, trigger_frames)


class FakeCapture:
    """Gives ``n`` frames numbered in their first pixel, then fails like a dropped stream."""

    def __init__(self, start: int, n: int):
        self.next, self.end = start, start + n

    def read(self):
        if self.next >= self.end:
            return False, None
        img = np.full((8, 8, 3), self.next % 256, np.uint8)
        self.next += 1
        return True, img

    def release(self):
        pass


class FlakyCamera:
    """Opens, gives 5 frames, drops; refuses 3 reconnects; comes back with 5 more; then stays down."""

    def __init__(self):
        self.calls = 0
        self.plan = ["up", "down", "down", "down", "up"]

    def __call__(self, uri):
        step = self.plan[self.calls] if self.calls < len(self.plan) else "down"
        self.calls += 1
        if step == "down":
            return None
        return FakeCapture(start=0 if self.calls == 1 else 100, n=5)


def test_stream_that_dies_and_comes_back_reconnects():
    events = []
    src = OpenCvSource("rtsp://camera/line", Backoff(0.01, 0.02), on_event=events.append, opener=FlakyCamera())
    got = []
    for frame in src.frames():
        got.append(int(frame.image[0, 0, 0]))
        if len(got) == 10:
            src.stop()
    assert got == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
    assert src.stats.reconnects == 1 and src.stats.frames == 10
    assert src.stats.downtime_s >= 0.04  # waits of 0.01, 0.02 and 0.02 s between the refused attempts
    kinds = [e["event"] for e in events]
    assert kinds[0] == "down" and kinds.count("reconnected") == 1


def test_a_stopped_source_gives_up_while_down():
    src = OpenCvSource("rtsp://never", Backoff(0.01, 0.01), opener=lambda uri: None)
    threading.Timer(0.1, src.stop).start()
    t0 = time.monotonic()
    assert list(src.frames()) == []
    assert time.monotonic() - t0 < 2.0 and src.stats.downtime_s > 0


def test_video_file_ends_and_keeps_frame_order(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(7):
        writer.write(np.full((24, 32, 3), i * 30, np.uint8))
    writer.release()
    frames = list(OpenCvSource(str(path)).frames())
    assert [f.index for f in frames] == list(range(7))
    assert frames[0].image.shape == (24, 32, 3)


def test_bad_uri_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        OpenCvSource(str(tmp_path / "missing.mp4"))
    with pytest.raises(UsageError, match="not a folder"):
        FolderSource(tmp_path / "nope")


def test_folder_source_takes_each_file_once_and_skips_broken_ones(tmp_path):
    for name in ("b.png", "a.png"):
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "c.png").write_bytes(b"not an image")
    events = []
    frames = list(FolderSource(tmp_path, watch=False, on_event=events.append).frames())
    assert sorted(f.part_id for f in frames) == ["a", "b"]
    assert len(events) == 1 and events[0]["event"] == "error"


def test_free_run_drops_stale_frames_and_counts_them():
    def fast():
        for i in range(200):
            yield i

    stats, stop = SourceStats(), threading.Event()
    got = []
    for item in latest_frames(fast(), stats, stop):
        got.append(item)
        time.sleep(0.002)  # a slow loop
    assert got[-1] == 199 and got == sorted(got)
    assert len(got) + stats.dropped == 200 and stats.dropped > 0


def test_every_frame_keeps_all_and_bad_trigger_is_refused():
    stats, stop = SourceStats(), threading.Event()
    assert list(trigger_frames(iter(range(5)), "every-frame", stats, stop)) == [0, 1, 2, 3, 4]
    with pytest.raises(UsageError, match="trigger"):
        trigger_frames(iter(()), "sometimes", stats, stop)


def test_software_trigger_from_stdin_names_the_part():
    class Endless:
        def frames(self):
            i = 0
            while True:
                yield type("F", (), {"image": None, "index": i, "part_id": None, "t_capture": time.time()})()
                i += 1
                time.sleep(0.001)

    trig = SoftwareTrigger()
    trig.listen_stdin(io.StringIO("part-17\n\npart-18\n"))
    stats, stop = SourceStats(), threading.Event()
    parts = [f.part_id for f in trigger_frames(Endless().frames(), "software", stats, stop, trig)]
    stop.set()
    assert parts == ["part-17", None, "part-18"]

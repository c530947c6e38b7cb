"""Where parts come from: a video, a camera or stream (OpenCV), or a folder that parts arrive in.

A source yields ``Frame`` objects. It never raises for a dropped camera or a broken stream: it
reports a ``status`` event, waits with exponential backoff, reconnects, and counts the downtime,
so the line keeps running. A finite source (a video file, ``every-frame``) ends with ``None``.

Trigger modes:
* ``every-frame``: every frame, in order (files and tests);
* ``free-run``: a grabber thread keeps only the newest frame; frames the loop had no time for
  are dropped and counted (a live camera must not build a backlog);
* ``software``: a capture per trigger (a line on stdin, or ``trigger()`` from an HTTP POST),
  carrying the part id the trigger named.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from promptdet.errors import UsageError
from promptdet.limits import TRIGGER_QUEUE
from promptdet.runtime.imageio import IMAGE_EXTS, ImageReadError, _quiet_opencv, read_image, to_bgr8

TRIGGERS = ("every-frame", "free-run", "software")


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8 [H, W, 3]
    index: int  # position in the source (frame number, or file order)
    t_capture: float  # time.time() when it was read
    part_id: str | None = None  # from a software trigger, or the file name of a folder source
    name: str | None = None  # what the frame came from, for records
    read_ms: float = 0.0  # time to grab and decode it
    error: str | None = None  # set when no image could be had for a part (it becomes an ERROR record)


@dataclass
class SourceStats:
    frames: int = 0
    dropped: int = 0  # free-run: frames replaced by newer ones before the loop took them
    reconnects: int = 0
    downtime_s: float = 0.0
    events: list[dict] = field(default_factory=list)


@dataclass
class Backoff:
    initial_s: float = 0.5
    max_s: float = 10.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.max_s)


def parse_uri(uri: str | int) -> str | int:
    """A camera index ('0') becomes an int; everything else is passed to OpenCV as it is."""
    if isinstance(uri, int):
        return uri
    text = str(uri).strip()
    if not text:
        raise UsageError("source: empty uri (give a video path, camera index, stream URL or folder)")
    return int(text) if text.isdigit() else text


class OpenCvSource:
    """A video file, camera index, RTSP/HTTP URL or GStreamer pipeline, with reconnects.

    A video *file* ends at its last frame; any other source that stops delivering is treated as
    dropped and reopened with backoff until ``stop()``.
    """

    def __init__(self, uri: str | int, backoff: Backoff | None = None, on_event: Callable[[dict], None] | None = None,
                 opener: Callable[[str | int], object] | None = None):
        self.uri = parse_uri(uri)
        self.is_file = isinstance(self.uri, str) and Path(self.uri).is_file()
        if isinstance(self.uri, str) and not self.is_file and "://" not in self.uri and "!" not in self.uri:
            raise UsageError(f"source {self.uri}: no such file (and not a camera index, URL or GStreamer pipeline)")
        self.backoff = backoff or Backoff()
        self.stats = SourceStats()
        self.on_event = on_event or (lambda event: None)
        self._open = opener or self._open_cv
        self._stop = threading.Event()
        self._cap = None

    @staticmethod
    def _open_cv(uri):
        with _quiet_opencv():
            cap = cv2.VideoCapture(uri)
        return cap if cap.isOpened() else None

    def _event(self, kind: str, **info) -> None:
        event = {"event": kind, "source": str(self.uri), "t": time.time(), **info}
        self.stats.events.append(event)
        self.on_event(event)

    def stop(self) -> None:
        self._stop.set()

    def _connect(self) -> bool:
        """Open the source, retrying with backoff; False only when stopped (or a file cannot be opened)."""
        down_since = None
        for delay in self.backoff.delays():
            cap = self._open(self.uri)
            if cap is not None:
                if down_since is not None:
                    self.stats.downtime_s += time.monotonic() - down_since
                    self.stats.reconnects += 1
                    self._event("reconnected", downtime_s=round(time.monotonic() - down_since, 3))
                self._cap = cap
                return True
            if self.is_file:
                self._event("error", reason="cannot open video file")
                return False
            if down_since is None:
                down_since = time.monotonic()
                self._event("down", reason="cannot open")
            if self._stop.wait(delay):
                self.stats.downtime_s += time.monotonic() - down_since
                return False
        return False  # pragma: no cover - delays() never ends

    def frames(self) -> Iterator[Frame]:
        """Every frame in order; reconnects live sources until ``stop()``."""
        index = 0
        while not self._stop.is_set():
            if self._cap is None and not self._connect():
                return
            t0 = time.perf_counter()
            ok, image = self._cap.read()
            if ok and image is not None:
                self.stats.frames += 1
                image = to_bgr8(image)
                yield Frame(image, index, time.time(), name=f"{self.uri}#{index}",
                            read_ms=(time.perf_counter() - t0) * 1e3)
                index += 1
                continue
            self._cap.release()
            self._cap = None
            if self.is_file:
                return  # the end of the video
            self._event("down", reason="stream stopped delivering frames")
        if self._cap is not None:
            self._cap.release()


class FolderSource:
    """Parts arriving as image files in a folder; each file is processed once, oldest first.

    ``watch=False`` processes what is there and ends (tests, batch re-runs); with ``watch=True``
    the folder is polled until ``stop()``. A file is taken once its size has stopped changing, so
    a half-copied image is not read.
    """

    def __init__(self, folder: str | Path, watch: bool = True, poll_s: float = 0.2,
                 on_event: Callable[[dict], None] | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UsageError(f"source {self.folder}: not a folder")
        self.watch, self.poll_s = watch, poll_s
        self.stats = SourceStats()
        self.on_event = on_event or (lambda event: None)
        self._seen: set[str] = set()
        self._sizes: dict[str, int] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _ready(self) -> list[Path]:
        files = [p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.name not in self._seen]
        ready = []
        for p in sorted(files, key=lambda p: (p.stat().st_mtime, p.name)):
            size = p.stat().st_size
            if not self.watch or self._sizes.get(p.name) == size:
                ready.append(p)
            self._sizes[p.name] = size
        return ready

    def frames(self) -> Iterator[Frame]:
        index = 0
        while not self._stop.is_set():
            batch = self._ready()
            for path in batch:
                self._seen.add(path.name)
                t0 = time.perf_counter()
                try:
                    image = read_image(path)
                except ImageReadError as exc:
                    event = {"event": "error", "source": str(self.folder), "t": time.time(), "reason": str(exc)}
                    self.stats.events.append(event)
                    self.on_event(event)
                    continue
                self.stats.frames += 1
                yield Frame(image, index, time.time(), part_id=path.stem, name=str(path),
                            read_ms=(time.perf_counter() - t0) * 1e3)
                index += 1
            if not self.watch and not batch:
                return
            if not batch:
                self._stop.wait(self.poll_s)


def latest_frames(frames: Iterator[Frame], stats: SourceStats, stop: threading.Event) -> Iterator[Frame]:
    """free-run: a thread reads ``frames`` as fast as they come and keeps only the newest one."""
    slot: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def grab() -> None:
        for frame in frames:
            if stop.is_set():
                break
            try:
                slot.put_nowait(frame)
            except queue.Full:
                try:
                    slot.get_nowait()  # the loop is busy: replace the stale frame
                    stats.dropped += 1
                except queue.Empty:
                    pass
                slot.put_nowait(frame)
        slot.put(done)

    threading.Thread(target=grab, name="promptdet-grabber", daemon=True).start()
    while True:
        item = slot.get()
        if item is done:
            return
        yield item


class SoftwareTrigger:
    """Captures on demand: ``trigger(part_id)`` (from stdin or an HTTP POST) asks for one frame.

    The newest frame of the source at trigger time is used; without a trigger, frames are dropped.
    At most ``max_pending`` triggers wait for a frame; past that ``trigger`` refuses (False), so a
    flood can never build a backlog that judges parts long after their trigger. The part's clock
    starts at the trigger (the deadline covers the wait), and a trigger that gets no frame within
    ``frame_timeout_s`` becomes a frame with ``error`` set: an ERROR record, never a silent skip.
    """

    def __init__(self, max_pending: int = TRIGGER_QUEUE, frame_timeout_s: float | None = None):
        self._requests: queue.Queue = queue.Queue(maxsize=max_pending)
        self.max_pending = max_pending
        self.frame_timeout_s = frame_timeout_s
        self.refused = 0
        self._closed = threading.Event()

    def trigger(self, part_id: str | None = None) -> bool:
        """Ask for one capture; False (and counted in ``refused``) when ``max_pending`` are waiting."""
        try:
            self._requests.put_nowait((part_id, time.time()))
            return True
        except queue.Full:
            self.refused += 1
            return False

    def close(self) -> None:
        self._closed.set()

    def listen_stdin(self, stream, close_on_eof: bool = True) -> threading.Thread:
        """Each line of ``stream`` is a trigger; its text (if any) is the part id. EOF ends the line
        only with ``close_on_eof`` (not when the HTTP endpoint also triggers: a service's stdin is
        often /dev/null)."""

        def run() -> None:
            for line in stream:
                while not self.trigger(line.strip() or None) and not self._closed.is_set():
                    time.sleep(0.05)  # stdin is one reader that can wait, unlike an HTTP client
            if close_on_eof:
                self.close()

        thread = threading.Thread(target=run, name="promptdet-stdin-trigger", daemon=True)
        thread.start()
        return thread

    def frames(self, frames: Iterator[Frame], stats: SourceStats, stop: threading.Event) -> Iterator[Frame]:
        newest: list[Frame | None] = [None]
        ended = threading.Event()

        def grab() -> None:
            for frame in frames:
                if stop.is_set():
                    break
                if newest[0] is not None:
                    stats.dropped += 1
                newest[0] = frame
            ended.set()

        threading.Thread(target=grab, name="promptdet-trigger-grabber", daemon=True).start()
        index = 0
        while not stop.is_set():
            try:
                part_id, t_trigger = self._requests.get(timeout=0.05)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            give_up = t_trigger + self.frame_timeout_s if self.frame_timeout_s is not None else float("inf")
            while newest[0] is None and not ended.is_set() and not stop.is_set() and time.time() < give_up:
                time.sleep(0.005)
            frame = newest[0]
            if frame is None:
                if ended.is_set() or stop.is_set():
                    return
                yield Frame(np.zeros((1, 1, 3), np.uint8), index, t_trigger, part_id=part_id, name="trigger",
                            error=f"no frame within {self.frame_timeout_s * 1e3:.0f} ms of the trigger")
                index += 1
                continue
            newest[0] = None
            frame.part_id = part_id if part_id is not None else frame.part_id
            frame.t_capture = min(frame.t_capture, t_trigger)  # the deadline runs from the trigger
            index = frame.index + 1
            yield frame


def trigger_frames(frames: Iterator[Frame], trigger: str, stats: SourceStats, stop: threading.Event,
                   software: SoftwareTrigger | None = None) -> Iterator[Frame]:
    """Apply a trigger mode to a source's frames."""
    if trigger not in TRIGGERS:
        raise UsageError(f"source.trigger must be one of {', '.join(TRIGGERS)}, got {trigger!r}")
    if trigger == "every-frame":
        return frames
    if trigger == "free-run":
        return latest_frames(frames, stats, stop)
    if software is None:
        raise UsageError("source.trigger software needs a trigger (stdin or the HTTP endpoint)")
    return software.frames(frames, stats, stop)

"""Where verdict records go: files, a database, images, HTTP, MQTT (and a PLC: OPC UA, Modbus in plc.py).

Every sink runs on its own worker thread behind a bounded queue, so a slow, broken or hung sink never
stalls the camera loop: ``put`` never blocks. Delivery is retried with exponential back-off; a batch
that still fails is appended to ``<spool_dir>/<name>.jsonl`` and replayed when a sink of the same
name starts again. Delivery is at-least-once: after a crash, or when ``close`` gives up on a hung
write, a record may arrive twice (``part_id`` + ``ts`` identify it), but none is silently lost;
every record that is dropped (no spool, or not JSON) is counted in ``counts['dropped']``.

A record is the dict of ``Verdict.to_record()`` (schema ``promptdet.verdict/1``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import re
import shutil
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np

from promptdet.errors import PromptdetError
from promptdet.limits import IMAGES_MIN_FREE_MB, SPOOL_RETRY_S
from promptdet.line import durable

log = logging.getLogger(__name__)
_RECORD_KEYS = ("part_id", "ts", "verdict")


class Sink:
    """Base class: a bounded queue, a worker thread, retries, and a disk spool.

    Subclasses implement ``prepare(record) -> payload`` (raise to reject a malformed record; it is
    dropped and counted, never retried) and ``write(payloads)``, which delivers a list of payloads
    and raises on failure. ``write`` may delete delivered payloads from the front of the list, so a
    retry after a partial failure resends only the rest. ``_connect``/``_disconnect`` open and close
    the resource on the worker thread (sqlite3 connections must stay on the thread that made them).
    """

    kind = "sink"

    def __init__(self, name: str | None = None, *, spool_dir: str | Path | None = None, queue_size: int = 1024,
                 batch_size: int = 64, retries: int = 3, backoff_s: float = 0.05, backoff_max_s: float = 5.0,
                 spool_retry_s: float = SPOOL_RETRY_S):
        self.name = name or self.kind
        self.spool_retry_s = spool_retry_s
        self.batch_size = batch_size
        self.retries = max(1, retries)
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.spool_path = Path(spool_dir) / f"{self.name}.jsonl" if spool_dir is not None else None
        self.counts = {"put": 0, "written": 0, "spooled": 0, "replayed": 0, "dropped": 0, "errors": 0}
        self.last_error: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._count_lock = threading.Lock()
        self._spool_lock = threading.Lock()
        self._state_lock = threading.Lock()  # guards _inflight and _abandoned against close()
        self._inflight: list = []
        self._abandoned = False
        self._connected = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- producer side -------------------------------------------------------------------------
    def start(self) -> "Sink":
        """Start the worker (idempotent); it replays the spool first. ``put`` starts it too."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"promptdet-sink-{self.name}", daemon=True)
                self._thread.start()
        return self

    def put(self, record: Any) -> bool:
        """Queue one record without blocking. False when it went to the spool (queue full or sink
        closed) or was dropped (no spool)."""
        if self._thread is None:
            self.start()
        if not self._closing.is_set():
            try:
                self._queue.put_nowait(record)
                self._count("put")
                return True
            except queue.Full:
                pass
        self._overflow([record], sync=False)
        return False

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued, then stop. True when everything was handled within ``timeout``;
        otherwise the worker is abandoned and the in-flight batch and the queue go to the spool."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout)
        drained = self._thread is None or not self._thread.is_alive()
        with self._state_lock:
            if not drained:
                self._abandoned = True
                if self._inflight:
                    self._overflow(self._inflight, sync=True)
                    self._inflight = []
            leftovers = []
            while True:  # also catches a put that raced with the worker's last look at the queue
                try:
                    leftovers.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if leftovers:
                self._overflow(leftovers, sync=True)
        return drained

    def stats(self) -> dict:
        """Counters for /metrics: put, written, spooled, replayed, dropped, errors; plus queue depth."""
        with self._count_lock:
            out = dict(self.counts)
        out.update(name=self.name, kind=self.kind, queued=self._queue.qsize(), last_error=self.last_error)
        return out

    def __enter__(self) -> "Sink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- subclass hooks ------------------------------------------------------------------------
    def prepare(self, record: Any) -> Any:
        return record

    def write(self, payloads: list) -> None:
        raise NotImplementedError

    def _connect(self) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    # -- worker side ---------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def _run(self) -> None:
        try:
            self._replay()
            last_replay = time.monotonic()
            while True:
                batch = self._take()
                if batch:
                    self._deliver(batch)
                elif self._closing.is_set():
                    break
                elif self.spool_path is not None and time.monotonic() - last_replay >= self.spool_retry_s:
                    last_replay = time.monotonic()  # the sink may be back: do not wait for the next start
                    if self.spool_path.exists():
                        self._replay()
        finally:
            self._safe_disconnect()

    def _take(self) -> list:
        try:
            batch = [self._queue.get(timeout=0.05)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _deliver(self, records: list) -> None:
        kept, payloads = [], []
        for record in records:
            try:
                payloads.append(self.prepare(record))
                kept.append(record)
            except Exception as exc:  # a malformed record would fail forever: drop it, loudly
                self._count("dropped")
                self.last_error = f"malformed record: {exc}"
                log.warning("sink %s: dropped a malformed record (%s)", self.name, exc)
        records = kept
        if not records:
            return
        with self._state_lock:
            if self._abandoned:
                return
            self._inflight = records
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            before = len(payloads)
            try:
                if not self._connected:
                    self._connect()
                    self._connected = True
                self.write(payloads)
                done, ok = before, True
            except Exception as exc:
                done, ok = before - len(payloads), False
                self._count("errors")
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("sink %s: write failed (attempt %d/%d): %s", self.name, attempt, self.retries,
                            self.last_error)
            with self._state_lock:
                if self._abandoned:  # close() already spooled this batch; counting it again would lie
                    return
                self._count("written", done)
                del records[:done]
                if ok:
                    self._inflight = []
                    return
            self._safe_disconnect()  # reconnect on the next attempt: the connection may be the problem
            if attempt < self.retries and not self._closing.wait(delay):
                delay = min(delay * 2, self.backoff_max_s)
                continue
            break  # out of attempts, or closing: do not keep close() waiting on back-off
        with self._state_lock:
            if not self._abandoned:
                self._overflow(records, sync=True)
                self._inflight = []

    def _safe_disconnect(self) -> None:
        if self._connected:
            self._connected = False
            try:
                self._disconnect()
            except Exception as exc:
                log.warning("sink %s: closing failed: %s", self.name, exc)

    # -- spool ---------------------------------------------------------------------------------
    def _overflow(self, records: list, sync: bool) -> None:
        """Spool ``records`` (or count them dropped when there is no spool or they are not JSON)."""
        if not records:
            return
        if self.spool_path is None:
            self._count("dropped", len(records))
            return
        lines = []
        for record in records:
            try:
                lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
            except (TypeError, ValueError) as exc:
                self._count("dropped")
                self.last_error = f"cannot spool a record: {exc}"
        try:
            with self._spool_lock:
                self.spool_path.parent.mkdir(parents=True, exist_ok=True)
                # all or nothing: a spool write that fails midway leaves no half line to replay
                # (the producer path skips fsync: it must stay fast while a sink hangs)
                durable.append(self.spool_path, "".join(lines).encode("utf-8"), sync=sync)
            self._count("spooled", len(lines))
        except OSError as exc:
            self._count("dropped", len(lines))
            self.last_error = f"spool write failed: {exc}"
            log.error("sink %s: could not spool %d record(s): %s", self.name, len(lines), exc)

    def _replay(self) -> None:
        """Deliver what an earlier run spooled. The spool is moved aside first, so records that fail
        again are spooled afresh instead of being read back in a loop."""
        if self.spool_path is None:
            return
        replay = self.spool_path.with_name(self.spool_path.stem + ".replay.jsonl")
        with self._spool_lock:
            if self.spool_path.exists():
                if replay.exists():  # a replay interrupted by a crash: keep both
                    with open(replay, "a", encoding="utf-8") as out:
                        out.write(self.spool_path.read_text(encoding="utf-8"))
                    self.spool_path.unlink()
                else:
                    os.replace(self.spool_path, replay)
        if not replay.exists():
            return
        batch: list = []
        with open(replay, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    batch.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a crash
                    self._count("dropped")
                    continue
                self._count("replayed")
                if len(batch) >= self.batch_size:
                    self._deliver(batch)
                    batch = []
            if batch:
                self._deliver(batch)
        if not self._abandoned:
            replay.unlink()


class JsonlSink(Sink):
    """One JSON object a line, append-only. fsync 'record' (each line durable) or 'batch'.
    Past ``rotate_mb`` the file is renamed ``<stem>.<n>.jsonl`` (n = 1, 2, ...; higher is newer)."""

    kind = "jsonl"

    def __init__(self, path: str | Path, fsync: str = "batch", rotate_mb: float = 100.0, **kwargs):
        if fsync not in ("record", "batch"):
            raise PromptdetError(f"jsonl sink: fsync must be 'record' or 'batch', got {fsync!r}")
        super().__init__(**kwargs)
        self.path = Path(path)
        self.fsync = fsync
        self.rotate_bytes = int(rotate_mb * 1024 * 1024) if rotate_mb else 0
        self._fd: int | None = None

    def prepare(self, record: dict) -> bytes:
        return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut = durable.repair_tail(self.path)  # a crash or a full disk may have left half a line
        if cut:
            self._count("repaired")
            log.warning("sink %s: %s ended in a torn line; cut %d bytes off (kept in %s.torn-*)", self.name,
                        self.path, cut, self.path.name)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _disconnect(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, payloads: list) -> None:
        # Unbuffered writes, so a failure can be cut back with ftruncate (which needs no free space).
        fd = self._fd
        start, pending = os.fstat(fd).st_size, 0  # lines written since the last fsync, from ``start``
        try:
            for line in list(payloads):
                size = os.fstat(fd).st_size
                if self.rotate_bytes and size > 0 and size + len(line) > self.rotate_bytes:
                    os.fsync(fd)
                    del payloads[:pending]
                    fd = self._rotate()
                    start, pending = 0, 0
                durable.write_all(fd, line)
                pending += 1
                if self.fsync == "record":
                    os.fsync(fd)
                    del payloads[:pending]
                    start, pending = os.fstat(fd).st_size, 0
            os.fsync(fd)
        except BaseException:
            if not durable.rollback(fd, start):  # leave no half line; if even that fails, reopen and repair
                self._safe_disconnect()
            raise

    def _rotate(self) -> int:
        os.close(self._fd)
        self._fd = None
        taken = [int(m.group(1)) for p in self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}")
                 if (m := re.fullmatch(rf"{re.escape(self.path.stem)}\.(\d+){re.escape(self.path.suffix)}", p.name))]
        os.replace(self.path, self.path.with_name(f"{self.path.stem}.{max(taken, default=0) + 1}{self.path.suffix}"))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd


class SqliteSink(Sink):
    """Table ``results`` (id, part_id, ts, verdict, reasons JSON, checks JSON, latency_ms) in WAL mode,
    so ``promptdet inspect report`` can read while the line writes. One transaction per batch."""

    kind = "sqlite"
    SCHEMA = ("CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY, part_id TEXT NOT NULL, ts REAL NOT NULL, "
              "verdict TEXT NOT NULL, reasons TEXT NOT NULL, checks TEXT NOT NULL, latency_ms REAL, run_id TEXT)")

    def __init__(self, path: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def prepare(self, record: dict) -> tuple:
        missing = [k for k in _RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        latency = record.get("latency_ms")
        return (str(record["part_id"]), float(record["ts"]), str(record["verdict"]),
                json.dumps(record.get("reasons", [])), json.dumps(record.get("checks", {})),
                None if latency is None else float(latency), record.get("run_id"))

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across app crashes, fast
        db.execute(self.SCHEMA)
        if "run_id" not in {row[1] for row in db.execute("PRAGMA table_info(results)")}:  # a file of an older line
            db.execute("ALTER TABLE results ADD COLUMN run_id TEXT")
        db.execute("CREATE INDEX IF NOT EXISTS results_ts ON results (ts)")
        db.commit()
        self._db = db

    def _disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def write(self, payloads: list) -> None:
        with self._db:  # all or nothing, so a retry never duplicates rows
            self._db.executemany("INSERT INTO results (part_id, ts, verdict, reasons, checks, latency_ms, run_id) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", payloads)


def draw_verdict(image_bgr: np.ndarray, record: dict) -> np.ndarray:
    """The frame with every check's boxes (one colour per check) and a 'FAIL: reasons' banner."""
    import cv2

    from promptdet.runtime.draw import draw_detections

    names = list(record.get("checks", {}))
    boxes, scores, ids = [], [], []
    for i, name in enumerate(names):
        check = record["checks"][name]
        boxes += check.get("boxes", [])
        scores += check.get("scores", [])
        ids += [i] * len(check.get("scores", []))
    out = draw_detections(image_bgr, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                          np.asarray(ids, np.int64), names)
    banner = f"{record.get('verdict', '?')} {record.get('part_id', '')}: {'; '.join(record.get('reasons', []))}"
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 200), -1)
    cv2.putText(out, banner.encode("ascii", "replace").decode()[:120], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


class ImageSink(Sink):
    """Annotated images of FAIL parts only, named ``<ts ms>_<part_id>.jpg``; the oldest are deleted
    past ``max_files``. Images are evidence, not the record of truth, so they are never spooled:
    when the queue is full they are dropped and counted. ``draw(image_bgr, record) -> image_bgr``.
    Below ``min_free_mb`` of free space on their disk, images are skipped (counted in 'skipped'), so
    they never take the space the audit records need."""

    kind = "images"

    def __init__(self, dir: str | Path, max_files: int = 1000,
                 draw: Callable[[np.ndarray, dict], np.ndarray] | None = None, ext: str = ".jpg",
                 min_free_mb: float = IMAGES_MIN_FREE_MB, **kwargs):
        kwargs["spool_dir"] = None
        kwargs.setdefault("queue_size", 16)  # each entry holds a frame: keep memory bounded
        super().__init__(**kwargs)
        self.dir, self.max_files, self.ext = Path(dir), max_files, ext
        self.min_free_bytes = int(min_free_mb * 1024 * 1024)
        self.draw = draw or draw_verdict
        self._files: collections.deque[Path] = collections.deque()

    def put(self, record: dict, image_bgr: np.ndarray | None = None) -> bool:
        """Queue ``image_bgr`` [H, W, 3] uint8 of a FAIL part; anything else is ignored (False)."""
        if image_bgr is None or record.get("verdict") != "FAIL":
            return False
        return super().put((record, image_bgr))

    def prepare(self, item: tuple) -> tuple:
        record, image = item
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(record.get("part_id", "")))[:64]
        return self.dir / f"{int(float(record['ts']) * 1000):013d}_{safe}{self.ext}", record, image

    def _connect(self) -> None:
        from promptdet.runtime.draw import write_image  # noqa: F401 - fail early if OpenCV is missing

        self.dir.mkdir(parents=True, exist_ok=True)
        self._files = collections.deque(sorted(self.dir.glob(f"*{self.ext}")))

    def write(self, payloads: list) -> None:
        from promptdet.runtime.draw import write_image

        while payloads:
            path, record, image = payloads[0]
            if shutil.disk_usage(self.dir).free < self.min_free_bytes:
                if not self.counts.get("skipped"):
                    log.warning("sink %s: under %.0f MB free on %s; FAIL images are skipped while it lasts",
                                self.name, self.min_free_bytes / 2**20, self.dir)
                self._count("skipped")
                del payloads[0]
                continue
            write_image(path, self.draw(image, record))
            self._files.append(path)
            while len(self._files) > self.max_files:
                self._files.popleft().unlink(missing_ok=True)
            del payloads[0]


class WebhookSink(Sink):
    """POSTs each record as JSON to ``url``; any HTTP status >= 400 or a timeout is a failure."""

    kind = "webhook"

    def __init__(self, url: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None, **kwargs):
        if not url.startswith(("http://", "https://")):  # urllib would also open file:// URLs
            raise PromptdetError(f"webhook sink: url must start with http:// or https://, got {url!r}")
        super().__init__(**kwargs)
        self.url, self.timeout_s = url, timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def prepare(self, record: dict) -> bytes:
        return json.dumps(record, separators=(",", ":")).encode("utf-8")

    def write(self, payloads: list) -> None:
        while payloads:
            request = urllib.request.Request(self.url, data=payloads[0], headers=self.headers, method="POST")
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - scheme checked
                response.read()
            del payloads[0]


class MqttSink(Sink):
    """Publishes each record as JSON to ``topic`` (paho-mqtt 2.x, an optional dependency)."""

    kind = "mqtt"

    def __init__(self, host: str, port: int = 1883, topic: str = "promptdet/verdicts", qos: int = 1,
                 timeout_s: float = 5.0, **kwargs):
        _require("paho.mqtt.client", "MQTT sink", "paho-mqtt>=2")
        super().__init__(**kwargs)
        self.host, self.port, self.topic, self.qos, self.timeout_s = host, port, topic, qos, timeout_s
        self._client = None

    def prepare(self, record: dict) -> bytes:
        return json.dumps(record, separators=(",", ":")).encode("utf-8")

    def _connect(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"promptdet-{self.name}-{os.getpid()}")
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        self._client = client

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None

    def write(self, payloads: list) -> None:
        while payloads:
            info = self._client.publish(self.topic, payloads[0], qos=self.qos)
            info.wait_for_publish(timeout=self.timeout_s)
            if info.rc != 0 or not info.is_published():
                raise OSError(f"MQTT publish to {self.host}:{self.port}/{self.topic} failed (rc={info.rc})")
            del payloads[0]


def _require(module: str, what: str, requirement: str) -> None:
    """Import an optional dependency now, so a missing one fails at start-up with the pip hint."""
    try:
        __import__(module)
    except ImportError:
        raise PromptdetError(f"the {what} needs {requirement.split('>')[0]}: pip install '{requirement}'") from None


def build_sinks(spec, **kwargs) -> list[Sink]:
    """The sinks a recipe's ``sinks`` section (``recipe.SinksSpec``) names, sharing its spool dir."""
    kwargs.setdefault("spool_dir", spec.spool_dir)
    sinks: list[Sink] = []
    if spec.jsonl:
        sinks.append(JsonlSink(spec.jsonl.path, spec.jsonl.fsync, spec.jsonl.rotate_mb, **kwargs))
    if spec.sqlite:
        sinks.append(SqliteSink(spec.sqlite.path, **kwargs))
    if spec.images:
        sinks.append(ImageSink(spec.images.dir, spec.images.max_files, min_free_mb=spec.images.min_free_mb, **kwargs))
    if spec.webhook:
        sinks.append(WebhookSink(spec.webhook.url, spec.webhook.timeout_s, **kwargs))
    if spec.mqtt:
        sinks.append(MqttSink(spec.mqtt.host, spec.mqtt.port, spec.mqtt.topic, spec.mqtt.qos, **kwargs))
    if spec.opcua or spec.modbus:
        from promptdet.line.plc import build_plc_sinks  # plc.py builds on Sink, so it is imported here

        sinks += build_plc_sinks(spec, **kwargs)
    return sinks

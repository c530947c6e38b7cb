"""Where verdict records go: files, a database, images, HTTP, MQTT (and a PLC: OPC UA, Modbus in plc.py).

Every sink runs on its own worker thread behind a bounded queue, so a slow, broken or hung sink never
stalls the camera loop: ``put`` never blocks. Delivery is retried with exponential back-off; a batch
that still fails is appended to ``<spool_dir>/<name>.jsonl`` and replayed when a sink of the same
name starts again, and every 5 s while it runs (the base class, with its spool, is in sink_base.py). Delivery is at-least-once: after a crash, or when ``close`` gives up on a hung
write, a record may arrive twice (``part_id`` + ``ts`` identify it), but none is silently lost;
every record that is dropped (no spool, or not JSON) is counted in ``counts['dropped']``.

A record is the dict of ``Verdict.to_record()`` (schema ``promptdet.verdict/1``).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import sqlite3
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

from promptdet.errors import PromptdetError
from promptdet.limits import IMAGES_MIN_FREE_MB
from promptdet.line import durable
from promptdet.line.sink_base import Sink

log = logging.getLogger(__name__)
_RECORD_KEYS = ("part_id", "ts", "verdict")


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
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
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
        from promptdet.line.plc import (
            build_plc_sinks,  # plc.py builds on Sink, so it is imported here
        )

        sinks += build_plc_sinks(spec, **kwargs)
    return sinks

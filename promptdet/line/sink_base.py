"""The base of every sink: a bounded queue, a worker thread, retries with back-off, and a disk spool.

See ``promptdet.line.sinks`` for the sinks themselves and the delivery guarantee.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

from promptdet.limits import SPOOL_RETRY_S
from promptdet.line import durable

log = logging.getLogger("promptdet.line.sinks")  # one logger for every sink's lines


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

"""Appending lines to a file so that a failed or interrupted write never leaves half a line.

Buffered file objects cannot promise this: ``truncate`` on a Python buffered writer flushes the
buffer first, and when the disk is full that flush fails too, so the cut never happens and the
next record is glued onto the torn one. Here every write goes straight to the file descriptor and
a failure is rolled back with ``os.ftruncate``, which needs no free space. A crash between the
two can still leave a torn tail; ``repair_tail`` cuts it off at the next start.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short near a size limit)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than returning 0 for a regular file
            raise OSError("write returned no progress")
        view = view[n:]


def rollback(fd: int, size: int) -> bool:
    """Cut the file back to ``size`` bytes; False when even that failed (the caller must repair later)."""
    try:
        os.ftruncate(fd, size)
        return True
    except OSError:
        return False


def append(path: str | Path, data: bytes, sync: bool = True) -> None:
    """Append ``data`` (whole lines) to ``path`` all or nothing: on failure the file is cut back."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            write_all(fd, data)
            if sync:
                os.fsync(fd)
        except BaseException:
            rollback(fd, size)
            raise
    finally:
        os.close(fd)


def repair_tail(path: str | Path) -> int:
    """Cut a torn last line (no final newline) off ``path``; the cut bytes go to a side file
    ``<name>.torn-<unix time>`` next to it. Returns how many bytes were cut (0: the file was whole)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        keep, block = 0, 65536  # find the last newline, reading backwards
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.seek(keep)
        torn = f.read()
        side = path.with_name(f"{path.name}.torn-{int(time.time())}")
        side.write_bytes(torn)
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep

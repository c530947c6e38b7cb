"""A GenICam camera (GigE Vision, USB3 Vision, ...) through a GenTL producer, with harvesters.

The source is ``genicam://<producer .cti path>[?serial=...&model=...&vendor=...&name=...&id=...]``
(``genicam://`` alone takes every ``.cti`` in ``GENICAM_GENTL64_PATH``); without a query the first
device found is used. It behaves like ``OpenCvSource``: a camera that cannot be opened, or that stops
delivering, is reported, reopened with exponential backoff, and its downtime counted. A camera that
simply has no new frame (waiting for a hardware trigger) is not a failure. harvesters is an optional
dependency (``pip install 'harvesters>=1.4'``), imported only when such a source is opened.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl

import cv2
import numpy as np

from promptdet.errors import PromptdetError, UsageError
from promptdet.line.sources import Backoff, Frame, OpenCvSource, SourceStats

log = logging.getLogger(__name__)
SCHEME = "genicam://"
# uri query key -> harvesters' DeviceInfo property that Harvester.create({...}) matches on
SEARCH_KEYS = {"serial": "serial_number", "model": "model", "vendor": "vendor", "name": "user_defined_name",
               "id": "id_"}
_BAYER = {"BayerRG": cv2.COLOR_BayerRGGB2BGR, "BayerGR": cv2.COLOR_BayerGRBG2BGR,
          "BayerGB": cv2.COLOR_BayerGBRG2BGR, "BayerBG": cv2.COLOR_BayerBGGR2BGR}
INSTALL_HINT = "the GenICam source needs harvesters: pip install 'harvesters>=1.4'"


def parse_genicam_uri(uri: str) -> tuple[str, dict[str, str]]:
    """``genicam://<cti>?serial=X`` -> (cti path, harvesters search key). Raises ValueError naming the problem."""
    text = str(uri).strip()
    if text.startswith(SCHEME):
        text = text[len(SCHEME):]
    path, _, query = text.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise ValueError(f"cannot read the query {query!r}; write it as ?serial=ABC123&model=...") from None
    search: dict[str, str] = {}
    for key, value in pairs:
        if key not in SEARCH_KEYS:
            raise ValueError(f"unknown genicam key {key!r} (valid: {', '.join(SEARCH_KEYS)})")
        if not value:
            raise ValueError(f"genicam key {key!r} needs a value")
        search[SEARCH_KEYS[key]] = value
    if path and not path.lower().endswith(".cti"):
        raise ValueError(f"{path!r} is not a GenTL producer; give its .cti file, e.g. "
                         f"genicam:///opt/vendor/lib/producer.cti?serial=ABC123")
    return path, search


def producer_files(path: str) -> list[str]:
    """The .cti files to load: ``path`` itself, or every one in GENICAM_GENTL64_PATH when it is empty."""
    if path:
        if not Path(path).is_file():
            raise UsageError(f"source genicam: no GenTL producer at {path} (install the camera vendor's SDK, "
                             f"or give the path of its .cti file)")
        return [path]
    dirs = [d for d in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep) if d]
    found = sorted(str(p) for d in dirs if Path(d).is_dir() for p in Path(d).glob("*.cti"))
    if not found:
        raise UsageError("source genicam: no GenTL producer; give its path (genicam:///path/to/producer.cti) "
                         "or set GENICAM_GENTL64_PATH")
    return found


def import_harvester():
    """harvesters.core.Harvester, or a PromptdetError with the pip hint when it is not installed."""
    try:
        from harvesters.core import Harvester
    except ImportError:
        raise PromptdetError(INSTALL_HINT) from None
    return Harvester


def to_bgr(data: np.ndarray, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A GenICam image component (flat ``data`` as harvesters gives it) as BGR uint8 [H, W, 3].

    Mono, RGB/BGR (with or without alpha) and Bayer formats of 8 to 16 bits; deeper pixels keep
    their top 8 bits. Anything else raises UsageError naming the formats to set the camera to.
    """
    fmt = str(pixel_format)
    base = re.sub(r"(\d+)(p|packed)?$", "", fmt, flags=re.IGNORECASE)
    bits_match = re.search(r"(\d+)(p|packed)?$", fmt, flags=re.IGNORECASE)
    bits = int(bits_match.group(1)) if bits_match else 8
    supported = base in ("Mono", "RGB", "BGR", "RGBa", "BGRa") or base in _BAYER
    if not supported or not 8 <= bits <= 16:
        raise UsageError(f"source genicam: pixel format {fmt} is not supported; set the camera's PixelFormat to "
                         f"Mono8, BGR8, RGB8 or a Bayer*8 format")
    pixels = int(width) * int(height)
    data = np.asarray(data)
    if pixels <= 0 or data.size % pixels:
        raise ValueError(f"a {fmt} buffer of {data.size} values is not {width}x{height} pixels")
    channels = data.size // pixels
    image = data.reshape(int(height), int(width), channels) if channels > 1 else data.reshape(int(height), int(width))
    if base in _BAYER:
        image = cv2.cvtColor(np.ascontiguousarray(image), _BAYER[base])
    elif base == "Mono":
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    elif base in ("RGB", "RGBa"):
        image = image[..., 2::-1]
    else:
        image = image[..., :3]
    if image.dtype != np.uint8:
        image = (image.astype(np.uint32) >> (bits - 8)).clip(0, 255).astype(np.uint8)
    # BGR8 comes through as a view of the producer's buffer, which is reused once it is queued again
    return image.copy() if np.may_share_memory(image, data) else image


class GenICamSource(OpenCvSource):
    """A GenICam camera; reconnects with backoff like ``OpenCvSource`` (whose ``_connect`` it reuses).

    ``fetch_timeout_s`` bounds one wait for a buffer, so ``stop()`` is honoured that quickly; a wait
    that ends without a frame is not a failure.
    """

    def __init__(self, uri: str, backoff: Backoff | None = None, on_event: Callable[[dict], None] | None = None,
                 fetch_timeout_s: float = 0.5):
        try:
            cti, self.search_key = parse_genicam_uri(uri)
        except ValueError as exc:
            raise UsageError(f"source {uri}: {exc}") from None
        self.Harvester = import_harvester()
        self.cti_files = producer_files(cti)
        self.uri = str(uri) if str(uri).startswith(SCHEME) else SCHEME + str(uri)
        self.is_file = False
        self.backoff = backoff or Backoff()
        self.stats = SourceStats()
        self.on_event = on_event or (lambda event: None)
        self.fetch_timeout_s = fetch_timeout_s
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._cap = None  # the started ImageAcquirer
        self._harvester = None
        self._open = self._open_acquirer

    def _open_acquirer(self, _uri):
        """A started image acquirer, or None (reason in ``last_error``) so ``_connect`` backs off and retries."""
        try:
            if self._harvester is None:
                self._harvester = self.Harvester()
                for path in self.cti_files:
                    self._harvester.add_file(path)
            self._harvester.update()  # a camera plugged in since the last try only shows up after this
            acquirer = self._harvester.create(self.search_key or None)
        except Exception as exc:  # noqa: BLE001 - no device (yet), producer trouble: retry with backoff
            self._note_failure("cannot open the camera", exc)
            return None
        try:
            acquirer.start()
        except Exception as exc:  # noqa: BLE001 - e.g. the device is owned by another program
            self._note_failure("cannot start acquisition", exc)
            _quietly(acquirer.destroy)
            return None
        return acquirer

    def _note_failure(self, what: str, exc: Exception) -> None:
        reason = f"{what}: {type(exc).__name__}: {exc}"
        if reason != self.last_error:  # once per new reason, not once per back-off step
            log.warning("source %s: %s", self.uri, reason)
        self.last_error = reason

    def _event(self, kind: str, **info) -> None:
        if kind == "down" and info.get("reason") == "cannot open" and self.last_error:
            info["reason"] = self.last_error  # say why: no such camera, producer error, camera busy
        super()._event(kind, **info)

    def _release(self) -> None:
        acquirer, self._cap = self._cap, None
        if acquirer is not None:
            _quietly(acquirer.stop)
            _quietly(acquirer.destroy)

    def frames(self) -> Iterator[Frame]:
        """Every frame the camera delivers, until ``stop()``; a lost camera is reopened with backoff."""
        index = 0
        try:
            while not self._stop.is_set():
                if self._cap is None and not self._connect():
                    return
                t0 = time.perf_counter()
                try:
                    image = self._fetch()
                except UsageError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the camera went away mid-stream
                    self._note_failure("acquisition failed", exc)
                    self._release()
                    self._event("down", reason=f"stopped delivering frames ({type(exc).__name__}: {exc})")
                    continue
                if image is None:
                    continue  # no frame within fetch_timeout_s: waiting for a trigger is normal
                self.stats.frames += 1
                yield Frame(image, index, time.time(), name=f"{self.uri}#{index}",
                            read_ms=(time.perf_counter() - t0) * 1e3)
                index += 1
        finally:
            self._release()
            if self._harvester is not None:
                _quietly(self._harvester.reset)
                self._harvester = None

    def _fetch(self) -> np.ndarray | None:
        buffer = self._cap.try_fetch(timeout=self.fetch_timeout_s)
        if buffer is None:
            return None
        with buffer:  # gives the buffer back to the producer: copy the pixels out first
            component = buffer.payload.components[0]
            return to_bgr(component.data, component.width, component.height, component.data_format)


def _quietly(call) -> None:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - cleanup of a camera that is already gone
        log.debug("genicam cleanup: %s", exc)

"""Reading images robustly, with numpy, OpenCV and Pillow only (no torch): EXIF orientation,
grey, alpha, 16-bit, size limits. Shared by ``promptdet detect`` and the ONNX runtime.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptdet.errors import PromptdetError, UsageError
from promptdet.limits import MAX_PIXELS, MAX_SIDE
from promptdet.runtime.preprocess import PAD_VALUE

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
_ORIENT = {  # EXIF orientation tag -> the transform that ImageOps.exif_transpose applies
    2: lambda a: cv2.flip(a, 1), 3: lambda a: cv2.rotate(a, cv2.ROTATE_180), 4: lambda a: cv2.flip(a, 0),
    5: lambda a: cv2.transpose(a), 6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1), 8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE)}


class ImageReadError(PromptdetError):
    """An image that cannot be read: missing, damaged, not an image, or too large."""


# ---------------------------------------------------------------- reading
def read_image(path: str | Path) -> np.ndarray:
    """An image file as BGR uint8 [H, W, 3], upright per its EXIF orientation.

    Grey becomes 3 channels, alpha is laid over grey (114), 16-bit is scaled to 8-bit (/257).
    Images over MAX_SIDE px a side or MAX_PIXELS pixels are refused before their pixels are decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {path}: file not found") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise ImageReadError(f"cannot read image {path}: the file is empty")
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> BGR uint8 [H, W, 3] (see ``read_image``)."""
    from PIL import Image

    # Pillow reads the header only (size, EXIF); OpenCV decodes, as in training, so pixels match `val`.
    pil, orientation = None, 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil = Image.open(io.BytesIO(data))
        _check_size(pil.size, name)
        orientation = int(pil.getexif().get(0x0112, 1) or 1)
    except Image.DecompressionBombError:
        raise ImageReadError(f"cannot read image {name}: too large (over {MAX_PIXELS / 1e6:.0f} MP, the limit); "
                             "downscale it first") from None
    except ImageReadError:
        raise
    except Exception:  # noqa: BLE001 - unknown to Pillow, or a damaged header
        # OpenCV would decode it with no size known beforehand (a 1 KB Radiance HDR can declare 184 MP):
        # refuse, rather than find out it is too large after the memory is spent.
        if data[:10] == b"#?RADIANCE" or data[:6] == b"#?RGBE":  # OpenCV reads these, Pillow cannot size them
            raise ImageReadError(f"cannot read image {name}: a Radiance HDR, whose size cannot be read before "
                                 "decoding; convert it to PNG or JPEG") from None
        raise ImageReadError(f"cannot read image {name}: not an image, or a damaged file") from None
    with _quiet_opencv():
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    rgb = False
    if array is None and pil is not None:
        try:
            mode = pil.mode
            pil = pil.convert("RGBA") if mode in ("P", "PA", "LA", "RGBA") else pil
            pil = pil if pil.mode in ("L", "RGB", "RGBA") or pil.mode.startswith("I") else pil.convert("RGB")
            array, rgb = np.asarray(pil), True
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged data
            raise ImageReadError(f"cannot read image {name}: damaged or unsupported ({exc})") from None
    if array is None:
        raise ImageReadError(f"cannot read image {name}: not an image, or a damaged file")
    _check_size((array.shape[1], array.shape[0]), name)
    image = to_bgr8(array, rgb=rgb)
    return _ORIENT[orientation](image) if orientation in _ORIENT else image


@contextlib.contextmanager
def _quiet_opencv():
    # OpenCV logs WARN/ERROR lines of its own for a damaged file or a missing camera; we say it in one line.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _check_size(size_wh: tuple[int, int], name: str) -> None:
    w, h = size_wh
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise ImageReadError(f"cannot read image {name}: too large ({w}x{h}; the limit is {MAX_SIDE} px a side "
                             f"and {MAX_PIXELS / 1e6:.0f} MP); downscale it first")


def to_bgr8(array: np.ndarray, rgb: bool = False) -> np.ndarray:
    """An array [H, W], [H, W, 1|2|3|4] (uint8, uint16, other ints, bool, or float in 0-1) -> BGR uint8
    [H, W, 3]. ``rgb``: the colour channels are in RGB order (Pillow), not BGR (OpenCV)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.size == 0 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ImageReadError(f"expected an image array HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32))
        a = np.clip(a * 255 if a.max() <= 1.0 else a, 0, 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.dtype == np.uint16 or a.max() > 255 or a.min() < 0:  # 16-bit range: 65535 -> 255
            a = ((np.clip(a.astype(np.int64), 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        else:
            a = a.astype(np.uint8)
    if a.ndim == 3 and a.shape[2] in (2, 4):  # lay the colour over a neutral grey, as the letterbox pads
        alpha = a[..., -1:].astype(np.float32) / 255
        a = (a[..., :-1].astype(np.float32) * alpha + PAD_VALUE * (1 - alpha)).round().astype(np.uint8)
    if a.ndim == 2 or a.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(a.reshape(a.shape[:2])), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(a[..., ::-1] if rgb else a)


def load_input(source: Any) -> tuple[np.ndarray, str | None]:
    """A path, a numpy array (BGR, see ``to_bgr8``) or a PIL image -> (BGR uint8, path or None)."""
    if isinstance(source, (str, Path)):
        if Path(source).is_dir():
            raise UsageError(f"{source} is a folder; pass a list of images, "
                             f"e.g. sorted(Path('{source}').glob('*.jpg'))")
        return read_image(source), str(source)
    if isinstance(source, np.ndarray):
        return to_bgr8(source), None
    if type(source).__module__.startswith("PIL."):
        from PIL import ImageOps

        image = ImageOps.exif_transpose(source)
        if image.mode not in ("L", "RGB", "RGBA") and not image.mode.startswith("I"):
            image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
        return to_bgr8(np.asarray(image), rgb=True), getattr(source, "filename", None) or None
    raise UsageError(f"cannot detect in a {type(source).__name__}; pass a path, a numpy BGR array or a PIL image")

"""Images that are not scenes of the line: procedural textures the detector must answer with nothing.

A detector trained only on conveyor scenes learns that every image holds parts. Mixing in
pictures of something else, with every instruction's answer empty, teaches it that an answer
depends on the image. These are made here, offline and endlessly varied: layered value noise
(clouds, stone, fabric), stripes and checks at any angle and scale, gradients, and scattered
lines and polygons, blended and blurred. Closed rings are left out on purpose: a washer or a nut
*is* a ring, and a distractor must never contain something the line calls a part.
"""

from __future__ import annotations

import cv2
import numpy as np


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _value_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Octaves of smoothly upsampled random colour grids: clouds, stone, foliage, fabric."""
    out = np.zeros((size, size, 3), np.float32)
    weight = 1.0
    total = 0.0
    cells = int(rng.integers(2, 6))
    for _ in range(int(rng.integers(2, 6))):
        grid = rng.random((cells, cells, 3)).astype(np.float32)
        if rng.random() < 0.5:  # mostly one hue, as most surfaces are
            grid = np.repeat(grid[..., :1], 3, axis=2) * (0.4 + 0.6 * rng.random(3).astype(np.float32))
        out += weight * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += weight
        weight *= float(rng.uniform(0.35, 0.7))
        cells = min(cells * 2, size // 2)
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6) * 255.0


def _periodic(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes, checks or waves between two colours, at a random angle and period."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, size / 3)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
    kind = int(rng.integers(3))
    if kind == 0:
        t = np.sin(u)
    elif kind == 1:
        v = (-xx * np.sin(angle) + yy * np.cos(angle)) * 2 * np.pi / period
        t = np.sign(np.sin(u) * np.sin(v))
    else:
        t = np.sin(u + 2.0 * np.sin(yy * 2 * np.pi / rng.uniform(20, size)))
    t = ((t + 1) / 2)[..., None]
    return _colour(rng) * t + _colour(rng) * (1 - t)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(xx * np.cos(angle) + yy * np.sin(angle), 0, 1)[..., None]
    return _colour(rng) * t + _colour(rng) * (1 - t)


def _strokes(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Scattered open polygons and lines: edges and corners, but no closed ring."""
    size = canvas.shape[0]
    out = canvas.copy()
    for _ in range(int(rng.integers(3, 25))):
        colour = tuple(float(c) for c in _colour(rng))
        pts = rng.integers(-size // 4, size + size // 4, (int(rng.integers(3, 7)), 1, 2)).astype(np.int32)
        if rng.random() < 0.5:
            cv2.fillPoly(out, [pts], colour, lineType=cv2.LINE_AA)
        else:
            cv2.polylines(out, [pts], False, colour, int(rng.integers(1, 12)), lineType=cv2.LINE_AA)
    return out


def distractor_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size`` x ``size`` BGR uint8 picture with no part of the line in it."""
    if size < 8:
        raise ValueError(f"a distractor needs at least 8 pixels a side, got {size}")
    makers = (_value_noise, _periodic, _gradient)
    base = makers[int(rng.integers(len(makers)))](rng, size)
    if rng.random() < 0.5:  # two textures blended: wood over cloth, clouds over a gradient
        alpha = float(rng.uniform(0.2, 0.6))
        base = (1 - alpha) * base + alpha * makers[int(rng.integers(len(makers)))](rng, size)
    if rng.random() < 0.5:
        base = _strokes(rng, base)
    if rng.random() < 0.4:
        k = int(rng.integers(1, 6)) * 2 + 1
        base = cv2.GaussianBlur(base, (k, k), 0)
    if rng.random() < 0.5:  # sensor grain
        base = base + rng.normal(0, float(rng.uniform(2, 12)), base.shape).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)

"""Synthetic conveyor-belt scenes seen from above, with exact per-part boxes.

Design:

* Each part is drawn in a small local patch, in canonical pose (long axis along x), from signed
  distances and a pseudo height field (``parts.py``). Drawing a 100x40 patch instead of evaluating
  a full 640x480 frame per part is what keeps a 12-part scene at a few tens of milliseconds; the
  height field gives every category the same consistent 3D shading from one scene light.
* Defects are painted into that canonical patch and multiplied by the part's surface mask, so they
  can never leak onto the belt or a neighbour.
* The patch (premultiplied colour + alpha) is rotated once with ``cv2.warpAffine`` and
  alpha-composited; its soft drop shadow is the blurred, shifted alpha.
* An integer label map (-1 = belt) records which part owns each pixel, later parts overwriting
  earlier ones. Placement checks it before committing (so an occluded part keeps >= ~55% of its
  pixels), and the boxes come from it: ``bbox`` is the tight box of a part's *visible* pixels,
  which is what a detector can be asked to find. Anything computed from the drawn geometry instead
  would be wrong for occluded parts.
* Only the ``rng`` passed in is used, so a seed reproduces the image and the objects exactly.

Angles are in degrees, counter-clockwise on screen, of the part's long axis (0 = pointing right).
Boxes are ``[x1, y1, x2, y2]`` integer pixels with x2/y2 exclusive (x2 - x1 = width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from promptdet.data.synth import parts as P
from promptdet.data.vocab import CATEGORIES, COLORS_BY_CATEGORY, DEFECTS, DEFECTS_BY_CATEGORY

# Typical size in pixels at 640x480 (bottle/screw/bolt length, can/washer/gear diameter,
# box long side, nut across corners). Ranges are widened a little so that "largest/smallest of a
# kind" is a real difference.
SIZES = {"bottle": (100, 150), "can": (55, 80), "box": (60, 110), "screw": (45, 70),
         "nut": (28, 42), "washer": (30, 48), "gear": (50, 85), "bolt": (60, 90)}
# How far each kind stands off the belt, scaling its shadow offset.
_HEIGHT = {"bottle": 1.0, "can": 1.4, "box": 1.2, "screw": 0.45, "nut": 0.6, "washer": 0.3,
           "gear": 0.55, "bolt": 0.6}
_ELIGIBLE = sum(1 for c in CATEGORIES if DEFECTS_BY_CATEGORY[c]) / len(CATEGORIES)
# Damaged parts over all parts. Screws and bolts never carry a defect, so the parts that can carry
# one do more often (DefectMix.pick divides by _ELIGIBLE).
DEFAULT_DEFECT_RATE = 0.25
MIN_VISIBLE = 0.55  # kept above the promised 0.5 so rounding never breaks the promise
_MODES = (("free", 0.8), ("touch", 0.12), ("overlap", 0.08))


def render_scene(rng: np.random.Generator, size_wh: tuple[int, int] = (640, 480), *,
                 return_labels: bool = False, defect_mix: DefectMix | None = None):
    """Return (image_bgr uint8 [H, W, 3], objects), plus the label map [H, W] if asked.

    Each object: ``{"id", "category", "color", "defects" (0 or 1 item), "bbox" [x1, y1, x2, y2]
    (tight box of its visible pixels, x2/y2 exclusive), "visible_px", "visible_frac", "angle"}``,
    in draw order (a later id may cover an earlier one). The label map is int16 with -1 for belt
    and the object id on each visible part pixel. The image is not JPEG-encoded here.
    ``defect_mix`` changes how often parts are damaged and which kinds; None keeps the default
    draw (and the exact scenes every earlier seed gave).
    """
    W, H = int(size_wh[0]), int(size_wh[1])
    px = min(W / 640.0, H / 480.0)
    img, (by0, by1) = _belt(rng, W, H, px)
    az = math.radians(rng.uniform(-165.0, -105.0))  # light from the upper left, varying a little
    lz = rng.uniform(0.55, 0.75)
    lxy = math.sqrt(1 - lz * lz)
    light = (lxy * math.cos(az), lxy * math.sin(az), lz)
    shadow_strength = rng.uniform(0.35, 0.55)
    bounds = (2, by0, W - 2, by1)

    labels = np.full((H, W), -1, np.int16)
    placed: list[dict] = []
    visible: list[int] = []
    n_target = int(rng.integers(2, 13))
    tries = 0
    # A scene always ends with at least two parts; the hard cap only guards against a bug.
    while len(placed) < n_target and (tries < n_target + 12 or len(placed) < 2) and tries < 400:
        tries += 1
        spec = _sample_spec(rng, px, defect_mix)
        rgba, mask, box = _render_part(rng, spec, light, px)
        if rgba is None:
            continue
        mode = "free" if not placed or tries > n_target + 12 else _pick_mode(rng)
        pos = _place(rng, mask, mode, labels, placed, visible, bounds)
        if pos is None:
            continue
        X, Y = pos
        mh, mw = mask.shape
        region = labels[Y:Y + mh, X:X + mw]
        covered = region[mask]
        covered = covered[covered >= 0]
        if covered.size:
            for j, c in enumerate(np.bincount(covered, minlength=len(placed))):
                visible[j] -= int(c)
        region[mask] = len(placed)
        full = int(mask.sum())
        visible.append(full)
        # Canvas origin = mask origin minus the mask's offset inside the canvas.
        x0, y0 = X - box[0], Y - box[1]
        shadow = _shadow(rgba[..., 3], spec, light, px)
        _composite(img, rgba, shadow, shadow_strength, x0, y0)
        placed.append(dict(spec, X=X, Y=Y, mask=mask, full=full))

    img = _finish(rng, img, px)
    objects = []
    for i, p in enumerate(placed):
        mh, mw = p["mask"].shape
        ys, xs = np.nonzero(labels[p["Y"]:p["Y"] + mh, p["X"]:p["X"] + mw] == i)
        objects.append({
            "id": i, "category": p["category"], "color": p["color"],
            "defects": [p["defect"]] if p["defect"] else [],
            "bbox": [int(p["X"] + xs.min()), int(p["Y"] + ys.min()),
                     int(p["X"] + xs.max() + 1), int(p["Y"] + ys.max() + 1)],
            "visible_px": int(xs.size), "visible_frac": round(xs.size / p["full"], 4),
            "angle": round(p["angle"], 2) % 360.0,
        })
    if return_labels:
        return img, objects, labels
    return img, objects


# ---------------------------------------------------------------- parts

@dataclass(frozen=True)
class DefectMix:
    """How often a part that can be damaged is, and how the kinds are weighted.

    ``rate`` is the share of damaged parts over all parts (screws and bolts included, which never
    are), by default 0.25. ``weights`` are relative weights per defect kind, 1 for a kind
    not named; a part picks among the kinds its category can carry. Rare, hard kinds (a missing cap
    exists only on bottles) can be asked for more often this way, to balance a training set.
    """

    rate: float = DEFAULT_DEFECT_RATE
    weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.rate <= _ELIGIBLE:
            raise ValueError(f"defect rate must be in [0, {_ELIGIBLE:.2f}] (screws and bolts are never "
                             f"damaged), got {self.rate!r}")
        for kind, w in self.weights:
            if kind not in DEFECTS:
                raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECTS)}")
            if not (w >= 0.0 and math.isfinite(w)):
                raise ValueError(f"defect weight for {kind} must be a finite number >= 0, got {w!r}")

    @classmethod
    def parse(cls, rate: float | None = None, weights: str | None = None) -> DefectMix:
        """From the CLI form: a rate (None: the default) and "missing_cap=4,crack=2"."""
        pairs = []
        for item in (weights or "").split(","):
            if not item.strip():
                continue
            kind, _, value = item.partition("=")
            try:
                pairs.append((kind.strip(), float(value)))  # no "=" leaves value empty: an error too
            except ValueError:
                raise ValueError(f"defect weights are KIND=NUMBER pairs separated by commas, got {item.strip()!r}") from None
        return cls(rate=DEFAULT_DEFECT_RATE if rate is None else rate, weights=tuple(pairs))

    def pick(self, rng, choices: tuple[str, ...]) -> str | None:
        """The defect of a part that can carry one of ``choices``, or None."""
        if rng.random() >= self.rate / _ELIGIBLE:
            return None
        return self.choose(rng, choices)

    def choose(self, rng, choices: tuple[str, ...]) -> str | None:
        """The kind of a part known to be damaged, among ``choices``, by ``weights`` (None: all weigh 0).

        The conveyor video decides "damaged" its own way (then picks a category that can be) and
        asks only this.
        """
        if not self.weights:  # uniform: the one draw every data set before DefectMix was made with
            return choices[int(rng.integers(len(choices)))]
        given = dict(self.weights)
        w = np.array([given.get(k, 1.0) for k in choices], np.float64)
        if w.sum() <= 0:
            return None  # every kind this category can carry was weighted 0
        return choices[int(rng.choice(len(choices), p=w / w.sum()))]


_DEFAULT_MIX = DefectMix()


def _sample_spec(rng, px: float, defect_mix: DefectMix | None = None) -> dict:
    category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
    colors = COLORS_BY_CATEGORY[category]
    color = colors[int(rng.integers(len(colors)))]
    lo, hi = SIZES[category]
    size = rng.uniform(lo * 0.92, hi * 1.08) * px
    choices = DEFECTS_BY_CATEGORY[category]
    defect = (defect_mix or _DEFAULT_MIX).pick(rng, choices) if choices else None
    return {"category": category, "color": color, "size": float(size), "defect": defect,
            "angle": float(rng.uniform(0.0, 360.0))}


def _render_part(rng, spec, light, px):
    """Draw, shade, damage and rotate one part; returns (rgba canvas, visible mask crop, mask box)."""
    a = math.radians(spec["angle"])
    c, s = math.cos(a), math.sin(a)
    lx, ly, lz = light
    light_c = (c * lx - s * ly, s * lx + c * ly, lz)  # world light seen from the part's frame
    part = P.DRAW[spec["category"]](rng, spec["size"], spec["color"], spec["defect"], px)
    defect = spec["defect"]
    dent = _dent(rng, part, light_c) if defect == "dent" else None
    color = P.shade(rng, part, spec["color"], light_c)
    if dent is not None:
        color *= (1.0 - dent[0])[..., None]
        color += ((255.0 - color) * dent[1][..., None])
    if defect == "scratch":
        _scratch(rng, part, color, spec["color"])
    elif defect == "crack":
        _crack(rng, part, color, spec["color"])
    elif defect == "stain":
        _stain(rng, part, color, spec["color"])
    alpha = part.alpha
    stack = cv2.merge([np.clip(color, 0, 255) * alpha[..., None], alpha]).astype(np.float32, copy=False)

    ph, pw = alpha.shape
    pad = int(math.ceil(_shadow_offset(spec, px) + 3 * _shadow_sigma(spec, px))) + 2
    cw = int(math.ceil(abs(c) * pw + abs(s) * ph)) + 2 * pad
    ch = int(math.ceil(abs(s) * pw + abs(c) * ph)) + 2 * pad
    M = cv2.getRotationMatrix2D(((pw - 1) / 2.0, (ph - 1) / 2.0), spec["angle"], 1.0)
    M[0, 2] += (cw - 1) / 2.0 - (pw - 1) / 2.0
    M[1, 2] += (ch - 1) / 2.0 - (ph - 1) / 2.0
    rgba = cv2.warpAffine(stack, M, (cw, ch), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    mask = rgba[..., 3] > 0.5
    ys, xs = np.nonzero(mask)
    if not xs.size:  # only at absurdly small image sizes
        return None, None, None
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return rgba, mask[box[1]:box[3], box[0]:box[2]].copy(), box


def _pick_mode(rng) -> str:
    r, acc = rng.random(), 0.0
    for mode, p in _MODES:
        acc += p
        if r < acc:
            return mode
    return "free"


def _place(rng, mask, mode, labels, placed, visible, bounds):
    """Top-left of the mask crop, or None. free: no overlap; touch: abut a part; overlap: occlude."""
    mh, mw = mask.shape
    bx0, by0, bx1, by1 = bounds
    if mw > bx1 - bx0 or mh > by1 - by0:
        return None

    def fits(X, Y, allow_overlap=False):
        if X < bx0 or Y < by0 or X + mw > bx1 or Y + mh > by1:
            return False
        covered = labels[Y:Y + mh, X:X + mw][mask]
        covered = covered[covered >= 0]
        if not covered.size:
            return True
        if not allow_overlap:
            return False
        counts = np.bincount(covered, minlength=len(placed))
        return all(visible[j] - c >= MIN_VISIBLE * placed[j]["full"]
                   for j, c in enumerate(counts) if c)

    if mode == "free":
        for _ in range(40):
            X = int(rng.integers(bx0, bx1 - mw + 1))
            Y = int(rng.integers(by0, by1 - mh + 1))
            if fits(X, Y):
                return X, Y
        return None
    r_new = 0.5 * math.hypot(mw, mh)
    for _ in range(12):
        ref = placed[int(rng.integers(len(placed)))]
        rh, rw = ref["mask"].shape
        cx, cy = ref["X"] + rw / 2.0, ref["Y"] + rh / 2.0
        r_ref = 0.5 * math.hypot(rw, rh)
        th = rng.uniform(0, 2 * math.pi)
        dx, dy = math.cos(th), math.sin(th)

        def at(t):
            return int(round(cx + t * dx - mw / 2.0)), int(round(cy + t * dy - mh / 2.0))

        if mode == "overlap":
            X, Y = at(rng.uniform(0.4, 0.8) * (r_ref + r_new))
            if fits(X, Y, allow_overlap=True):
                return X, Y
            continue
        hi = r_ref + r_new + 1.0
        if not fits(*at(hi)):
            continue
        lo = 0.0
        while hi - lo > 0.75:  # bisect to the closest free distance: the masks touch
            mid = 0.5 * (lo + hi)
            if fits(*at(mid)):
                hi = mid
            else:
                lo = mid
        return at(hi)
    return None


def _shadow_offset(spec, px):
    return (2.0 + 6.0 * _HEIGHT[spec["category"]]) * px


def _shadow_sigma(spec, px):
    return (1.2 + 2.2 * _HEIGHT[spec["category"]]) * px


def _shadow(alpha, spec, light, px):
    off = _shadow_offset(spec, px)
    n = math.hypot(light[0], light[1]) + 1e-6
    dx, dy = int(round(-light[0] / n * off)), int(round(-light[1] / n * off))
    out = np.zeros_like(alpha)
    h, w = alpha.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        alpha[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return cv2.GaussianBlur(out, (0, 0), _shadow_sigma(spec, px))


def _composite(img, rgba, shadow, strength, x0, y0):
    H, W = img.shape[:2]
    h, w = rgba.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if xa >= xb or ya >= yb:
        return
    sub = img[ya:yb, xa:xb]
    p = rgba[ya - y0:yb - y0, xa - x0:xb - x0]
    sh = shadow[ya - y0:yb - y0, xa - x0:xb - x0]
    sub *= cv2.cvtColor((1.0 - strength * sh) * (1.0 - p[..., 3]), cv2.COLOR_GRAY2BGR)
    sub += p[..., :3]


# ---------------------------------------------------------------- defects

def _to_px(part, u, v):
    h, w = part.alpha.shape
    return u + (w - 1) / 2.0, v + (h - 1) / 2.0


def _in_region(rng, part, inner=0.85):
    cu, cv, ru, rv = part.region
    t, r = rng.uniform(0, 2 * math.pi), math.sqrt(rng.random()) * inner
    return cu + ru * r * math.cos(t), cv + rv * r * math.sin(t)


def _jagged(rng, p0, p1, step, jitter):
    n = max(2, int(math.hypot(p1[0] - p0[0], p1[1] - p0[1]) / step))
    t = np.linspace(0, 1, n + 1)
    pts = np.outer(1 - t, p0) + np.outer(t, p1)
    nx, ny = -(p1[1] - p0[1]), p1[0] - p0[0]
    norm = math.hypot(nx, ny) + 1e-6
    off = rng.uniform(-jitter, jitter, n + 1)
    off[0] = off[-1] = 0
    pts[:, 0] += off * nx / norm
    pts[:, 1] += off * ny / norm
    return pts


def _lines(part, polylines, thickness):
    layer = np.zeros(part.alpha.shape, np.uint8)
    for pts, th in zip(polylines, thickness):
        xs, ys = _to_px(part, pts[:, 0], pts[:, 1])
        q = np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)
        cv2.polylines(layer, [q], False, 255, max(1, int(round(th))), cv2.LINE_AA, shift=4)
    # Below 640x480 a one-pixel line is already too thick; fade it instead of thinning it.
    return layer.astype(np.float32) * (min(1.0, part.px ** 0.5) / 255.0) * part.surface


def _shift(a, dx, dy):
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def _scratch(rng, part, color, name):
    """A few bright thin jagged lines roughly parallel, each with a dark groove beside it."""
    cu, cv, ru, rv = part.region
    main = rng.uniform(0, math.pi)
    lines = []
    for _ in range(int(rng.integers(3, 6))):
        c = _in_region(rng, part, 0.6)
        a = main + rng.normal(0, 0.25)
        half = rng.uniform(0.6, 1.0) * max(ru, rv)
        d = (math.cos(a) * half, math.sin(a) * half)
        lines.append(_jagged(rng, (c[0] - d[0], c[1] - d[1]), (c[0] + d[0], c[1] + d[1]),
                             3.0 * part.px, 0.8 * part.px))
    lay = _lines(part, lines, [part.px] * len(lines))
    groove = _shift(lay, 1, 1) * (1 - lay)
    bright = 90.0 if name in ("white", "yellow") else 252.0  # dark where bright would not show
    color *= (1 - 0.45 * groove)[..., None]
    color *= (1 - lay)[..., None]
    color += (bright * lay)[..., None]


def _crack(rng, part, color, name):
    """A dark jagged branching line with a light lip, so it shows on black parts too."""
    cu, cv, ru, rv = part.region
    # Start at the rim of the surface and run inward, as a crack from an edge does.
    t = rng.uniform(0, 2 * math.pi)
    p = np.array([cu + ru * math.cos(t), cv + rv * math.sin(t)])
    a = t + math.pi + rng.uniform(-0.35, 0.35)
    length = rng.uniform(0.8, 1.4) * max(ru, rv)
    step = 2.6 * part.px
    pts = [p.copy()]
    for _ in range(max(3, int(length / step))):
        a += rng.uniform(-0.55, 0.55)
        p = p + step * np.array([math.cos(a), math.sin(a)])
        pts.append(p.copy())
    main = np.array(pts)
    lines, widths = [main], [2.0 * part.px]
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, len(main) - 1))
        b = math.atan2(*(main[k + 1] - main[k - 1])[::-1]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        q, br = main[k].copy(), [main[k].copy()]
        for _ in range(max(2, int(len(main) * rng.uniform(0.2, 0.4)))):
            b += rng.uniform(-0.5, 0.5)
            q = q + step * np.array([math.cos(b), math.sin(b)])
            br.append(q.copy())
        lines.append(np.array(br))
        widths.append(1.3 * part.px)
    lay = _lines(part, lines, widths)
    lip = _shift(lay, -1, -1) * (1 - lay)
    lip_gain = 0.75 if name == "black" else 0.35
    color *= (1 - lip_gain * lip)[..., None]
    color += (215.0 * lip_gain * lip)[..., None]
    color *= (1 - 0.92 * lay)[..., None]
    color += (12.0 * lay)[..., None]


def _dent(rng, part, light):
    """A shallow bowl: dark crescent on the wall facing away from the light, bright far rim.

    Drawn from the bowl's own geometry rather than through the material shader, so it reads the
    same on flat white cardboard as on glossy metal.
    """
    cu, cv, ru, rv = part.region
    c = _in_region(rng, part, 0.45)
    a = max(5.0 * part.px, rng.uniform(0.5, 0.75) * min(ru, rv))
    b = a * rng.uniform(0.6, 0.85)
    th = rng.uniform(0, math.pi)
    h, w = part.alpha.shape
    u = np.arange(w, dtype=np.float32)[None, :] - (w - 1) / 2.0 - c[0]
    v = np.arange(h, dtype=np.float32)[:, None] - (h - 1) / 2.0 - c[1]
    p, q = u * math.cos(th) + v * math.sin(th), -u * math.sin(th) + v * math.cos(th)
    e = np.sqrt((p / a) ** 2 + (q / b) ** 2)
    inside = np.clip((1.0 - e) * a, 0, 1) * part.surface
    n = np.sqrt(u * u + v * v) + 1e-3
    facing = (u * light[0] + v * light[1]) / (n * (math.hypot(light[0], light[1]) + 1e-6))
    wall = inside * np.clip(e * 1.4, 0, 1)  # flat bottom in the middle, walls toward the edge
    rim = np.clip(1.0 - np.abs(e - 1.0) * a / (1.2 * part.px), 0, 1) * part.surface
    part.height -= inside * 0.25 * b
    # Returned as (darken, brighten) maps applied after shading.
    dark = inside * 0.1 + wall * np.clip(facing, 0, 1) * 0.6
    bright = wall * np.clip(-facing, 0, 1) * 0.45 + rim * np.clip(-facing, 0, 1) * 0.6
    return dark, bright


def _stain(rng, part, color, name):
    """An irregular brownish translucent blotch with a darker drying ring."""
    cu, cv, ru, rv = part.region
    c = _in_region(rng, part, 0.5)
    r0 = max(5.0 * part.px, rng.uniform(0.5, 0.8) * min(ru, rv))
    layer = np.zeros(part.alpha.shape, np.uint8)
    for _ in range(int(rng.integers(4, 8))):
        t = rng.uniform(0, 2 * math.pi)
        d = rng.uniform(0, 0.7) * r0
        x, y = _to_px(part, c[0] + d * math.cos(t), c[1] + d * math.sin(t))
        rad = rng.uniform(0.3, 0.6) * r0
        cv2.ellipse(layer, (int(x * 16), int(y * 16)), (int(rad * 16), int(rad * rng.uniform(0.6, 1) * 16)),
                    float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA, shift=4)
    lay = cv2.GaussianBlur(layer.astype(np.float32) / 255.0, (0, 0), 0.9 * part.px)
    ring = np.clip(lay * (1 - lay) * 4, 0, 1) * part.surface
    lay *= part.surface
    brown = np.asarray((70, 105, 150) if name == "black" else (28, 55, 98), np.float32)
    o = rng.uniform(0.6, 0.75)
    color *= (1 - o * lay)[..., None]
    color += brown * (o * lay)[..., None]
    color *= (1 - 0.3 * ring)[..., None]


# ---------------------------------------------------------------- belt and camera

def _belt(rng, W, H, px):
    """Mid-grey rubber belt (grain, weave, wear streaks, mottle) with steel side rails."""
    grey = rng.uniform(90.0, 120.0)
    base = grey + rng.normal(0, 3.5, 3)
    lum = (rng.random((H, W), dtype=np.float32) - 0.5) * rng.uniform(14, 22)
    lum = cv2.GaussianBlur(lum, (3, 3), 0.6 * px)
    weave = int(rng.integers(3))
    if weave:
        p = rng.uniform(3.0, 5.0) * px
        x = np.arange(W, dtype=np.float32) * (2 * np.pi / p)
        y = np.arange(H, dtype=np.float32) * (2 * np.pi / p)
        amp = rng.uniform(2.0, 3.5)
        if weave == 1:  # plain weave crosshatch
            lum += amp * np.outer(np.sin(y), np.sin(x))
        else:  # twill: diagonal ribs, sin(x + y) split into two outer products
            lum += amp * (np.outer(np.cos(y), np.sin(x)) + np.outer(np.sin(y), np.cos(x)))
    rows = P._smooth_noise(rng, H, rng.uniform(1.5, 3.5), 2.0 * px)
    lum += rows[:, None]
    gh, gw = H // 40 + 2, W // 40 + 2
    mottle = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (W, H),
                        interpolation=cv2.INTER_CUBIC)
    lum += mottle * rng.uniform(2.0, 5.0)
    # cv2 rather than numpy broadcasting for full-frame work: several times faster here.
    img = cv2.add(cv2.cvtColor(lum, cv2.COLOR_GRAY2BGR), tuple(float(b) for b in base) + (0.0,))

    by0, by1 = 2, H - 2
    if rng.random() < 0.75:
        hr = int(rng.uniform(0.035, 0.07) * H)
        steel = rng.uniform(150, 185)
        t = np.linspace(-1, 1, hr, dtype=np.float32)
        prof = steel * (0.8 + 0.25 * np.sqrt(np.clip(1 - t * t, 0, 1))) + 18 * np.exp(-((t + 0.4) / 0.15) ** 2)
        rail = np.repeat(prof[:, None], W, axis=1)[..., None] * np.ones(3, np.float32)
        pitch = rng.uniform(70, 110) * px
        off = rng.uniform(0, pitch)
        for y0 in (0, H - hr):
            img[y0:y0 + hr] = rail
            for x in np.arange(off, W, pitch):
                cv2.circle(img, (int(x), y0 + hr // 2), max(2, int(hr * 0.18)), (70, 70, 72), -1, cv2.LINE_AA)
        gap = max(2, int(round(2 * px)))
        img[hr:hr + gap] *= 0.45
        img[H - hr - gap:H - hr] *= 0.45
        by0, by1 = hr + gap + 1, H - hr - gap - 1
    return img, (by0, by1)


def _camera_gain(rng, W, H):
    """Lighting falloff of the camera: a tilt, a vignette and an exposure, as a BGR gain image."""
    x = np.linspace(-0.5, 0.5, W, dtype=np.float32)
    y = np.linspace(-0.5, 0.5, H, dtype=np.float32)
    g = rng.uniform(0.1, 0.3)
    t = rng.uniform(0, 2 * math.pi)
    vig = rng.uniform(0.15, 0.45)
    exposure = rng.uniform(0.92, 1.08)
    row = g * math.sin(t) * y - vig * y * y + exposure
    col = g * math.cos(t) * x - vig * x * x
    return cv2.cvtColor(row[:, None] + col[None, :], cv2.COLOR_GRAY2BGR)


def _finish(rng, img, px):
    """Lighting falloff, sometimes motion blur along the belt, sensor noise; to uint8."""
    H, W = img.shape[:2]
    img = cv2.multiply(img, _camera_gain(rng, W, H))
    if rng.random() < 0.2:
        k = int(rng.integers(3, 8) * px) | 1
        img = cv2.blur(img, (k, 1))
    amp = rng.uniform(5.0, 12.0)
    lum = (rng.random((H, W), dtype=np.float32) - 0.5) * amp
    chroma = (rng.random((H // 2 + 1, W // 2 + 1, 3), dtype=np.float32) - 0.5) * (amp * 0.5)
    img += cv2.cvtColor(lum, cv2.COLOR_GRAY2BGR)
    img += cv2.resize(chroma, (W, H), interpolation=cv2.INTER_NEAREST)
    return np.clip(img, 0, 255).astype(np.uint8)

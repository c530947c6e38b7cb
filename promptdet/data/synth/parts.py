"""Top-down drawings of the eight part categories, each in a small patch in canonical pose.

Every part is described the same way: an anti-aliased coverage ``alpha`` from signed distances,
a pseudo ``height`` field (pixels), a per-pixel albedo and specular map. One shared shader turns
the height field into normals and lights it, so all parts get consistent 3D-looking shading
(cylinders get a long highlight, bevels catch the light on one side) from one light direction.
The long axis of a part is +u (x); the renderer rotates the patch afterwards, so the light
direction passed in is already expressed in the part's canonical frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

COLOR_BGR = {
    "red": (42, 40, 198), "green": (55, 152, 48), "blue": (196, 98, 30), "yellow": (36, 206, 232),
    "orange": (22, 122, 246), "white": (236, 236, 232), "black": (34, 34, 37), "silver": (162, 160, 156),
}
# (diffuse weight, specular strength, shininess). White stays flat and bright so it never reads as
# silver; silver gets strong highlights and brushed streaks; black gets a visible specular.
_MATERIAL = {"silver": (0.5, 1.0, 40.0), "black": (0.45, 0.9, 40.0), "white": (0.28, 0.18, 30.0)}
_PLASTIC = (0.55, 0.38, 28.0)
# Caps contrast with the bottle so a missing one is obvious.
_CAP_CHOICES = ("white", "black", "blue", "red", "yellow", "green")
_SIMILAR = {("red", "orange"), ("orange", "red"), ("yellow", "orange"), ("orange", "yellow"),
            ("yellow", "white"), ("white", "yellow")}


@dataclass
class Part:
    """A part drawn in canonical pose; ``region`` = (cu, cv, ru, rv), an ellipse for defects."""

    alpha: np.ndarray
    height: np.ndarray
    base: np.ndarray
    ks: np.ndarray
    surface: np.ndarray
    region: tuple[float, float, float, float]
    streak: np.ndarray  # coordinate along which brushed-metal streaks vary
    px: float  # image scale (1.0 at 640x480), for line widths


def _grid(w: float, h: float, margin: int = 3):
    pw, ph = int(np.ceil(w)) + 2 * margin, int(np.ceil(h)) + 2 * margin
    u = np.arange(pw, dtype=np.float32) - (pw - 1) / 2.0
    v = np.arange(ph, dtype=np.float32) - (ph - 1) / 2.0
    uu, vv = np.meshgrid(u, v)
    return uu, vv


def cov(d: np.ndarray) -> np.ndarray:
    """Coverage of a pixel from a signed distance (negative inside): a one-pixel linear ramp."""
    return np.clip(0.5 - d, 0.0, 1.0)


def sd_box(u, v, hx, hy, r=0.0):
    qx, qy = np.abs(u) - (hx - r), np.abs(v) - (hy - r)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def sd_hex(u, v, r_in):
    """Hexagon with inradius r_in and flat edges at v = +-r_in."""
    kx, ky, kz = -0.8660254, 0.5, 0.57735027
    px, py = np.abs(u), np.abs(v)
    dot = np.minimum(kx * px + ky * py, 0.0)
    px, py = px - 2 * dot * kx, py - 2 * dot * ky
    px = px - np.clip(px, -kz * r_in, kz * r_in)
    py = py - r_in
    return np.sqrt(px * px + py * py) * np.sign(py)


def _smooth_noise(rng, n: int, amp: float, sigma: float) -> np.ndarray:
    x = rng.standard_normal(n).astype(np.float32)
    x = cv2.GaussianBlur(x.reshape(1, -1), (0, 0), sigma).ravel()
    return x / (x.std() + 1e-6) * amp


def _part(alpha, height, base, ks, surface, region, streak, px) -> Part:
    return Part(alpha.astype(np.float32), height.astype(np.float32), base.astype(np.float32),
                np.broadcast_to(np.float32(ks), alpha.shape).astype(np.float32) if np.isscalar(ks) else ks,
                surface.astype(np.float32), region, streak, px)


def _fill(shape, color: str) -> np.ndarray:
    return np.broadcast_to(np.asarray(COLOR_BGR[color], np.float32), shape + (3,)).copy()


def material(color: str):
    return _MATERIAL.get(color, _PLASTIC)


# ---------------------------------------------------------------- categories

def bottle(rng, L, color, defect, px):
    """Bottle lying on its side: body, shoulder, neck, collar and a ribbed cap of another colour."""
    R = L * rng.uniform(0.14, 0.165)
    rn, rc = 0.38 * R, 0.47 * R
    u, v = _grid(L, 2 * R)
    u0 = -L / 2.0
    ub, us, ucol, uc = u0 + 0.62 * L, u0 + 0.78 * L, u0 + 0.845 * L, u0 + 0.875 * L
    capped = defect != "missing_cap"
    uend = u0 + L if capped else uc + 0.035 * L
    x = u[0]
    r = np.full_like(x, R)
    rb = 0.3 * R  # rounded base
    base_zone = x < u0 + rb
    r[base_zone] = R - rb + np.sqrt(np.maximum(rb * rb - (u0 + rb - x[base_zone]) ** 2, 0))
    t = np.clip((x - ub) / (us - ub), 0, 1)
    shoulder = rn + (R - rn) * (0.5 + 0.5 * np.cos(np.pi * t))
    r = np.where(x > ub, shoulder, r)
    grooves = np.zeros_like(x)
    for g in (u0 + 0.1 * L, u0 + 0.15 * L, u0 + 0.5 * L, u0 + 0.55 * L):
        grooves += np.exp(-((x - g) / (0.9 * px + 0.006 * L)) ** 2)
    r *= 1 - 0.05 * grooves
    collar = (x > ucol) & (x < ucol + 0.028 * L)
    r[collar] = 0.55 * R
    cap_zone = x >= uc
    if capped:
        rr = 0.12 * rc
        r[cap_zone] = rc
        end = x > uend - rr
        r[end] = rc - rr + np.sqrt(np.maximum(rr * rr - (x[end] - (uend - rr)) ** 2, 0))
    d = np.maximum(np.abs(v) - r[None, :], np.maximum(u0 - u, u - uend))
    alpha = cov(d)
    height = np.sqrt(np.maximum(r[None, :] ** 2 - v * v, 0))
    base = _fill(u.shape, color)
    base *= (1 - 0.25 * grooves)[None, :, None]
    ks = np.full(u.shape, 1.0, np.float32)
    surface = (u < ub).astype(np.float32)
    if capped:
        choices = [c for c in _CAP_CHOICES if c != color and (color, c) not in _SIMILAR]
        cap = str(choices[int(rng.integers(len(choices)))])
        ribs = 0.8 + 0.2 * np.sin(v * (2 * np.pi / max(2.2, 2.6 * px)))
        zone = np.broadcast_to(cap_zone[None, :], u.shape)
        base[zone] = (np.asarray(COLOR_BGR[cap], np.float32)[None, :] * ribs[zone][:, None])
        ks[zone] = 0.5
    else:
        # Thread ridges on the bare neck finish and the dark mouth make the missing cap obvious.
        finish = (u > uc - 0.04 * L) & (u < uend)
        thread = 0.72 + 0.28 * np.abs(np.sin((u + 0.3 * v) * (np.pi / max(1.6, 2.0 * px))))
        base[finish] *= thread[finish][:, None]
        ew = max(1.3 * px, 0.3 * rn)
        mouth = np.sqrt(((u - (uend - ew - 0.8 * px)) / ew) ** 2 + (v / (0.78 * rn)) ** 2)
        lip = cov((np.abs(mouth - 1.0) - 0.28) * ew)
        hole = cov((mouth - 1.0) * ew)
        base = base * (1 - lip[..., None]) + 245 * lip[..., None]
        base = base * (1 - hole[..., None]) + 16 * hole[..., None]
        height -= 2.0 * hole
    region = (u0 + 0.32 * L, 0.0, 0.26 * L, 0.72 * R)
    return _part(alpha, height, base, ks, surface * alpha, region, v, px)


def can(rng, D, color, defect, px):
    """Standing can from above: coloured wall band, raised rim, recessed lid, pull tab, rivet."""
    R = D / 2.0
    u, v = _grid(D, D)
    r = np.sqrt(u * u + v * v)
    alpha = cov(r - R)
    rim_c, rim_w = 0.8 * R, 0.065 * R
    rim = np.sqrt(np.maximum(rim_w ** 2 - (r - rim_c) ** 2, 0))
    wall = np.clip((R - r) / (0.14 * R), 0, 1) * 7.0
    height = np.where(r > rim_c, np.minimum(wall, 7.0), 5.0) + 1.6 * rim
    col = np.asarray(COLOR_BGR[color], np.float32)
    silver = np.asarray(COLOR_BGR["silver"], np.float32)
    lid_col = col if color in ("silver", "white", "black") else 0.8 * col + 0.2 * silver
    base = np.where((r < rim_c - rim_w)[..., None], lid_col, col).astype(np.float32)
    ring = cov(np.abs(r - rim_c) - rim_w)
    ring_col = 0.6 * col + 0.45 * silver if color != "black" else col + 25.0
    base = base * (1 - 0.6 * ring[..., None]) + ring_col * 0.6 * ring[..., None]
    # Opening score line: a thin dark arc on the lid.
    so = np.sqrt((u + 0.3 * R) ** 2 + v * v)
    score = cov(np.abs(so - 0.3 * R) - 0.45 * px) * (u < -0.12 * R)
    base *= (1 - 0.45 * score)[..., None]
    height -= 0.6 * score
    # Pull tab: a silver rounded bar with a finger hole, pinned by a rivet at the centre.
    tab_d = sd_box(u - 0.2 * R, v, 0.3 * R, 0.15 * R, 0.14 * R)
    hole_d = sd_box(u - 0.3 * R, v, 0.12 * R, 0.075 * R, 0.07 * R)
    tab = cov(np.maximum(tab_d, -hole_d))
    tab_col = silver * (1.12 if color == "silver" else 1.0)
    base = base * (1 - tab[..., None]) + tab_col * tab[..., None]
    height += 1.8 * tab
    rivet = np.sqrt(np.maximum((0.07 * R) ** 2 - u * u - v * v, 0))
    height += 1.5 * rivet
    ks = 0.55 + 0.45 * tab
    surface = alpha * (1 - tab)
    region = (-0.25 * R, 0.0, 0.45 * R, 0.6 * R)
    return _part(alpha, height, base, ks, surface, region, r, px)


def box(rng, L, color, defect, px):
    """Carton from above: rounded rectangle, bevelled edges, centre seam under tape, flap folds, label."""
    S = L * rng.uniform(0.55, 0.85)
    u, v = _grid(L, S)
    d = sd_box(u, v, L / 2, S / 2, 0.035 * S)
    alpha = cov(d)
    height = np.minimum(np.maximum(-d, 0), 2.5 * px) * 1.2
    base = _fill(u.shape, color)
    base *= (0.98 + 0.035 * np.sin(v * 1.7 + 0.3 * np.sin(u * 0.7)))[..., None]  # corrugation/fibre
    fold = (cov(np.abs(np.abs(u) - (L / 2 - 0.09 * L)) - 0.3 * px) * (np.abs(v) < S / 2 - 1))
    seam = cov(np.abs(v) - 0.35 * px)
    base *= (1 - 0.35 * np.maximum(fold, seam))[..., None]
    height -= 0.6 * np.maximum(fold, seam)
    # Tape along the seam: light, translucent and glossy, with crisp edges.
    tw = 0.12 * S
    tape = cov(np.abs(v) - tw) * alpha
    tan = np.asarray((150, 195, 222), np.float32)
    base = base * (1 - 0.45 * tape[..., None]) + tan * 0.45 * tape[..., None]
    edge = cov(np.abs(np.abs(v) - tw) - 0.35 * px)
    base *= (1 - 0.25 * edge)[..., None]
    # Shipping label with barcode bars on one flap.
    lx, ly, lw, lh = 0.22 * L, -(tw + (S / 2 - tw) * 0.5), 0.14 * L, 0.18 * S
    lab = cov(sd_box(u - lx, v - ly, lw, lh, 0.5))
    label_col = np.asarray((222, 226, 230) if color != "white" else (180, 190, 200), np.float32)
    bars = (np.sin((u - lx) * (2 * np.pi / max(2.0, 2.4 * px)) + np.sin(u * 1.3) * 2.0) > 0.2)
    bars &= np.abs(v - ly) < 0.55 * lh
    lab_col = np.where(bars[..., None], 40.0, label_col)
    base = base * (1 - lab[..., None]) + lab_col * lab[..., None]
    ks = 0.12 + 0.6 * tape
    region = (-0.12 * L, 0.0, 0.3 * L, 0.38 * S)
    return _part(alpha, height, base, ks, alpha * (1 - lab), region, v, px)


def _threads(u, v, pitch, slant):
    """Sawtooth 0..1 across slanted thread crests."""
    t = (u + slant * v) / pitch
    return np.abs(2 * (t - np.floor(t)) - 1)


def screw(rng, L, color, defect, px):
    """Screw lying down: round head with a slot or cross, thin threaded shaft, pointed tip."""
    rh, rs = 0.15 * L, 0.062 * L
    u, v = _grid(L, 2 * rh)
    u0 = -L / 2
    hc = u0 + rh
    x = u[0]
    r = np.where(x > L / 2 - 0.24 * L, rs * np.clip((L / 2 - x) / (0.24 * L), 0.08, 1), rs)
    pitch = max(2.4, 0.075 * L)
    th = _threads(u, v, pitch, 0.35)
    rr = r[None, :] * (1 + 0.16 * (th - 0.5)) * (u > hc)
    shaft_d = np.maximum(np.abs(v) - rr, np.maximum(hc - u, u - L / 2))
    hu, hv = u - hc, v
    head_d = np.sqrt(hu * hu + hv * hv) - rh
    alpha = cov(np.minimum(shaft_d, head_d))
    shaft_h = np.sqrt(np.maximum(rr * rr - v * v, 0)) * (0.85 + 0.3 * th)
    head_h = np.sqrt(np.maximum(rh * rh - hu * hu - hv * hv, 0)) * 0.55 + rs
    a = rng.uniform(0, np.pi)
    ca, sa = np.cos(a), np.sin(a)
    p, q = ca * hu + sa * hv, -sa * hu + ca * hv
    sw = max(0.7 * px, 0.12 * rh)
    slot = cov(np.maximum(np.abs(q) - sw, np.abs(p) - 0.72 * rh))
    if rng.random() < 0.5:  # Phillips cross
        slot = np.maximum(slot, cov(np.maximum(np.abs(p) - sw, np.abs(q) - 0.72 * rh)))
    in_head = cov(head_d)
    height = np.where(in_head > 0, head_h - 2.2 * slot, shaft_h)
    base = _fill(u.shape, color)
    base *= (1 - 0.35 * (1 - th) * (1 - in_head))[..., None]
    base *= (1 - 0.6 * slot * in_head)[..., None]
    streak = np.where(in_head > 0, np.sqrt(hu * hu + hv * hv) * 3, v)
    return _part(alpha, height, base, 1.0, alpha * 0, (0, 0, 1, 1), streak, px)


def bolt(rng, L, color, defect, px):
    """Bolt lying down: hex head seen from the side (three faces), plain shank, threads, blunt end."""
    hw, hl, rb = 0.2 * L, 0.15 * L, 0.085 * L
    u, v = _grid(L, 2 * hw)
    u0 = -L / 2
    he = u0 + hl
    head_d = sd_box(u - (u0 + hl / 2), v, hl / 2, hw, 0.1 * hl)
    pitch = max(2.4, 0.06 * L)
    th = _threads(u, v, pitch, 0.15)
    threaded = u > u0 + 0.5 * L
    rr = rb * (1 + 0.12 * (th - 0.5) * threaded)
    re = 0.25 * rb  # chamfer at the blunt end
    cx = L / 2 - re
    rr = np.where(u > cx, rr - re + np.sqrt(np.maximum(re * re - (u - cx) ** 2, 0)), rr)
    shaft_d = np.maximum(np.abs(v) - rr, np.maximum(he - 1 - u, u - L / 2))
    alpha = cov(np.minimum(head_d, shaft_d))
    in_head = cov(head_d)
    head_h = np.minimum(0.866 * hw, 1.732 * (hw - np.abs(v))) + 2.0
    shaft_h = np.sqrt(np.maximum(rr * rr - v * v, 0)) * (1 + 0.25 * (th - 0.5) * threaded)
    height = np.where(in_head > 0, np.maximum(head_h, shaft_h), shaft_h)
    base = _fill(u.shape, color)
    face_edge = cov(np.abs(np.abs(v) - hw / 2) - 0.35 * px) * in_head
    base *= (1 - 0.3 * face_edge - 0.3 * (1 - th) * threaded * (1 - in_head))[..., None]
    return _part(alpha, height, base, 1.0, alpha * 0, (0, 0, 1, 1), v, px)


def nut(rng, S, color, defect, px):
    """Hex nut from above: hexagon, chamfered corners (a circle), threaded round hole."""
    ri = S / 2 * 0.866
    u, v = _grid(S, S)
    r = np.sqrt(u * u + v * v)
    rh = 0.47 * ri
    hex_d = sd_hex(u, v, ri)
    alpha = cov(np.maximum(hex_d, rh - r))
    chamfer = np.clip((r - 0.96 * ri) * 1.1, 0, None)
    height = 6.0 - chamfer - np.clip(rh * 1.25 - r, 0, None) * 1.2
    height = np.minimum(height, np.maximum(-hex_d, 0) * 2 + 3)
    base = _fill(u.shape, color)
    thread = cov(r - rh * 1.25) * (0.6 + 0.4 * np.sin(r * 5.0)) * alpha
    base *= (1 - 0.45 * thread)[..., None]
    base *= (1 - 0.15 * cov(0.96 * ri - r))[..., None] + 0.15
    region = (0.0, 0.0, ri, ri)
    surface = alpha * (r > rh * 1.3)
    return _part(alpha, height, base, 1.0, surface, region, r * 2.5, px)


def washer(rng, D, color, defect, px):
    """Flat washer: thin annulus with a large hole and softly rounded edges."""
    R = D / 2
    ri = R * rng.uniform(0.5, 0.58)
    u, v = _grid(D, D)
    r = np.sqrt(u * u + v * v)
    ring_d = np.maximum(r - R, ri - r)
    alpha = cov(ring_d)
    height = np.minimum(np.maximum(-ring_d, 0), 1.5 * px) * 1.6
    base = _fill(u.shape, color)
    ks = 1.0 if color in ("silver", "black", "yellow") else 0.5
    region = (0.0, 0.0, R, R)
    return _part(alpha, height, base, ks, alpha, region, r * 2.5, px)


def gear(rng, D, color, defect, px):
    """Spur gear: trapezoid teeth, raised rim and hub, recessed web, bore with keyway, maybe holes."""
    R = D / 2
    n_teeth = int(np.clip(round(D / rng.uniform(5.2, 6.8)), 10, 24))
    depth = max(2.5 * px, 0.13 * R)
    rr = R - depth
    u, v = _grid(D, D)
    r = np.sqrt(u * u + v * v)
    th = np.arctan2(v, u) + rng.uniform(0, 2 * np.pi)
    f = (th * n_teeth / (2 * np.pi)) % 1.0
    tooth = np.clip(np.minimum(f, 0.55 - f) / 0.12, 0, 1)
    edge = rr + depth * tooth
    bore = 0.16 * R
    outer_d = r - edge
    hole_d = np.minimum(r - bore, sd_box(u - bore, v, 0.09 * R, 0.045 * R))
    d = np.maximum(outer_d, -hole_d)
    holes = int(rng.choice([0, 0, 4, 5, 6]))
    if holes:
        hr, hc = 0.14 * R, 0.52 * R
        for k in range(holes):
            a = 2 * np.pi * k / holes
            d = np.maximum(d, hr - np.sqrt((u - hc * np.cos(a)) ** 2 + (v - hc * np.sin(a)) ** 2))
    alpha = cov(d)
    web = (r > 0.33 * R) & (r < rr - 0.1 * R)
    height = np.where(web, 3.0, 6.0)
    height = np.minimum(height, np.maximum(-d, 0) * 1.5 + 2)
    base = _fill(u.shape, color)
    base *= (1 - 0.08 * web)[..., None]
    region = (0.0, 0.0, 0.82 * R, 0.82 * R)
    surface = alpha * (r > 0.3 * R) * (r < rr + 0.5 * depth)
    return _part(alpha, height, base, 1.0, surface, region, r * 2.5, px)


DRAW = {"bottle": bottle, "can": can, "box": box, "screw": screw, "nut": nut, "washer": washer,
        "gear": gear, "bolt": bolt}


# ---------------------------------------------------------------- shading

def shade(rng, part: Part, color: str, light) -> np.ndarray:
    """Light a part's height field; returns BGR float32 (not premultiplied)."""
    kd, ks, shin = material(color)
    h = cv2.GaussianBlur(part.height, (3, 3), 0)  # soft bevels instead of one-pixel steps
    gy, gx = np.gradient(h)
    gx, gy = np.clip(gx, -2.5, 2.5), np.clip(gy, -2.5, 2.5)
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    lx, ly, lz = light
    ndl = (-gx * lx - gy * ly) * inv + lz * inv
    diff = (1.0 - kd * lz) + kd * ndl
    hx, hy, hz = lx, ly, lz + 1.0
    n = math.sqrt(hx * hx + hy * hy + hz * hz)  # a Python float keeps the arrays float32
    ndh = np.clip(((-gx * hx - gy * hy) * inv + hz * inv) / n, 0, 1)
    spec = ndh ** shin * (ks * 255.0) * part.ks
    base = part.base
    if color == "silver":
        # Brushed metal: streaks along one direction plus a broad sheen gradient.
        lut = _smooth_noise(rng, 256, 0.13, 1.2)
        idx = (np.abs(part.streak) * 1.7).astype(np.int32) % 256
        h_, w_ = part.alpha.shape
        uu = np.linspace(-1, 1, w_, dtype=np.float32)[None, :]
        vv = np.linspace(-1, 1, h_, dtype=np.float32)[:, None]
        sheen = 1.0 + 0.3 * (uu * lx + vv * ly) / (abs(lx) + abs(ly) + 1e-3)
        base = base * ((1.0 + lut[idx]) * sheen)[..., None]
    out = base * diff[..., None] + spec[..., None]
    if color == "black":
        # A light rim so dark parts separate from a grey belt.
        rim = part.alpha - cv2.erode(part.alpha, np.ones((3, 3), np.uint8))
        out += (62.0 * min(1.0, part.px) * np.clip(rim, 0, 1))[..., None]
    return out

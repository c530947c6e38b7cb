"""Instruction-aware augmentation: change the image, keep every instruction true.

Training shows one image with several instruction pairs at once, so every geometric change is
applied identically to the image and to the boxes of every pair, and the text of every pair is
rewritten (or the change is skipped) so that it still describes the new image:

* horizontal flip: ``left <-> right`` (``leftmost``, ``left-hand``, ``furthest left`` ...) in
  every pair; skipped for the whole image if any text uses an orientation word that cannot be
  rewritten safely ("east", "clockwise", "right next to", "the second bolt" ...);
* vertical flip: ``top <-> bottom``, ``upper <-> lower``, ``above <-> below``,
  ``highest <-> lowest`` ...; skipped likewise ("north", "on top of", "upright", "under" ...).
  A 180-degree rotation is just both flips, so it only happens when both rewrites are possible;
  no other rotation is ever applied (it would break left/right);
* crop: the window always contains every object of the scene (``scene_boxes_xyxy``) or, when
  the scene is not given, every box of every pair; with no scene given and a pair whose truth
  depends on the whole image (spatial / superlative / relation / count) there is no crop.
  Boxes are shifted exactly, never clipped or dropped;
* hue / saturation: never when any pair names a colour (:func:`names_colour`) or is of type
  ``attribute``; brightness / contrast / gamma stay mild (white stays >= 85 %, black <= 15 %).

Pixels go through albumentations (crop, flips, brightness/contrast, gamma, blur; the boxes of
the geometric part go through its ``pascal_voc`` bbox pipeline and are checked against the exact
arithmetic, which is what is returned). Hue/saturation and noise use small OpenCV kernels of
our own because albumentations' versions cost 2-8 ms on a 640x480 image.

Images are BGR uint8 (as read by cv2). Everything is deterministic given ``rng``.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Sequence

# albumentations otherwise asks PyPI for a newer version at import time (up to 2 s, network).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np

from promptdet.data.pairs import InstructionPair

__all__ = [
    "InstructionAugment",
    "UnflippableText",
    "can_flip_text",
    "flip_text",
    "names_colour",
    "WHOLE_IMAGE_TYPES",
]

# Pair types whose truth depends on every object in the image: a crop without the scene's boxes
# could cut a competitor out and change the answer.
WHOLE_IMAGE_TYPES = frozenset({"spatial", "superlative", "relation", "count"})

_AXES = {"horizontal": "horizontal", "h": "horizontal", "x": "horizontal",
         "vertical": "vertical", "v": "vertical", "y": "vertical"}


class UnflippableText(ValueError):
    """The text has an orientation word that a flip along this axis cannot rewrite safely."""


# --------------------------------------------------------------------------------------------
# Text: flips
# --------------------------------------------------------------------------------------------

def _match_case(src: str, word: str) -> str:
    """Give ``word`` the case pattern of ``src`` ("Left" -> "Right", "LEFT" -> "RIGHT")."""
    if len(src) > 1 and src.isupper():
        return word.upper()
    if src[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


_F = re.IGNORECASE

# Left / right. The suffix is kept as written; "-most", "-hand" etc. are separate words for \b.
_H_WORD = re.compile(r"\b(left|right)(most|hand|handed|ward|wards)?\b", _F)
_H_SWAP = {"left": "right", "right": "left"}

# Words just before "left"/"right" that make it clearly a direction.
_H_CLEAR_PREV = frozenset("""
    the to on at from far furthest farthest most more top bottom upper lower middle centre center
    of towards toward extreme your my its their his her our very in
""".split())
# Words just after "left"/"right" that make it clearly a direction.
_H_CLEAR_NEXT = frozenset("""
    of side sides edge edges half halves part corner corners end ends hand handed wing column
    columns border margin area region portion to""".split())
# "right next to", "right above", "right here": "right" is an intensifier, not a direction.
_H_INTENSIFIED = frozenset("""
    next beside besides above below under over beneath underneath behind by here there now away
    up down near against between inside alongside across along around through into onto off
    outside opposite before after where at on in front""".split())
# "the bolt left on the belt", "left behind": "left" is the verb "leave".
_H_LEFT_VERB_NEXT = frozenset("""
    behind over alone unattended out there here on in at untouched open uncapped standing lying
    by""".split())
# "how many bolts are left", "is right": auxiliary before it, not followed by a clear noun.
_H_AUX_PREV = frozenset("""
    is are was were be been being am remain remains remained remaining still get got gets has have
    had nothing anything something none what all that which""".split())

_H_UNSAFE = re.compile(
    r"\b(?:east|west|eastern|western|easternmost|westernmost|eastwards?|westwards?|"
    r"(?:north|south)-?(?:east|west)(?:ern|wards?)?|"
    r"clockwise|counter-?clockwise|anti-?clockwise|"
    r"lefty|lefties|righty|southpaw|port|starboard|mirror(?:ed)?|reversed|backwards?|"
    r"tilted|tilting|slanted|slanting|leaning|rotated)\b",
    _F,
)

# Vertical words. "lower" -> "higher" before "than", else "upper" (see _v_swap).
_V_WORD = re.compile(r"\b(top|bottom|upper|lower|above|below|highest|lowest|higher)(most)?\b", _F)
_V_SWAP = {"top": "bottom", "bottom": "top", "upper": "lower", "lower": "upper",
           "above": "below", "below": "above", "highest": "lowest", "lowest": "highest",
           "higher": "lower"}
_V_UNSAFE = re.compile(
    r"\b(?:north|south|northern|southern|northernmost|southernmost|northwards?|southwards?|"
    r"(?:north|south)-?(?:east|west)(?:ern|wards?)?|"
    r"clockwise|counter-?clockwise|anti-?clockwise|"
    r"up|down|upwards?|downwards?|upside|upright|uphill|downhill|overhead|"
    r"under|over|beneath|underneath|atop|on\s+top|high|low|"
    r"standing|stands|lying|lies|hanging|hangs|stacked|resting|rests|sitting|sits|"
    r"floor|ceiling|ground|sky|gravity|falling|rising|tops|bottoms|"
    r"tilted|tilting|slanted|slanting|leaning|rotated|mirror(?:ed)?|reversed|inverted)\b",
    _F,
)

# An ordinal or order word with no explicit direction means reading order ("the second bolt"),
# which a flip reverses without any word to rewrite.
_ORDER = re.compile(
    r"\b(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|"
    r"penultimate|next-to-last|\d+(?:st|nd|rd|th)|before|after|preceding|following|previous)\b",
    _F,
)
_ANY_DIRECTION = re.compile(
    r"\b(?:left|right|top|bottom|upper|lower|above|below|highest|lowest|higher)(?:most)?\b", _F
)

_WORD = re.compile(r"[A-Za-z]+")


def _neighbours(text: str, start: int, end: int) -> tuple[str, str, str, str]:
    """(previous word, next word, char before, char after) around text[start:end], lowercased."""
    before = text[:start]
    after = text[end:]
    prev_words = _WORD.findall(before[-40:])
    m = _WORD.search(after[:40])
    prev = prev_words[-1].lower() if prev_words else ""
    nxt = m.group(0).lower() if m else ""
    return prev, nxt, before[-1:] if before else "", after[:1]


def _h_is_ambiguous(text: str, m: re.Match) -> bool | None:
    """For a bare "left"/"right": True if it is not (surely) a direction, None if not spatial."""
    base = m.group(1).lower()
    if m.group(2):  # leftmost, right-hand (as one word) ... : always directional
        return False
    prev, nxt, cb, ca = _neighbours(text, m.start(), m.end())
    if base == "right" and nxt in ("angle", "angles", "angled", "triangle") and ca in (" ", "-"):
        return None  # geometry, not a side: leave it alone
    if ca == "-" or nxt in _H_CLEAR_NEXT or prev in _H_CLEAR_PREV:
        return False
    if prev in _H_AUX_PREV:
        return True
    if base == "right" and nxt in _H_INTENSIFIED:
        return True
    if base == "left" and nxt in _H_LEFT_VERB_NEXT:
        return True
    return False


def _check(text: str, axis: str) -> str:
    """Raise UnflippableText if ``text`` cannot be flipped along ``axis``; return the axis name."""
    axis_n = _AXES.get(str(axis).lower())
    if axis_n is None:
        raise ValueError(f"axis must be 'horizontal' or 'vertical', got {axis!r}")
    unsafe = _H_UNSAFE if axis_n == "horizontal" else _V_UNSAFE
    m = unsafe.search(text)
    if m:
        raise UnflippableText(f"{axis_n} flip: cannot rewrite {m.group(0)!r} in {text!r}")
    m = _ORDER.search(text)
    if m and not _ANY_DIRECTION.search(text):
        raise UnflippableText(f"{axis_n} flip: {m.group(0)!r} implies an order in {text!r}")
    if axis_n == "horizontal":
        for wm in _H_WORD.finditer(text):
            if _h_is_ambiguous(text, wm):
                raise UnflippableText(f"horizontal flip: {wm.group(0)!r} is ambiguous in {text!r}")
    return axis_n


def can_flip_text(text: str, axis: str) -> bool:
    """True if :func:`flip_text` can rewrite ``text`` for a flip along ``axis``."""
    try:
        _check(text, axis)
    except UnflippableText:
        return False
    return True


def flip_text(text: str, axis: str) -> str:
    """Rewrite ``text`` so that it stays true after flipping the image along ``axis``.

    ``axis="horizontal"`` (mirror left-right) swaps left/right, leftmost/rightmost,
    left-most/right-most, left-hand/right-hand, leftward(s)/rightward(s); "furthest left" etc.
    follow. ``axis="vertical"`` swaps top/bottom, topmost/bottommost, top-most/bottom-most,
    upper/lower, uppermost/lowermost, above/below, highest/lowest, higher -> lower and
    lower -> higher before "than" (else upper). All swaps happen at once (never sequentially),
    case is kept ("Left" -> "Right", "LEFT" -> "RIGHT") and only whole words change ("bright",
    "leftover", "copyright", "stop" stay as they are). Text without orientation words comes back
    unchanged.

    Raises :class:`UnflippableText` (a ``ValueError``) when the text has an orientation word
    that cannot be rewritten safely ("north", "east", "clockwise", "right next to", "on top of",
    an ordinal with no direction such as "the second bolt"); use :func:`can_flip_text` to ask
    first. Callers must then skip the flip for the whole image.
    """
    axis_n = _check(text, axis)
    if axis_n == "horizontal":
        def h_sub(m: re.Match) -> str:
            if _h_is_ambiguous(text, m) is None:
                return m.group(0)
            base = m.group(1)
            return _match_case(base, _H_SWAP[base.lower()]) + (m.group(2) or "")

        return _H_WORD.sub(h_sub, text)

    def v_sub(m: re.Match) -> str:
        base = m.group(1)
        low = base.lower()
        new = _V_SWAP[low]
        if low == "lower" and not m.group(2):
            _, nxt, _, _ = _neighbours(text, m.start(), m.end())
            if nxt == "than":
                new = "higher"
        return _match_case(base, new) + (m.group(2) or "")

    return _V_WORD.sub(v_sub, text)


# --------------------------------------------------------------------------------------------
# Text: colours
# --------------------------------------------------------------------------------------------

_COLOUR = re.compile(
    r"\b(?:"
    r"red|reds|reddish|redder|reddest|"
    r"greens?|greenish|greener|greenest|"
    r"blues?|bluish|blueish|bluer|bluest|"
    r"yellows?|yellowish|yellower|"
    r"oranges?|orangish|orangeish|orangey|orangy|"
    r"whites?|whitish|whiteish|whiter|whitest|off-white|"
    r"blacks?|blackish|blacker|blackest|"
    r"silvers?|silvery|silverish|silvered|"
    r"gr[ae]ys?|gr[ae]yish|gr[ae]yer|"
    r"metallic|chrome|chromed|chromium|steel|steely|stainless|"
    r"gold|golden|goldish|bronze|copper|coppery|brass|brassy|rust|rusty|rusted|"
    r"purples?|purplish|violet|lilac|lavender|mauve|indigo|"
    r"pinks?|pinkish|rose|rosy|salmon|coral|"
    r"browns?|brownish|tan|beige|khaki|cream|creamy|ivory|"
    r"cyan|teal|turquoise|aqua|azure|navy|cobalt|sapphire|"
    r"magenta|fuchsia|maroon|crimson|scarlet|burgundy|cherry|ruby|"
    r"amber|ochre|ocher|mustard|lemon|lime|olive|emerald|mint|jade|"
    r"charcoal|ebony|jet-black|"
    r"colou?rs?|colou?red|colou?rful|colou?rless|multi-?colou?red|monochrome|"
    r"hues?|tint|tinted|tinge|shade|shades|pastel|neon"
    r")\b",
    _F,
)


def names_colour(text: str) -> bool:
    """True if ``text`` names a colour (or colour itself): hue/saturation jitter could falsify it.

    Covers the 8 vocabulary colours, their "-ish"/comparative forms (reddish, bluish, whiter),
    grey/gray, metallic/chrome/steel, gold/golden/bronze/copper/brass/rust, the usual colour
    names (purple, violet, pink, brown, cyan, teal, magenta, beige, navy, maroon, crimson,
    scarlet, amber, turquoise, ivory, ...), "colour"/"color"/"coloured" and "hue"/"tint".
    "dark red" / "light blue" match through the colour word.
    """
    return bool(_COLOUR.search(text))


# --------------------------------------------------------------------------------------------
# The augmentation
# --------------------------------------------------------------------------------------------

_BOX_TOL = 1e-3  # px: albumentations' box output must agree with the exact arithmetic

# Standard-normal noise banks keyed by (rows, cols, channels) size bucket; shared by all
# instances of a process (read-only, a few MB each).
_NOISE_BANKS: dict[tuple[int, int, int], np.ndarray] = {}


class InstructionAugment:
    """Augment one image together with all of its instruction pairs.

    Probabilities: ``hflip``, ``vflip`` (each only when every text can be rewritten), ``hue``
    (hue/saturation, only when no pair names a colour), ``photometric`` (mild
    brightness/contrast, plus gamma half of those times), ``crop`` (window sides drawn from
    ``[crop_min_scale, 1]`` of the image's, widened to hold the boxes that must stay whole),
    ``blur`` (small Gaussian), ``noise`` (Gaussian, sigma 2-7 grey levels).

    ``aug(image_bgr, pairs, scene_boxes_xyxy=None, rng=None) -> (image_bgr, new_pairs)``.
    ``pairs`` all belong to ``image_bgr``; ``scene_boxes_xyxy`` (optional) holds every object of
    the scene, so a crop keeps all of them. Returned pairs are new objects with rewritten
    instructions and boxes (pixels, xyxy, float); ``image``, ``type``, ``object_ids`` and
    ``extra`` are carried over unchanged (``extra`` is not rewritten). Inputs are not mutated.
    """

    # Mild photometric limits: white (255) stays >= 255 * (1 - 0.08 - 0.07) = 217 (85 %),
    # black (0) stays <= 0.08 * 255 = 20; gamma leaves 0 and 255 where they are.
    BRIGHTNESS = 0.08
    CONTRAST = 0.07
    GAMMA = (88, 112)
    HUE_SHIFT = (3, 18)  # OpenCV hue units (2 degrees each); sign random, never ~0 when applied
    SAT_SCALE = (0.7, 1.3)
    NOISE_SIGMA = (2.0, 7.0)

    def __init__(self, *, hflip: float = 0.5, vflip: float = 0.0, hue: float = 0.5,
                 photometric: float = 0.8, crop: float = 0.3, crop_min_scale: float = 0.6,
                 blur: float = 0.1, noise: float = 0.2):
        for name, v in (("hflip", hflip), ("vflip", vflip), ("hue", hue),
                        ("photometric", photometric), ("crop", crop), ("blur", blur),
                        ("noise", noise)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        if not 0.0 < float(crop_min_scale) <= 1.0:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {crop_min_scale!r}")
        self.hflip, self.vflip, self.hue = float(hflip), float(vflip), float(hue)
        self.photometric, self.crop = float(photometric), float(crop)
        self.crop_min_scale, self.blur, self.noise = float(crop_min_scale), float(blur), float(noise)

        self._photo = A.Compose([
            A.RandomBrightnessContrast(brightness_limit=self.BRIGHTNESS,
                                       contrast_limit=self.CONTRAST, p=1.0),
            A.RandomGamma(gamma_limit=self.GAMMA, p=0.5),
        ])
        self._blur = A.Compose([A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2), p=1.0)])
        self._bbox_params = A.BboxParams(format="pascal_voc", label_fields=["box_index"],
                                         clip=False, min_area=0.0, min_visibility=0.0,
                                         filter_invalid_bboxes=False)

    def __repr__(self) -> str:
        return (f"InstructionAugment(hflip={self.hflip}, vflip={self.vflip}, hue={self.hue}, "
                f"photometric={self.photometric}, crop={self.crop}, "
                f"crop_min_scale={self.crop_min_scale}, blur={self.blur}, noise={self.noise})")

    # ---------------------------------------------------------------------------------------
    def __call__(self, image_bgr: np.ndarray, pairs: list[InstructionPair],
                 scene_boxes_xyxy: list | None = None,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, list[InstructionPair]]:
        if rng is None:
            rng = np.random.default_rng()
        img = np.asarray(image_bgr)
        if img.ndim not in (2, 3) or img.dtype != np.uint8:
            raise ValueError(f"image must be uint8 HxW or HxWxC (BGR, as cv2.imread gives), "
                             f"got {img.dtype} {img.shape}")
        H, W = img.shape[:2]
        pairs = list(pairs)
        texts = [p.instruction for p in pairs]

        # All the draws up front, a fixed number of them: the same rng gives the same result.
        u = rng.random(7)
        crop_u = rng.random(4)
        seed = int(rng.integers(0, 2**31 - 1))

        do_h = u[0] < self.hflip and all(can_flip_text(t, "horizontal") for t in texts)
        do_v = u[1] < self.vflip and all(can_flip_text(t, "vertical") for t in texts)
        is_colour = img.ndim == 3 and img.shape[2] == 3
        do_hue = (is_colour and u[2] < self.hue
                  and not any(names_colour(t) or p.type == "attribute" for t, p in zip(texts, pairs)))
        do_photo = u[3] < self.photometric
        do_blur = u[4] < self.blur
        do_noise = u[5] < self.noise
        window = self._crop_window(W, H, pairs, scene_boxes_xyxy, crop_u) if u[6] < self.crop else None

        # ---- geometry: image via albumentations, boxes exact (checked against albumentations)
        boxes = [np.asarray(p.boxes_xyxy, dtype=np.float64).reshape(-1, 4) for p in pairs]
        if window is not None or do_h or do_v:
            img, boxes = self._geometry(img, boxes, window, do_h, do_v)

        # ---- photometric (image only)
        if do_hue:
            img = self._hue_sat(img, rng_seed=seed)
        if do_photo:
            self._photo.set_random_seed(seed)
            img = self._photo(image=img)["image"]
        if do_blur:
            self._blur.set_random_seed(seed + 1)
            img = self._blur(image=img)["image"]
        if do_noise:
            img = self._add_noise(img, seed)

        out = []
        for p, t, b in zip(pairs, texts, boxes):
            if do_h:
                t = flip_text(t, "horizontal")
            if do_v:
                t = flip_text(t, "vertical")
            out.append(replace(
                p,
                instruction=t,
                boxes_xyxy=[[float(v) for v in row] for row in b],
                object_ids=None if p.object_ids is None else list(p.object_ids),
                extra=dict(p.extra),
            ))
        if np.may_share_memory(img, image_bgr):  # e.g. a bare crop is a view of the input
            img = img.copy()
        return np.ascontiguousarray(img), out

    # ---------------------------------------------------------------------------------------
    def _crop_window(self, W: int, H: int, pairs: Sequence[InstructionPair],
                     scene_boxes: list | None, u: np.ndarray) -> tuple[int, int, int, int] | None:
        """An integer window (x0, y0, x1, y1) holding every box that must stay whole, or None."""
        if scene_boxes is not None:
            keep = [list(b) for b in scene_boxes] + [list(b) for p in pairs for b in p.boxes_xyxy]
        else:
            if any(p.type in WHOLE_IMAGE_TYPES for p in pairs):
                return None
            keep = [list(b) for p in pairs for b in p.boxes_xyxy]
        lo = self.crop_min_scale
        cw = int(round(W * (lo + (1.0 - lo) * u[0])))
        ch = int(round(H * (lo + (1.0 - lo) * u[1])))
        if keep:
            k = np.asarray(keep, dtype=np.float64).reshape(-1, 4)
            ux1, uy1 = int(np.floor(k[:, 0].min())), int(np.floor(k[:, 1].min()))
            ux2, uy2 = int(np.ceil(k[:, 2].max())), int(np.ceil(k[:, 3].max()))
            if ux1 < 0 or uy1 < 0 or ux2 > W or uy2 > H:
                return None  # a box already leaves the image: do not touch it
        else:
            ux1, uy1, ux2, uy2 = W, H, 0, 0  # nothing to hold
        cw = min(W, max(cw, ux2 - ux1, 1))
        ch = min(H, max(ch, uy2 - uy1, 1))
        if cw >= W and ch >= H:
            return None
        # x0 in [max(0, ux2 - cw), min(ux1, W - cw)] so that the window holds [ux1, ux2].
        x_lo, x_hi = max(0, ux2 - cw), min(ux1, W - cw)
        y_lo, y_hi = max(0, uy2 - ch), min(uy1, H - ch)
        x0 = x_lo + int(np.floor(u[2] * (x_hi - x_lo + 1)))
        y0 = y_lo + int(np.floor(u[3] * (y_hi - y_lo + 1)))
        x0, y0 = min(x0, x_hi), min(y0, y_hi)
        return x0, y0, x0 + cw, y0 + ch

    def _geometry(self, img: np.ndarray, boxes: list[np.ndarray], window, do_h: bool, do_v: bool):
        H, W = img.shape[:2]
        transforms: list = []
        # Exact arithmetic, in the same order as the transforms.
        exact = [b.copy() for b in boxes]
        if window is not None:
            x0, y0, x1, y1 = window
            transforms.append(A.Crop(x_min=x0, y_min=y0, x_max=x1, y_max=y1, p=1.0))
            for b in exact:
                b[:, [0, 2]] -= x0
                b[:, [1, 3]] -= y0
            W, H = x1 - x0, y1 - y0
        if do_h:
            transforms.append(A.HorizontalFlip(p=1.0))
            for b in exact:
                b[:, [0, 2]] = W - b[:, [2, 0]]
        if do_v:
            transforms.append(A.VerticalFlip(p=1.0))
            for b in exact:
                b[:, [1, 3]] = H - b[:, [3, 1]]

        # albumentations moves the pixels and (the boxes it accepts: inside the image, with area)
        # the boxes; its boxes must agree with the exact ones, which are what we return.
        H0, W0 = img.shape[:2]
        flat = np.concatenate(boxes, axis=0) if boxes else np.zeros((0, 4))
        valid = ((flat[:, 0] >= 0) & (flat[:, 1] >= 0) & (flat[:, 2] <= W0) & (flat[:, 3] <= H0)
                 & (flat[:, 2] > flat[:, 0]) & (flat[:, 3] > flat[:, 1]))
        idx = np.flatnonzero(valid)
        res = A.Compose(transforms, bbox_params=self._bbox_params)(
            image=img, bboxes=flat[idx].reshape(-1, 4), box_index=idx.tolist())
        if idx.size:
            flat_exact = np.concatenate(exact, axis=0)
            got = np.asarray(res["bboxes"], dtype=np.float64).reshape(-1, 4)
            got_idx = np.asarray(res["box_index"], dtype=np.int64)
            if (got_idx.shape != idx.shape or np.any(got_idx != idx)
                    or np.abs(got - flat_exact[idx]).max() > _BOX_TOL):
                raise RuntimeError("albumentations' boxes disagree with the exact transform "
                                   f"(crop={window}, hflip={do_h}, vflip={do_v})")
        return res["image"], exact

    def _hue_sat(self, img: np.ndarray, rng_seed: int) -> np.ndarray:
        """Shift hue by 3-18 OpenCV units (either sign) and scale saturation, via one LUT.

        Grey pixels (saturation 0) stay grey; value is untouched.
        """
        r = np.random.default_rng(rng_seed + 2)
        lo, hi = self.HUE_SHIFT
        shift = int(r.integers(lo, hi + 1)) * (1 if r.random() < 0.5 else -1)
        scale = float(r.uniform(*self.SAT_SCALE))
        lut = np.empty((256, 1, 3), dtype=np.uint8)
        ar = np.arange(256)
        lut[:, 0, 0] = np.where(ar < 180, (ar + shift) % 180, ar)
        lut[:, 0, 1] = np.clip(np.rint(ar * scale), 0, 255)
        lut[:, 0, 2] = ar
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        return cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2BGR)

    def _add_noise(self, img: np.ndarray, seed: int) -> np.ndarray:
        """Gaussian noise from a fixed bank at a random offset (drawing fresh noise costs ~8 ms)."""
        H, W = img.shape[:2]
        C = 1 if img.ndim == 2 else img.shape[2]
        # The bank depends only on the image size bucket (never on call history), so the
        # result is a function of (image, seed) alone.
        key = (-(-(H + 64) // 256) * 256, -(-(W + 64) // 256) * 256, max(C, 3))
        bank = _NOISE_BANKS.get(key)
        if bank is None:
            if len(_NOISE_BANKS) >= 4:
                _NOISE_BANKS.pop(next(iter(_NOISE_BANKS)))
            bank = np.random.default_rng(0x5EED).standard_normal(key).astype(np.float32)
            _NOISE_BANKS[key] = bank
        r = np.random.default_rng(seed + 3)
        oy = int(r.integers(0, bank.shape[0] - H + 1))
        ox = int(r.integers(0, bank.shape[1] - W + 1))
        sigma = float(r.uniform(*self.NOISE_SIGMA))
        patch = bank[oy:oy + H, ox:ox + W, :C]
        if img.ndim == 2:
            patch = patch[:, :, 0]
        return cv2.addWeighted(img, 1.0, patch, sigma, 0.0, dtype=cv2.CV_8U)

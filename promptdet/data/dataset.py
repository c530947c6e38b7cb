"""Training samples: one image with K instruction pairs, augmented together and letterboxed.

For synthetic sources the instructions are drawn anew from ``scenes.jsonl`` every epoch
(training wordings only), so a wording never repeats exactly; other sources sample from their
pairs. Each pair also gets its *context group* (the parts stage 1 should find, see
``promptdet.train.loss``), computed from the scene's facts when they are known.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from promptdet.data.pairs import InstructionPair
from promptdet.data.query import context, matches
from promptdet.data.sources import LoadedSource
from promptdet.data.synth.distractors import distractor_image
from promptdet.data.synth.instruct import generate_instructions, weighted_types
from promptdet.data.synth.logic import LOGIC_TYPES
from promptdet.data.vocab import DEFECTS
from promptdet.runtime.preprocess import letterbox


@dataclass
class ImageEntry:
    source: int
    path: str  # absolute path of the image
    pairs: list[InstructionPair]
    scene: dict | None


@dataclass
class Sample:
    image: np.ndarray  # [S, S, 3] uint8 RGB, letterboxed
    prompts: list[str]  # K
    answers: list[np.ndarray]  # K x [G, 4] input pixels
    groups: list[np.ndarray]  # K x [Gg, 4]
    valid: np.ndarray  # [K] bool
    types: list[str]
    # Every part of a synthetic scene and its defect kind (index into DEFECT_KINDS); empty otherwise.
    part_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # [N, 4] input pixels
    part_kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [N]
    source: int = 0  # index of the training source the image came from (replay sources come last)


# The defect-kind labels of the training-time probe (see promptdet.train.loss.DefectProbe).
DEFECT_KINDS = ("none",) + DEFECTS


def group_boxes(pair: InstructionPair, scene: dict | None) -> list[list[float]]:
    """The parts stage 1 should find for ``pair``: its answer, widened by the query's context."""
    query = pair.extra.get("query")
    if scene is None or not query:
        return pair.boxes_xyxy
    objects = scene["objects"]
    if query.get("form") or query.get("absent") in LOGIC_TYPES:
        # "undamaged nuts" is about the nuts: stage 1 finds them all, the later stages pick.
        return [list(map(float, o["bbox"])) for o in objects if matches(o, context(query["select"]))]
    if pair.type in ("category", "attribute", "defect", "absent"):
        return pair.boxes_xyxy
    members = [o for o in objects if matches(o, query["select"])]
    if pair.type == "relation":
        members += [o for o in objects if o["id"] == query.get("ref_id")]
    return [list(map(float, o["bbox"])) for o in members] or pair.boxes_xyxy


def native_window(objects: list[dict], size_wh: tuple[int, int], side: int, rng: np.random.Generator,
                  tries: int = 24) -> tuple[int, int, int, int] | None:
    """A ``side`` x ``side`` window (x0, y0, x1, y1), clipped to the image, that cuts no object.

    Every object's box is wholly inside or wholly outside it, and at least one is inside, so the
    scene's facts hold for the window unchanged. Of the qualifying windows among ``tries`` random
    ones, the one holding the most damaged parts is kept: the windows are there to teach small
    details (a defect is a few pixels wide) at the image's own resolution, at a fraction of the
    cost of the whole image. None when the image is no larger than the window or none qualifies.
    """
    W, H = size_wh
    cw, ch = min(W, side), min(H, side)
    if (cw, ch) == (W, H) or not objects:
        return None
    boxes = np.asarray([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4)
    damaged = np.asarray([bool(o.get("defects")) for o in objects])
    best, best_damaged = None, -1
    for _ in range(tries):
        x0 = int(rng.integers(0, W - cw + 1))
        y0 = int(rng.integers(0, H - ch + 1))
        inside = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x0 + cw) & (boxes[:, 3] <= y0 + ch)
        outside = (boxes[:, 2] <= x0) | (boxes[:, 0] >= x0 + cw) | (boxes[:, 3] <= y0) | (boxes[:, 1] >= y0 + ch)
        n_damaged = int((inside & damaged).sum())
        if inside.any() and (inside | outside).all() and n_damaged > best_damaged:
            best, best_damaged = (x0, y0, x0 + cw, y0 + ch), n_damaged
    return best


def crop_scene(scene: dict, window: tuple[int, int, int, int]) -> dict:
    """The scene as seen through ``window``: the objects inside it, boxes in the window's pixels."""
    x0, y0, x1, y1 = window
    objects = []
    for o in scene["objects"]:
        b = o["bbox"]
        if b[0] >= x0 and b[1] >= y0 and b[2] <= x1 and b[3] <= y1:
            objects.append({**o, "bbox": [b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0]})
    return {**scene, "width": x1 - x0, "height": y1 - y0, "objects": objects}


def index_images(sources: list[LoadedSource]) -> list[ImageEntry]:
    entries = []
    for s, src in enumerate(sources):
        by_image: dict[str, list[InstructionPair]] = defaultdict(list)
        for pair in src.pairs:
            by_image[pair.image].append(pair)
        scenes = {sc["image"]: sc for sc in src.scenes} if src.scenes else {}
        for image in sorted(set(by_image) | set(scenes)):
            entries.append(ImageEntry(s, str(src.images_root / image), by_image.get(image, []), scenes.get(image)))
    return entries


class PromptDataset(Dataset):
    """Items are images; each yields K prompts with their answers and context groups.

    redraw: draw synthetic instructions anew each epoch (call ``set_epoch``).
    augment: an ``InstructionAugment`` or None. cache: keep decoded, downscaled images in RAM.
    native_crop: share of synthetic images (redrawn from their scene) served as an imgsz x imgsz
    window at the image's own resolution instead of the whole image scaled down (``native_window``).
    foreign_absent: share of the absent instructions that name a thing from outside the line
    ("the dogs"; synthetic scenes). distractors: share of items whose picture is swapped for a
    procedural texture (``synth.distractors``) with every answer empty: the same instructions,
    asked of a picture that holds no part.
    """

    def __init__(self, sources: list[LoadedSource], imgsz: int, prompts_per_image: int = 8, augment=None,
                 redraw: bool = True, seed: int = 0, cache: bool = True, absent_rate: float = 0.2,
                 absent_mix: str = "default", type_weights: dict[str, int] | None = None,
                 native_crop: float = 0.0, foreign_absent: float = 0.0, distractors: float = 0.0):
        self.entries = index_images(sources)
        if not self.entries:
            raise ValueError("the training data holds no images")
        self.imgsz, self.k, self.augment = imgsz, prompts_per_image, augment
        self.redraw, self.seed, self.cache, self.absent_rate = redraw, seed, cache, absent_rate
        self.absent_mix = absent_mix
        self.types = weighted_types(type_weights)  # checked here, so the API gets the CLI's errors
        if not 0.0 <= native_crop <= 1.0:
            raise ValueError(f"native_crop must be a share in [0, 1], got {native_crop}")
        self.native_crop = float(native_crop)
        for name, share in (("foreign_absent", foreign_absent), ("distractors", distractors)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a share in [0, 1], got {share}")
        self.foreign_absent, self.distractors = float(foreign_absent), float(distractors)
        self.epoch = 0
        self._images: dict[int, tuple[np.ndarray, float]] = {}
        self._native: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def source_of(self, i: int) -> int:
        return self.entries[i].source

    def _load(self, i: int) -> tuple[np.ndarray, float]:
        """BGR image scaled so its long side is at most imgsz, and that scale factor.

        Augmenting full-size pixels that the letterbox then throws away would be wasted work.
        """
        if i in self._images:
            return self._images[i]
        img = self._read(i)
        r = min(1.0, self.imgsz / max(img.shape[:2]))
        if r < 1:
            img = cv2.resize(img, (round(img.shape[1] * r), round(img.shape[0] * r)), interpolation=cv2.INTER_AREA)
        if self.cache:
            self._images[i] = (img, r)
        return img, r

    def _read(self, i: int) -> np.ndarray:
        img = cv2.imread(self.entries[i].path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read training image {self.entries[i].path}")
        return img

    def _load_native(self, i: int) -> np.ndarray:
        if i in self._native:
            return self._native[i]
        img = self._read(i)
        if self.cache:
            self._native[i] = img
        return img

    def _native_view(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, dict] | None:
        """A window of image i at its own resolution and the scene inside it, or None (whole image)."""
        scene = self.entries[i].scene
        if not (self.native_crop and scene is not None and self.redraw) or rng.random() >= self.native_crop:
            return None
        size_wh = (int(scene["width"]), int(scene["height"]))
        window = native_window(scene["objects"], size_wh, self.imgsz, rng)
        if window is None:
            return None
        img = self._load_native(i)
        if img.shape[1] != size_wh[0] or img.shape[0] != size_wh[1]:
            return None  # the scene's coordinates are not this file's pixels: do not guess
        x0, y0, x1, y1 = window
        return img[y0:y1, x0:x1], crop_scene(scene, window)

    def _pairs(self, i: int, rng: np.random.Generator, scene: dict | None = None) -> list[InstructionPair]:
        entry = self.entries[i]
        scene = entry.scene if scene is None else scene
        if scene is not None and self.redraw:
            pairs = generate_instructions(scene, rng, "train", per_image=self.k, absent_rate=self.absent_rate,
                                          absent_mix=self.absent_mix, types=self.types,
                                          foreign_share=self.foreign_absent)
        else:
            pairs = list(entry.pairs)
            if len(pairs) > self.k:
                pairs = [pairs[j] for j in rng.choice(len(pairs), self.k, replace=False)]
        return pairs

    def _distractor(self, i: int, rng: np.random.Generator) -> Sample:
        """Item i's instructions asked of a texture: every answer, group and part list is empty."""
        pairs = self._pairs(i, rng)[:self.k]
        prompts = [p.instruction for p in pairs]
        valid = np.array([True] * len(prompts) + [False] * (self.k - len(prompts)), bool)
        prompts += [prompts[0] if prompts else "nothing"] * (self.k - len(prompts))
        empty = [np.zeros((0, 4), np.float32) for _ in range(self.k)]
        image = cv2.cvtColor(distractor_image(rng, self.imgsz), cv2.COLOR_BGR2RGB)
        types = ["absent"] * len(pairs) + ["pad"] * (self.k - len(pairs))
        return Sample(image, prompts, empty, [e.copy() for e in empty], valid, types,
                      np.zeros((0, 4), np.float32), np.zeros(0, np.int64), self.entries[i].source)

    def __getitem__(self, i: int) -> Sample:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
        # drawn only when asked for, so a dataset without distractors serves what it always did
        if self.distractors and rng.random() < self.distractors:
            return self._distractor(i, rng)
        scene = self.entries[i].scene
        native = self._native_view(i, rng)
        if native is not None:
            (image, scene), r = native, 1.0
        else:
            image, r = self._load(i)  # boxes are in original pixels: r brings them to this image's scale
        pairs = self._pairs(i, rng, scene)
        groups = [group_boxes(p, scene) for p in pairs]
        scene_boxes = [o["bbox"] for o in scene["objects"]] if scene else None

        def scaled(boxes):
            return [[v * r for v in b] for b in boxes]

        # Group boxes ride along as companion pairs so every geometric transform moves them too.
        work = [InstructionPair(p.image, p.instruction, scaled(p.boxes_xyxy), p.type) for p in pairs]
        companions = [InstructionPair("", "group", scaled(g), "category") for g in groups]
        parts = InstructionPair("", "parts", scaled(scene_boxes or []), "category")
        if self.augment is not None and pairs:
            image, out = self.augment(image, work + companions + [parts], scaled(scene_boxes) if scene_boxes else None, rng)
            work, companions, parts = out[:len(work)], out[len(work):-1], out[-1]
        boxed, lb = letterbox(image, self.imgsz)
        prompts = [p.instruction for p in work]
        answers = [lb.boxes_to_input(np.array(p.boxes_xyxy, np.float32)) for p in work]
        group = [lb.boxes_to_input(np.array(c.boxes_xyxy, np.float32)) for c in companions]
        valid = np.ones(len(prompts), bool)
        while len(prompts) < self.k:  # an image with few pairs: padding rows the loss ignores
            prompts.append(prompts[0] if prompts else "nothing")
            answers.append(np.zeros((0, 4), np.float32))
            group.append(np.zeros((0, 4), np.float32))
            valid = np.append(valid, False)
        types = [p.type for p in work] + ["pad"] * (self.k - len(work))
        kinds = [DEFECT_KINDS.index(o["defects"][0]) if o["defects"] else 0 for o in scene["objects"]] if scene else []
        return Sample(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB), prompts, answers, group, valid, types,
                      lb.boxes_to_input(np.array(parts.boxes_xyxy, np.float32).reshape(-1, 4)),
                      np.array(kinds, np.int64), self.entries[i].source)


def _pad(boxes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    g = max([len(b) for b in boxes] + [1])
    out = torch.zeros(len(boxes), g, 4)
    mask = torch.zeros(len(boxes), g, dtype=torch.bool)
    for i, b in enumerate(boxes):
        if len(b):
            out[i, :len(b)] = torch.from_numpy(b)
            mask[i, :len(b)] = True
    return out, mask


def collate(samples: list[Sample]):
    """-> images uint8 [B, 3, S, S], prompts (B lists of K), PromptTargets tensors, types."""
    from promptdet.train.loss import PromptTargets

    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    b, k = len(samples), len(samples[0].prompts)
    flat_ans = [a for s in samples for a in s.answers]
    flat_grp = [g for s in samples for g in s.groups]
    ans, ans_mask = _pad(flat_ans)
    grp, grp_mask = _pad(flat_grp)
    targets = PromptTargets(ans.reshape(b, k, -1, 4), ans_mask.reshape(b, k, -1), grp.reshape(b, k, -1, 4),
                            grp_mask.reshape(b, k, -1), torch.from_numpy(np.stack([s.valid for s in samples])))
    parts, part_mask = _pad([s.part_boxes for s in samples])
    kinds = torch.full(part_mask.shape, -1, dtype=torch.long)
    for i, s in enumerate(samples):
        kinds[i, :len(s.part_kinds)] = torch.from_numpy(s.part_kinds)
    targets.part_boxes, targets.part_kinds = parts, kinds
    targets.source = torch.tensor([s.source for s in samples], dtype=torch.long)
    return images, [s.prompts for s in samples], targets, [s.types for s in samples]

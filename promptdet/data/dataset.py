"""Training samples: one image with K instruction pairs, augmented together and letterboxed.

For synthetic sources the instructions are drawn anew from ``scenes.jsonl`` every epoch
(training wordings only), so a wording never repeats exactly; other sources sample from their
pairs. Each pair also gets its *context group* (the parts stage 1 should find, see
``promptdet.train.loss``), computed from the scene's facts when they are known.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from promptdet.data.pairs import InstructionPair
from promptdet.data.sources import LoadedSource
from promptdet.data.synth.instruct import generate_instructions, matches, weighted_types
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


def group_boxes(pair: InstructionPair, scene: dict | None) -> list[list[float]]:
    """The parts stage 1 should find for ``pair``: its answer, widened by the query's context."""
    query = pair.extra.get("query")
    if scene is None or not query or pair.type in ("category", "attribute", "defect", "absent"):
        return pair.boxes_xyxy
    objects = scene["objects"]
    members = [o for o in objects if matches(o, query["select"])]
    if pair.type == "relation":
        members += [o for o in objects if o["id"] == query.get("ref_id")]
    return [list(map(float, o["bbox"])) for o in members] or pair.boxes_xyxy


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
    """

    def __init__(self, sources: list[LoadedSource], imgsz: int, prompts_per_image: int = 8, augment=None,
                 redraw: bool = True, seed: int = 0, cache: bool = True, absent_rate: float = 0.2,
                 absent_mix: str = "default", type_weights: dict[str, int] | None = None):
        self.entries = index_images(sources)
        if not self.entries:
            raise ValueError("the training data holds no images")
        self.imgsz, self.k, self.augment = imgsz, prompts_per_image, augment
        self.redraw, self.seed, self.cache, self.absent_rate = redraw, seed, cache, absent_rate
        self.absent_mix = absent_mix
        self.types = weighted_types(type_weights)  # checked here, so the API gets the CLI's errors
        self.epoch = 0
        self._images: dict[int, tuple[np.ndarray, float]] = {}

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
        img = cv2.imread(self.entries[i].path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read training image {self.entries[i].path}")
        r = min(1.0, self.imgsz / max(img.shape[:2]))
        if r < 1:
            img = cv2.resize(img, (round(img.shape[1] * r), round(img.shape[0] * r)), interpolation=cv2.INTER_AREA)
        if self.cache:
            self._images[i] = (img, r)
        return img, r

    def _pairs(self, i: int, rng: np.random.Generator) -> list[InstructionPair]:
        entry = self.entries[i]
        if entry.scene is not None and self.redraw:
            pairs = generate_instructions(entry.scene, rng, "train", per_image=self.k, absent_rate=self.absent_rate,
                                          absent_mix=self.absent_mix, types=self.types)
        else:
            pairs = list(entry.pairs)
            if len(pairs) > self.k:
                pairs = [pairs[j] for j in rng.choice(len(pairs), self.k, replace=False)]
        return pairs

    def __getitem__(self, i: int) -> Sample:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
        entry = self.entries[i]
        image, r = self._load(i)  # boxes are in original pixels: r brings them to this image's scale
        pairs = self._pairs(i, rng)
        groups = [group_boxes(p, entry.scene) for p in pairs]
        scene_boxes = [o["bbox"] for o in entry.scene["objects"]] if entry.scene else None

        def scaled(boxes):
            return [[v * r for v in b] for b in boxes]

        # Group boxes ride along as companion pairs so every geometric transform moves them too.
        work = [InstructionPair(p.image, p.instruction, scaled(p.boxes_xyxy), p.type) for p in pairs]
        companions = [InstructionPair("", "group", scaled(g), "category") for g in groups]
        if self.augment is not None and pairs:
            image, out = self.augment(image, work + companions, scaled(scene_boxes) if scene_boxes else None, rng)
            work, companions = out[:len(work)], out[len(work):]
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
        return Sample(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB), prompts, answers, group, valid, types)


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
    return images, [s.prompts for s in samples], targets, [s.types for s in samples]

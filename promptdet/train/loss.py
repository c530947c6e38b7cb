"""Training loss: assignment per (image, prompt) pair, so one box can answer several prompts.

Each (image, prompt) row is its own single-class detection problem. Stage 1 (the dense prompt
similarity) learns to find the prompt's *context group* (all bolts for "the leftmost bolt", the
nuts and the gear for "the nut left of the gear"); it is assigned with ultralytics'
task-aligned assigner and trained with BCE, CIoU and DFL. Stage 2 (the reasoning over
candidates) learns the answer itself, with an IoU-aware target per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from torch import nn

from promptdet.model._ultralytics import BboxLoss, TaskAlignedAssigner
from promptdet.model.detector import DetectorOutput
from promptdet.model.fusion import gather_anchors


@dataclass
class PromptTargets:
    """Per (image, prompt) targets, padded to G boxes.

    answer_boxes [B, K, G, 4] xyxy input pixels, answer_mask [B, K, G] bool;
    group_boxes [B, K, Gg, 4], group_mask [B, K, Gg]: the context group (equals the answer when
    no scene facts are known); prompt_valid [B, K] bool: padding prompts are ignored.
    """

    answer_boxes: torch.Tensor
    answer_mask: torch.Tensor
    group_boxes: torch.Tensor
    group_mask: torch.Tensor
    prompt_valid: torch.Tensor
    # Every part of each image and its defect kind (-1 = padding or unknown): part_boxes [B, N, 4], part_kinds [B, N].
    part_boxes: torch.Tensor | None = None
    part_kinds: torch.Tensor | None = None
    # The training source of each image [B] (see PromptDataset; replay sources come last).
    source: torch.Tensor | None = None

    def to(self, device) -> "PromptTargets":
        return PromptTargets(*(None if t is None else t.to(device) for t in (
            self.answer_boxes, self.answer_mask, self.group_boxes, self.group_mask, self.prompt_valid,
            self.part_boxes, self.part_kinds, self.source)))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [..., N, 4], b [..., G, 4] xyxy -> IoU [..., N, G]."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter + 1e-9)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() else x


def _upcast(out: DetectorOutput) -> DetectorOutput:
    return DetectorOutput(**{f.name: _as_float(getattr(out, f.name)) for f in fields(out)})


# Per-image outputs (first dimension B); the rest (anchors, strides) are shared by the batch.
_PER_IMAGE = ("box_dist", "boxes_xyxy", "dense_logits", "cand_idx", "cand_logits", "cand_valid", "region_embeds",
              "image_familiarity")


def rows_of(out: DetectorOutput, rows: torch.Tensor) -> DetectorOutput:
    """The outputs of the images ``rows`` (a [B] bool mask or indices) of a batch."""
    picked = {name: getattr(out, name)[rows] for name in _PER_IMAGE}
    familiarity = out.prompt_familiarity
    picked["prompt_familiarity"] = familiarity[rows] if familiarity.shape[0] == out.dense_logits.shape[0] else familiarity
    return DetectorOutput(**picked, anchor_points=out.anchor_points, stride_tensor=out.stride_tensor)


class PromptDetLoss:
    """Weights follow YOLO's defaults (box 7.5, cls 0.5, dfl 1.5); ``reason`` weighs stage 2.

    ``empty`` weighs a loss on the *best* candidate of each instruction whose answer is empty
    (BCE towards 0 on its logit). Stage 2's loss spreads over all of a row's candidates, so one
    confident box on an absent thing costs little there, yet it is exactly what a user sees ("a
    box for something that is not in the picture"). 0 = off.

    Stage 1 (assignment over every anchor, BCE, box losses) is skipped when its outputs carry no
    gradient: a run that trains only later stages (``--train-only verifier``) gains nothing from it.

    ``distill`` weighs :func:`distillation_loss` on the rows given as ``distill_rows``, against the
    ``teacher``'s output for those rows (a fine-tune keeping its starting model's answers on the replay
    data). 0 = off.
    """

    def __init__(self, reg_max: int = 16, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5,
                 reason: float = 1.0, topk: int = 10, empty: float = 0.0, distill: float = 0.0):
        self.reg_max = reg_max
        self.weights = {"box": box, "cls": cls, "dfl": dfl, "reason": reason, "empty": empty, "distill": distill}
        self.assigner = TaskAlignedAssigner(topk=topk, num_classes=1, alpha=0.5, beta=6.0)
        self.bbox_loss = BboxLoss(reg_max)

    def __call__(self, out: DetectorOutput, t: PromptTargets, imgsz_hw: tuple[int, int],
                 teacher: DetectorOutput | None = None, distill_rows: torch.Tensor | None = None):
        # Under AMP the forward pass gives half-precision tensors; the assigner writes float32 IoUs into
        # a tensor of the boxes' dtype and the losses need float32 range, so upcast (as ultralytics does).
        out = _upcast(out)
        b = out.dense_logits.shape[0]
        anchors_px = out.anchor_points * out.stride_tensor

        loss_cls = loss_box = loss_dfl = out.box_dist.sum() * 0.0
        if out.dense_logits.requires_grad or out.box_dist.requires_grad:
            loss_cls, loss_box, loss_dfl = self._dense(out, t, imgsz_hw)

        # ---- stage 2: the answer, scored at each candidate ----
        cand_boxes = gather_anchors(out.boxes_xyxy.detach(), out.cand_idx)
        cand_points = anchors_px[out.cand_idx]  # [B, K, M, 2]
        ans = t.answer_boxes
        inside = ((cand_points[..., None, :] > ans[:, :, None, :, :2]) &
                  (cand_points[..., None, :] < ans[:, :, None, :, 2:])).all(-1) & t.answer_mask[:, :, None, :]
        iou = box_iou(cand_boxes, ans)  # [B, K, M, G]
        # IoU-aware target with a floor, so the signal exists before boxes have converged.
        quality = torch.where(inside, iou.clamp(min=0.3), torch.zeros_like(iou)).amax(-1) if ans.shape[2] else \
            torch.zeros_like(out.cand_logits)
        weight = (out.cand_valid & t.prompt_valid[:, :, None]).to(quality.dtype)
        bce2 = F.binary_cross_entropy_with_logits(out.cand_logits, quality, reduction="none")
        loss_reason = (bce2 * weight).sum() / quality.sum().clamp(min=1.0)

        w = self.weights
        items = {"box": loss_box * w["box"], "cls": loss_cls * w["cls"], "dfl": loss_dfl * w["dfl"],
                 "reason": loss_reason * w["reason"]}
        if w["empty"]:
            items["empty"] = empty_answer_loss(out.cand_logits, out.cand_valid, t) * w["empty"]
        if w["distill"] and teacher is not None:
            items["distill"] = distillation_loss(rows_of(out, distill_rows), _upcast(teacher),
                                                 t.prompt_valid[distill_rows]) * w["distill"]
        total = sum(items.values()) * b  # YOLO scales by batch size; keeps LR defaults comparable
        return total, {key: float(v.detach()) for key, v in items.items()}

    def _dense(self, out: DetectorOutput, t: PromptTargets, imgsz_hw):
        """Stage 1: every (image, prompt) row assigned on its own -> (cls, box, dfl) losses."""
        b, k, a = out.dense_logits.shape
        n = b * k
        valid = t.prompt_valid.reshape(n)
        stride = out.stride_tensor  # [A, 1]
        anchors_px = out.anchor_points * stride
        logits = out.dense_logits.reshape(n, a, 1)
        boxes_px = out.boxes_xyxy.unsqueeze(1).expand(b, k, a, 4).reshape(n, a, 4)
        g = t.group_boxes.shape[2]
        gt_boxes = t.group_boxes.reshape(n, g, 4)
        gt_mask = (t.group_mask.reshape(n, g) & valid[:, None]).unsqueeze(-1)
        with torch.no_grad():
            _, target_boxes, target_scores, fg, _ = self.assigner(
                logits.detach().sigmoid(), boxes_px.detach(), anchors_px, torch.zeros_like(gt_boxes[..., :1]),
                gt_boxes, gt_mask.to(gt_boxes.dtype))
        score_sum = target_scores.sum().clamp(min=1.0)
        bce = F.binary_cross_entropy_with_logits(logits, target_scores, reduction="none")
        loss_cls = (bce * valid[:, None, None]).sum() / score_sum

        loss_box = loss_dfl = out.box_dist.sum() * 0.0
        if fg.any():
            # Gather the foreground (row, anchor) entries instead of expanding predictions to
            # [B*K, A, ...]: rows of one image share that image's box predictions.
            rows, anc = fg.nonzero(as_tuple=True)
            img = torch.div(rows, k, rounding_mode="floor")
            s = stride[anc]  # [F, 1]
            imgsz = torch.tensor(imgsz_hw, dtype=out.box_dist.dtype, device=out.box_dist.device)
            loss_box, loss_dfl = self.bbox_loss(
                out.box_dist[img, anc].unsqueeze(0), (out.boxes_xyxy[img, anc] / s).unsqueeze(0), out.anchor_points[anc],
                (target_boxes[rows, anc] / s).unsqueeze(0), target_scores[rows, anc].unsqueeze(0), score_sum,
                torch.ones(1, len(rows), dtype=torch.bool, device=fg.device), imgsz, s)
        return loss_cls, loss_box, loss_dfl


def empty_answer_loss(cand_logits: torch.Tensor, cand_valid: torch.Tensor, t: PromptTargets) -> torch.Tensor:
    """Mean BCE towards 0 of the best candidate's logit over the rows whose answer is empty.

    cand_logits, cand_valid [B, K, M] -> a scalar (0 when no row is empty). The gradient reaches the
    top candidate only, the one that would become a box.
    """
    empty = t.prompt_valid & ~t.answer_mask.any(-1)  # [B, K]
    if not empty.any():
        return cand_logits.sum() * 0.0
    top = cand_logits.masked_fill(~cand_valid, -1e4).amax(-1)  # [B, K]
    return F.softplus(top[empty]).mean()


class DefectProbe(nn.Module):
    """A training aid: a linear read-out of each part's defect kind from its region embeddings.

    Why: the prompt loss alone leaves a symmetric trap. When the image side cannot yet tell a
    dent from a stain, the best prompt vectors for "dented" and "stained" are the same ("damaged"),
    and once they are the same, neither side gets a gradient that tells the two apart (the bundled
    model sat there: prompt cosine 0.95, every fine-tune of the prompt side alone left it). Labels
    from the scene facts, read through weights of their own, break the symmetry on the image side;
    the prompt loss can then use the difference. Not part of the model: never exported or shipped.

    region_embeds [B, A, D], anchors_px [A, 2], part_boxes [B, N, 4] (input pixels),
    part_kinds [B, N] (-1 = ignore) -> mean cross-entropy over the parts (0 when there are none).
    A part's embedding is the mean of the normalized embeddings of the anchors in the middle half
    of its box; clean parts weigh ``clean_weight`` (they are three quarters of all parts).
    """

    def __init__(self, embed_dim: int, num_kinds: int, clean_weight: float = 0.3):
        super().__init__()
        self.linear = nn.Linear(embed_dim, num_kinds)
        self.register_buffer("class_weight", torch.tensor([clean_weight] + [1.0] * (num_kinds - 1)), persistent=False)

    def forward(self, region_embeds, anchors_px, part_boxes, part_kinds) -> torch.Tensor:
        centre = (part_boxes[..., :2] + part_boxes[..., 2:]) / 2  # [B, N, 2]
        half = (part_boxes[..., 2:] - part_boxes[..., :2]).clamp(min=1.0) / 4
        near = ((anchors_px[None, None] - centre[:, :, None]).abs() <= half[:, :, None]).all(-1)  # [B, N, A]
        near = near & (part_kinds >= 0)[..., None]
        count = near.sum(-1)
        keep = count > 0
        if not keep.any():
            return region_embeds.sum() * 0.0
        region = F.normalize(region_embeds.float(), dim=-1)
        part = torch.bmm(near.float(), region) / count.clamp(min=1)[..., None].float()  # [B, N, D]
        logits = self.linear(F.normalize(part[keep], dim=-1) * 8.0)
        return F.cross_entropy(logits, part_kinds[keep], weight=self.class_weight)


class CropDefectProbe(DefectProbe):
    """DefectProbe for the crop verifier: each part's defect kind read from the verifier's embedding
    of the part's crop, so a verifier trained alone learns what tells the kinds apart from labels as
    well as from the prompts. A training aid, never exported.

    verifier: the model's CropVerifier; images [B, 3, H, W]; part_boxes [B, N, 4]; part_kinds [B, N] (-1 = ignore).
    """

    def forward(self, verifier, images, part_boxes, part_kinds) -> torch.Tensor:
        keep = part_kinds >= 0
        if not keep.any():
            return images.sum() * 0.0
        batch_index = keep.nonzero(as_tuple=True)[0]
        emb = verifier.embed_boxes(images, part_boxes[keep].to(images.dtype), batch_index)
        return F.cross_entropy(self.linear(emb * 8.0), part_kinds[keep], weight=self.class_weight)


def distillation_loss(student: DetectorOutput, teacher: DetectorOutput, prompt_valid: torch.Tensor) -> torch.Tensor:
    """Keep a starting model's answers: the KL divergence of the student's scores from the teacher's.

    student, teacher: outputs for the same images and prompts; prompt_valid [B, K] -> a scalar, 0 where
    the student scores as the teacher does. Two terms, each normalised by the teacher's probability
    mass as the detection losses are by their targets': stage 1 at every anchor, and the final score
    of each of the student's candidates against the teacher's final probability at that anchor (0
    where the teacher did not make it a candidate: its score there was too low to become a box).
    Boxes are not matched: the replay data's own boxes train them.
    """
    if not prompt_valid.numel():
        return student.dense_logits.sum() * 0.0
    valid = prompt_valid[:, :, None].to(student.dense_logits.dtype)
    soft = teacher.dense_logits.sigmoid()
    dense = (_bernoulli_kl(student.dense_logits, soft) * valid).sum() / (soft * valid).sum().clamp(min=1.0)
    final = torch.zeros_like(teacher.dense_logits)  # [B, K, A]: the teacher's answer at every anchor
    final.scatter_reduce_(2, teacher.cand_idx, teacher.cand_logits.sigmoid() * teacher.cand_valid, reduce="amax")
    target = torch.gather(final, 2, student.cand_idx)
    weight = student.cand_valid.to(target.dtype) * valid
    return dense + (_bernoulli_kl(student.cand_logits, target) * weight).sum() / (target * weight).sum().clamp(min=1.0)


def _bernoulli_kl(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p || sigmoid(logits)) elementwise: the BCE less the target's own entropy, so 0 at agreement."""
    entropy = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))
    return F.binary_cross_entropy_with_logits(logits, p, reduction="none") - entropy

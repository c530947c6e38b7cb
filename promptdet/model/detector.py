"""The promptable detector: image trunk + region embeddings, prompt similarity, candidate reasoning.

The detector takes prompt *embeddings*, not text, exactly as the exported ``detector.onnx`` will;
the text encoder lives beside it (``promptdet.text``), so a new prompt never needs a re-export.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from promptdet.config import ModelConfig
from promptdet.model.backbone import Backbone
from promptdet.model.familiarity import Familiarity
from promptdet.model.fusion import CandidateReasoner
from promptdet.model.head import DetectHead, PromptSimilarity, TextProjection
from promptdet.model.neck import PanNeck
from promptdet.model.verify import CropVerifier


@dataclass
class DetectorOutput:
    """Everything one forward pass produces; the same in train and eval.

    box_dist [B, A, 4*reg_max]: box distributions (for the DFL loss).
    boxes_xyxy [B, A, 4]: decoded boxes in input pixels.
    dense_logits [B, K, A]: stage-1 prompt similarity per anchor.
    cand_idx, cand_logits, cand_valid [B, K, M]: the reasoning stage's candidates and final logits
        (after the crop verifier, when the model has one).
    anchor_points [A, 2], stride_tensor [A, 1]: anchor centres in stride units, and strides.
    region_embeds [B, A, D]: the region embeddings the prompts are compared with (not normalized).
    image_familiarity [B], prompt_familiarity [B|1, K]: in 0-1, how much the image and each prompt
        resemble what the model was trained on (1.0 when the model is uncalibrated; see familiarity.py).
    """

    box_dist: torch.Tensor
    boxes_xyxy: torch.Tensor
    dense_logits: torch.Tensor
    cand_idx: torch.Tensor
    cand_logits: torch.Tensor
    cand_valid: torch.Tensor
    anchor_points: torch.Tensor
    stride_tensor: torch.Tensor
    region_embeds: torch.Tensor
    image_familiarity: torch.Tensor
    prompt_familiarity: torch.Tensor


class PromptDetector(nn.Module):
    """images [B, 3, H, W] (RGB, 0-1) + prompt embeddings -> DetectorOutput.

    pooled [B|1, K, Dt]: sentence embeddings; tokens [B|1, K, T, Dt]: word features;
    token_mask [B|1, K, T] bool (True = real token). A leading 1 shares the prompts across images.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.backbone = Backbone(cfg.scale)
        self.neck = PanNeck(cfg.scale, self.backbone.out_channels)
        self.head = DetectHead(self.neck.out_channels, cfg.embed_dim, cfg.reg_max)
        self.text_proj = TextProjection(cfg.text_dim, cfg.embed_dim, cfg.word_pool_heads)
        self.similarity = PromptSimilarity()
        self.reasoner = CandidateReasoner(cfg.embed_dim, cfg.reason_layers, cfg.reason_heads, cfg.max_candidates)
        self.verifier = CropVerifier(cfg.text_dim, cfg.embed_dim, cfg.verify_top_k, cfg.verify_crop) \
            if cfg.verify_top_k else None
        channels = self.backbone.out_channels
        self.familiarity = Familiarity(sum(channels) + channels[-1], cfg.text_dim)

    def forward(self, images: torch.Tensor, pooled: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor) -> DetectorOutput:
        levels = self.backbone(images)
        feats = self.neck(*levels)
        box_dist, boxes, region, anchor_points, stride_tensor = self.head(feats)
        prompt_vecs, word_feats = self.text_proj(pooled, tokens, token_mask)
        dense = self.similarity(region, prompt_vecs)
        # [W, H, W, H] from the last anchor (centre of the last stride-32 cell, + half a cell): unlike
        # torch.tensor(images.shape), this stays symbolic in an exported graph with dynamic sizes.
        scale = ((anchor_points[-1] + 0.5) * stride_tensor[-1]).repeat(2).to(boxes.dtype)
        level_hw = [(f.shape[2], f.shape[3]) for f in feats]
        idx, cand_logits, valid = self.reasoner(dense, region, boxes / scale, level_hw, prompt_vecs, word_feats,
                                                token_mask)
        if self.verifier is not None:
            cand_logits = self.verifier(images, boxes, idx, cand_logits, pooled, tokens, token_mask)
        image_fam, prompt_fam = self.familiarity(levels, pooled)
        return DetectorOutput(box_dist, boxes, dense, idx, cand_logits, valid, anchor_points, stride_tensor, region,
                              image_fam, prompt_fam)

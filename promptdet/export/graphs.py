"""The torch modules that become ONNX graphs: thin wrappers that fix the inputs and outputs.

``detector.onnx`` takes the raw text-encoder outputs (pooled sentence vector and word features),
so ``text_encoder.onnx`` stays the plain pretrained encoder and its cache is shared by every
detector built on it. Prompts are shared by all images of a batch.
"""

from __future__ import annotations

import torch
from torch import nn

from promptdet.model.postprocess import candidate_boxes_scores


class DetectorGraph(nn.Module):
    """images [B, 3, S, S] float RGB 0-1, pooled [K, Dt], tokens [K, T, Dt], token_mask [K, T] bool
    -> boxes [B, K, M, 4] xyxy input pixels, scores [B, K, M] in 0-1 (0 marks a non-candidate),
    familiarity [B] and prompt_familiarity [K] in 0-1 (below 0.5: unfamiliar image, unknown prompt)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images, pooled, tokens, token_mask):
        out = self.detector(images, pooled.unsqueeze(0), tokens.unsqueeze(0), token_mask.unsqueeze(0))
        boxes, scores = candidate_boxes_scores(out)
        return boxes, scores, out.image_familiarity, out.prompt_familiarity[0]


class BakedDetectorGraph(nn.Module):
    """images -> boxes, scores with the prompts' embeddings stored as constants (one input only)."""

    def __init__(self, detector: nn.Module, pooled: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor):
        super().__init__()
        self.graph = DetectorGraph(detector)
        self.register_buffer("pooled", pooled.float())
        self.register_buffer("tokens", tokens.float())
        self.register_buffer("token_mask", token_mask.bool())

    def forward(self, images):
        return self.graph(images, self.pooled, self.tokens, self.token_mask)


class TextEncoderGraph(nn.Module):
    """input_ids [K, T] int64, attention_mask [K, T] int64 -> pooled [K, D] (unit norm), tokens [K, T, Dt]."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        tokens, pooled = self.encoder(input_ids, attention_mask)
        return pooled, tokens * attention_mask.unsqueeze(-1).to(tokens.dtype)

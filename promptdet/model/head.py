"""Per-anchor boxes and region embeddings, and the prompt similarity that scores them.

The image path never sees a prompt: a prompt only meets the image as a vector that is compared
with every region embedding. That keeps prompts independent of one another and lets the
exported detector take any prompt embedding at run time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from promptdet.model._ultralytics import DFL, Conv, DWConv, dist2bbox, make_anchors

STRIDES = (8, 16, 32)


class DetectHead(nn.Module):
    """(N3, N4, N5) -> box distributions, decoded boxes and region embeddings for all anchors.

    Returns ``box_dist [B, A, 4 * reg_max]``, ``boxes_xyxy [B, A, 4]`` (input pixels),
    ``region_embeds [B, A, D]`` (not normalized), ``anchor_points [A, 2]`` and
    ``stride_tensor [A, 1]``, with A = sum of H_i * W_i over the three levels.
    """

    def __init__(self, in_channels: tuple[int, int, int], embed_dim: int = 128, reg_max: int = 16):
        super().__init__()
        self.reg_max = reg_max
        self.embed_dim = embed_dim
        c2 = max(16, in_channels[0] // 4, reg_max * 4)
        c3 = max(in_channels[0], 64)
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in in_channels)
        self.embed = nn.ModuleList(
            nn.Sequential(nn.Sequential(DWConv(c, c, 3), Conv(c, c3, 1)),
                          nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)),
                          nn.Conv2d(c3, embed_dim, 1)) for c in in_channels)
        self.dfl = DFL(reg_max) if reg_max > 1 else nn.Identity()
        self._init_bias()

    def _init_bias(self) -> None:
        for seq in self.box:  # YOLO's box-bias init: distances of about one stride to start from
            seq[-1].bias.data[:] = 1.0

    def forward(self, feats: tuple[torch.Tensor, ...]):
        b = feats[0].shape[0]
        box_dist = torch.cat([self.box[i](f).reshape(b, 4 * self.reg_max, -1) for i, f in enumerate(feats)], 2)
        region = torch.cat([self.embed[i](f).reshape(b, self.embed_dim, -1) for i, f in enumerate(feats)], 2)
        anchor_points, stride_tensor = make_anchors(list(feats), torch.tensor(STRIDES, dtype=feats[0].dtype), 0.5)
        dist = self.dfl(box_dist)  # [B, 4, A] distances in stride units
        boxes = dist2bbox(dist, anchor_points.transpose(0, 1).unsqueeze(0), xywh=False, dim=1) * stride_tensor.transpose(0, 1)
        return box_dist.transpose(1, 2), boxes.transpose(1, 2), region.transpose(1, 2), anchor_points, stride_tensor


class PromptSimilarity(nn.Module):
    """Stage-1 score: a scaled cosine similarity of each region and each prompt.

    region_embeds [B, A, D], prompt_vecs [B or 1, K, D] -> logits [B, K, A].
    """

    def __init__(self, prior: float = 0.01):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        # Start every prompt at a low prior so absent prompts begin quiet (focal-loss style init).
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior) / prior)))

    def forward(self, region_embeds: torch.Tensor, prompt_vecs: torch.Tensor) -> torch.Tensor:
        region = F.normalize(region_embeds, dim=-1)
        prompts = F.normalize(prompt_vecs, dim=-1)
        if self.training or torch.onnx.is_in_onnx_export():
            # A GEMM: fast, and in training nothing depends on rounding at the 1e-7 level. In an
            # exported graph the broadcast product would be a [B, K, A, D] tensor (34 MB at K = 8).
            sim = torch.matmul(prompts, region.transpose(1, 2))  # [B, K, A]
        else:
            # Eval in torch: multiply-and-sum, because a GEMM may pick another kernel (and other
            # rounding) for another number of prompts, and these logits choose candidates by rank,
            # where a 1e-7 difference could swap one. This way each prompt's row is computed the
            # same for any K, and a prompt's result never depends on the others, bit for bit.
            sim = (prompts.unsqueeze(2) * region.unsqueeze(1)).sum(-1)  # [B, K, A]
        return sim * self.logit_scale.exp().clamp(max=100.0) + self.bias


class RowwiseLinear(nn.Linear):
    """nn.Linear whose every output row is computed the same way whatever the number of rows.

    Used where a result feeds a ranking (see PromptSimilarity); same parameters as nn.Linear.
    Training uses the plain GEMM: nothing there depends on rounding at the 1e-7 level.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return (x.unsqueeze(-2) * self.weight).sum(-1) + self.bias


class WordPooling(nn.Module):
    """Attention pooling of a prompt's word features with learned queries: [.., T, Dt] -> [.., D].

    A mean-pooled sentence embedding is dominated by the noun: "the blue bottles" and "the red
    bottles" come out nearly the same vector. Learned queries can pick out the word that decides
    (a colour, a defect) and give it its own weight. The output starts at zero, so a model trained
    without it keeps its function when this is added. Written as multiply-and-sum so that each
    prompt's row is computed the same for any number of prompts.
    """

    def __init__(self, text_dim: int, embed_dim: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(heads, text_dim) * text_dim ** -0.5)
        self.out = RowwiseLinear(heads * text_dim, embed_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        # tokens [.., T, Dt], token_mask [.., T] (True = real) -> [.., D]
        logits = (tokens.unsqueeze(-3) * self.queries.unsqueeze(-2)).sum(-1)  # [.., H, T]
        logits = logits.masked_fill(~token_mask.unsqueeze(-2), -1e4)
        pooled = (logits.softmax(-1).unsqueeze(-1) * tokens.unsqueeze(-3)).sum(-2)  # [.., H, Dt]
        return self.out(pooled.flatten(-2))


class TextProjection(nn.Module):
    """Pooled sentence embedding [.., Dt] -> prompt vector [.., D], and token features -> [.., T, D].

    word_pool_heads > 0 adds ``WordPooling`` of the token features to the prompt vector.
    project_tokens=False leaves out the token projection, for a user of the prompt vector alone
    (the crop verifier).
    """

    def __init__(self, text_dim: int, embed_dim: int, word_pool_heads: int = 0, project_tokens: bool = True):
        super().__init__()
        self.pooled = nn.Sequential(RowwiseLinear(text_dim, embed_dim * 2), nn.SiLU(),
                                    RowwiseLinear(embed_dim * 2, embed_dim))
        self.tokens = nn.Linear(text_dim, embed_dim) if project_tokens else None
        self.words = WordPooling(text_dim, embed_dim, word_pool_heads) if word_pool_heads else None

    def vector(self, pooled: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        prompt = self.pooled(pooled)
        if self.words is not None:
            prompt = prompt + self.words(tokens, token_mask)
        return prompt

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vector(pooled, tokens, token_mask), self.tokens(tokens)

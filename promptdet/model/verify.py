"""Stage 3: a second look at each prompt's best candidates, in crops of the input image.

Why: the region embeddings come from the trunk's stride-8 features, where a one-pixel scratch, a
one-pixel crack, a dent and a stain leave nearly the same trace. A linear probe on the bundled
model's region embeddings reads only 59% of the five defect kinds right, while the crops of those
parts show them plainly (light lines, dark jagged lines, shading, brown blots). So the verifier
cuts each top candidate's box out of the input at the input's own resolution, embeds the crop
with a small CNN of its own, and compares that with a prompt vector of its own: its score moves
the candidate's logit up or down. It starts with a small gain (a logit moves by at most 1), so it
can be added to a trained model and trained alone (``promptdet train --train-only verifier``).

Each prompt's candidates are cropped and scored on their own, so prompts stay independent, and
the crop is a RoIAlign, which the exported ``detector.onnx`` carries as one ONNX op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from promptdet.model._ultralytics import Conv
from promptdet.model.fusion import gather_anchors
from promptdet.model.head import RowwiseLinear, TextProjection

INIT_GAIN = 0.1  # x 10: the cosine moves a logit by at most 1 at the start


class CropVerifier(nn.Module):
    """Rescore the top ``top_k`` candidates of every prompt from a ``crop`` x ``crop`` cut of the image.

    images [B, 3, H, W] (0-1), boxes_xyxy [B, A, 4] every anchor's box (input pixels), cand_idx [B, K, M]
    the candidates' anchors, cand_logits [B, K, M], pooled [B|1, K, Dt], tokens [B|1, K, T, Dt], token_mask [B|1, K, T]
    -> cand_logits [B, K, M] with ``gain * cos(crop, prompt) + offset`` added to the top ``top_k``.
    """

    def __init__(self, text_dim: int, embed_dim: int, top_k: int = 8, crop: int = 48, word_pool_heads: int = 4,
                 context: float = 0.1):
        super().__init__()
        self.top_k, self.crop, self.context = top_k, crop, context
        # Full resolution first, then three stride-2 stages: a 1-px line survives the first layer.
        # About 14 M multiply-adds per 48 px crop (counted from the layer shapes).
        self.cnn = nn.Sequential(Conv(3, 16, 3, 1), Conv(16, 32, 3, 2), Conv(32, 64, 3, 2), Conv(64, 64, 3, 1),
                                 Conv(64, 128, 3, 2))
        self.crop_out = nn.Linear(2 * 128, embed_dim)
        self.prompt = TextProjection(text_dim, embed_dim, word_pool_heads, project_tokens=False)  # its own weights
        # gain and offset per prompt: a prompt the crop cannot judge (a position, a count) can learn to stay out of it.
        # The gain starts small but not at zero: at zero neither the CNN nor the prompt side get a gradient, and the
        # gain's own gradient (through a random cosine) has no sign to follow (measured: an epoch left it at 0.002).
        self.gain_offset = RowwiseLinear(embed_dim, 2)
        nn.init.zeros_(self.gain_offset.weight)
        self.gain_offset.bias.data = torch.tensor([INIT_GAIN, 0.0])

    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """crops [N, 3, S, S] -> unit crop embeddings [N, D]."""
        x = self.cnn(crops)
        x = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
        return F.normalize(self.crop_out(x), dim=-1)

    def embed_boxes(self, images: torch.Tensor, boxes_xyxy: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W], boxes_xyxy [N, 4] (input pixels), batch_index [N] -> unit embeddings [N, D].

        Each box grows by a margin of context (a crack starts at the rim). A box that several prompts
        share is embedded once.
        """
        lo = torch.minimum(boxes_xyxy[:, :2], boxes_xyxy[:, 2:])
        hi = torch.maximum(boxes_xyxy[:, :2], boxes_xyxy[:, 2:])
        pad = (hi - lo) * self.context + 2.0
        # Where to look is stage 1's business: no gradient flows back into the boxes from here.
        rois = torch.cat([batch_index.to(lo.dtype).unsqueeze(1), lo - pad, hi + pad], 1).detach()
        # Prompts of one image share most of their best candidates: embed each distinct box once (an ONNX
        # Unique in the exported graph). Measured at 8 prompts: 64 crops cost 17 ms on a 2-core CPU.
        uniq, inverse = torch.unique(rois, dim=0, return_inverse=True)
        return self.embed_crops(roi_align(images, uniq, self.crop, 1.0, 2, False))[inverse]

    def forward(self, images, boxes_xyxy, cand_idx, cand_logits, pooled, tokens, token_mask) -> torch.Tensor:
        b, k, m = cand_logits.shape
        r = min(self.top_k, m)
        top = cand_logits.topk(r, dim=2).indices  # [B, K, R]
        sel = gather_anchors(boxes_xyxy, torch.gather(cand_idx, 2, top))  # [B, K, R, 4]
        batch_index = torch.arange(b, device=sel.device).reshape(b, 1, 1).expand(b, k, r).reshape(-1)
        emb = self.embed_boxes(images, sel.reshape(b * k * r, 4), batch_index)
        emb = emb.reshape(b, k, r, self.crop_out.out_features)
        v = self.prompt.vector(pooled, tokens, token_mask)  # [B|1, K, D]
        cos = (emb * F.normalize(v, dim=-1).unsqueeze(2)).sum(-1)  # [B, K, R]
        gain, offset = self.gain_offset(v).unbind(-1)  # [B|1, K] each
        delta = gain.unsqueeze(-1) * 10.0 * cos + offset.unsqueeze(-1) * 10.0
        return cand_logits.scatter_add(2, top, delta.to(cand_logits.dtype))

"""Text-guided reasoning over a prompt's candidate regions (stage 2).

Similarity alone can find "bolts" but not "the leftmost bolt", "the nut left of the gear" or
"washers, if there are more than two": those need the candidates compared with one another. For
each (image, prompt) the peaks of the stage-1 map (local maxima, so one object is not many
candidates) become tokens carrying the region embedding, the box geometry and the stage-1 score.
A small transformer lets them attend to each other and to the prompt's word features, and
rescores them. Every (image, prompt) row is processed on its own, so prompts stay independent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e4  # "not a candidate": finite so that fp16 exports and sigmoid stay well defined


class ReasoningLayer(nn.Module):
    """Pre-norm transformer layer: self-attention among candidates, cross-attention to words, FFN."""

    def __init__(self, dim: int, heads: int, ffn_mult: int = 2):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_mult), nn.GELU(), nn.Linear(dim * ffn_mult, dim))

    def forward(self, x, pad_mask, words, word_pad_mask):
        h = self.norm1(x)
        x = x + attend(self.self_attn, h, h, pad_mask)
        h = self.norm2(x)
        x = x + attend(self.cross_attn, h, words, word_pad_mask)
        return x + self.ffn(self.norm3(x))


def attend(mha: nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor, key_pad: torch.Tensor) -> torch.Tensor:
    """``mha(query, keys, keys, key_padding_mask=key_pad)[0]`` for batch-first inputs, written out.

    nn.MultiheadAttention's own forward bakes the traced batch and length into its reshapes (and
    its inference fast path has no ONNX export), so the exported graph would only accept the
    number of prompts it was traced with. Same parameters, same result, shapes left symbolic.
    """
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q).unflatten(-1, (heads, -1)).transpose(1, 2)  # [N, H, Lq, hd]
    k = F.linear(keys, w_k, b_k).unflatten(-1, (heads, -1)).transpose(1, 2)
    v = F.linear(keys, w_v, b_v).unflatten(-1, (heads, -1)).transpose(1, 2)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    logits = logits.masked_fill(key_pad[:, None, None, :], NEG)  # NEG, not -inf: exp() is exactly 0 either way
    out = (logits.softmax(-1) @ v).transpose(1, 2).flatten(-2)
    return mha.out_proj(out)


def gather_anchors(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-anchor values at candidate indices: t [B, A, C], idx [B, K, M] -> [B, K, M, C].

    Flat row indexing: its backward is a small index_add, where gather over a [B, K, A, C]
    expansion would materialise (and zero) that whole tensor.
    """
    b, a, c = t.shape
    k, m = idx.shape[1], idx.shape[2]
    flat = (idx + torch.arange(b, device=idx.device).reshape(b, 1, 1) * a).reshape(-1)
    return t.reshape(b * a, c)[flat].reshape(b, k, m, c)


def select_peaks(logits: torch.Tensor, level_hw: list[tuple[int, int]], max_candidates: int):
    """Top local maxima of a stage-1 map. logits [N, A] -> (idx [N, M] long, valid [N, M] bool)."""
    n = logits.shape[0]
    peaks, start = [], 0
    for h, w in level_hw:
        lvl = logits[:, start:start + h * w].reshape(n, 1, h, w)
        pooled = F.max_pool2d(lvl, 3, 1, 1)
        peaks.append(torch.where(lvl >= pooled, lvl, torch.full_like(lvl, NEG)).reshape(n, h * w))
        start += h * w
    # Padded with max_candidates non-anchors (below every non-peak) so that M is max_candidates at
    # every input size: a dynamic ONNX graph run on an input with fewer anchors than that would
    # otherwise bake in the export size's count. The padding is never valid; it points at anchor 0.
    peak_logits = torch.cat(peaks, 1)
    a = peak_logits.shape[1]
    peak_logits = torch.cat([peak_logits, torch.full_like(peak_logits[:, :1], 2 * NEG).expand(n, max_candidates)], 1)
    top, idx = peak_logits.topk(max_candidates, dim=1)
    return torch.where(idx < a, idx, torch.zeros_like(idx)), top > NEG / 2


class CandidateReasoner(nn.Module):
    """Rescore each prompt's candidate regions.

    Inputs: stage-1 ``logits [B, K, A]``, ``region_embeds [B, A, D]``, ``boxes_norm [B, A, 4]``
    (xyxy divided by the input size), ``prompt_vecs [B|1, K, D]``, ``word_feats [B|1, K, T, D]``,
    ``word_mask [B|1, K, T]`` (True = a real token).
    Returns ``cand_idx [B, K, M]`` (anchor indices), ``cand_logits [B, K, M]`` and ``cand_valid``.
    """

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, max_candidates: int = 64):
        super().__init__()
        self.max_candidates = max_candidates
        self.geometry = nn.Sequential(nn.Linear(7, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.score_in = nn.Linear(1, dim)
        self.layers = nn.ModuleList(ReasoningLayer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 1)
        nn.init.zeros_(self.out.weight)  # start as the identity on stage-1 scores
        nn.init.zeros_(self.out.bias)

    def forward(self, logits, region_embeds, boxes_norm, level_hw, prompt_vecs, word_feats, word_mask):
        b, k, a = logits.shape
        d = region_embeds.shape[-1]
        idx, valid = select_peaks(logits.reshape(b * k, a), level_hw, self.max_candidates)
        m = idx.shape[1]
        idx = idx.reshape(b, k, m)
        valid = valid.reshape(b, k, m)

        region = gather_anchors(F.normalize(region_embeds, dim=-1), idx)
        box = gather_anchors(boxes_norm, idx)
        score = torch.gather(logits, 2, idx)
        wh = (box[..., 2:] - box[..., :2]).clamp(min=1e-4)
        geom = torch.cat([(box[..., :2] + box[..., 2:]) / 2, wh, box[..., :2],
                          torch.log(wh[..., :1] * wh[..., 1:]) / 10.0], -1)  # centre, size, corner, log area
        prompt = prompt_vecs.expand(b, k, d).unsqueeze(2)
        x = region + self.geometry(geom) + self.score_in(score.unsqueeze(-1) / 10.0) + prompt
        x = x.reshape(b * k, m, d)
        pad = ~valid.reshape(b * k, m)
        t = word_feats.shape[-2]
        words = word_feats.expand(b, k, t, d).reshape(b * k, t, d)
        word_pad = ~word_mask.expand(b, k, t).reshape(b * k, t)
        for layer in self.layers:
            x = layer(x, pad, words, word_pad)
        delta = self.out(self.norm(x)).reshape(b, k, m)
        cand_logits = torch.where(valid, score + delta, torch.full_like(score, NEG))
        return idx, cand_logits, valid

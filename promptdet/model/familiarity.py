"""What the model knows it learned: is this image like the training images, is this prompt like the
training instructions? Two scores in 0-1, computed inside the forward pass (and so inside
``detector.onnx``) from statistics the trainer saves with the weights.

Image familiarity. The trunk's features pooled over the image (mean of three levels, spread of the
deepest) are compared with their training distribution: a whitened distance over the top principal
directions plus the energy left outside them, ``d = sqrt((|z|^2 + r^2 / resid_var) / (R + 1))``.
``familiarity = sigmoid((image_threshold - d) / image_scale)``: 0.5 exactly at the threshold, which
the calibration puts above nearly every held-out training-like image.

Prompt familiarity. The prompt's sentence embedding (unit norm) against two banks: instructions seen
in training (``known``) and the same instructions with their part names swapped for names of things
never trained (``foreign``: animals, vehicles, people, food, ...). The frame words cancel out, so the
difference says whether the *thing asked for* is one the model learned:
``margin = mean top-k cos(known) - mean top-k cos(foreign)``,
``familiarity = sigmoid((margin - prompt_threshold) / prompt_scale)``.

An uncalibrated model (a fresh one, or a checkpoint from before these statistics) answers 1.0 for
both: it claims nothing it cannot back, and ``calibrated`` says so.
"""

from __future__ import annotations

import torch
from torch import nn

TOP_K = 3  # neighbours averaged on each side of the prompt test: one odd bank entry cannot decide


def pooled_image_features(levels: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Trunk levels [B, C_i, H_i, W_i] -> [B, F]: each level's spatial mean, and the deepest level's
    spatial standard deviation (texture: a real photo's statistics differ there first)."""
    means = [f.float().mean(dim=(2, 3)) for f in levels]
    deepest = levels[-1].float()
    spread = (deepest - deepest.mean(dim=(2, 3), keepdim=True)).pow(2).mean(dim=(2, 3)).clamp_min(1e-12).sqrt()
    return torch.cat(means + [spread], dim=1)


class Familiarity(nn.Module):
    """Buffers: the image statistics and the prompt banks. Sizes follow the checkpoint they come from."""

    KEYS = ("calibrated", "image_mean", "image_proj", "image_resid_var", "image_threshold", "image_scale",
            "prompt_known", "prompt_foreign", "prompt_threshold", "prompt_scale")

    def __init__(self, feat_dim: int, text_dim: int):
        super().__init__()
        self.feat_dim, self.text_dim = feat_dim, text_dim
        self.register_buffer("calibrated", torch.zeros(()))
        self.register_buffer("image_mean", torch.zeros(feat_dim))
        self.register_buffer("image_proj", torch.zeros(feat_dim, 1))  # [F, R]: principal directions / sqrt(var)
        self.register_buffer("image_resid_var", torch.ones(()))
        self.register_buffer("image_threshold", torch.ones(()))
        self.register_buffer("image_scale", torch.ones(()))
        self.register_buffer("prompt_known", torch.zeros(1, text_dim))
        self.register_buffer("prompt_foreign", torch.zeros(1, text_dim))
        self.register_buffer("prompt_threshold", torch.zeros(()))
        self.register_buffer("prompt_scale", torch.ones(()))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The banks and the number of principal directions are data, not architecture: take the
        # checkpoint's sizes. A checkpoint without any of these keys stays uncalibrated.
        found = [k for k in self.KEYS if prefix + k in state_dict]
        if not found:
            return
        missing = [prefix + k for k in self.KEYS if k not in found]
        if missing:
            missing_keys.extend(missing)
            return
        for key in self.KEYS:
            value = state_dict[prefix + key]
            if not isinstance(value, torch.Tensor) or not torch.isfinite(value.float()).all():
                error_msgs.append(f"{prefix}{key}: not a finite tensor")
                return
            setattr(self, key, value.detach().clone().float().to(getattr(self, key).device))
        shapes_ok = (self.image_mean.shape == (self.feat_dim,) and self.image_proj.ndim == 2
                     and self.image_proj.shape[0] == self.feat_dim and self.prompt_known.ndim == 2
                     and self.prompt_known.shape[1] == self.text_dim and self.prompt_foreign.ndim == 2
                     and self.prompt_foreign.shape[1] == self.text_dim)
        if not shapes_ok:
            error_msgs.append(f"{prefix}*: the familiarity statistics do not fit this model's feature sizes")

    def image_distance(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [B, F] -> d [B] (see the module docstring)."""
        centred = feats.float() - self.image_mean
        z = centred @ self.image_proj
        resid = centred.pow(2).sum(1) - (z * z * self._proj_var()).sum(1)
        r = self.image_proj.shape[1]
        return ((z.pow(2).sum(1) + resid.clamp_min(0) / self.image_resid_var) / (r + 1)).sqrt()

    def _proj_var(self) -> torch.Tensor:
        # image_proj's columns are unit directions divided by their std, so |col|^-2 is the variance.
        return 1.0 / self.image_proj.pow(2).sum(0).clamp_min(1e-12)

    def prompt_margin(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [..., K, Dt] (unit norm) -> margin [..., K]."""
        p = pooled.float()
        k_known = min(TOP_K, self.prompt_known.shape[0])
        k_foreign = min(TOP_K, self.prompt_foreign.shape[0])
        known = (p @ self.prompt_known.t()).topk(k_known, dim=-1).values.mean(-1)
        foreign = (p @ self.prompt_foreign.t()).topk(k_foreign, dim=-1).values.mean(-1)
        return known - foreign

    def forward(self, levels: tuple[torch.Tensor, ...], pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """trunk levels (see ``pooled_image_features``) or their pooled features [B, F], and pooled
        prompts [B|1, K, Dt] -> image familiarity [B], prompt familiarity [B|1, K], in 0-1."""
        feats = levels if isinstance(levels, torch.Tensor) else pooled_image_features(levels)
        image = torch.sigmoid((self.image_threshold - self.image_distance(feats)) / self.image_scale)
        prompt = torch.sigmoid((self.prompt_margin(pooled) - self.prompt_threshold) / self.prompt_scale)
        # Uncalibrated: 1.0 everywhere (calibrated is 0 or 1), so nothing is withheld on no evidence.
        off = 1.0 - self.calibrated
        return image * self.calibrated + off, prompt * self.calibrated + off

"""The YOLO26-style PAN neck (its yaml indices 11-22): top-down then bottom-up fusion of P3-P5."""

from __future__ import annotations

import torch
from torch import nn

from promptdet.model._ultralytics import C3k2, Conv
from promptdet.model.backbone import Scale


class PanNeck(nn.Module):
    """(P3, P4, P5) from the backbone -> (N3, N4, N5) at strides 8, 16, 32."""

    def __init__(self, scale: str, in_channels: tuple[int, int, int]):
        super().__init__()
        s = Scale.of(scale)
        c = s.ch
        c3, c4, c5 = in_channels
        # Indices follow YOLO26's yaml; the parameter-free Upsample/Concat slots are kept as
        # identities so layer i here is layer 11 + i there.
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.layers = nn.ModuleList([
            nn.Identity(),  # 11 upsample
            nn.Identity(),  # 12 concat P5, P4
            C3k2(c5 + c4, c(512), s.n(2), True),  # 13
            nn.Identity(),  # 14 upsample
            nn.Identity(),  # 15 concat with P3
            C3k2(c(512) + c3, c(256), s.n(2), True),  # 16 -> N3
            Conv(c(256), c(256), 3, 2),  # 17
            nn.Identity(),  # 18 concat with 13
            C3k2(c(256) + c(512), c(512), s.n(2), True),  # 19 -> N4
            Conv(c(512), c(512), 3, 2),  # 20
            nn.Identity(),  # 21 concat with P5
            C3k2(c(512) + c5, c(1024), 1, True, 0.5, True),  # 22 -> N5
        ])
        self.out_channels = (c(256), c(512), c(1024))

    def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor):
        L = self.layers
        x13 = L[2](torch.cat([self.up(p5), p4], 1))
        n3 = L[5](torch.cat([self.up(x13), p3], 1))
        n4 = L[8](torch.cat([L[6](n3), x13], 1))
        n5 = L[11](torch.cat([L[9](n4), p5], 1))
        return n3, n4, n5

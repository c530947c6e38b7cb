"""The YOLO26-style backbone, built from ultralytics blocks, in scales n, s and m.

Layers keep YOLO26's order (its yaml indices 0-10), so a YOLO26 detection checkpoint maps onto
them by index (see ``detector.load_ultralytics_backbone``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from promptdet.model._ultralytics import C2PSA, SPPF, C3k2, Conv

# scale: (depth multiple, width multiple, max channels), as in ultralytics' yolo26.yaml
SCALES = {"n": (0.50, 0.25, 1024), "s": (0.50, 0.50, 1024), "m": (0.50, 1.00, 512)}


@dataclass(frozen=True)
class Scale:
    name: str
    depth: float
    width: float
    max_channels: int

    @classmethod
    def of(cls, name: str) -> "Scale":
        if name not in SCALES:
            raise ValueError(f"unknown model scale {name!r}; choose one of: {', '.join(SCALES)}")
        return cls(name, *SCALES[name])

    def ch(self, c: int) -> int:
        """Channels after width scaling, rounded up to a multiple of 8 (ultralytics' make_divisible)."""
        return int(math.ceil(min(c, self.max_channels) * self.width / 8) * 8)

    def n(self, repeats: int) -> int:
        return max(round(repeats * self.depth), 1) if repeats > 1 else repeats

    @property
    def c3k(self) -> bool:  # larger scales use C3k inner blocks in the early C3k2 layers
        return self.name in ("m", "l", "x")


class Backbone(nn.Module):
    """Image [B, 3, H, W] -> (P3 [B, c3, H/8, W/8], P4 [B, c4, H/16, W/16], P5 [B, c5, H/32, W/32])."""

    def __init__(self, scale: str = "n"):
        super().__init__()
        s = Scale.of(scale)
        c = s.ch
        self.layers = nn.ModuleList([
            Conv(3, c(64), 3, 2),  # 0 P1/2
            Conv(c(64), c(128), 3, 2),  # 1 P2/4
            C3k2(c(128), c(256), s.n(2), s.c3k, 0.25),  # 2
            Conv(c(256), c(256), 3, 2),  # 3 P3/8
            C3k2(c(256), c(512), s.n(2), s.c3k, 0.25),  # 4
            Conv(c(512), c(512), 3, 2),  # 5 P4/16
            C3k2(c(512), c(512), s.n(2), True),  # 6
            Conv(c(512), c(1024), 3, 2),  # 7 P5/32
            C3k2(c(1024), c(1024), s.n(2), True),  # 8
            SPPF(c(1024), c(1024), 5, 3, True),  # 9
            C2PSA(c(1024), c(1024), s.n(2)),  # 10
        ])
        self.out_channels = (c(512), c(512), c(1024))  # after layers 4, 6 and 10

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in (4, 6, 10):
                feats.append(x)
        return feats[0], feats[1], feats[2]

"""The one place promptdet imports ultralytics: its layer blocks, assigner and loss pieces.

ultralytics reaches for the network and writes a settings file on its own; these environment
defaults keep it offline and quiet. They are set only if the user has not set them.
"""

from __future__ import annotations

import os

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

try:
    from ultralytics.nn.modules.block import C2PSA, C3k2, DFL, SPPF
    from ultralytics.nn.modules.conv import Concat, Conv, DWConv
    from ultralytics.utils.loss import BboxLoss
    from ultralytics.utils.tal import TaskAlignedAssigner, bbox2dist, dist2bbox, make_anchors
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(f"promptdet's model needs ultralytics ({exc}); pip install 'promptdet[train]'") from exc

__all__ = ["C2PSA", "C3k2", "DFL", "SPPF", "Concat", "Conv", "DWConv", "BboxLoss", "TaskAlignedAssigner",
           "bbox2dist", "dist2bbox", "make_anchors"]

from ultralytics.utils.torch_utils import ModelEMA

__all__ += ["ModelEMA"]

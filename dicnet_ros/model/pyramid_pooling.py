"""PSPNet pyramid pooling module (scales 1, 2, 3, 6).

The pooled maps are upsampled back to the feature size; at a fixed network size this exports to ONNX
(dynamo exporter) and matches PyTorch; with dynamic sizes it does not (see pitfalls), which is why the
network runs at a fixed size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PYRAMID_SCALES = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """Concatenates the input with pooled-and-upsampled copies at each scale (in + len(scales)*branch ch)."""

    def __init__(self, in_channels: int, branch_channels: int, scales: tuple[int, ...] = PYRAMID_SCALES):
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(scale),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
            for scale in self.scales
        )
        self.out_channels = in_channels + len(self.scales) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return torch.cat([x, *pooled], dim=1)

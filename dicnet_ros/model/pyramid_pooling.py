"""PSPNet pyramid pooling module (scales 1, 2, 3, 6).

The pooled maps are upsampled back to the feature size; at a fixed network size this exports to ONNX
(dynamo exporter) and matches PyTorch; with dynamic sizes it does not (see pitfalls), which is why the
network runs at a fixed size.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

PYRAMID_SCALES = (1, 2, 3, 6)


@functools.lru_cache(maxsize=64)
def _pooling_weights(size: int, bins: int) -> tuple[tuple[float, ...], ...]:
    """(bins, size) averaging weights with adaptive-pooling windows [floor(i*n/s), ceil((i+1)*n/s))."""
    rows = []
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        rows.append(tuple(1.0 / (end - start) if start <= j < end else 0.0 for j in range(size)))
    return tuple(rows)


def _pooling_matrix(size: int, bins: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_pooling_weights(size, bins), dtype=dtype, device=device)


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` computed as two small matrix products (identical windows and values).

    The ONNX exporter turns adaptive pooling over sizes the bins do not divide (22 rows into 3 or 6 bins)
    into about a hundred Gather/Add nodes; at the fixed network size the matrices are constants and the
    pooling is two MatMuls, a fifth less CPU time for the light model.
    """

    def __init__(self, bins: int):
        super().__init__()
        self.bins = int(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bins == 1:
            return x.mean(dim=(2, 3), keepdim=True)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        rows = _pooling_matrix(h, self.bins, x.dtype, x.device)
        cols = _pooling_matrix(w, self.bins, x.dtype, x.device)
        return rows @ x @ cols.transpose(0, 1)


class PyramidPooling(nn.Module):
    """Concatenates the input with pooled-and-upsampled copies at each scale (in + len(scales)*branch ch)."""

    def __init__(self, in_channels: int, branch_channels: int, scales: tuple[int, ...] = PYRAMID_SCALES):
        super().__init__()
        self.scales = tuple(scales)
        self.branches = nn.ModuleList(
            nn.Sequential(
                MatrixAdaptiveAvgPool2d(scale),
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

"""THE image -> network tensor definition.

Training, evaluation, ONNX export (traced into the graph), the PyTorch backend and the ROS node all walk
this one function, so a model never sees pixels prepared two different ways.

Policy: the camera image (uint8, RGB, H x W x 3, any size) is resized (bilinear, no antialias) to the fixed
network size, scaled to [0, 1], normalised with the mean/std of the backbone's pre-training, and padded
bottom/right to a multiple of the output stride. The network runs at a fixed size because pyramid pooling
does not export with dynamic feature sizes (see pitfalls); score maps are resized back to the input size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
OUTPUT_STRIDE = 8


@dataclass(frozen=True)
class PreprocessConfig:
    """Network input size (height, width) and normalisation; stored in checkpoints and ONNX metadata."""

    height: int
    width: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    output_stride: int = OUTPUT_STRIDE

    def __post_init__(self) -> None:
        if self.height < self.output_stride or self.width < self.output_stride:
            raise ValueError(f"network size {self.width}x{self.height} is smaller than the output stride")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) after padding to a multiple of the output stride."""
        s = self.output_stride
        return math.ceil(self.height / s) * s, math.ceil(self.width / s) * s

    @property
    def feature_size(self) -> tuple[int, int]:
        """(height, width) of the stride-8 feature map."""
        h, w = self.padded_size
        return h // self.output_stride, w // self.output_stride

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {k: data[k] for k in ("height", "width", "mean", "std", "output_stride") if k in data}
        return cls(**known)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height), with a readable error."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"size must look like 640x360 (width x height), got {text!r}") from exc
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return w, h


def preprocess(images, config: PreprocessConfig):
    """uint8 RGB images (N, H, W, 3) -> normalised float tensor (N, 3, Hp, Wp) at the padded network size.

    Written with torch ops only so the same code runs in training and is traced into the ONNX graph.
    """
    import torch
    import torch.nn.functional as F

    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images shaped (N, H, W, 3), got {tuple(images.shape)}")
    # resize the 0..255 values first, then scale and normalise in one multiply-add at the (smaller) network
    # size: the same numbers as (x / 255 - mean) / std, since bilinear resizing is linear, with two fewer passes
    # over the camera-sized image in the exported graph
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    if tuple(x.shape[-2:]) != (config.height, config.width):
        x = F.interpolate(x, size=(config.height, config.width), mode="bilinear", align_corners=False)
    scale = torch.tensor([1.0 / (255.0 * s) for s in config.std], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(config.mean, config.std, strict=True)], dtype=x.dtype,
                         device=x.device).view(1, 3, 1, 1)
    x = x * scale + shift
    pad_h, pad_w = config.padded_size[0] - config.height, config.padded_size[1] - config.width
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def restore_size(maps, config: PreprocessConfig, size: tuple[int, int] | None, mode: str = "bilinear"):
    """Maps at network or feature resolution (N, C, h, w) -> ``size`` (H, W), or the network size if None.

    When the network size is a multiple of the stride (the usual case) this is a single resize, so the
    geometry of "upsample the 1/8 map 8 times" holds exactly; otherwise the stride padding is cropped first.
    ``mode='nearest'`` is used for class ids.
    """
    import torch.nn.functional as F

    def resize(x, target):
        if tuple(x.shape[-2:]) == tuple(target):
            return x
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x, size=tuple(target), mode=mode, **kwargs)

    target = (config.height, config.width) if size is None else tuple(size)
    if config.padded_size != (config.height, config.width):
        maps = resize(maps, config.padded_size)[..., : config.height, : config.width]
    return resize(maps, target)

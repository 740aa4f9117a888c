"""Training augmentations for (image, label) pairs: numpy/OpenCV only, deterministic given a Generator.

These only change *which* pixels the network sees; the conversion of uint8 RGB to the network tensor
(resize to the network size, scaling, mean/std, stride padding) stays in :mod:`dicnet_ros.preprocessing`.
Scales are relative to ``crop_h / image_h`` so a 1280x720 dataset and a small simulated one both map
to the network size on average, and a crop sees a comparable field of view either way. Images are
resized bilinearly without antialiasing, matching the preprocessing the model applies at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Pixel-centre-aligned nearest neighbour (cv2.INTER_NEAREST is shifted by half a pixel).
_NEAREST = getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]], np.float32
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _check_pair(image: np.ndarray, label: np.ndarray | None) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if label is not None and (label.shape != image.shape[:2] or label.dtype != np.uint8):
        raise ValueError(f"expected a uint8 label of shape {image.shape[:2]}, got {label.dtype} {label.shape}")


def resize_pair(
    image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to ``size`` = (height, width): image bilinear, label nearest (ids are never blended)."""
    _check_pair(image, label)
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (height, width), got {size}")
    if image.shape[:2] == (h, w):
        return image, label
    image = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(np.ascontiguousarray(label), (w, h), interpolation=_NEAREST)
    return image, label


@dataclass(frozen=True)
class TrainAugment:
    """Random rescale, pad, crop to ``crop_size`` (h, w), horizontal flip and mild colour jitter.

    Callable as ``aug(image, label, rng) -> (image, label)``; the same rng state gives the same output.
    Padding uses 0 for the image and ``ignore_id`` for the label so padded pixels never enter the loss.
    Jitter strengths: brightness/contrast/saturation factors in 1 ± value, hue shift in ± value turns.
    """

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    photometric: bool = True
    ignore_id: int = 255
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.03

    def __post_init__(self) -> None:
        ch, cw = (int(v) for v in self.crop_size)
        if ch <= 0 or cw <= 0:
            raise ValueError(f"crop_size must be positive (height, width), got {self.crop_size}")
        lo, hi = (float(v) for v in self.scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if not 0 <= self.ignore_id <= 255:
            raise ValueError(f"ignore_id must fit in uint8, got {self.ignore_id}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        object.__setattr__(self, "crop_size", (ch, cw))
        object.__setattr__(self, "scale_range", (lo, hi))

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check_pair(image, label)
        ch, cw = self.crop_size
        h, w = image.shape[:2]
        scale = ch / h * rng.uniform(*self.scale_range)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image, resized_label = resize_pair(image, label, (nh, nw))
        assert resized_label is not None
        # Place the resized image on a canvas at least as large as the crop (random offset when padding),
        # then crop; only the overlap of crop and image is copied, the rest stays padding.
        top = int(rng.integers(0, ch - nh + 1)) if nh < ch else 0
        left = int(rng.integers(0, cw - nw + 1)) if nw < cw else 0
        y0 = int(rng.integers(0, nh - ch + 1)) if nh > ch else 0
        x0 = int(rng.integers(0, nw - cw + 1)) if nw > cw else 0
        out_image = np.zeros((ch, cw, 3), np.uint8)
        out_label = np.full((ch, cw), self.ignore_id, np.uint8)
        rows, cols = min(nh, ch), min(nw, cw)
        region = image[y0 : y0 + rows, x0 : x0 + cols]
        if self.photometric:
            region = self.jitter(region, rng)
        out_image[top : top + rows, left : left + cols] = region
        out_label[top : top + rows, left : left + cols] = resized_label[y0 : y0 + rows, x0 : x0 + cols]
        if self.hflip and rng.random() < 0.5:
            out_image = np.ascontiguousarray(out_image[:, ::-1])
            out_label = np.ascontiguousarray(out_label[:, ::-1])
        return out_image, out_label

    def jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast, then saturation and hue as one linear map in YIQ space (one rounding)."""
        b = rng.uniform(1 - self.brightness, 1 + self.brightness)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        s = rng.uniform(1 - self.saturation, 1 + self.saturation)
        theta = rng.uniform(-self.hue, self.hue) * 2 * np.pi
        x = image.astype(np.float32) * np.float32(b)
        gray_mean = float((x @ _RGB_TO_YIQ[0]).mean()) if x.size else 0.0
        x = (x - gray_mean) * np.float32(c) + np.float32(gray_mean)
        cos, sin = np.cos(theta) * s, np.sin(theta) * s
        chroma = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], np.float32)
        m = _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ
        x = x @ m.T
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def paste_outlier_shapes(images: np.ndarray, rng: np.random.Generator, probability: float,
                         shapes: tuple[int, int] = (1, 2), radius: tuple[float, float] = (10.0, 60.0),
                         rows: tuple[float, float] = (0.35, 1.0)) -> np.ndarray:
    """Paste random textured polygons into a uint8 (N, H, W, 3) batch in place; returns their (N, H, W) mask.

    2-D outlier proxies for the student's outlier exposure: star-shaped polygons (5-9 corners) filled with noise,
    stripes or smooth random colour fields, shaded top to bottom. Their centres lie between ``rows`` (fractions
    of the image height, 0 = top; the default, the lower two thirds, is where road objects appear). Each image
    gets them with ``probability``. They look like nothing in the data set, so the student learns to disagree
    with the teacher on what it does not know, not on one object class.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (N, H, W, 3) batch, got {images.dtype} {images.shape}")
    n, height, width, _ = images.shape
    mask = np.zeros((n, height, width), dtype=bool)
    for b in range(n):
        if rng.random() >= probability:
            continue
        for _ in range(int(rng.integers(shapes[0], shapes[1] + 1))):
            r = rng.uniform(*radius) * min(height, width) / 216.0
            cx = rng.uniform(r, max(r + 1, width - r))
            top = height * rows[0]
            cy = rng.uniform(top, max(top + 1, min(height * rows[1], height - r / 2)))
            corners = int(rng.integers(5, 10))
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = r * rng.uniform(0.4, 1.0, corners)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
            shape = np.zeros((height, width), np.uint8)
            cv2.fillPoly(shape, [points], 1)
            inside = shape.astype(bool)
            texture = _outlier_texture(rng, height, width)
            images[b][inside] = texture[inside]
            mask[b] |= inside
    return mask


def _outlier_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (H, W, 3) uint8 texture: noisy flat colour, stripes, or a smooth random colour field."""
    base = rng.uniform(0, 255, 3)
    kind = int(rng.integers(3))
    if kind == 0:
        texture = base + rng.normal(0, rng.uniform(5, 40), (height, width, 3))
    elif kind == 1:
        period, angle = rng.uniform(4, 20), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        stripe = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / period * 2 * np.pi) > 0)[..., None]
        texture = np.where(stripe, base, rng.uniform(0, 255, 3))
    else:
        coarse = rng.uniform(0, 255, (max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
        texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    shade = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), height)[:, None, None]
    return np.clip(texture * shade, 0, 255).astype(np.uint8)

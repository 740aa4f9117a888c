"""Frames outside a model's world, made from frames inside it: what the out-of-domain alarm is measured on.

Two kinds, both deterministic for a ``numpy.random.Generator``:

* **Degenerate camera frames** (``DEGENERATE_FRAMES``): a failed or covered camera. The alarm must be raised on
  every one of them.
* **Photometric shifts** (``PHOTOMETRIC_SHIFTS``): the camera still works but the scene looks unlike training
  (night, fog, a colour cast, a noisy sensor), each with a strength from 0 (unchanged) to 1 (the strongest
  measured). The alarm rate against the strength is a curve, not a pass/fail.

Sizes that matter (blur radius) are relative to the image width, so a 384x216 and a 1280x720 frame get the
same shift once the model has resized them to its network size.
"""

from __future__ import annotations

import cv2
import numpy as np

#: name -> what it is (the README and the model card use these words)
DEGENERATE_FRAMES: dict[str, str] = {
    "black": "all pixels 0",
    "white": "all pixels 255",
    "grey": "one uniform grey level (random, 16..240)",
    "noise": "pure noise: every channel of every pixel uniform in 0..255",
    "blur": "heavily blurred: Gaussian, sigma 2 % of the image width",
    "overexposed": "heavily over-exposed: +3 EV (x8), clipped",
    "underexposed": "heavily under-exposed: -3 EV (x1/8)",
}
#: name -> (what strength 1 is, how the strength maps to it)
PHOTOMETRIC_SHIFTS: dict[str, str] = {
    "darken": "night-like darkening: exposure -6 EV x strength, colours desaturated by half x strength",
    "fog": "uniform fog: blend with light grey (225, 228, 232), opacity 0.9 x strength",
    "colour_cast": "colour cast: red x (1 + 0.8 s), blue x (1 - 0.8 s) (sodium-lamp orange)",
    "sensor_noise": "sensor noise: Gaussian, sigma 64 x strength grey levels per channel",
}
BLUR_SIGMA_OF_WIDTH = 0.02
EXPOSURE_STOPS = 3.0
DARKEN_STOPS = 6.0
FOG_COLOUR = (225.0, 228.0, 232.0)
FOG_OPACITY = 0.9
CAST_GAIN = 0.8
NOISE_SIGMA = 64.0


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def degenerate_frame(kind: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A degenerate frame of ``kind`` (``DEGENERATE_FRAMES``) the size of ``image`` (which the blurred and the
    exposed frames start from)."""
    _check(image)
    shape = image.shape
    if kind == "black":
        return np.zeros(shape, np.uint8)
    if kind == "white":
        return np.full(shape, 255, np.uint8)
    if kind == "grey":
        return np.full(shape, int(rng.integers(16, 241)), np.uint8)
    if kind == "noise":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == "blur":
        sigma = BLUR_SIGMA_OF_WIDTH * shape[1]
        return _to_uint8(cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT))
    if kind == "overexposed":
        return _to_uint8(image.astype(np.float32) * 2.0 ** EXPOSURE_STOPS)
    if kind == "underexposed":
        return _to_uint8(image.astype(np.float32) * 2.0 ** -EXPOSURE_STOPS)
    raise ValueError(f"unknown degenerate frame {kind!r}; choose one of {', '.join(DEGENERATE_FRAMES)}")


def photometric_shift(image: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` shifted by ``kind`` (``PHOTOMETRIC_SHIFTS``) at ``strength`` in [0, 1] (0 = unchanged)."""
    _check(image)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"shift strength must be in [0, 1], got {strength}")
    x = image.astype(np.float32)
    if kind == "darken":
        grey = x.mean(axis=2, keepdims=True)
        x = x + 0.5 * strength * (grey - x)
        return _to_uint8(x * 2.0 ** (-DARKEN_STOPS * strength))
    if kind == "fog":
        opacity = FOG_OPACITY * strength
        return _to_uint8((1.0 - opacity) * x + opacity * np.array(FOG_COLOUR, np.float32))
    if kind == "colour_cast":
        gains = np.array([1.0 + CAST_GAIN * strength, 1.0, 1.0 - CAST_GAIN * strength], np.float32)
        return _to_uint8(x * gains)
    if kind == "sensor_noise":
        return _to_uint8(x + rng.normal(0.0, NOISE_SIGMA * strength, x.shape).astype(np.float32))
    raise ValueError(f"unknown photometric shift {kind!r}; choose one of {', '.join(PHOTOMETRIC_SHIFTS)}")


__all__ = ["DEGENERATE_FRAMES", "PHOTOMETRIC_SHIFTS", "degenerate_frame", "photometric_shift"]

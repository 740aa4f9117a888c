"""The one inference interface: a loaded model turns an RGB image into score map, mask and class ids."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicnet_ros.metadata import ModelMetadata

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = {"float32": "fp32", "float16": "fp16", "int8": "int8"}  # export dtype -> precision tag


class ModelLoadError(RuntimeError):
    """A model file is missing, truncated, or not a DiCNet model; the message names the file and the problem."""


class BackendUnavailableError(RuntimeError):
    """The requested backend (or device) cannot run on this machine; the message says what is missing."""


@dataclass
class InferenceResult:
    """Outputs for one image, at the resolution the model was asked for (input size by default)."""

    anomaly_score: np.ndarray  # (H, W) float32, raw score (higher = more anomalous)
    anomaly_mask: np.ndarray  # (H, W) bool, score > threshold
    semantic_labels: np.ndarray | None  # (H, W) uint8 teacher class ids, if the model has them
    timings_ms: dict[str, float] = field(default_factory=dict)  # e.g. preprocess / inference / total
    # optional baseline maps (higher = more anomalous) the model exports: "msp", "maxlogit"
    extras: dict[str, np.ndarray] = field(default_factory=dict)


RawOutputs = tuple  # (score, labels | None) or (score, labels | None, extras dict) from AnomalyModel._run


class AnomalyModel(abc.ABC):
    """Base class of every backend. Subclasses implement ``_run``; thresholding and timing live here."""

    backend_name: str = "base"

    def __init__(self, path: Path, metadata: ModelMetadata, device: str):
        self.path = Path(path)
        self.metadata = metadata
        self.device = device
        self._threshold = float(metadata.threshold) if metadata.threshold is not None else float("inf")

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        value = float(value)
        if not np.isfinite(value):
            raise ValueError("threshold must be a finite number")
        self._threshold = value

    @abc.abstractmethod
    def _run(self, image: np.ndarray) -> RawOutputs:
        """(H, W, 3) uint8 RGB -> (score (H, W) float32, labels (H, W) uint8 or None[, extras by name])."""

    def infer(self, image: np.ndarray) -> InferenceResult:
        """Run the model on one contiguous uint8 RGB image of any size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        start = time.perf_counter()
        score, labels, *rest = self._run(np.ascontiguousarray(image))
        elapsed = (time.perf_counter() - start) * 1e3
        return InferenceResult(score, score > self._threshold, labels, {"inference": elapsed}, rest[0] if rest else {})

    def warmup(self, iterations: int = 2) -> None:
        size = self.metadata.preprocess_config
        dummy = np.zeros((size.height, size.width, 3), np.uint8)
        for _ in range(iterations):
            self._run(dummy)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources (GPU memory, sessions)."""

    @property
    def precision(self) -> str:
        """What the arithmetic runs in: fp32, fp16 or int8 (from the exported graph's metadata)."""
        return PRECISIONS.get(str(self.metadata.export.get("dtype", "float32")), "fp32")

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend_name, "device": self.device, "model": str(self.path),
                "precision": self.precision}


"""The one inference interface: a loaded model turns an RGB image into score map, mask and class ids."""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
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
    # image-level out-of-domain score (higher = further from the training domain); None: the model has none
    domain_score: float | None = None


RawOutputs = tuple  # (score, labels | None) or (score, labels | None, extras dict) from AnomalyModel._run
#: extras key under which a backend returns the image-level domain score (a 0-d array); ``infer`` moves it out
DOMAIN_KEY = "domain"


def check_rgb(image: np.ndarray) -> None:
    """What every backend takes: a uint8 RGB image (H, W, 3)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")


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

    def _run_batch(self, batch: np.ndarray) -> list[RawOutputs]:
        """(N, H, W, 3) uint8 RGB -> one ``_run`` result per image. Backends whose graph takes a batch override
        this with one call; the default runs the images one by one."""
        return [self._run(image) for image in batch]

    @property
    def domain_threshold(self) -> float | None:
        """Image-level out-of-domain alarm threshold from the metadata (``domain_score > it``: out of domain)."""
        value = self.metadata.domain_threshold
        return float(value) if value is not None else None

    def _result(self, raw: RawOutputs, timings: dict[str, float]) -> InferenceResult:
        score, labels, *rest = raw
        extras = dict(rest[0]) if rest else {}
        domain = extras.pop(DOMAIN_KEY, None)
        return InferenceResult(score, score > self._threshold, labels, timings, extras,
                               float(domain) if domain is not None else None)

    def infer(self, image: np.ndarray) -> InferenceResult:
        """Run the model on one contiguous uint8 RGB image of any size."""
        check_rgb(image)
        start = time.perf_counter()
        raw = self._run(np.ascontiguousarray(image))
        return self._result(raw, {"inference": (time.perf_counter() - start) * 1e3})

    def infer_batch(self, images: Sequence[np.ndarray]) -> list[InferenceResult]:
        """Run the model on several uint8 RGB images in one call per image size (the graphs take a batch).

        Results come back in the order of ``images``; ``timings_ms`` holds the whole call's ``inference`` time
        and the ``batch`` size the image was run in."""
        for image in images:
            check_rgb(image)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((int(image.shape[0]), int(image.shape[1])), []).append(i)
        results: list[InferenceResult | None] = [None] * len(images)
        for indices in groups.values():
            start = time.perf_counter()
            if len(indices) == 1:
                raws = [self._run(np.ascontiguousarray(images[indices[0]]))]
            else:
                raws = self._run_batch(np.stack([images[i] for i in indices]))
            timings = {"inference": (time.perf_counter() - start) * 1e3, "batch": float(len(indices))}
            for i, raw in zip(indices, raws, strict=True):
                results[i] = self._result(raw, dict(timings))
        return [r for r in results if r is not None]

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


"""Everything a runtime needs besides the weights, kept in the model file (checkpoint or ONNX metadata).

The threshold, calibration, classes and preprocessing live here, never in code constants, so that one
``.onnx`` file is a complete deployable model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from dicnet_ros import __version__
from dicnet_ros.preprocessing import PreprocessConfig

METADATA_KEY = "dicnet_metadata"  # ONNX metadata_props key holding the JSON below
METADATA_FORMAT = 1


class MetadataError(ValueError):
    """The model file's metadata is missing or inconsistent."""


@dataclass
class ModelMetadata:
    """Serialisable description of a trained, calibrated DiCNet model."""

    class_names: list[str]
    preprocess: dict[str, Any]  # PreprocessConfig.to_dict()
    scoring_mode: str = "paper"
    teacher_norm: str = "bn_affine"
    threshold: float | None = None  # default mask threshold on the raw score
    anomaly_ids: list[int] = field(default_factory=list)  # of the dataset the model was evaluated on
    ignore_id: int = 255
    calibration: dict[str, Any] = field(default_factory=dict)  # mu_c, score stats, target FPR, split ...
    model_config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # config + provenance of the training run
    export: dict[str, Any] = field(default_factory=dict)  # output resolution, dtype, dynamic, opset ...
    source_checkpoint: str | None = None
    package_version: str = __version__
    format: int = METADATA_FORMAT

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def score_range(self) -> tuple[float, float]:
        """Range for colour maps / histograms: 0 .. a high in-distribution quantile (or 2 x threshold)."""
        stats = self.calibration.get("score_stats", {})
        hi = stats.get("p999") or stats.get("max") or ((self.threshold or 1.0) * 2.0)
        return 0.0, float(max(hi, (self.threshold or 0.0) * 1.5, 1e-6))

    @property
    def display_range(self) -> tuple[float, float]:
        """Colour range for people: from the 90th percentile of in-distribution scores (ordinary pixels stay
        uncoloured in overlays) to the top of ``score_range``."""
        lo_default, hi = self.score_range
        lo = float(self.calibration.get("score_stats", {}).get("p90") or lo_default)
        return (lo, hi) if hi > lo else (lo_default, hi)

    def validate(self, source: str = "model") -> ModelMetadata:
        """Raise MetadataError naming ``source`` and the field when something a runtime needs is wrong."""
        if not self.class_names:
            raise MetadataError(f"{source}: metadata has no class_names")
        try:
            self.preprocess_config  # noqa: B018 - validates the dict
        except (TypeError, ValueError, KeyError) as exc:
            raise MetadataError(f"{source}: bad preprocess metadata: {exc}") from exc
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise MetadataError(f"{source}: threshold is not finite")
        if self.format > METADATA_FORMAT:
            raise MetadataError(f"{source}: metadata format {self.format} is newer than this package supports "
                                f"({METADATA_FORMAT}); upgrade dicnet_ros")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model") -> ModelMetadata:
        names = set(cls.__dataclass_fields__)
        missing = [k for k in ("class_names", "preprocess") if k not in data]
        if missing:
            raise MetadataError(f"{source}: metadata lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names}).validate(source)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> ModelMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{source}: metadata is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: metadata must be a JSON object")
        return cls.from_dict(data, source)

"""Everything a runtime needs besides the weights, kept in the model file (checkpoint or ONNX metadata).

The threshold, calibration, classes and preprocessing live here, never in code constants, so that one
``.onnx`` file is a complete deployable model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
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
    # image-level out-of-domain alarm: domain_score > domain_threshold means the frame is outside the model's world
    # (null: the model has no domain score, or it was not calibrated)
    domain_threshold: float | None = None
    anomaly_ids: list[int] = field(default_factory=list)  # of the dataset the model was evaluated on
    ignore_id: int = 255
    calibration: dict[str, Any] = field(default_factory=dict)  # mu_c, score stats, target FPR, split ...
    model_config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # config + provenance of the training run
    export: dict[str, Any] = field(default_factory=dict)  # output resolution, dtype, dynamic, opset ...
    source_checkpoint: str | None = None
    # SHA-256 of the model file with this digest zeroed (dicnet_ros.integrity); null: written before checksums
    weights_sha256: str | None = None
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
        """Raise MetadataError naming ``source`` and the field when something a runtime reads is wrong.

        Runtimes trust these values deep inside (colour ranges, tensor shapes, TensorRT precision), so a bad
        field must fail here, at load time, with a message a user can act on.
        """
        if is_integer(self.format) and self.format > METADATA_FORMAT:  # other fields may have changed meaning
            raise MetadataError(f"{source}: metadata format {self.format} is newer than this package supports "
                                f"({METADATA_FORMAT}); upgrade dicnet_ros")
        check_metadata_fields(vars(self), source)
        try:
            self.preprocess_config  # noqa: B018 - the sizes must also fit together (e.g. not below the stride)
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: metadata field 'preprocess' is invalid: {exc}") from exc
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model") -> ModelMetadata:
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: metadata must be an object, got {shown(data)}")
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


# ------------------------------------------------------------------------------------------ field checks
# JSON from a file is untrusted: each rule is (accepts(value), what it must be) and an error names the field.
FieldRule = tuple[Callable[[Any], bool], str]


def shown(value: Any, limit: int = 60) -> str:
    """repr() short enough for a one-line error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def is_positive_integer(value: Any) -> bool:
    return is_integer(value) and value > 0


def list_of(item: Callable[[Any], bool], length: int | None = None, non_empty: bool = False) -> Callable[[Any], bool]:
    def accepts(value: Any) -> bool:
        return (isinstance(value, list) and all(item(v) for v in value) and (length is None or len(value) == length)
                and (bool(value) or not non_empty))

    return accepts


def or_null(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or accepts(value)


def is_object(value: Any) -> bool:
    return isinstance(value, dict)


def is_string(value: Any) -> bool:
    return isinstance(value, str)


TOP_LEVEL_RULES: dict[str, FieldRule] = {
    "format": (is_integer, "an integer"),
    "class_names": (list_of(is_string, non_empty=True), "a non-empty list of strings"),
    "preprocess": (is_object, "an object"),
    "scoring_mode": (is_string, "a string"),
    "teacher_norm": (is_string, "a string"),
    "threshold": (or_null(is_number), "a number or null"),
    "domain_threshold": (or_null(is_finite_number), "a finite number or null"),
    "anomaly_ids": (list_of(is_integer), "a list of integers"),
    "ignore_id": (is_integer, "an integer"),
    "calibration": (is_object, "an object"),
    "model_config": (is_object, "an object"),
    "training": (is_object, "an object"),
    "export": (is_object, "an object"),
    "source_checkpoint": (or_null(is_string), "a string or null"),
    "weights_sha256": (or_null(lambda v: is_string(v) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)),
                       "64 hexadecimal digits or null"),
    "package_version": (is_string, "a string"),
}
# optional keys inside the objects above that runtimes read (checked when present)
#: The largest network / export side a runtime accepts: a file claiming 60000 x 60000 would make the warm-up run
#: allocate tens of gigabytes before anything could object.
MAX_SIDE = 8192


def is_side(value: Any) -> bool:
    return is_positive_integer(value) and value <= MAX_SIDE


NESTED_RULES: dict[tuple[str, str], FieldRule] = {
    ("preprocess", "height"): (is_side, f"a positive integer up to {MAX_SIDE}"),
    ("preprocess", "width"): (is_side, f"a positive integer up to {MAX_SIDE}"),
    ("preprocess", "output_stride"): (is_positive_integer, "a positive integer"),
    ("preprocess", "mean"): (list_of(is_finite_number, 3), "a list of 3 numbers"),
    ("preprocess", "std"): (list_of(lambda v: is_finite_number(v) and v > 0, 3), "a list of 3 positive numbers"),
    ("calibration", "mu_c"): (or_null(list_of(is_finite_number)), "a list of numbers or null"),
    ("calibration", "score_stats"): (is_object, "an object"),
    ("export", "input_size"): (or_null(list_of(is_side, 2)), f"[width, height] (positive integers up to {MAX_SIDE}) "
                                                           "or null"),
    ("export", "dynamic"): (lambda v: isinstance(v, bool), "true or false"),
    ("export", "dtype"): (is_string, "a string"),
    ("export", "output_resolution"): (is_string, "a string"),
    ("export", "labels"): (is_string, "a string"),
}
SCORE_STATS_READ = ("p90", "p999", "max")  # what score_range / display_range use
REQUIRED_PREPROCESS = ("height", "width")


def check_metadata_fields(data: dict[str, Any], source: str) -> None:
    """Type-check every field a runtime reads; MetadataError names ``source`` and the (dotted) field."""

    def fail(name: str, expected: str, value: Any) -> MetadataError:
        return MetadataError(f"{source}: metadata field '{name}' must be {expected}, got {shown(value)}")

    for name, (accepts, expected) in TOP_LEVEL_RULES.items():
        if name in data and not accepts(data[name]):
            raise fail(name, expected, data[name])
    threshold = data.get("threshold")
    if threshold is not None and not math.isfinite(threshold):
        raise fail("threshold", "a finite number or null", threshold)
    for (parent, name), (accepts, expected) in NESTED_RULES.items():
        section = data.get(parent) or {}
        if name in section and not accepts(section[name]):
            raise fail(f"{parent}.{name}", expected, section[name])
    missing = [k for k in REQUIRED_PREPROCESS if k not in (data.get("preprocess") or {})]
    if "preprocess" in data and missing:
        raise MetadataError(f"{source}: metadata field 'preprocess' lacks {', '.join(missing)}")
    stats = (data.get("calibration") or {}).get("score_stats") or {}
    for name in SCORE_STATS_READ:
        if name in stats and not or_null(is_finite_number)(stats[name]):
            raise fail(f"calibration.score_stats.{name}", "a finite number or null", stats[name])

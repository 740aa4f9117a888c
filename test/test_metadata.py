"""Malformed model metadata fails at load time with one line naming the file and the field.

Metadata is JSON inside a model file anybody can edit; runtimes read these fields deep inside (colour
ranges, tensor shapes, TensorRT precision), where a wrong type would crash far from its cause.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dicnet_ros.metadata import METADATA_KEY, MetadataError, ModelMetadata

VALID: dict[str, Any] = {
    "class_names": ["road", "car"],
    "preprocess": {"height": 64, "width": 96, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "output_stride": 8},
    "threshold": 0.5,
    "anomaly_ids": [1],
    "ignore_id": 255,
    "calibration": {"mu_c": [0.0, 0.1], "score_stats": {"p90": 0.2, "p999": 0.9, "max": 1.0}},
    "export": {"dynamic": False, "input_size": [96, 64], "dtype": "float32", "output_resolution": "input"},
    "source_checkpoint": None,
}

# (dotted field, bad value, what the message must say it must be)
BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("threshold", "abc", "must be a number or null, got 'abc'"),
    ("threshold", True, "must be a number or null, got True"),
    ("threshold", float("inf"), "must be a finite number or null, got inf"),
    ("class_names", "road,car", "must be a non-empty list of strings"),
    ("class_names", [], "must be a non-empty list of strings, got []"),
    ("class_names", ["road", 3], "must be a non-empty list of strings"),
    ("preprocess", [64, 96], "must be an object"),
    ("preprocess.height", "64", "must be a positive integer up to 8192, got '64'"),
    ("preprocess.width", -1, "must be a positive integer up to 8192, got -1"),
    ("preprocess.width", 60000, "must be a positive integer up to 8192, got 60000"),
    ("export.input_size", [60000, 60000], "must be [width, height] (positive integers up to 8192) or null"),
    ("domain_threshold", float("nan"), "must be a finite number or null, got nan"),
    ("preprocess.mean", [0.5, 0.5], "must be a list of 3 numbers"),
    ("preprocess.std", [0.2, 0.0, 0.2], "must be a list of 3 positive numbers"),
    ("scoring_mode", 1, "must be a string, got 1"),
    ("teacher_norm", None, "must be a string, got None"),
    ("anomaly_ids", "1", "must be a list of integers"),
    ("ignore_id", 2.5, "must be an integer, got 2.5"),
    ("calibration", None, "must be an object, got None"),
    ("calibration.mu_c", [0.0, "x"], "must be a list of numbers or null"),
    ("calibration.score_stats", [], "must be an object"),
    ("calibration.score_stats.p999", "high", "must be a finite number or null, got 'high'"),
    ("export", "fused", "must be an object"),
    ("export.input_size", [96], "must be [width, height]"),
    ("export.dynamic", "no", "must be true or false, got 'no'"),
    ("export.dtype", 16, "must be a string, got 16"),
    ("model_config", [], "must be an object"),
    ("training", "x", "must be an object"),
    ("source_checkpoint", 7, "must be a string or null, got 7"),
    ("package_version", 0.1, "must be a string, got 0.1"),
    ("format", "1", "must be an integer, got '1'"),
]


def with_field(name: str, value: Any) -> dict[str, Any]:
    """VALID with the dotted field ``name`` set to ``value``."""
    data = copy.deepcopy(VALID)
    *parents, leaf = name.split(".")
    section = data
    for parent in parents:
        section = section.setdefault(parent, {})
    section[leaf] = value
    return data


def test_valid_metadata_loads() -> None:
    meta = ModelMetadata.from_json(json.dumps(VALID), "model.onnx")
    assert meta.num_classes == 2 and meta.preprocess_config.width == 96 and meta.score_range == (0.0, 0.9)


@pytest.mark.parametrize(("name", "value", "expected"), BAD_FIELDS, ids=[f"{n}={v!r}" for n, v, _ in BAD_FIELDS])
def test_bad_field_is_named_with_the_file(name: str, value: Any, expected: str) -> None:
    with pytest.raises(MetadataError) as info:
        ModelMetadata.from_dict(with_field(name, value), "model.onnx")
    message = str(info.value)
    assert message.startswith(f"model.onnx: metadata field '{name}' ") and expected in message
    assert "\n" not in message


def test_inconsistent_preprocess_and_missing_sizes_are_named() -> None:
    with pytest.raises(MetadataError, match=r"model\.onnx: metadata field 'preprocess' is invalid: .*stride"):
        ModelMetadata.from_dict(with_field("preprocess.height", 4), "model.onnx")
    data = copy.deepcopy(VALID)
    del data["preprocess"]["width"]
    with pytest.raises(MetadataError, match=r"model\.onnx: metadata field 'preprocess' lacks width"):
        ModelMetadata.from_dict(data, "model.onnx")


def test_metadata_that_is_not_an_object() -> None:
    with pytest.raises(MetadataError, match=r"model\.onnx: metadata must be"):
        ModelMetadata.from_json("[1, 2]", "model.onnx")
    with pytest.raises(MetadataError, match=r"model\.onnx: metadata must be an object"):
        ModelMetadata.from_dict(["class_names"], "model.onnx")  # type: ignore[arg-type]


def test_newer_format_is_reported_before_field_types() -> None:
    data = with_field("format", 99)
    data["threshold"] = "changed meaning in format 99"
    with pytest.raises(MetadataError, match="newer than this package supports"):
        ModelMetadata.from_dict(data, "model.onnx")


def tiny_onnx_with_metadata(path: Path, metadata: str) -> Path:
    """A one-node ONNX graph carrying ``metadata``: metadata is parsed before the graph's I/O is checked."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # readable by every supported onnxruntime
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("name", "value"), [("threshold", "abc"), ("class_names", {"0": "road"}),
                                             ("preprocess.height", None), ("export.input_size", "96x64")])
def test_onnx_with_a_bad_field_names_file_and_field(tmp_path: Path, name: str, value: Any) -> None:
    pytest.importorskip("onnxruntime")
    from dicnet_ros.inference import ModelLoadError, load_model

    path = tiny_onnx_with_metadata(tmp_path / "model.onnx", json.dumps(with_field(name, value)))
    with pytest.raises(ModelLoadError) as info:
        load_model(path, "onnxruntime", "cpu")
    assert str(info.value).startswith(f"{path}: metadata field '{name}' must be ")


def test_checkpoint_with_a_bad_field_names_file_and_field(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from dicnet_ros.inference import ModelLoadError, load_model
    from dicnet_ros.model.checkpoint import CHECKPOINT_FORMAT

    path = tmp_path / "model.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "stage": "student", "model_config": {}, "teacher": {},
                "metadata": with_field("threshold", "abc")}, path)
    with pytest.raises(ModelLoadError) as info:
        load_model(path, "torch", "cpu")
    assert str(info.value) == f"{path}: metadata field 'threshold' must be a number or null, got 'abc'"

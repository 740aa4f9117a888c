"""The one inference interface across backends: shapes, dtypes, threshold, bad files, auto selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicnet_ros.inference import BackendUnavailableError, ModelLoadError, load_model
from dicnet_ros.inference.availability import available_backends
from dicnet_ros.inference.registry import resolve_backend
from dicnet_ros.integrity import restamp
from dicnet_ros.metadata import METADATA_KEY

onnx = pytest.importorskip("onnx")


@pytest.fixture(params=["onnxruntime", "torch"])
def model(request: pytest.FixtureRequest, tiny_onnx: Path, tiny_checkpoint: Path):
    pytest.importorskip(request.param)
    path = tiny_onnx if request.param == "onnxruntime" else tiny_checkpoint
    return load_model(path, request.param, "cpu")


def test_interface_shapes_dtypes_threshold(model) -> None:
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    result = model.infer(image)
    assert result.anomaly_score.shape == (50, 70) and result.anomaly_score.dtype == np.float32
    assert result.semantic_labels.shape == (50, 70) and result.semantic_labels.dtype == np.uint8
    assert result.semantic_labels.max() < model.metadata.num_classes
    assert result.anomaly_mask.dtype == bool
    assert model.threshold == pytest.approx(model.metadata.threshold)
    np.testing.assert_array_equal(result.anomaly_mask, result.anomaly_score > model.threshold)
    model.threshold = float(np.quantile(result.anomaly_score, 0.9))
    again = model.infer(image)
    np.testing.assert_array_equal(again.anomaly_mask, again.anomaly_score > model.threshold)
    assert 0.05 < again.anomaly_mask.mean() < 0.15
    with pytest.raises(ValueError):
        model.threshold = float("nan")
    with pytest.raises(ValueError):
        model.infer(image.astype(np.float32))
    assert "inference" in result.timings_ms
    model.warmup(1)


def test_batch_matches_one_by_one(model) -> None:
    """infer_batch runs images of one size as one batch, other sizes apart, and answers in the input order."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((48, 64, 3), (60, 40, 3), (48, 64, 3))]
    batch = model.infer_batch(images)
    assert [r.timings_ms["batch"] for r in batch] == [2.0, 1.0, 2.0]
    for image, got in zip(images, batch, strict=True):
        one = model.infer(image)
        assert got.anomaly_score.shape == image.shape[:2]
        np.testing.assert_allclose(got.anomaly_score, one.anomaly_score, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got.anomaly_mask, got.anomaly_score > model.threshold)
        assert (got.semantic_labels == one.semantic_labels).mean() > 0.999
        assert set(got.extras) == set(one.extras)
    with pytest.raises(ValueError):
        model.infer_batch([images[0], images[0].astype(np.float32)])


def test_backends_agree(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    image = np.random.default_rng(2).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    a = load_model(tiny_onnx, "onnxruntime", "cpu").infer(image)
    b = load_model(tiny_checkpoint, "torch", "cpu").infer(image)
    c = load_model(tiny_onnx, "torch", "cpu").infer(image)  # via metadata source_checkpoint
    assert np.abs(a.anomaly_score - b.anomaly_score).max() <= 1e-4 * np.abs(b.anomaly_score).max()
    np.testing.assert_array_equal(b.anomaly_score, c.anomaly_score)
    assert (a.semantic_labels == b.semantic_labels).mean() > 0.999


def test_baseline_extras_are_msp_and_maxlogit(model, tiny_checkpoint: Path, check_maxlogit) -> None:
    """Every backend returns the teacher's MSP and MaxLogit (-max logit) maps beside the score."""
    image = np.random.default_rng(4).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    extras = model.infer(image).extras
    assert set(extras) == {"msp", "maxlogit"}
    assert extras["msp"].shape == (50, 70) and extras["msp"].min() >= 0.0 and extras["msp"].max() <= 1.0
    check_maxlogit(extras["maxlogit"], tiny_checkpoint, image)


def test_model_without_maxlogit_output_still_loads(tmp_path: Path, tiny_onnx: Path) -> None:
    """An export from before the MaxLogit output: same score, labels and MSP; its extras lack "maxlogit"."""
    old = onnx.load(str(tiny_onnx))
    kept = [o for o in old.graph.output if o.name != "maxlogit_score"]
    assert len(kept) == len(old.graph.output) - 1
    del old.graph.output[:]
    old.graph.output.extend(kept)
    path = tmp_path / "before_maxlogit.onnx"
    onnx.save(old, str(path))
    restamp(path)  # a deliberate edit: record the weights checksum again
    image = np.random.default_rng(6).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    before = load_model(path, "onnxruntime", "cpu").infer(image)
    now = load_model(tiny_onnx, "onnxruntime", "cpu").infer(image)
    assert set(before.extras) == {"msp"}
    np.testing.assert_array_equal(before.anomaly_score, now.anomaly_score)
    np.testing.assert_array_equal(before.semantic_labels, now.semantic_labels)
    np.testing.assert_array_equal(before.extras["msp"], now.extras["msp"])


def test_ort_options(tiny_onnx: Path) -> None:
    model = load_model(tiny_onnx, "onnxruntime", "cpu", threads=1, graph_optimization="basic")
    assert model.describe()["threads"] == "1" and model.device == "cpu"
    with pytest.raises(ValueError, match="unknown backend options"):
        load_model(tiny_onnx, "onnxruntime", "cpu", bogus=1)
    with pytest.raises(ValueError, match="unknown backend"):
        load_model(tiny_onnx, "nope")


def _expect_load_error(path: Path, backend: str = "onnxruntime", match: str = "") -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(path, backend, "cpu")
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert match in message
    return message


def test_bad_model_files(tmp_path: Path, tiny_onnx: Path) -> None:
    _expect_load_error(tmp_path / "missing.onnx", match="not found")
    _expect_load_error(tmp_path / "missing.pt", backend="torch", match="not found")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 3])
    _expect_load_error(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_load_error(garbage)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _expect_load_error(empty, match="empty")
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(b"not a checkpoint")
    _expect_load_error(garbage_pt, backend="torch")


def _with_metadata(src: Path, dst: Path, value: str | None) -> Path:
    model = onnx.load(str(src))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if value is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, value
    onnx.save(model, str(dst))
    restamp(dst)  # a deliberate edit: record the weights checksum again
    return dst


def test_onnx_without_or_with_wrong_metadata(tmp_path: Path, tiny_onnx: Path) -> None:
    _expect_load_error(_with_metadata(tiny_onnx, tmp_path / "nometa.onnx", None), match="no DiCNet metadata")
    _expect_load_error(_with_metadata(tiny_onnx, tmp_path / "badjson.onnx", "{not json"), match="JSON")
    _expect_load_error(_with_metadata(tiny_onnx, tmp_path / "nocls.onnx", json.dumps({"preprocess": {}})),
                       match="class_names")
    meta = json.loads(onnx.load(str(tiny_onnx)).metadata_props[-1].value)
    meta["format"] = 99
    _expect_load_error(_with_metadata(tiny_onnx, tmp_path / "future.onnx", json.dumps(meta)), match="newer")


def test_onnx_with_wrong_io(tmp_path: Path, tiny_onnx: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = next(p.value for p in onnx.load(str(tiny_onnx)).metadata_props if p.key == METADATA_KEY)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta
    path = tmp_path / "wrongio.onnx"
    onnx.save(model, str(path))
    restamp(path)  # a deliberate edit: record the weights checksum again
    _expect_load_error(path, match="not a DiCNet fused graph")


def test_separate_manifest_errors(tmp_path: Path) -> None:
    manifest = tmp_path / "m.separate.json"
    manifest.write_text(json.dumps({"format": "dicnet-separate/1", "graphs": {"teacher": "t.onnx"}}))
    _expect_load_error(manifest, match="lacks the graphs")
    manifest.write_text("{")
    _expect_load_error(manifest, match="manifest")


def test_auto_backend_selection_here(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    available = available_backends()
    assert "onnxruntime" in available
    expected = "tensorrt" if "tensorrt" in available else "onnxruntime"
    assert resolve_backend(tiny_onnx, "auto") == expected
    assert resolve_backend(tiny_checkpoint, "auto") == "torch"
    if expected == "onnxruntime":
        assert load_model(tiny_onnx).backend_name == "onnxruntime"
    assert load_model(tiny_checkpoint, device="cpu").backend_name == "torch"
    with pytest.raises(BackendUnavailableError, match="export"):
        load_model(tiny_checkpoint, "onnxruntime")


def test_unavailable_devices_are_clear(tiny_onnx: Path) -> None:
    from dicnet_ros.inference.ort_backend import available_providers

    if "CUDAExecutionProvider" not in available_providers():
        with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
            load_model(tiny_onnx, "onnxruntime", "cuda")
    if "TensorrtExecutionProvider" not in available_providers():
        with pytest.raises(BackendUnavailableError, match="TensorRT"):
            load_model(tiny_onnx, "onnxruntime", "tensorrt")

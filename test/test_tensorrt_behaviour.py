"""The TensorRT backend's behaviour through the stand-in module (tensorrt_standin.py): batch profiles and chunks,
device N, one-line errors when TensorRT cannot start, auto's fallback, the bench row that fails."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tensorrt_standin import HostDevice, make_tensorrt

from dicnet_ros.inference import availability, registry, trt_backend
from dicnet_ros.inference import engine_cache as ec
from dicnet_ros.inference.ort_backend import OrtModel
from dicnet_ros.inference.trt_api import runtime_problem
from dicnet_ros.integrity import restamp

pytest.importorskip("torch")


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The stand-in as ``tensorrt`` (TensorRT 11.4 names and values), devices in host memory."""
    module = make_tensorrt("11.4.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(trt_backend, "open_device",
                        lambda device: HostDevice(module, trt_backend.parse_cuda_index(device)))
    runtime_problem.cache_clear()
    yield module
    runtime_problem.cache_clear()


def _images(count: int, hw: tuple[int, int] = (64, 96)) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(0, 256, (*hw, 3), dtype=np.uint8) for i in range(count)]


def _sidecar(engine: Path) -> dict:
    return json.loads(ec.sidecar_path(engine).read_text())


def test_batched_engine_has_a_batch_profile_and_splits_larger_batches(
        trt: types.ModuleType, tiny_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = trt_backend.TrtModel(tiny_onnx, cache_dir=tmp_path, max_batch=3)
    (engine,) = model.engine_files
    assert engine.name == "tiny.1-3x64x96x3.fp32.engine" and model.describe()["batch"] == "1-3"
    plan = json.loads(engine.read_bytes())
    assert plan["profile"]["image"] == [[1, 64, 96, 3], [3, 64, 96, 3], [3, 64, 96, 3]]  # min 1, opt = max = 3
    assert _sidecar(engine)["key"]["batch_range"] == [1, 3]
    images = _images(5)
    with caplog.at_level(logging.WARNING):
        results = model.infer_batch(images)
        model.infer_batch(images)
    assert trt.batches == [3, 2, 3, 2]  # 5 images = one call of 3 and one of 2, the engine is not rebuilt
    assert sum("chunks of 3" in r.message for r in caplog.records) == 1  # said once
    reference = OrtModel(tiny_onnx, device="cpu")
    for image, result in zip(images, results, strict=True):
        expected = reference.infer(image)
        assert np.abs(result.anomaly_score - expected.anomaly_score).max() < 1e-5
        assert (result.semantic_labels == expected.semantic_labels).all()
        assert result.timings_ms["batch"] == 5
    single = model.infer(images[0])  # one image runs on the same engine, inside the profile
    assert np.abs(single.anomaly_score - results[0].anomaly_score).max() < 1e-5 and trt.batches[-1] == 1


def test_batch_range_is_part_of_the_cache_key(trt: types.ModuleType, tiny_onnx: Path, tmp_path: Path) -> None:
    trt_backend.TrtModel(tiny_onnx, cache_dir=tmp_path, max_batch=4)
    trt_backend.TrtModel(tiny_onnx, cache_dir=tmp_path, max_batch=4)
    assert [e for e, _ in trt.events].count("build") == 1  # same range: the cached engine is loaded
    one = trt_backend.TrtModel(tiny_onnx, cache_dir=tmp_path)  # max_batch 1: another engine, built
    assert [e for e, _ in trt.events].count("build") == 2
    assert one.engine_files[0].name == "tiny.1x64x96x3.fp32.engine"
    assert json.loads(one.engine_files[0].read_bytes())["profile"]["image"][2] == [1, 64, 96, 3]
    assert sorted(p.name for p in tmp_path.glob("*.engine")) == ["tiny.1-4x64x96x3.fp32.engine",
                                                                "tiny.1x64x96x3.fp32.engine"]
    with pytest.raises(ValueError, match="max_batch"):
        trt_backend.TrtModel(tiny_onnx, cache_dir=tmp_path, max_batch=0)


def test_device_n_builds_loads_and_runs_on_gpu_n(trt: types.ModuleType, tiny_onnx: Path, tmp_path: Path) -> None:
    """Every TensorRT call happens with cuda:1 current, and the cache key names cuda:1's GPU."""
    model = trt_backend.TrtModel(tiny_onnx, device="cuda:1", cache_dir=tmp_path)
    model.infer(_images(1)[0])
    done = {what for what, _ in trt.events}
    assert {"Builder", "build", "Runtime", "deserialize", "context", "execute"} <= done
    assert {device for _, device in trt.events} == {1}
    assert json.loads(model.engine_files[0].read_bytes())["device"] == 1
    key = _sidecar(model.engine_files[0])["key"]
    assert (key["gpu_name"], key["compute_capability"]) == ("NVIDIA L4", "8.9") and model.device == "cuda:1"
    assert trt.current_device == 0  # the caller's device is restored
    with pytest.raises(trt_backend.BackendUnavailableError, match="cuda or cuda:N"):
        trt_backend.parse_cuda_index("cuda:x")


def test_host_device_has_the_cuda_device_interface() -> None:
    """The tests' host-memory device offers exactly what TrtModel / TrtGraph use of CudaDevice."""
    public = {n for n in vars(trt_backend.CudaDevice) if not n.startswith("_")}
    assert public == {n for n in vars(HostDevice) if not n.startswith("_")}


def test_tensorrt_that_cannot_start_is_one_line_in_build_engine(
        trt: types.ModuleType, tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The bindings raise TypeError (factory function returned nullptr) when TensorRT cannot create a Builder."""
    from dicnet_ros.cli import main as dicnet

    trt.refuse.add("Builder")
    assert dicnet(["build-engine", "--model", str(tiny_onnx), "--cache-dir", str(tmp_path), "--max-batch", "2"]) == 1
    out = capsys.readouterr().err.strip().splitlines()  # errors go to stderr, as in every dicnet command
    assert len(out) == 1 and out[0].startswith("dicnet build-engine: TensorRT cannot create a Builder on cuda:0")
    assert "Traceback" not in out[0] and not list(tmp_path.glob("*.engine"))
    trt.refuse = {"Runtime"}
    assert dicnet(["build-engine", "--model", str(tiny_onnx), "--cache-dir", str(tmp_path)]) == 1
    assert "cannot create a Runtime" in capsys.readouterr().err
    assert dicnet(["build-engine", "--model", str(tiny_onnx), "--max-batch", "0"]) == 2


def test_tensorrt_that_cannot_start_is_one_line_for_the_node(trt: types.ModuleType, tiny_onnx: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from dicnet_ros.node.errors import NodeStartupError
    from dicnet_ros.node.model_loading import open_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU that TensorRT cannot use
    trt.refuse.add("Builder")
    with pytest.raises(NodeStartupError) as info:
        open_model(str(tiny_onnx), "tensorrt", "cuda", engine_cache_dir=str(tmp_path))
    message = str(info.value)
    assert "not available: TensorRT cannot create a Builder" in message and "\n" not in message
    assert "TypeError" not in message


def test_auto_passes_over_a_tensorrt_that_cannot_create_a_runtime(
        trt: types.ModuleType, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Installed is not usable: auto asks TensorRT for a Runtime (once) and falls back to ONNX Runtime, saying why
    once."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU that TensorRT cannot use
    monkeypatch.setattr(registry, "_fallback_said", set())
    trt.refuse.add("Runtime")
    with caplog.at_level(logging.WARNING):
        assert registry.resolve_backend(tiny_onnx, "auto") == "onnxruntime"
        assert registry.resolve_backend(tiny_onnx, "auto") == "onnxruntime"
    said = [r.message for r in caplog.records if "backend auto" in r.message]
    assert len(said) == 1 and "cannot create a Runtime" in said[0]
    ok, why = availability.tensorrt_status()
    assert not ok and "Runtime" in why
    assert [e for e, _ in trt.events].count("Runtime") == 0  # refused, and asked once (cached)
    runtime_problem.cache_clear()
    trt.refuse.clear()
    assert availability.tensorrt_status() == (True, "tensorrt")
    assert registry.resolve_backend(tiny_onnx, "auto") == "tensorrt"


def test_bench_skips_a_tensorrt_row_that_fails_with_its_reason(
        trt: types.ModuleType, tiny_checkpoint: Path, tiny_onnx: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A parse / build failure (ModelLoadError) and a failure while running skip the row, not the benchmark."""
    import shutil

    from dicnet_ros.cli import main as dicnet

    (tmp_path / "work").mkdir()  # the export the tensorrt row would make: the same dynamic export of the checkpoint
    shutil.copy(tiny_onnx, tmp_path / "work" / "model_dynamic_network.onnx")
    for module in (availability, registry):
        monkeypatch.setattr(module, "tensorrt_status", lambda: (True, "tensorrt"))
    trt.parse_errors.append("In node 12 (Resize): UNSUPPORTED_NODE: standin refuses")
    out = tmp_path / "bench.json"
    arguments = ["bench", "--checkpoint", str(tiny_checkpoint), "--resolutions", "96x64", "--dynamic", "--backends",
                 "reference,tensorrt", "--warmup", "1", "--iterations", "2", "--threads", "1", "--workdir",
                 str(tmp_path / "work"), "--json", str(out)]
    assert dicnet(arguments) == 0
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["results"]] == ["reference"]
    assert "TensorRT cannot parse the ONNX" in report["skipped"]["tensorrt"]
    assert "UNSUPPORTED_NODE" in report["skipped"]["tensorrt"]
    trt.parse_errors.clear()
    trt.fail_execute = True  # builds and loads, fails on the first run
    assert dicnet(arguments) == 0
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["results"]] == ["reference"]
    assert report["skipped"]["tensorrt"] == "RuntimeError: TensorRT execute_async_v3 failed"


def test_an_export_with_a_fixed_batch_runs_one_image_per_call(
        trt: types.ModuleType, tiny_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import onnx

    from dicnet_ros.inference.base import ModelLoadError

    def fixed(batch: int) -> Path:
        model = onnx.load(str(tiny_onnx))
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch  # what a non-dynamic export has
        path = tmp_path / f"fixed{batch}.onnx"
        onnx.save(model, str(path))
        restamp(path)  # a deliberate edit: record the weights checksum again
        return path

    with caplog.at_level(logging.WARNING):
        model = trt_backend.TrtModel(fixed(1), cache_dir=tmp_path, max_batch=4)
    assert model.batch_range == (1, 1) and any("max_batch 4 ignored" in r.message for r in caplog.records)
    assert len(model.infer_batch(_images(3))) == 3 and trt.batches == [1, 1, 1]
    with pytest.raises(ModelLoadError, match=r"exactly \[2\] images per call"):
        trt_backend.TrtModel(fixed(2), cache_dir=tmp_path)

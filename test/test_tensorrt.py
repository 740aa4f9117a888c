"""TensorRT parts that need no GPU: cache keys, rebuild decisions, corrupt plans, precision, clear errors."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from tensorrt_standin import make_tensorrt

from dicnet_ros.inference import BackendUnavailableError, load_model
from dicnet_ros.inference import engine_cache as ec
from dicnet_ros.inference.trt_backend import import_tensorrt, network_flags, plan_precision


def _key(**changes: object) -> ec.EngineKey:
    base = {"tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0",
            "onnx_sha256": "a" * 64, "input_shapes": {"image": [1, 720, 1280, 3]}, "precision": "fp32"}
    base.update(changes)
    return ec.EngineKey.create(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    {"tensorrt_version": "11.4.0"}, {"gpu_name": "NVIDIA RTX 4090"}, {"compute_capability": "8.9"},
    {"onnx_sha256": "b" * 64}, {"input_shapes": {"image": [1, 360, 640, 3]}}, {"precision": "fp16"},
    {"batch_range": (1, 4)},
])
def test_any_component_changes_the_key(change: dict) -> None:
    assert _key(**change) != _key()
    assert _key(**change).digest() != _key().digest()
    assert _key().digest() == _key().digest()
    assert len(_key().differences(_key(**change))) == 1


def test_key_round_trip_and_paths(tmp_path: Path) -> None:
    key = _key()
    assert ec.EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    onnx = tmp_path / "model.onnx"
    assert ec.engine_path_for(onnx, key) == tmp_path / "model.1x720x1280x3.fp32.engine"
    assert ec.engine_path_for(onnx, key, tmp_path / "c", "teacher").parent == tmp_path / "c"
    assert "teacher" in ec.engine_path_for(onnx, key, None, "teacher").name
    assert ec.timing_cache_path(tmp_path, "10.13.0", "NVIDIA H100 80GB").name == \
        "dicnet.trt10.13.0.nvidia-h100-80gb.timing.cache"


def test_batch_range_in_key_and_file_name(tmp_path: Path) -> None:
    key = _key(input_shapes={"image": [4, 720, 1280, 3]}, batch_range=(1, 4))
    assert ec.EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    assert ec.engine_path_for(tmp_path / "m.onnx", key).name == "m.1-4x720x1280x3.fp32.engine"
    ec.store(tmp_path / "m.engine", _key(), b"PLAN")
    sidecar = ec.sidecar_path(tmp_path / "m.engine")
    data = json.loads(sidecar.read_text())
    del data["key"]["batch_range"]  # a key written without a range: a plan for one image per call
    sidecar.write_text(json.dumps(data))
    assert not ec.decide(tmp_path / "m.engine", _key()).rebuild
    decision = ec.decide(tmp_path / "m.engine", _key(batch_range=(1, 2)))
    assert decision.rebuild and "batch_range: (1, 1) -> (1, 2)" in decision.reason
    data["key"]["batch_range"] = "many"
    sidecar.write_text(json.dumps(data))
    assert "malformed" in ec.decide(tmp_path / "m.engine", _key()).reason


def test_rebuild_decisions(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    key = _key()
    assert ec.decide(engine, key).rebuild and "no cached engine" in ec.decide(engine, key).reason
    ec.store(engine, key, b"PLAN" * 100)
    assert not ec.decide(engine, key).rebuild
    assert ec.decide(engine, key, force=True).rebuild
    newer = _key(tensorrt_version="11.4.0")
    decision = ec.decide(engine, newer)
    assert decision.rebuild and "tensorrt_version: 10.13.0 -> 11.4.0" in decision.reason
    decision = ec.decide(engine, _key(gpu_name="Orin", compute_capability="8.7"))
    assert decision.rebuild and "gpu_name" in decision.reason and "compute_capability" in decision.reason
    # sidecar edited to claim another TensorRT version -> rebuild
    sidecar = ec.sidecar_path(engine)
    data = json.loads(sidecar.read_text())
    data["key"]["tensorrt_version"] = "10.3.0"
    sidecar.write_text(json.dumps(data))
    assert ec.decide(engine, key).rebuild and "10.3.0 -> 10.13.0" in ec.decide(engine, key).reason
    sidecar.write_text("{broken")
    assert ec.decide(engine, key).rebuild and "no valid key" in ec.decide(engine, key).reason
    sidecar.unlink()
    assert ec.decide(engine, key).rebuild


def test_truncated_or_corrupt_plan_is_detected(tmp_path: Path) -> None:
    engine, key = tmp_path / "m.engine", _key()
    ec.store(engine, key, b"PLAN" * 100)
    engine.write_bytes(b"PLAN" * 50)
    assert "truncated" in ec.decide(engine, key).reason
    engine.write_bytes(b"XXXX" * 100)  # same size, different bytes
    assert "corrupt" in ec.decide(engine, key).reason


class _FakeRuntime:
    """deserialize() refuses plans that do not start with GOOD, like TensorRT refusing a foreign plan."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self) -> bytes:
        self.builds += 1
        return b"GOOD plan"

    def deserialize(self, plan: bytes) -> str:
        if not plan.startswith(b"GOOD"):
            raise ec.EngineLoadError("serialization assertion failed")
        return "engine"


def test_load_or_build(tmp_path: Path) -> None:
    engine, key, rt = tmp_path / "m.engine", _key(), _FakeRuntime()
    result, status = ec.load_or_build(engine, key, rt.build, rt.deserialize)
    assert result == "engine" and rt.builds == 1 and status.startswith("built")
    assert json.loads(ec.sidecar_path(engine).read_text())["key"] == key.to_dict()
    result, status = ec.load_or_build(engine, key, rt.build, rt.deserialize)
    assert rt.builds == 1 and status.startswith("loaded")
    # a plan the runtime refuses although its key matches (e.g. a driver update) -> deleted and rebuilt
    ec.store(engine, key, b"BAD plan")
    result, status = ec.load_or_build(engine, key, rt.build, rt.deserialize)
    assert rt.builds == 2 and "refused" in status and engine.read_bytes() == b"GOOD plan"
    # other TensorRT version in the sidecar -> rebuild
    _, status = ec.load_or_build(engine, replace(key, tensorrt_version="11.4.0"), rt.build, rt.deserialize)
    assert rt.builds == 3 and "tensorrt_version" in status
    # a fresh build the runtime refuses -> clear error, nothing left behind
    with pytest.raises(ec.EngineLoadError, match="freshly built"):
        ec.load_or_build(tmp_path / "x.engine", key, lambda: b"BAD", rt.deserialize)
    assert not (tmp_path / "x.engine").exists() and not ec.sidecar_path(tmp_path / "x.engine").exists()


def test_precision_policy() -> None:
    assert plan_precision("float32", "11.4.0") == ("fp32", True, False)
    assert plan_precision("float16", "11.4.0", fp16_flag=True) == ("fp16", True, False)  # no flag on 11
    assert plan_precision("float32", "10.12.0") == ("fp32", True, False)
    assert plan_precision("float32", "10.3.0", fp16_flag=True) == ("fp32+fp16flag", False, True)
    assert plan_precision("float16", "10.3.0") == ("fp16", False, False)
    assert plan_precision("int8", "11.4.0") == ("int8", True, False)  # Q/DQ nodes carry the precision
    assert plan_precision("int8", "10.3.0") == ("int8", False, False)  # build_plan adds the INT8 flag there


@pytest.mark.parametrize(("version", "strongly_typed_bit"), [("10.13.0.35", 2), ("11.4.0.106", 1)])
def test_network_flags_with_the_real_flag_values(version: str, strongly_typed_bit: int) -> None:
    """STRONGLY_TYPED is 1 in TensorRT 10 and 0 (deprecated, ignored) in 11; the stand-in has the real values."""
    trt = make_tensorrt(version)
    assert network_flags(trt, True) == strongly_typed_bit and network_flags(trt, False) == 0
    trt8 = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
                                 __version__="8.6.1")
    assert network_flags(trt8, True) == 1


def test_missing_tensorrt_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BackendUnavailableError) as info:
        import_tensorrt()
    message = str(info.value)
    assert "pip install tensorrt" in message and "NVIDIA GPU" in message and "onnxruntime" in message
    monkeypatch.setattr("dicnet_ros.inference.availability.has_module", lambda name: name != "tensorrt")
    with pytest.raises(BackendUnavailableError, match=r"tensorrt.*available: onnxruntime"):
        load_model(tiny_onnx, "tensorrt")
    assert load_model(tiny_onnx, "auto").backend_name == "onnxruntime"  # the others still work


def test_tensorrt_without_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_onnx: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from dicnet_ros.inference.trt_backend import TrtModel

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0"))
    with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
        TrtModel(tiny_onnx)


def test_cpu_int8_graph_is_refused_before_any_build() -> None:
    """A uint8-activation INT8 export (the CPU target) gets one line naming the export that TensorRT takes."""
    from dicnet_ros.inference.base import ModelLoadError
    from dicnet_ros.inference.trt_backend import check_tensorrt_quantization
    from dicnet_ros.metadata import ModelMetadata

    base = {"class_names": ["a", "b"], "preprocess": {"height": 64, "width": 96}}
    cpu = ModelMetadata(**base, export={"dtype": "int8", "quantization": {"activations": "uint8 asymmetric"}})
    with pytest.raises(ModelLoadError, match="--int8-target tensorrt"):
        check_tensorrt_quantization(cpu, Path("m.onnx"))
    for ok in ({"dtype": "int8", "quantization": {"activations": "int8 symmetric"}}, {"dtype": "float32"}):
        check_tensorrt_quantization(ModelMetadata(**base, export=ok), Path("m.onnx"))


def _tensor_types(model: object) -> dict[str, int]:
    """ONNX element type of every tensor of ``model`` (initializers, inputs, outputs and inferred values)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.value_info, *graph.input, *graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    return types


def test_tensorrt_int8_export_dequantizes_int8_only(tiny_checkpoint: Path, tmp_path: Path,
                                                    calibration_folder: Callable[..., Path]) -> None:
    """onnx-tensorrt takes DequantizeLinear of INT8 (FP8, INT4) data; an INT32 bias DequantizeLinear is not for it."""
    import onnx

    from dicnet_ros.cli import main as dicnet

    calib = calibration_folder(tmp_path / "calib", count=5)
    out = tmp_path / "trt_int8.onnx"
    assert dicnet(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--int8", "--int8-target",
                   "tensorrt", "--calibration-data", str(calib), "--calibration-images", "5"]) == 0
    model = onnx.load(str(out))
    types = _tensor_types(model)
    dequantized = {n.input[0]: types.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert len(dequantized) >= 10  # every convolution's weights and activations
    assert {name: onnx.TensorProto.DataType.Name(t) for name, t in dequantized.items()
            if t != onnx.TensorProto.INT8} == {}

"""A stand-in ``tensorrt`` module and a host-memory device, for behaviour tests of the TensorRT backend without a GPU.

The version, the enum names and values and the error a null factory raises are the real bindings' own
(``data/tensorrt_tables.json``, compared with the real modules by ``test_tensorrt_api.py``); which classes,
methods and arities exist is checked against the real modules there too. Behaviour: an "engine" is its ONNX
run by ONNX Runtime on the CPU. A plan records the ONNX, the network flags, the optimisation profile and the
device it was built on; a runtime refuses a plan that is not one; an execution context takes input shapes
inside the profile only and, like the real one, reads its inputs from and writes its outputs to the raw
addresses it is given (host memory here: ``HostDevice`` hands out torch CPU tensors). Every factory, build,
deserialization and enqueue is recorded with the device current at that moment (``events``).
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import types
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

TABLES = json.loads((Path(__file__).resolve().parent / "data" / "tensorrt_tables.json").read_text())
ONNX_TO_DATATYPE = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
NUMPY_OF = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32,
            "INT64": np.int64, "BOOL": np.bool_}
# GPU index -> (name, compute capability) that HostDevice reports
DEFAULT_GPUS = {0: ("NVIDIA A2", "8.6"), 1: ("NVIDIA L4", "8.9")}


def _host_array(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The memory at ``address`` as an array (what a kernel reading a device pointer sees)."""
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctypes.c_uint8)), shape=(count,))
    return raw.view(dtype).reshape(shape)


def make_tensorrt(version: str = "11.4.0.106") -> types.ModuleType:
    """A fresh stand-in module with the names and values of the real TensorRT ``version``."""
    table = TABLES[version]
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # found by importlib.util.find_spec
    trt.__version__ = version
    trt.events = []  # (what, current device)
    trt.current_device = 0
    trt.refuse = set()  # factories ("Builder", "Runtime") that return null, as on a machine TensorRT cannot use
    trt.parse_errors = []  # errors the parser reports instead of parsing
    trt.fail_execute = False
    enums = {name: enum.IntEnum(name.split(".")[-1], table["enums"][name]) for name in table["enums"]}
    for name, values in enums.items():
        if "." not in name:
            setattr(trt, name, values)

    def record(what: str) -> None:
        trt.events.append((what, trt.current_device))

    def factory(what: str) -> None:
        if what in trt.refuse:
            raise TypeError(table["factory_error"].split(": ", 1)[1])
        record(what)

    class ILogger:
        Severity = enums["ILogger.Severity"]

    class Logger(ILogger):
        def __init__(self, min_severity: Any = ILogger.Severity.WARNING) -> None:
            self.min_severity = min_severity

    for member in ILogger.Severity:
        setattr(Logger, member.name, member)

    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...]):
            self.name, self.shape = name, shape

    class INetworkDefinition:
        def __init__(self, flags: int):
            self.flags, self.inputs, self.onnx = flags, [], ""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Logger):
            factory("OnnxParser")
            self.network, self.errors = network, []

        def parse_from_file(self, model: str) -> bool:
            import onnx

            if trt.parse_errors:
                self.errors = list(trt.parse_errors)
                return False
            graph = onnx.load(model, load_external_data=False).graph
            self.network.onnx = model
            self.network.inputs = [ITensor(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1
                                                         for d in i.type.tensor_type.shape.dim)) for i in graph.input]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, list] = {}

        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            low, mid, high = tuple(min), tuple(opt), tuple(max)
            ordered = len(low) == len(mid) == len(high) and all(
                0 <= a <= b <= c for a, b, c in zip(low, mid, high, strict=True))
            if not ordered:
                raise ValueError(f"inconsistent profile for {input}: {low} {mid} {high}")
            self.shapes[input] = [low, mid, high]

    class ITimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data) or b"standin timing cache"

        def serialize(self) -> bytes:
            return self.data

    class IBuilderConfig:
        def __init__(self) -> None:
            self.flags: set = set()
            self.profiles: list[IOptimizationProfile] = []
            self.timing: ITimingCache | None = None
            self.progress_monitor = None
            self.pools: dict = {}

        def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
            self.pools[pool] = pool_size

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            self.timing = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self.timing

    class Builder:
        def __init__(self, logger: Logger):
            factory("Builder")

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
            record("build")
            profile = config.profiles[0].shapes if config.profiles else {}
            if any(-1 in t.shape and t.name not in profile for t in network.inputs):
                return None  # TensorRT: a dynamic input needs an optimisation profile
            plan = {"standin": version, "onnx": network.onnx, "flags": network.flags, "device": trt.current_device,
                    "profile": profile, "builder_flags": sorted(int(f) for f in config.flags)}
            return json.dumps(plan).encode()

    class ICudaEngine:
        def __init__(self, plan: dict):
            import onnxruntime

            self.plan = plan
            self.session = onnxruntime.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.output_names = [o.name for o in self.session.get_outputs()]
            import onnx

            graph = onnx.load(plan["onnx"], load_external_data=False).graph
            self.types = {v.name: trt.DataType[ONNX_TO_DATATYPE[v.type.tensor_type.elem_type]]
                          for v in (*graph.input, *graph.output)}

        @property
        def num_io_tensors(self) -> int:
            return len(self.input_names) + len(self.output_names)

        def get_tensor_name(self, index: int) -> str:
            return (self.input_names + self.output_names)[index]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name in self.input_names else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return self.types[name]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
            return self.plan["profile"][name]

        def create_execution_context(self) -> IExecutionContext:
            record("context")
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine):
            self.engine, self.shapes, self.addresses = engine, {}, {}
            self._output_shapes: dict[tuple, dict[str, tuple]] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            low, _, high = self.engine.plan["profile"].get(name, [shape, shape, shape])
            if len(shape) != len(low) or any(not a <= s <= c for a, s, c in zip(low, shape, high, strict=True)):
                return False  # outside the profile: TensorRT logs an error and refuses
            self.shapes[name] = tuple(shape)
            return True

        def _outputs_for_shapes(self) -> dict[str, tuple]:
            key = tuple(sorted(self.shapes.items()))
            if key not in self._output_shapes:
                feeds = {n: np.zeros(self.shapes[n], NUMPY_OF[self.engine.types[n].name])
                         for n in self.engine.input_names}
                outs = self.engine.session.run(self.engine.output_names, feeds)
                self._output_shapes[key] = {n: o.shape for n, o in zip(self.engine.output_names, outs, strict=True)}
            return self._output_shapes[key]

        def get_tensor_shape(self, name: str) -> tuple:
            return self.shapes[name] if name in self.shapes else self._outputs_for_shapes()[name]

        def set_tensor_address(self, name: str, memory: int) -> bool:
            self.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            record("execute")
            if trt.fail_execute:
                return False
            engine = self.engine
            trt.batches.append(self.shapes[engine.input_names[0]][0])
            feeds = {n: _host_array(self.addresses[n], self.shapes[n], NUMPY_OF[engine.types[n].name]).copy()
                     for n in engine.input_names}
            for name, value in zip(engine.output_names, engine.session.run(engine.output_names, feeds), strict=True):
                _host_array(self.addresses[name], value.shape, value.dtype)[...] = value
            return True

    class Runtime:
        def __init__(self, logger: Logger):
            factory("Runtime")

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            record("deserialize")
            try:
                plan = json.loads(bytes(serialized_engine))
            except (ValueError, UnicodeDecodeError):
                return None  # TensorRT: "Serialization assertion failed", returns None
            return ICudaEngine(plan) if isinstance(plan, dict) and plan.get("standin") == version else None

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    trt.batches = []  # batch size of every enqueue
    for cls in (ILogger, Logger, ITensor, INetworkDefinition, OnnxParser, IOptimizationProfile, ITimingCache,
                IBuilderConfig, Builder, ICudaEngine, IExecutionContext, Runtime, IProgressMonitor):
        setattr(trt, cls.__name__, cls)
    return trt


class HostDevice:
    """Host memory in place of CUDA device ``index`` (same interface as trt_backend.CudaDevice): buffers are torch
    CPU tensors, and ``current()`` makes ``index`` the stand-in's current device as torch.cuda.device does."""

    def __init__(self, trt: types.ModuleType, index: int, gpus: dict[int, tuple[str, str]] | None = None):
        import torch

        self.trt, self.torch, self.index = trt, torch, index
        self.torch_device = torch.device("cpu")
        self.name, self.compute_capability = (gpus or DEFAULT_GPUS)[index]

    @property
    def label(self) -> str:
        return f"cuda:{self.index} ({self.name})"

    @contextmanager
    def current(self) -> Iterator[None]:
        before, self.trt.current_device = self.trt.current_device, self.index
        try:
            yield
        finally:
            self.trt.current_device = before

    def new_stream(self) -> Any:
        return types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None)

    def on_stream(self, stream: Any) -> Any:
        return nullcontext()

"""TensorRT backend: build (or load from the cache) an engine per graph, run it with CUDA device buffers.

Precision comes from the ONNX (strongly typed network on TensorRT >= 10.12 and always on 11, which removed
the FP16 builder flag): export with ``--fp16`` for an fp16 engine. On TensorRT 10.x < 10.12 the weakly typed
FP16 flag is still offered (``fp16_flag=True``). Device buffers are PyTorch CUDA tensors (one guarded
dependency, already present wherever a CUDA inference stack is); the import of ``tensorrt`` is guarded so
this module imports everywhere and the other backends keep working without it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.inference.base import AnomalyModel, BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.engine_cache import (
    EngineKey,
    EngineLoadError,
    _atomic_write,
    engine_path_for,
    load_or_build,
    sha256_file,
    timing_cache_path,
)
from dicnet_ros.inference.graphs import INPUT_NAME, check_image_size, compose, resolve_model_files
from dicnet_ros.inference.trt_api import create, version_tuple
from dicnet_ros.metadata import ModelMetadata

log = logging.getLogger(__name__)

OPTIONS = ("cache_dir", "force_rebuild", "input_size", "workspace_mb", "fp16_flag", "max_batch")
STRONG_TYPING_SINCE = (10, 12)
HEARTBEAT_S = 15.0


def _other_backends() -> str:
    try:
        from dicnet_ros.inference.availability import describe_available

        return describe_available(exclude="tensorrt")
    except Exception:  # only used to enrich an error message
        return "unknown"


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailableError saying what to install and what else works."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        raise BackendUnavailableError(
            f"backend 'tensorrt' needs the tensorrt Python package (pip install tensorrt) and an NVIDIA GPU "
            f"({type(exc).__name__}: {exc}); available: {_other_backends()}") from exc
    return tensorrt


class CudaDevice:
    """CUDA device N as TensorRT needs it: TensorRT builds, deserializes and enqueues on the calling thread's
    current device, so every TensorRT call runs inside ``current()``; buffers are PyTorch tensors on it, and its
    name and compute capability go into the engine cache key."""

    def __init__(self, torch: Any, index: int):
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise BackendUnavailableError(f"device 'cuda:{index}' does not exist: CUDA sees {count} GPU(s) "
                                          f"(cuda:0 to cuda:{count - 1})")
        self.torch, self.index = torch, index
        self.torch_device = torch.device("cuda", index)
        props = torch.cuda.get_device_properties(index)
        self.name, self.compute_capability = props.name, f"{props.major}.{props.minor}"

    @property
    def label(self) -> str:
        return f"cuda:{self.index} ({self.name})"

    def current(self) -> Any:
        """Context in which device N is the current CUDA device."""
        return self.torch.cuda.device(self.index)

    def new_stream(self) -> Any:
        return self.torch.cuda.Stream(device=self.torch_device)

    def on_stream(self, stream: Any) -> Any:
        return self.torch.cuda.stream(stream)


def parse_cuda_index(device: str) -> int:
    """'cuda' -> 0, 'cuda:2' -> 2; anything else is a one-line error."""
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "gpu", "auto") or (index and not index.isdigit()):
        raise BackendUnavailableError(f"backend 'tensorrt' runs on a CUDA device: use cuda or cuda:N, got "
                                      f"'{device}'")
    return int(index or 0)


def open_device(device: str) -> CudaDevice:
    """The CUDA device for ``device`` (cuda | cuda:N), with PyTorch for the buffers and streams."""
    index = parse_cuda_index(device)
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError("backend 'tensorrt' uses PyTorch CUDA tensors as device buffers: install "
                                      "torch with CUDA support") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"backend 'tensorrt' needs an NVIDIA GPU, but CUDA sees none; available: "
                                      f"{_other_backends()}")
    return CudaDevice(torch, index)


def plan_precision(onnx_dtype: str, tensorrt_version: str, fp16_flag: bool = False) -> tuple[str, bool, bool]:
    """(precision tag, strongly typed?, set the FP16 builder flag?) for an ONNX of ``onnx_dtype``.

    TensorRT >= 10.12: strongly typed, precision = the ONNX's (an INT8 export carries Q/DQ nodes: explicit
    quantization). Older 10.x: weakly typed; the FP16 flag is honoured on request and becomes part of the cache
    key, and an INT8 graph gets the INT8 flag those versions want for Q/DQ networks (see ``build_plan``).
    """
    precision = {"float16": "fp16", "fp16": "fp16", "int8": "int8"}.get(onnx_dtype, "fp32")
    if version_tuple(tensorrt_version) >= STRONG_TYPING_SINCE:
        if fp16_flag:
            log.warning("TensorRT %s: the FP16 builder flag is deprecated/removed; precision comes from the ONNX "
                        "(export with --fp16)", tensorrt_version)
        return precision, True, False
    return (precision + "+fp16flag" if fp16_flag else precision), False, bool(fp16_flag)


def network_flags(trt: Any, strongly_typed: bool) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    if hasattr(creation, "EXPLICIT_BATCH") and version_tuple(trt.__version__) < (10,):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    return flags


def _progress_monitor(trt: Any, label: str) -> Any:
    """An IProgressMonitor that logs phase starts (throttled); None where TensorRT lacks the interface."""
    monitor_base = getattr(trt, "IProgressMonitor", None)
    if monitor_base is None:
        return None

    class Monitor(monitor_base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            monitor_base.__init__(self)
            self._last = 0.0
            self._lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                now = time.monotonic()
                if parent_phase is None or now - self._last > 5.0:
                    self._last = now
                    log.info("TensorRT build %s: %s (%d steps)", label, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


#: input name -> (min, opt, max) shape of the optimisation profile
ProfileShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def build_plan(trt: Any, onnx_path: Path, profile_shapes: ProfileShapes, strongly_typed: bool, fp16_flag: bool,
               workspace_mb: int, timing_cache: Path | None, int8_flag: bool = False, where: str = "") -> bytes:
    """Parse the ONNX and build a serialized plan whose dynamic inputs take the (min, opt, max) shapes given
    (the batch range of ``max_batch``; height and width fixed). Runs on the caller's current CUDA device."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = create(trt.Builder, logger, what="Builder", where=where)
    network = builder.create_network(network_flags(trt, strongly_typed))
    parser = create(trt.OnnxParser, network, logger, what="ONNX parser", where=where)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"{onnx_path}: TensorRT cannot parse the ONNX: {' '.join(errors.split())[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8_flag and not strongly_typed:  # a Q/DQ graph on a weakly typed TensorRT 10.x network
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        network_input = network.get_input(i)
        low, opt, high = profile_shapes[network_input.name]
        if any(d < 0 for d in network_input.shape):
            dynamic = True
            profile.set_shape(network_input.name, low, opt, high)
    if dynamic:
        config.add_optimization_profile(profile)
    if timing_cache is not None:
        timing = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(timing, ignore_mismatch=False):
            log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", timing_cache)
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, ignore_mismatch=True)
    monitor = _progress_monitor(trt, onnx_path.name)
    if monitor is not None:
        config.progress_monitor = monitor
    done = threading.Event()
    start = time.monotonic()

    def heartbeat() -> None:  # a build takes minutes; say so even if no phase is reported
        while not done.wait(HEARTBEAT_S):
            log.info("still building the TensorRT engine for %s (%.0f s)", onnx_path.name, time.monotonic() - start)

    thread = threading.Thread(target=heartbeat, name="trt-build-heartbeat", daemon=True)
    thread.start()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        done.set()
    if serialized is None:
        raise ModelLoadError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    if timing_cache is not None:
        _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _torch_dtypes(trt: Any, torch: Any) -> dict[Any, Any]:
    """TensorRT tensor type -> the torch dtype of its buffer."""
    return {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT8: torch.int8, trt.DataType.UINT8: torch.uint8, trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}


class TrtGraph:
    """One deserialized engine with its execution context and CUDA stream on one device; numpy in, numpy out."""

    def __init__(self, trt: Any, device: CudaDevice, plan: bytes):
        self.trt, self.device, self.torch = trt, device, device.torch
        with device.current():
            self.runtime = create(trt.Runtime, trt.Logger(trt.Logger.WARNING), what="Runtime", where=device.label)
            try:
                self.engine = self.runtime.deserialize_cuda_engine(plan)
            except Exception as exc:  # some versions raise instead of returning None
                raise EngineLoadError(str(exc)) from exc
            if self.engine is None:
                raise EngineLoadError("deserialize_cuda_engine returned None")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise ModelLoadError(f"TensorRT cannot create an execution context on {device.label} (out of GPU "
                                     f"memory?)")
            self.stream = device.new_stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        torch_dtypes = _torch_dtypes(trt, self.torch)
        self.dtypes = {}
        for name in names:
            dtype = self.engine.get_tensor_dtype(name)
            if dtype not in torch_dtypes:
                raise ModelLoadError(f"TensorRT tensor {name} has type {getattr(dtype, 'name', dtype)}, which this "
                                     f"backend does not support")
            self.dtypes[name] = torch_dtypes[dtype]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        keep = []
        with self.device.current(), self.device.on_stream(self.stream):
            for name in self.inputs:
                host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                buffer = host.to(self.device.torch_device, non_blocking=True).to(self.dtypes[name])
                keep.append(buffer)
                if not self.context.set_input_shape(name, tuple(buffer.shape)):
                    raise RuntimeError(f"TensorRT refused input {name} of shape {tuple(buffer.shape)} (outside the "
                                       f"engine's optimisation profile)")
                self.context.set_tensor_address(name, buffer.data_ptr())
            outputs = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device.torch_device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            host_out = {name: t.to("cpu", non_blocking=True) for name, t in outputs.items()}
        self.stream.synchronize()
        return {name: t.numpy() for name, t in host_out.items()}


def check_tensorrt_quantization(metadata: ModelMetadata, path: Path) -> None:
    """TensorRT's explicit quantization takes symmetric int8 Q/DQ only (zero point 0); say so before building."""
    quantization = metadata.export.get("quantization") or {}
    if metadata.export.get("dtype") == "int8" and str(quantization.get("activations", "")).startswith("uint8"):
        raise ModelLoadError(f"{path}: this INT8 graph was calibrated for ONNX Runtime on a CPU (asymmetric uint8 "
                             "activations), which TensorRT's explicit quantization does not accept; export it with "
                             "`dicnet export --int8 --int8-target tensorrt`, or run it with onnxruntime")


class TrtModel(AnomalyModel):
    """DiCNet on TensorRT. Options: cache_dir (default: next to the ONNX), force_rebuild, input_size
    ((width, height) for dynamic-size ONNX; default the network size), workspace_mb, fp16_flag (TensorRT < 10.12),
    max_batch (the engine takes 1 to max_batch images per call; larger batches run in chunks of max_batch)."""

    backend_name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda", cache_dir: str | Path | None = None,
                 force_rebuild: bool = False, input_size: tuple[int, int] | None = None, workspace_mb: int = 2048,
                 fp16_flag: bool = False, max_batch: int = 1):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.trt = import_tensorrt()
        self.gpu = open_device(device if device != "auto" else "cuda")
        files = resolve_model_files(path)
        from dicnet_ros.inference.ort_backend import OrtGraph  # metadata + I/O check without a GPU

        infos = {role: OrtGraph(p, role, ["CPUExecutionProvider"], 1, "disable") for role, p in files.graphs.items()}
        first = infos["fused"] if files.form == "fused" else infos["teacher"]
        metadata: ModelMetadata = files.manifest_metadata or first.metadata
        super().__init__(files.path, metadata, f"cuda:{self.gpu.index}")
        self.form, self.files = files.form, files
        self.io = {role: info.inputs for role, info in infos.items()}
        del infos
        self.fixed_hw = first.fixed_hw
        self.batch_range = self._batch_range(int(max_batch))
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.workspace_mb, self.force = workspace_mb, force_rebuild
        self.gpu_name, self.compute_capability = self.gpu.name, self.gpu.compute_capability
        dtype = metadata.export.get("dtype", "float32")
        check_tensorrt_quantization(metadata, files.path)
        self._precision, self.strongly_typed, self.fp16_flag = plan_precision(dtype, self.trt.__version__, fp16_flag)
        self.engine_files: list[Path] = []
        self._hashes = {role: sha256_file(p) for role, p in files.graphs.items()}
        self._calls: dict[tuple[int, int], Any] = {}
        self._chunking_said = False
        pre = metadata.preprocess_config
        hw = self.fixed_hw or ((input_size[1], input_size[0]) if input_size else (pre.height, pre.width))
        self._load_for(hw)

    def _batch_range(self, max_batch: int) -> tuple[int, int]:
        """(1, max_batch) when every graph takes any batch size; (1, 1) for an export with a fixed batch of 1."""
        fixed = {shape[0] for inputs in self.io.values() for _, shape in inputs.values()
                 if shape and isinstance(shape[0], int) and shape[0] > 0}
        if not fixed:
            return 1, max_batch
        if fixed != {1}:
            raise ModelLoadError(f"{self.path}: the graphs take exactly {sorted(fixed)} images per call; the TensorRT "
                                 f"backend needs a batch of 1 or a --dynamic export")
        if max_batch != 1:
            log.warning("tensorrt: %s takes one image per call (export with --dynamic for a batch range); "
                        "max_batch %d ignored", self.path.name, max_batch)
        return 1, 1

    def _shapes(self, role: str, hw: tuple[int, int], batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for name, (_, shape) in self.io[role].items():
            if name == INPUT_NAME:
                shapes[name] = (batch, hw[0], hw[1], 3)
            else:
                rest = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape[1:])
                shapes[name] = (batch, *rest)
        return shapes

    def _load_for(self, hw: tuple[int, int]) -> None:
        runners = {}
        folder = self.cache_dir or next(iter(self.files.graphs.values())).parent
        timing = timing_cache_path(folder, self.trt.__version__, self.gpu_name)
        low, high = self.batch_range
        for role, onnx_path in self.files.graphs.items():
            smallest, largest = self._shapes(role, hw, low), self._shapes(role, hw, high)
            profile = {name: (smallest[name], largest[name], largest[name]) for name in largest}
            key = EngineKey.create(self.trt.__version__, self.gpu_name, self.compute_capability, self._hashes[role],
                                   largest, self._precision, self.batch_range)
            engine_path = engine_path_for(onnx_path, key, self.cache_dir, "" if role == "fused" else role)

            def build(onnx_path: Path = onnx_path, profile: ProfileShapes = profile) -> bytes:
                with self.gpu.current():
                    return build_plan(self.trt, onnx_path, profile, self.strongly_typed, self.fp16_flag,
                                      self.workspace_mb, timing, int8_flag=self._precision == "int8",
                                      where=self.gpu.label)

            def deserialize(plan: bytes) -> TrtGraph:
                return TrtGraph(self.trt, self.gpu, plan)

            try:
                runners[role], status = load_or_build(engine_path, key, build, deserialize, self.force, log)
            except EngineLoadError as exc:
                raise ModelLoadError(str(exc)) from exc
            log.info("tensorrt: %s", status)
            self.engine_files.append(engine_path)
        self.force = False
        self._calls[hw] = compose(self.form, runners)

    def _call_for(self, hw: tuple[int, int], image: np.ndarray) -> Any:
        call = self._calls.get(hw)
        if call is None:
            check_image_size(image, self.fixed_hw, self.path)
            log.warning("tensorrt: no engine for %dx%d input yet; building/loading one now (pass input_size or run "
                        "`dicnet build-engine --input-size` to do this ahead of time)", hw[1], hw[0])
            self._load_for(hw)
            call = self._calls[hw]
        return call

    def _run(self, image: np.ndarray) -> tuple:
        return self._run_batch(image[None])[0]

    def _run_batch(self, batch: np.ndarray) -> list[tuple]:
        """One engine call per ``max_batch`` images. A larger batch is split into chunks rather than triggering a
        rebuild: a build takes minutes and would stall every camera, while a chunk costs one more enqueue."""
        hw = (int(batch.shape[1]), int(batch.shape[2]))
        call = self._call_for(hw, batch[0])
        high = self.batch_range[1]
        if len(batch) > high and not self._chunking_said:
            self._chunking_said = True
            log.warning("tensorrt: %d images per call, the engine takes at most %d: running them in chunks of %d "
                        "(build with max_batch / `dicnet build-engine --max-batch %d` to run them as one)",
                        len(batch), high, high, len(batch))
        results: list[tuple] = []
        for start in range(0, len(batch), high):
            results.extend(call(batch[start:start + high]))
        return results

    def warmup(self, iterations: int = 2) -> None:
        hw = next(iter(self._calls))
        dummy = np.zeros((*hw, 3), np.uint8)
        for _ in range(iterations):
            self._run(dummy)

    def close(self) -> None:
        self._calls.clear()

    @property
    def precision(self) -> str:
        """The engine's precision tag (also in the cache key), e.g. fp32, fp16, int8, fp32+fp16flag."""
        return self._precision

    def describe(self) -> dict[str, str]:
        low, high = self.batch_range
        return {**super().describe(), "form": self.form, "gpu": self.gpu_name, "batch": f"{low}-{high}",
                "tensorrt": str(self.trt.__version__), "engines": ",".join(str(p) for p in self.engine_files)}

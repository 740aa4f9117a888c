"""The TensorRT Python API as this package calls it: where the calls are, how the objects are named, one-line
errors when TensorRT cannot start, and the cheap "can TensorRT run here" probe that ``backend: auto`` asks.

No GPU is needed to check the calls: ``test/tensorrt_api_check.py`` reads the modules in ``TENSORRT_MODULES``
(their syntax tree, with the object names in ``HANDLES``) to list every TensorRT attribute, enum member, method
call and overridden callback, and checks each against the real bindings of every supported TensorRT version
(names, and the arity from the pybind11 signatures). A call outside these modules, or a TensorRT object kept
under another name, is reported by that check, so the list cannot drift from the code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from dicnet_ros.inference.base import BackendUnavailableError

#: the TensorRT major versions this package supports; the conformance test checks real bindings of each
SUPPORTED_MAJORS = (10, 11)
#: the modules that call TensorRT (paths relative to the repository root)
TENSORRT_MODULES = ("dicnet_ros/inference/trt_api.py", "dicnet_ros/inference/trt_backend.py")
#: variable or ``self.`` attribute name -> what it holds in those modules: "module" (tensorrt itself), a TensorRT
#: class name (an instance of it), or "class:NAME" (the class, e.g. a base class to derive a callback from)
HANDLES: dict[str, str] = {
    "trt": "module",
    "logger": "Logger",
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "network_input": "ITensor",
    "timing": "ITimingCache",
    "serialized": "IHostMemory",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "creation": "class:NetworkDefinitionCreationFlag",
    "monitor_base": "class:IProgressMonitor",
}
#: names used only on TensorRT versions before the given one (the code checks the version before using them)
USED_BEFORE: dict[str, tuple[int, ...]] = {
    "BuilderFlag.FP16": (11,),  # weakly typed FP16, TensorRT < 10.12; removed in 11
    "BuilderFlag.INT8": (11,),  # Q/DQ networks on weakly typed TensorRT < 10.12; removed in 11
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": (10,),  # TensorRT < 10 only; removed in 11
}
#: what the bindings raise (TypeError) when the C++ factory of a Builder / Runtime / parser returns null: the
#: libraries load, but TensorRT cannot start on this machine (no usable GPU, driver or CUDA mismatch)
FACTORY_NULL = "factory function returned nullptr"


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def create(factory: Callable[..., Any], *args: Any, what: str, where: str = "") -> Any:
    """``factory(*args)`` (a TensorRT constructor); a null object becomes one BackendUnavailableError line."""
    try:
        made = factory(*args)
    except TypeError as exc:
        if FACTORY_NULL not in str(exc):
            raise
        made = None
    if made is None:
        raise BackendUnavailableError(
            f"TensorRT cannot create a {what}{' on ' + where if where else ''}: its libraries load but it does not "
            f"start here (no usable NVIDIA GPU, or a driver / CUDA version TensorRT does not support); "
            f"check `nvidia-smi`, or use backend onnxruntime")
    return made


@functools.lru_cache(maxsize=1)
def runtime_problem() -> str | None:
    """None when tensorrt imports and creates a Runtime here, else why not (one line). Cached: creating a Runtime
    costs a CUDA context, and the answer does not change while the process runs."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the bindings are there, libnvinfer is not
        return f"tensorrt does not import ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    try:
        runtime = create(trt.Runtime, trt.Logger(trt.Logger.WARNING), what="Runtime")
    except BackendUnavailableError as exc:
        return str(exc).replace("TensorRT", f"TensorRT {trt.__version__}", 1)
    except Exception as exc:  # a broken install may raise anything; auto must still fall back
        return f"TensorRT {getattr(trt, '__version__', '?')} cannot create a Runtime ({type(exc).__name__}: {exc})"
    del runtime
    return None

"""Backend selection: ``open_backend(path, backend, device, **options) -> AnomalyModel``.

``auto`` = TensorRT when the tensorrt package and a CUDA GPU are present, else ONNX Runtime (CUDA provider if
available, else CPU); a PyTorch checkpoint (.pt) goes to the torch backend. Backends are imported lazily so
a machine without TensorRT (or without torch) still runs the others, and errors say what is available.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dicnet_ros.inference.availability import describe_available, has_module, tensorrt_status
from dicnet_ros.inference.base import BACKENDS, AnomalyModel, BackendUnavailableError
from dicnet_ros.inference.graphs import check_file, is_checkpoint
from dicnet_ros.resources import install_hint

log = logging.getLogger(__name__)

BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("providers", "threads", "graph_optimization", "trt_cache_dir", "spin"),
    "tensorrt": ("cache_dir", "force_rebuild", "input_size", "workspace_mb", "fp16_flag"),
    "torch": ("fp16", "threads", "network_resolution"),
}


def _split_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options for ``backend``; options meant for other backends are dropped (auto), unknown ones are errors."""
    known = {o for opts in BACKEND_OPTIONS.values() for o in opts}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown backend options {unknown}; known: {sorted(known)}")
    return {k: v for k, v in options.items() if k in BACKEND_OPTIONS[backend]}


def resolve_backend(path: Path, backend: str) -> str:
    """The concrete backend ``auto`` means for this file on this machine."""
    if backend != "auto":
        return backend
    if is_checkpoint(path):
        return "torch"
    return "tensorrt" if tensorrt_status()[0] else "onnxruntime"


def open_backend(path: Path, backend: str = "auto", device: str = "auto", **options: Any) -> AnomalyModel:
    """Open ``path`` with ``backend`` on ``device``; ModelLoadError / BackendUnavailableError explain failures."""
    path = Path(path)
    check_file(path)
    name = resolve_backend(path, backend)
    kwargs = _split_options(name, options)
    if name != "torch" and is_checkpoint(path):
        raise BackendUnavailableError(f"{path}: backend '{name}' runs exported ONNX models; export the checkpoint "
                                      f"with `dicnet export` or use backend 'torch'")
    if name == "tensorrt":
        ok, why = tensorrt_status()
        if not ok:
            raise BackendUnavailableError(f"backend 'tensorrt' needs the tensorrt Python package (pip install "
                                          f"tensorrt) and an NVIDIA GPU ({why}); available: "
                                          f"{describe_available(exclude='tensorrt')}")
        from dicnet_ros.inference.trt_backend import TrtModel

        return TrtModel(path, device=device if device != "auto" else "cuda", **kwargs)
    if name == "onnxruntime":
        from dicnet_ros.inference.ort_backend import OrtModel

        return OrtModel(path, device=device, **kwargs)
    if name == "torch":
        if not has_module("torch"):
            raise BackendUnavailableError(f"backend 'torch' needs PyTorch ({install_hint('train')}); available: "
                                          f"{describe_available(exclude='torch')}")
        from dicnet_ros.inference.torch_backend import TorchModel

        return TorchModel(path, device=device, **kwargs)
    raise ValueError(f"unknown backend {backend!r}")


def load_model(path: str | Path, backend: str = "auto", device: str = "auto", **options: Any) -> AnomalyModel:
    """Open a model file with a backend; ``auto`` picks TensorRT, then ONNX Runtime, then PyTorch."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return open_backend(Path(path), backend, device, **options)

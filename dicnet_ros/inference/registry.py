"""Backend selection: ``open_backend(path, backend, device, **options) -> AnomalyModel``.

``auto`` = TensorRT when the tensorrt package and a CUDA GPU are present, else ONNX Runtime (CUDA provider if
available, else CPU); a PyTorch checkpoint (.pt) goes to the torch backend. Backends are imported lazily so
a machine without TensorRT (or without torch) still runs the others, and errors say what is available.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from dicnet_ros.inference.base import AnomalyModel, BackendUnavailableError
from dicnet_ros.inference.graphs import check_file, is_checkpoint

log = logging.getLogger(__name__)

BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("providers", "threads", "graph_optimization", "trt_cache_dir", "spin"),
    "tensorrt": ("cache_dir", "force_rebuild", "input_size", "workspace_mb", "fp16_flag"),
    "torch": ("fp16", "threads", "network_resolution"),
}


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_available() -> bool:
    """CUDA GPU visible to torch (if installed) or to ONNX Runtime's CUDA provider."""
    if _has("torch"):
        import torch

        if torch.cuda.is_available():
            return True
    from dicnet_ros.inference.ort_backend import available_providers

    return "CUDAExecutionProvider" in available_providers()


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why not / version) for the native TensorRT backend."""
    if not _has("tensorrt"):
        return False, "no tensorrt package"
    if not _has("torch"):
        return False, "no torch (needed for CUDA buffers)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    return True, "tensorrt"


def available_backends() -> dict[str, str]:
    """backend -> what it would run on here (only usable backends are listed)."""
    out: dict[str, str] = {}
    ok, _ = tensorrt_status()
    if ok:
        out["tensorrt"] = "CUDA"
    from dicnet_ros.inference.ort_backend import available_providers

    providers = available_providers()
    if providers:
        names = [p.replace("ExecutionProvider", "") for p in providers
                 if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")]
        out["onnxruntime"] = ", ".join(names)
    if _has("torch"):
        import torch

        out["torch"] = "CUDA, CPU" if torch.cuda.is_available() else "CPU"
    return out


def describe_available(exclude: str = "") -> str:
    """'onnxruntime (CPU), torch (CPU)' for error messages."""
    parts = [f"{name} ({where})" for name, where in available_backends().items() if name != exclude]
    return ", ".join(parts) or "none"


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
        if not _has("torch"):
            raise BackendUnavailableError(f"backend 'torch' needs PyTorch (pip install -e '.[train]'); available: "
                                          f"{describe_available(exclude='torch')}")
        from dicnet_ros.inference.torch_backend import TorchModel

        return TorchModel(path, device=device, **kwargs)
    raise ValueError(f"unknown backend {backend!r}")

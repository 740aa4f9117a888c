"""What can run here: which backends, execution providers and GPUs this machine offers.

Kept apart from the registry so that backends (TensorRT's error messages name the alternatives) can ask
without importing the registry that imports them.
"""

from __future__ import annotations

import importlib.util


def has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_available() -> bool:
    """CUDA GPU visible to torch (if installed) or to ONNX Runtime's CUDA provider."""
    if has_module("torch"):
        import torch

        if torch.cuda.is_available():
            return True
    from dicnet_ros.inference.ort_backend import available_providers

    return "CUDAExecutionProvider" in available_providers()


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why not) for the native TensorRT backend: usable means the tensorrt package imports and creates a
    Runtime (an installed wheel without its libraries, or a GPU / driver TensorRT cannot use, is not usable)."""
    if not has_module("tensorrt"):
        return False, "no tensorrt package"
    if not has_module("torch"):
        return False, "no torch (needed for CUDA buffers)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    from dicnet_ros.inference.trt_api import runtime_problem

    problem = runtime_problem()
    return (False, problem) if problem else (True, "tensorrt")


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
    if has_module("torch"):
        import torch

        out["torch"] = "CUDA, CPU" if torch.cuda.is_available() else "CPU"
    return out


def describe_available(exclude: str = "") -> str:
    """'onnxruntime (CPU), torch (CPU)' for error messages."""
    parts = [f"{name} ({where})" for name, where in available_backends().items() if name != exclude]
    return ", ".join(parts) or "none"

"""Opening the node's model: the package's default model, and ``open_model`` (any failure -> NodeStartupError)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicnet_ros.inference.base import AnomalyModel, BackendUnavailableError, ModelLoadError
from dicnet_ros.metadata import MetadataError
from dicnet_ros.node.errors import NodeStartupError
from dicnet_ros.resources import DEFAULT_MODEL_NAME, package_file, resolve_model


def default_model_path() -> Path:
    """The package's default model: share/dicnet_ros/models (ament index or pip prefix), else the source tree."""
    return package_file(f"models/{DEFAULT_MODEL_NAME}")


def open_model(model_path: str, backend: str, device: str, engine_cache_dir: str = "",
               num_threads: int = 0, max_batch: int = 1) -> AnomalyModel:
    """Load the model through ``dicnet_ros.inference``; every failure becomes one NodeStartupError line.

    ``model_path`` empty: the default model; a bare file name that is not in the working directory: that file
    among the package's shipped models (``model:=dicnet_sim_default_int8.onnx``)."""
    from dicnet_ros.inference import load_model

    try:
        path = resolve_model(model_path)  # '' = the shipped default; a bare name = one of the shipped models
    except FileNotFoundError as exc:
        raise NodeStartupError(str(exc)) from None
    if not path.exists():
        hint = "" if model_path else " (the default model ships with the package; set model_path to your model)"
        raise NodeStartupError(f"model file not found: {path}{hint}")
    # the registry passes each backend only its own options: TensorRT "cache_dir", ORT's TensorRT EP
    # "trt_cache_dir", ORT / torch "threads"
    options: dict[str, Any] = {}
    if engine_cache_dir:
        options.update(cache_dir=engine_cache_dir, trt_cache_dir=engine_cache_dir)
    if num_threads:
        options["threads"] = num_threads
    if max_batch > 1:  # a TensorRT engine is built for batches up to the number of cameras
        options["max_batch"] = max_batch
    try:
        return load_model(path, backend=backend, device=device, **options)
    except BackendUnavailableError as exc:
        raise NodeStartupError(f"backend '{backend}' on device '{device}' is not available: {exc}") from None
    except (ModelLoadError, MetadataError) as exc:
        raise NodeStartupError(f"cannot load model {path}: {exc}") from None
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise NodeStartupError(f"cannot load model {path} with backend '{backend}': "
                               f"{type(exc).__name__}: {exc}") from None

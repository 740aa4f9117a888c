"""Inference backends behind one interface: ``load_model(path, backend=...) -> AnomalyModel``.

The ROS node, the bag tools and the benchmark only ever see ``AnomalyModel`` / ``InferenceResult``; which
runtime (TensorRT, ONNX Runtime, PyTorch) sits behind it is a parameter.
"""

from dicnet_ros.inference.base import (
    BACKENDS,
    AnomalyModel,
    BackendUnavailableError,
    InferenceResult,
    ModelLoadError,
)
from dicnet_ros.inference.registry import load_model
from dicnet_ros.metadata import MetadataError, ModelMetadata

__all__ = [
    "BACKENDS",
    "AnomalyModel",
    "BackendUnavailableError",
    "InferenceResult",
    "MetadataError",
    "ModelLoadError",
    "ModelMetadata",
    "load_model",
]

"""The ROS 2 anomaly node, one module per concern; its public names are re-exported here.

``parameters`` (the parameter table and its validation), ``qos``, ``model_loading``, ``allocator``,
``diagnostics``, ``input_watch`` and ``domain`` (rclpy-free rules), ``camera`` (one camera's pipeline), ``worker``
(the batched inference thread), ``anomaly_node`` (the ``AnomalyNode`` class) and ``cli`` (the entry points).
The names are loaded on first use, so ``dicnet_ros.node.parameters`` can be imported without rclpy.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module (in this package) that defines it
_EXPORTS: dict[str, str] = {
    "AnomalyNode": "anomaly_node",
    "CameraPipeline": "camera",
    "CameraSpec": "camera",
    "InferenceWorker": "worker",
    "DomainMonitor": "domain",
    "CAMERA_PARAMETERS": "parameters",
    "NODE_NAME": "parameters",
    "PACKAGE": "anomaly_node",
    "NodeStartupError": "errors",
    "ParameterError": "errors",
    "DEFAULT_MODEL_NAME": "parameters",
    "PARAMETERS": "parameters",
    "PARAMETER_NAMES": "parameters",
    "ParamSpec": "parameters",
    "validate_parameter": "parameters",
    "QOS_PRESETS": "qos",
    "make_qos": "qos",
    "default_model_path": "model_loading",
    "open_model": "model_loading",
    "MMAP_THRESHOLD_BYTES": "allocator",
    "TRIM_THRESHOLD_BYTES": "allocator",
    "tune_allocator": "allocator",
    "add_arguments": "cli",
    "build_ros_args": "cli",
    "main": "cli",
    "run": "cli",
    "run_node": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

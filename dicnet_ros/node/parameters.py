"""Every node parameter in one table (``PARAMETERS``): default, doc, allowed values; validation; ROS descriptors.

Importable without rclpy: the launch / config tests check launch/anomaly.launch.py and config/anomaly.yaml
against this table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicnet_ros.image_conversion import DEFAULT_MAX_PIXELS
from dicnet_ros.inference.base import BACKENDS
from dicnet_ros.node.errors import ParameterError
from dicnet_ros.node.qos import INPUT_QOS_PRESETS, QOS_PRESETS
from dicnet_ros.resources import DEFAULT_MODEL_NAME
from dicnet_ros.visualization import COLORMAPS

if TYPE_CHECKING:
    from rcl_interfaces.msg import ParameterDescriptor

NODE_NAME = "anomaly_node"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# a camera name becomes a namespace token (/NAME/anomaly_node/...): ROS name rules
_CAMERA_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: What the mask does while a camera is out of domain (the domain score over its threshold for K frames).
OUT_OF_DOMAIN_MASKS = ("publish", "empty", "suppress")


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: default (its type is the parameter's type), doc, allowed values, run-time change."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    range: tuple[float, float] | None = None
    dynamic: bool = False  # may change while running (set_parameters); the others are read-only


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", "", "Model file (fused DiCNet .onnx, checkpoint or engine). Empty: the package's "
              f"default model models/{DEFAULT_MODEL_NAME}; a bare file name: one of the package's models (e.g. "
              "dicnet_sim_default_int8.onnx)."),
    ParamSpec("backend", "auto", "Inference runtime; auto tries tensorrt, then onnxruntime, then torch.",
              choices=BACKENDS),
    ParamSpec("device", "auto", "auto | cpu | cuda | cuda:N"),
    ParamSpec("threshold", math.nan, "Mask threshold on the raw anomaly score; NaN = the model's calibrated "
              "threshold. Changeable at run time.", dynamic=True),
    ParamSpec("image_transport", "raw", "raw: subscribe ~/image (sensor_msgs/Image); compressed: subscribe "
              "~/image/compressed (sensor_msgs/CompressedImage, jpeg/png).", choices=("raw", "compressed")),
    ParamSpec("output_resolution", "input", "Resolution of every output: the input image's or the network's.",
              choices=("input", "network")),
    ParamSpec("publish_score_color", True, "Publish ~/anomaly_score_color (rgb8, only while subscribed).",
              dynamic=True),
    ParamSpec("publish_overlay", True, "Publish ~/overlay (rgb8, only while subscribed).", dynamic=True),
    ParamSpec("publish_semantic", False, "Publish ~/semantic (mono8 class ids) and ~/semantic_color (rgb8, only "
              "while subscribed) when the model has a segmentation head."),
    ParamSpec("publish_msp", False, "Publish ~/msp_score (32FC1): the teacher's max-softmax baseline map, for "
              "comparing DiCNet with the classic baseline on the same frames (if the model exports it)."),
    ParamSpec("overlay_source", "score", "What ~/overlay blends into the image: the score colour map or the mask.",
              choices=("score", "mask"), dynamic=True),
    ParamSpec("colormap", "turbo", "Colour map of ~/anomaly_score_color and the score overlay.", choices=COLORMAPS,
              dynamic=True),
    ParamSpec("overlay_alpha", 0.5, "Weight of the colour in ~/overlay (0 = image only, 1 = colour only).",
              range=(0.0, 1.0), dynamic=True),
    ParamSpec("input_qos", "auto", "Image subscription QoS: auto follows the camera (reliable when every publisher "
              "is reliable, which carries large frames across processes without any DDS profile; else best effort); "
              "sensor_data / best_effort; default / reliable.", choices=INPUT_QOS_PRESETS),
    ParamSpec("input_depth", 1, "Image subscription queue depth (1 = newest frame only).", range=(1, 100)),
    ParamSpec("max_input_pixels", DEFAULT_MAX_PIXELS, "Frames with more pixels are refused before decoding (for "
              "compressed images the size in the PNG/JPEG header counts: a tiny file can claim a huge image); "
              "0 = no limit. The default fits 4K.", range=(0, 2**31 - 1)),
    ParamSpec("no_frame_warn_s", 5.0, "Warn (once per publisher match, and in /diagnostics) when a camera publisher "
              "is matched but no frame arrived for this long, naming the likely cause; 0 = off.",
              range=(0.0, 3600.0)),
    ParamSpec("output_qos", "reliable", "Output QoS: reliable / default (serves every subscriber) or sensor_data / "
              "best_effort.", choices=QOS_PRESETS),
    ParamSpec("output_depth", 2, "Output queue depth.", range=(1, 100)),
    ParamSpec("max_age_ms", 0.0, "Drop frames whose header stamp is older than this (node clock, so it works "
              "with use_sim_time); 0 = off.", range=(0.0, 3600000.0), dynamic=True),
    ParamSpec("engine_cache_dir", "", "TensorRT engine cache folder; empty = the backend's default."),
    ParamSpec("num_threads", 0, "CPU threads of the runtime; 0 = the backend's default.", range=(0, 256)),
    ParamSpec("warmup", True, "Run the model on a blank image before subscribing (first inference is slow)."),
    ParamSpec("enabled", True, "Process images from the start; the ~/enable service (std_srvs/SetBool) toggles."),
    ParamSpec("diagnostics_period_s", 1.0, "Period of the /diagnostics status.", range=(0.1, 60.0)),
    ParamSpec("qos_check_period_s", 5.0, "How often to compare the camera publishers' QoS with ours; 0 = only at "
              "start.", range=(0.0, 3600.0)),
    ParamSpec("latency_warn_ms", 0.0, "Diagnostics WARN when the p95 stamp-to-publish latency exceeds this; 0 = off.",
              range=(0.0, 60000.0)),
    ParamSpec("cameras", [], "Camera names served by this one node and one model (e.g. [front, left, right, "
              "rear]); camera NAME reads /NAME/image_raw (or camera.NAME.image_topic) and publishes what a "
              "single-camera node in namespace NAME publishes (/NAME/anomaly_node/anomaly_mask, ...). Empty: one "
              "camera on ~/image with outputs under this node's own name."),
    ParamSpec("max_batch", 0, "Most frames (one per camera) that go through the model as one batch; 0 = every "
              "camera with a new frame. Under load the camera that waited longest goes first.", range=(0, 64)),
    ParamSpec("domain_alarm_frames", 5, "Hysteresis of the out-of-domain alarm: enter it after this many "
              "consecutive frames whose domain score is above the model's domain threshold, leave it after as "
              "many below.", range=(1, 1000), dynamic=True),
    ParamSpec("out_of_domain_mask", "publish", "What the outputs do while a camera is out of domain: publish "
              "(keep publishing, flagged in ~/domain and /diagnostics), empty (publish an all-zero mask) or "
              "suppress (publish no score, mask, colour or overlay images; ~/domain continues).",
              choices=OUT_OF_DOMAIN_MASKS, dynamic=True),
)
PARAMETER_NAMES: frozenset[str] = frozenset(p.name for p in PARAMETERS)
_SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}

#: Per-camera parameters of a multi-camera node: ``camera.NAME.<name>``; unset ones follow the node's.
CAMERA_PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("image_topic", "", "Camera topic; empty: /NAME/image_raw (compressed: its /compressed topic)."),
    ParamSpec("image_transport", "", "raw or compressed; empty: the node's image_transport.",
              choices=("", "raw", "compressed")),
    ParamSpec("input_qos", "", "Subscription QoS; empty: the node's input_qos.", choices=("", *INPUT_QOS_PRESETS)),
    ParamSpec("threshold", math.nan, "Mask threshold of this camera; NaN = the node's threshold.", dynamic=True),
)
CAMERA_PARAMETER_NAMES: frozenset[str] = frozenset(p.name for p in CAMERA_PARAMETERS)
_CAMERA_SPECS: dict[str, ParamSpec] = {p.name: p for p in CAMERA_PARAMETERS}


def camera_parameter(camera: str, name: str) -> str:
    """The ROS parameter name of camera ``camera``'s setting ``name`` (``camera.front.image_topic``)."""
    return f"camera.{camera}.{name}"


def split_camera_parameter(full: str) -> tuple[str, str] | None:
    """``camera.front.threshold`` -> ("front", "threshold"); None for other names."""
    parts = full.split(".")
    if len(parts) == 3 and parts[0] == "camera":
        return parts[1], parts[2]
    return None


def parse_cameras(value: Any) -> list[str]:
    """The ``cameras`` parameter / ``--cameras a,b`` -> camera names; [] = the single-camera node."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    names = [str(v).strip() for v in items if str(v).strip()]
    bad = [n for n in names if not _CAMERA_NAME_RE.match(n)]
    if bad:
        raise ParameterError(f"parameter 'cameras': camera names must start with a letter and hold only letters, "
                             f"digits and '_' (they become namespaces), got {', '.join(map(repr, bad))}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ParameterError(f"parameter 'cameras': names must be unique, got {', '.join(duplicates)} twice")
    return names


def close_names(name: str, valid: Any) -> str:
    """' (did you mean a, b?)' for a misspelled parameter name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, sorted(valid), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "integer", float: "double", str: "string", list: "string array"}.get(
        type(value), type(value).__name__)


def validate_parameter(name: str, value: Any) -> Any:
    """Return ``value`` (int -> float where a double is expected) or raise ParameterError naming ``name``.

    ``name`` is a node parameter or a camera parameter ``camera.NAME.<setting>``."""
    camera = split_camera_parameter(name)
    spec = _CAMERA_SPECS.get(camera[1]) if camera else _SPECS.get(name)
    if spec is None:
        raise ParameterError(f"unknown parameter '{name}'")
    expected = type(spec.default)
    if expected is list:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ParameterError(f"parameter '{name}' must be a list of strings, got {value!r}")
        return parse_cameras(list(value)) if name == "cameras" else list(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        raise ParameterError(f"parameter '{name}' must be a {_type_name(spec.default)}, got {_type_name(value)} "
                             f"{value!r}")
    if spec.choices and value not in spec.choices:
        raise ParameterError(f"parameter '{name}' must be one of {', '.join(spec.choices)}, got {value!r}")
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        lo, hi = (f"{v:g}" for v in spec.range)
        raise ParameterError(f"parameter '{name}' must be in [{lo}, {hi}], got {value:g}")
    if name == "device" and not _DEVICE_RE.match(value):
        raise ParameterError(f"parameter 'device' must be auto, cpu, cuda or cuda:N, got {value!r}")
    if (name == "threshold" or (camera and camera[1] == "threshold")) and math.isinf(value):
        raise ParameterError(f"parameter '{name}' must be finite (or NaN = the default threshold), got {value}")
    return value


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of one parameter: description (+ choices), read-only unless dynamic, range."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    desc = spec.description
    if spec.choices:
        desc += f" One of: {', '.join(spec.choices)}."
    # doubles take integers too (threshold:=1 means 1.0): rclpy would refuse them by type before our validation runs
    floating = isinstance(spec.default, float)
    descriptor = ParameterDescriptor(description=desc, read_only=not spec.dynamic, dynamic_typing=floating)
    if spec.range is not None:
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]))]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                                  to_value=float(spec.range[1]))]
    return descriptor

"""The ROS 2 anomaly node: camera image in, anomaly score / mask (+ colour, overlay, semantics) out.

Why it is built this way:
- It holds an ``AnomalyModel`` from ``dicnet_ros.inference`` and knows nothing about the runtime behind it
  (TensorRT, ONNX Runtime or PyTorch are imported by the backend, never here).
- Inference runs on a worker thread fed by a one-frame slot: a slow model never builds a backlog, the newest
  frame always wins, and stale / too old / malformed frames are dropped and counted, never queued.
- Colour and overlay images are computed only while someone subscribes; the score and mask always are.
- Camera QoS mismatches (the most common "no output" complaint) are reported loudly with the fix.
- glibc's allocator is told to keep freed megabyte buffers (``tune_allocator``): otherwise every frame's
  message buffers (taken by the executor thread, built by the worker) are fresh mmap pages, and the page
  faults cost more than the DDS transport itself (~2.5 ms per 2.7 MB 720p image, in and out).
- Every parameter lives in one table, ``PARAMETERS``: the node declares from it, validates against it, and
  the launch / config tests check ``launch/anomaly.launch.py`` and ``config/anomaly.yaml`` against it.

Run: ``anomaly_node --ros-args -p model_path:=model.onnx -r ~/image:=/camera/image_raw`` or ``dicnet node``.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, qos_policy_name_from_kind
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32
from std_srvs.srv import SetBool

from dicnet_ros.image_conversion import (
    ImageConversionError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    make_image_decoder,
)
from dicnet_ros.inference.base import BACKENDS, AnomalyModel, BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.metadata import MetadataError
from dicnet_ros.resources import package_file
from dicnet_ros.visualization import COLORMAPS, class_palette, colorize_labels, colorize_score, overlay

NODE_NAME = "anomaly_node"
PACKAGE = "dicnet_ros"
DEFAULT_MODEL_NAME = "dicnet_sim_default.onnx"
QOS_PRESETS: tuple[str, ...] = ("sensor_data", "default", "reliable", "best_effort")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


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
              f"default model models/{DEFAULT_MODEL_NAME}."),
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
    ParamSpec("input_qos", "sensor_data", "Image subscription QoS: sensor_data / best_effort (works with any "
              "camera) or default / reliable.", choices=QOS_PRESETS),
    ParamSpec("input_depth", 1, "Image subscription queue depth (1 = newest frame only).", range=(1, 100)),
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
)
PARAMETER_NAMES: frozenset[str] = frozenset(p.name for p in PARAMETERS)
_SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


class ParameterError(ValueError):
    """A parameter value is invalid; the message names the parameter, the rule and the value."""


class NodeStartupError(RuntimeError):
    """The node cannot start (bad parameter, model file or backend); the message is the one fatal log line."""


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "integer", float: "double", str: "string"}.get(type(value), type(value).__name__)


def validate_parameter(name: str, value: Any) -> Any:
    """Return ``value`` (int -> float where a double is expected) or raise ParameterError naming ``name``."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ParameterError(f"unknown parameter '{name}'")
    expected = type(spec.default)
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
    if name == "threshold" and math.isinf(value):
        raise ParameterError(f"parameter 'threshold' must be finite (or NaN = the model's threshold), got {value}")
    return value


def default_model_path() -> Path:
    """The package's default model: share/dicnet_ros/models (ament index or pip prefix), else the source tree."""
    return package_file(f"models/{DEFAULT_MODEL_NAME}")


def open_model(model_path: str, backend: str, device: str, engine_cache_dir: str = "",
               num_threads: int = 0) -> AnomalyModel:
    """Load the model through ``dicnet_ros.inference``; every failure becomes one NodeStartupError line."""
    from dicnet_ros.inference import load_model

    path = Path(model_path).expanduser() if model_path else default_model_path()
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
    try:
        return load_model(path, backend=backend, device=device, **options)
    except BackendUnavailableError as exc:
        raise NodeStartupError(f"backend '{backend}' on device '{device}' is not available: {exc}") from None
    except (ModelLoadError, MetadataError) as exc:
        raise NodeStartupError(f"cannot load model {path}: {exc}") from None
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise NodeStartupError(f"cannot load model {path} with backend '{backend}': "
                               f"{type(exc).__name__}: {exc}") from None


_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit; a 4K rgb8 frame is 24.9 MB
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
_allocator_state: str | None = None


def tune_allocator() -> str:
    """Make glibc reuse freed image-sized buffers instead of returning them to the kernel; says what it did.

    Why: glibc serves blocks above its mmap threshold (128 KiB, adapting only partly) with fresh mmaps and
    trims free arena tops above 128 KiB, so each frame's next take / serialisation / numpy result in the
    executor and worker threads touches new pages: ~0.9 ms of page faults per MB, ~2.5 ms for one 720p rgb8
    message, more than the DDS transport itself. With both thresholds raised the buffers are recycled (memory
    stays at the working set's high-water mark). Process-wide and idempotent; skipped off glibc, when the user
    sets these thresholds (GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_), or with
    DICNET_MALLOC_TUNING=0.
    """
    global _allocator_state
    if _allocator_state is not None:
        return _allocator_state
    env = os.environ
    if env.get("DICNET_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        state = "off (DICNET_MALLOC_TUNING=0)"
    elif (any(t in env.get("GLIBC_TUNABLES", "") for t in ("malloc.mmap_threshold", "malloc.trim_threshold"))
          or "MALLOC_MMAP_THRESHOLD_" in env or "MALLOC_TRIM_THRESHOLD_" in env):
        state = "left to the environment (GLIBC_TUNABLES / MALLOC_*_THRESHOLD_)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        state = "not glibc, untouched"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                  and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
        except (OSError, AttributeError):
            ok = False
        state = "glibc buffers recycled" if ok else "mallopt failed, untouched"
    _allocator_state = state
    return state


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else math.nan


_QOS_FIX = {
    "RELIABILITY": "the camera publishes best effort while this node subscribes reliable: set input_qos:=sensor_data "
                   "(or best_effort)",
    "DURABILITY": "the camera publishes volatile while the subscription asks for transient local",
}


def make_qos(preset: str, depth: int) -> QoSProfile:
    """QoS from a preset name: sensor_data / best_effort = best effort, default / reliable = reliable; keep last."""
    best_effort = preset in ("sensor_data", "best_effort")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE)


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = spec.description
    if spec.choices:
        desc += f" One of: {', '.join(spec.choices)}."
    descriptor = ParameterDescriptor(description=desc, read_only=not spec.dynamic)
    if spec.range is not None:
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]))]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                                  to_value=float(spec.range[1]))]
    return descriptor


class _Stats:
    """Counters and latency samples shared by the callback, the worker and the diagnostics timer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.dropped_stale = 0
        self.dropped_queue = 0
        self.dropped_too_old = 0
        self.dropped_bad = 0
        self.dropped_paused = 0
        self.errors = 0
        self.window_latency: deque[float] = deque(maxlen=2000)
        self.window_inference: deque[float] = deque(maxlen=2000)
        self.timings: deque[tuple[float, float]] = deque(maxlen=2000)
        self.window_processed = 0
        self.window_bad = 0
        self.window_errors = 0
        self.window_start = time.monotonic()
        self.last_received = time.monotonic()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {k: getattr(self, k) for k in ("received", "processed", "dropped_stale", "dropped_queue",
                                                  "dropped_too_old", "dropped_bad", "dropped_paused", "errors")}


class AnomalyNode(Node):
    """Anomaly segmentation of one camera stream (see module docstring for topics and behaviour)."""

    def __init__(self, model: AnomalyModel | None = None, node_name: str = NODE_NAME, **node_kwargs: Any):
        """``model``: an already opened model (tests, benchmarks); None = open it from the parameters."""
        super().__init__(node_name, **node_kwargs)
        self._allocator = tune_allocator()
        self._owns_model = model is None
        self._stop = threading.Event()
        self._slot_cv = threading.Condition()
        self._slot: tuple[Any, float] | None = None
        self._stats = _Stats()
        self._qos_problems: dict[str, str] = {}
        self._last_seq: dict[bytes, int] = {}  # publisher gid -> last publication sequence number
        self._worker: threading.Thread | None = None
        try:
            self._p = self._declare_parameters()
            self._model = model if model is not None else open_model(
                self._p["model_path"], self._p["backend"], self._p["device"], self._p["engine_cache_dir"],
                self._p["num_threads"])
        except (ParameterError, NodeStartupError) as exc:
            self.destroy_node()
            raise NodeStartupError(str(exc)) from None
        self._setup_model()
        self._setup_interfaces()
        self._worker = threading.Thread(target=self._work, name=f"{node_name}_inference", daemon=True)
        self._worker.start()
        info = self._model.describe()
        self.get_logger().info(
            f"ready: {info.get('backend')} on {info.get('device')}, model {info.get('model')}, threshold "
            f"{self._model.threshold:g}, input {self._image_sub.topic_name} ({self._p['input_qos']}, "
            f"decoder {self._decoder_name}), outputs at {self._p['output_resolution']} resolution, allocator: "
            f"{self._allocator}")

    # ---------------------------------------------------------------------------------------------- parameters
    def _declare_parameters(self) -> dict[str, Any]:
        overrides = getattr(self, "_parameter_overrides", None)  # rclpy keeps CLI / YAML overrides here
        values: dict[str, Any] = {}
        for spec in PARAMETERS:
            if isinstance(overrides, dict) and spec.name in overrides:
                value = validate_parameter(spec.name, overrides[spec.name].value)
                overrides[spec.name] = Parameter(spec.name, value=value)  # int given for a double: accept it
            try:
                self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except Exception as exc:  # rclpy's own range / type checks
                raise ParameterError(f"parameter '{spec.name}': {exc}") from None
            values[spec.name] = validate_parameter(spec.name, self.get_parameter(spec.name).value)
        self.add_on_set_parameters_callback(self._validate_set)
        self.add_post_set_parameters_callback(self._apply_set)
        return values

    def _validate_set(self, params: list[Parameter]) -> SetParametersResult:
        """Reject invalid run-time changes with a reason that names the parameter."""
        for param in params:
            if param.name not in PARAMETER_NAMES:
                continue
            try:
                validate_parameter(param.name, param.value)
            except ParameterError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_set(self, params: list[Parameter]) -> None:
        for param in params:
            if param.name not in PARAMETER_NAMES:
                continue
            value = validate_parameter(param.name, param.value)
            self._p[param.name] = value
            if param.name == "threshold":
                self._apply_threshold(value)
                self.get_logger().info(f"threshold set to {self._model.threshold:g}")

    def _apply_threshold(self, value: float) -> None:
        self._model.threshold = self._model_threshold if math.isnan(value) else value

    # ---------------------------------------------------------------------------------------------- set-up
    def _setup_model(self) -> None:
        meta = self._model.metadata
        self._model_threshold = float(self._model.threshold)
        self._apply_threshold(self._p["threshold"])
        self._score_range = tuple(float(v) for v in meta.display_range)
        self._palette = class_palette(max(meta.num_classes, 1))
        pre = meta.preprocess_config
        self._network_size = (int(pre.width), int(pre.height))
        # a graph exported for one fixed input size gets that size; outputs are resized back (see _process)
        export = meta.export or {}
        size = export.get("input_size")
        self._fixed_input = (int(size[0]), int(size[1])) if size and not export.get("dynamic", True) else None
        if self._p["warmup"]:
            start = time.perf_counter()
            self._model.warmup()
            self.get_logger().info(f"warm-up took {(time.perf_counter() - start) * 1e3:.0f} ms")

    def _setup_interfaces(self) -> None:
        out_qos = make_qos(self._p["output_qos"], self._p["output_depth"])
        pub_events = PublisherEventCallbacks(incompatible_qos=self._on_output_incompatible_qos)

        def pub(msg_type: Any, topic: str) -> Any:
            return self.create_publisher(msg_type, topic, out_qos, event_callbacks=pub_events)

        self._pub_score = pub(Image, "~/anomaly_score")
        self._pub_mask = pub(Image, "~/anomaly_mask")
        self._pub_score_color = pub(Image, "~/anomaly_score_color") if self._p["publish_score_color"] else None
        self._pub_overlay = pub(Image, "~/overlay") if self._p["publish_overlay"] else None
        self._pub_semantic = pub(Image, "~/semantic") if self._p["publish_semantic"] else None
        self._pub_semantic_color = pub(Image, "~/semantic_color") if self._p["publish_semantic"] else None
        self._pub_msp = pub(Image, "~/msp_score") if self._p["publish_msp"] else None
        self._pub_latency = self.create_publisher(Float32, "~/latency_ms", out_qos)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        compressed = self._p["image_transport"] == "compressed"
        self._expected_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        if compressed:
            self._decode = compressed_msg_to_rgb
            self._decoder_name = "cv2.imdecode"
        else:
            self._decode, self._decoder_name = make_image_decoder()
        self._in_qos = make_qos(self._p["input_qos"], self._p["input_depth"])
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_input_incompatible_qos,
                                            incompatible_type=self._on_input_incompatible_type)
        self._image_sub = self.create_subscription(
            CompressedImage if compressed else Image, "~/image/compressed" if compressed else "~/image",
            self._on_image, self._in_qos, event_callbacks=events)
        self._enabled = bool(self._p["enabled"])
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_timer(self._p["diagnostics_period_s"], self._publish_diagnostics)
        self._first_check = self.create_timer(1.0, self._first_qos_check)
        if self._p["qos_check_period_s"] > 0:
            self.create_timer(self._p["qos_check_period_s"], self._check_publisher_qos)

    # ---------------------------------------------------------------------------------------------- callbacks
    def _on_image(self, msg: Any, info: Any) -> None:
        """Executor thread: put the frame in the slot (replacing an unprocessed one) and return at once.

        Frames the DDS queue (depth ``input_depth``) replaced before we took them show up as gaps in the
        publisher's sequence numbers; they are counted as ``dropped_queue``.
        """
        stats = self._stats
        gap = 0
        if isinstance(info, dict) and info.get("publication_sequence_number") is not None:
            gid = info.get("publisher_gid", {})
            key = bytes(gid.get("data", b"")) if isinstance(gid, dict) else b""
            seq = int(info["publication_sequence_number"])
            last = self._last_seq.get(key)
            if last is not None and seq > last + 1:
                gap = seq - last - 1
            self._last_seq[key] = seq
        with stats.lock:
            stats.received += 1
            stats.dropped_queue += gap
            stats.last_received = time.monotonic()
            if not self._enabled:
                stats.dropped_paused += 1
                return
        with self._slot_cv:
            if self._slot is not None:
                with stats.lock:
                    stats.dropped_stale += 1
            self._slot = (msg, time.monotonic())
            self._slot_cv.notify()

    def _on_enable(self, request: Any, response: Any) -> Any:
        self._enabled = bool(request.data)
        if not self._enabled:
            with self._slot_cv:
                self._slot = None
        response.success = True
        response.message = "processing enabled" if self._enabled else "processing paused"
        self.get_logger().info(response.message)
        return response

    def _on_input_incompatible_qos(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        fix = _QOS_FIX.get(policy, "make the camera's QoS and input_qos agree")
        msg = (f"incompatible QoS with a publisher on {self._image_sub.topic_name}: policy {policy} "
               f"(input_qos={self._p['input_qos']}); no images will arrive. Fix: {fix}")
        self._qos_problems["event:input"] = msg
        self.get_logger().warning(msg, throttle_duration_sec=5.0)

    def _on_input_incompatible_type(self, event: Any) -> None:
        msg = (f"a publisher on {self._image_sub.topic_name} has another message type than {self._expected_type}; "
               "for sensor_msgs/CompressedImage set image_transport:=compressed")
        self._qos_problems["event:type"] = msg
        self.get_logger().warning(msg, throttle_duration_sec=5.0)

    def _on_output_incompatible_qos(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        self.get_logger().warning(
            f"a subscriber of this node's outputs requests incompatible QoS (policy {policy}, output_qos="
            f"{self._p['output_qos']}); set output_qos:=reliable or make the subscriber best effort",
            throttle_duration_sec=5.0)

    def _first_qos_check(self) -> None:
        """One second after start (discovery done): also say so when nobody publishes the camera topic."""
        self._first_check.cancel()
        self._check_publisher_qos(report_missing=True)

    def _check_publisher_qos(self, report_missing: bool = False) -> None:
        """Compare every camera publisher's QoS / type with the subscription and say what to change."""
        topic = self._image_sub.topic_name
        problems: dict[str, str] = {}
        try:
            infos = self.get_publishers_info_by_topic(topic)
        except Exception:  # graph queries can fail during shutdown
            return
        ours = self._in_qos
        for info in infos:
            who = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
            qos = info.qos_profile
            if info.topic_type != self._expected_type:
                problems[f"type:{who}"] = (f"{who} publishes {info.topic_type} on {topic}, this node expects "
                                           f"{self._expected_type} (image_transport={self._p['image_transport']})")
            if qos.reliability == ReliabilityPolicy.BEST_EFFORT and ours.reliability == ReliabilityPolicy.RELIABLE:
                problems[f"rel:{who}"] = (f"{who} publishes {topic} BEST_EFFORT but input_qos="
                                          f"{self._p['input_qos']} is RELIABLE: no images will arrive; set "
                                          "input_qos:=sensor_data")
            if (qos.durability == DurabilityPolicy.VOLATILE
                    and ours.durability == DurabilityPolicy.TRANSIENT_LOCAL):
                problems[f"dur:{who}"] = f"{who} publishes {topic} VOLATILE, the subscription is TRANSIENT_LOCAL"
        if not infos and report_missing:
            other = f"{topic}/compressed" if self._expected_type.endswith("/Image") else topic.rsplit("/", 1)[0]
            try:
                alt = self.get_publishers_info_by_topic(other)
            except Exception:
                alt = []
            hint = (f"; {other} has publishers: set image_transport:="
                    f"{'compressed' if other.endswith('compressed') else 'raw'}") if alt else (
                "; check the remapping (image_topic:=...) and the namespace")
            self.get_logger().warning(f"no publisher on {topic} yet{hint}")
        new = {k: v for k, v in problems.items() if self._qos_problems.get(k) != v}
        for text in new.values():
            self.get_logger().warning(text)
        events = {k: v for k, v in self._qos_problems.items() if k.startswith("event:")}
        self._qos_problems = {**events, **problems}

    # ---------------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._slot_cv:
                if self._slot is None:
                    self._slot_cv.wait(timeout=0.2)
                if self._slot is None:
                    continue
                msg, received_at = self._slot
                self._slot = None
            try:
                self._process(msg, received_at)
            except Exception as exc:  # never let one frame kill the worker
                with self._stats.lock:
                    self._stats.errors += 1
                    self._stats.window_errors += 1
                self.get_logger().error(f"inference failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=5.0)

    def _process(self, msg: Any, received_at: float) -> None:
        started = time.monotonic()
        stats = self._stats
        header = msg.header
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        max_age_ms = self._p["max_age_ms"]
        if max_age_ms > 0 and stamp_ns > 0:
            age_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
            if age_ms > max_age_ms:
                with stats.lock:
                    stats.dropped_too_old += 1
                self.get_logger().warning(f"dropping frames older than max_age_ms={max_age_ms:g} (this one "
                                          f"{age_ms:.0f} ms)", throttle_duration_sec=5.0)
                return
        try:
            image = self._decode(msg)
        except ImageConversionError as exc:
            with stats.lock:
                stats.dropped_bad += 1
                stats.window_bad += 1
                count = stats.dropped_bad
            self.get_logger().error(f"skipping bad image on {self._image_sub.topic_name} (frame_id "
                                    f"'{header.frame_id}', {count} so far): {exc}", throttle_duration_sec=5.0)
            return
        if self._p["output_resolution"] == "network" and (image.shape[1], image.shape[0]) != self._network_size:
            image = cv2.resize(image, self._network_size, interpolation=cv2.INTER_LINEAR)
        model_input = image
        if self._fixed_input is not None and (image.shape[1], image.shape[0]) != self._fixed_input:
            model_input = cv2.resize(image, self._fixed_input, interpolation=cv2.INTER_LINEAR)
        result = self._model.infer(model_input)
        self._publish(*self._at_size(result, image.shape[:2]), image, header)
        self._publish_msp(result, image.shape[:2], header)
        now_ns = self.get_clock().now().nanoseconds
        latency_ms = (now_ns - stamp_ns) / 1e6 if stamp_ns > 0 else (time.monotonic() - received_at) * 1e3
        self._pub_latency.publish(Float32(data=float(latency_ms)))
        inference_ms = result.timings_ms.get("inference", math.nan)
        done = time.monotonic()
        with stats.lock:
            stats.processed += 1
            stats.window_processed += 1
            stats.window_latency.append(latency_ms)
            stats.window_inference.append(inference_ms)
            # (waiting in the slot, node work besides inference), both in ms
            stats.timings.append(((started - received_at) * 1e3, (done - started) * 1e3 - inference_ms))

    def _at_size(self, result: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(score, mask, labels) at ``size`` (H, W): resized only when the model answered at another size
        (fixed-size or network-resolution export); the mask is then re-thresholded so it stays score > threshold."""
        score, mask, labels = result.anomaly_score, result.anomaly_mask, result.semantic_labels
        if score.shape[:2] == tuple(size):
            return score, mask, labels
        dsize = (int(size[1]), int(size[0]))
        score = cv2.resize(score, dsize, interpolation=cv2.INTER_LINEAR)
        mask = score > self._model.threshold
        if labels is not None:
            labels = cv2.resize(np.ascontiguousarray(labels, np.uint8), dsize, interpolation=cv2.INTER_NEAREST)
        return score, mask, labels

    def _publish_msp(self, result: Any, size: tuple[int, int], header: Any) -> None:
        """The baseline map beside the score, when asked for and the model has it."""
        pub = self._pub_msp
        if pub is None or pub.get_subscription_count() == 0:
            return
        msp = result.extras.get("msp")
        if msp is None:
            self.get_logger().warning("publish_msp is set but the model exports no msp_score output", once=True)
            return
        if msp.shape[:2] != tuple(size):
            msp = cv2.resize(msp, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
        pub.publish(array_to_image_msg(np.ascontiguousarray(msp, np.float32), "32FC1", header))

    def _publish(self, score: np.ndarray, mask_bool: np.ndarray, labels: np.ndarray | None, image: np.ndarray,
                 header: Any) -> None:
        """Score and mask always; colour / overlay / semantic colour only for subscribers (they cost time)."""
        # even the score and mask are only copied into messages for subscribers: a 1280x720 score is 3.7 MB.
        # The mask (0.9 MB, what most consumers act on) goes first, so it does not wait for the score's transport.
        if self._pub_mask.get_subscription_count() > 0:
            mask = np.multiply(mask_bool.view(np.uint8), np.uint8(255))
            self._pub_mask.publish(array_to_image_msg(mask, "mono8", header))
        if self._pub_score.get_subscription_count() > 0:
            self._pub_score.publish(array_to_image_msg(score, "32FC1", header))
        p = self._p
        lo, hi = self._score_range
        pub = self._pub_score_color
        heat = None  # the score colour map, computed once for ~/anomaly_score_color and the score overlay
        if pub is not None and p["publish_score_color"] and pub.get_subscription_count() > 0:
            heat = colorize_score(score, lo, hi, p["colormap"])
            pub.publish(array_to_image_msg(heat, "rgb8", header))
        pub = self._pub_overlay
        if pub is not None and p["publish_overlay"] and pub.get_subscription_count() > 0:
            if p["overlay_source"] == "mask":
                blended = overlay(image, mask_bool, p["overlay_alpha"])
            else:
                blended = overlay(image, score, p["overlay_alpha"], (lo, hi), p["colormap"],
                                  heat=heat if heat is not None and heat.shape == image.shape else None)
            pub.publish(array_to_image_msg(blended, "rgb8", header))
        if self._pub_semantic is not None and labels is not None:
            labels = np.ascontiguousarray(labels, dtype=np.uint8)
            self._pub_semantic.publish(array_to_image_msg(labels, "mono8", header))
            pub = self._pub_semantic_color
            if pub is not None and pub.get_subscription_count() > 0:
                pub.publish(array_to_image_msg(colorize_labels(labels, self._palette), "rgb8", header))
        elif self._pub_semantic is not None:
            self.get_logger().warning("publish_semantic is set but the model has no segmentation output",
                                      once=True)

    # ---------------------------------------------------------------------------------------------- diagnostics
    def stats(self) -> dict[str, int]:
        """Counters since start: received, processed, dropped_stale (replaced in our slot), dropped_queue (replaced
        in the DDS queue, from sequence gaps), dropped_too_old, dropped_bad, dropped_paused, errors."""
        return self._stats.snapshot()

    def timings(self) -> list[tuple[float, float]]:
        """Recent frames' (ms waiting in the slot, ms of node work besides inference): the node's own overhead."""
        with self._stats.lock:
            return list(self._stats.timings)

    @property
    def model(self) -> AnomalyModel:
        return self._model

    def _publish_diagnostics(self) -> None:
        stats = self._stats
        now = time.monotonic()
        with stats.lock:
            elapsed = max(now - stats.window_start, 1e-6)
            fps = stats.window_processed / elapsed
            lat = list(stats.window_latency)
            inf = list(stats.window_inference)
            overhead = [t[1] for t in list(stats.timings)[-len(lat):]] if lat else []
            window_bad, window_errors = stats.window_bad, stats.window_errors
            silent_s = now - stats.last_received
            stats.window_latency.clear()
            stats.window_inference.clear()
            stats.window_processed = stats.window_bad = stats.window_errors = 0
            stats.window_start = now
        counters = self._stats.snapshot()
        p95 = _percentile(lat, 95)
        level, message = DiagnosticStatus.OK, f"processing {fps:.1f} fps"
        warn_ms = self._p["latency_warn_ms"]
        if not self._enabled:
            message = "paused (~/enable false)"
        elif window_errors:
            level, message = DiagnosticStatus.ERROR, f"inference failed on {window_errors} frame(s)"
        elif self._qos_problems:
            level, message = DiagnosticStatus.WARN, next(iter(self._qos_problems.values()))
        elif window_bad:
            level, message = DiagnosticStatus.WARN, f"{window_bad} bad image message(s) skipped"
        elif silent_s > max(5.0, 3 * self._p["diagnostics_period_s"]):
            level, message = DiagnosticStatus.WARN, f"no images on {self._image_sub.topic_name} for {silent_s:.0f} s"
        elif warn_ms > 0 and p95 > warn_ms:
            level, message = DiagnosticStatus.WARN, f"latency p95 {p95:.0f} ms > latency_warn_ms {warn_ms:g}"
        info = self._model.describe()
        values = {
            "fps": f"{fps:.2f}",
            "latency_p50_ms": f"{_percentile(lat, 50):.2f}",
            "latency_p95_ms": f"{p95:.2f}",
            "inference_p50_ms": f"{_percentile(inf, 50):.2f}",
            "inference_p95_ms": f"{_percentile(inf, 95):.2f}",
            "node_overhead_p50_ms": f"{_percentile(overhead, 50):.2f}",
            **{k: str(v) for k, v in counters.items()},
            "enabled": str(self._enabled),
            "threshold": f"{self._model.threshold:g}",
            "backend": str(info.get("backend")),
            "device": str(info.get("device")),
            "model": str(info.get("model")),
            "input_topic": self._image_sub.topic_name,
            "output_resolution": self._p["output_resolution"],
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: anomaly segmentation",
                                  message=message, hardware_id=f"{info.get('backend')}:{info.get('device')}",
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(array)

    # ---------------------------------------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop the worker, release the model (if we opened it) and destroy the node."""
        self._stop.set()
        with self._slot_cv:
            self._slot_cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
        if self._owns_model and getattr(self, "_model", None) is not None:
            self._model.close()
        self.destroy_node()


# -------------------------------------------------------------------------------------------------- entry points
def run_node(ros_args: list[str] | None = None) -> int:
    """Init rclpy with ``ros_args`` (argv style), spin the node until Ctrl-C; 1 on a startup error."""
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        rclpy.init(args=ros_args)
    except Exception as exc:  # malformed --ros-args: one line, not a traceback
        logger.fatal(f"cannot initialise ROS: {' '.join(str(exc).split())}")
        return 2
    try:
        try:
            node = AnomalyNode()
        except NodeStartupError as exc:
            logger.fatal(str(exc))
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown()
            node.close()
        return 0
    finally:
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    """Console script ``anomaly_node``: plain ROS arguments (``--ros-args -p model_path:=...``)."""
    import sys

    return run_node(list(sys.argv if argv is None else argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``dicnet node`` options; they become ROS parameters / remaps, anything after --ros-args is passed on."""
    parser.add_argument("--model", help="model file (default: the package's default model)")
    parser.add_argument("--backend", choices=BACKENDS, help="inference runtime (default auto)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--params-file", help="ROS parameter YAML (e.g. config/anomaly.yaml)")
    parser.add_argument("--image-topic", help="camera topic to remap ~/image (and ~/image/compressed) to")
    parser.add_argument("--image-transport", choices=("raw", "compressed"), help="raw Image or CompressedImage")
    parser.add_argument("--threshold", type=float, help="mask threshold (default: the model's)")
    parser.add_argument("--namespace", help="node namespace (one per camera)")
    parser.add_argument("--use-sim-time", action="store_true", help="use /clock (bag replay)")
    parser.add_argument("--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
                        help="everything after this goes to ROS unchanged")


def build_ros_args(args: argparse.Namespace) -> list[str]:
    """argparse options -> ROS argv: params file first, so explicit options override it; user --ros-args last."""
    ros: list[str] = ["--ros-args"]
    if getattr(args, "params_file", None):
        ros += ["--params-file", str(args.params_file)]
    for option, param in (("model", "model_path"), ("backend", "backend"), ("device", "device"),
                          ("image_transport", "image_transport"), ("threshold", "threshold")):
        value = getattr(args, option, None)
        if value is not None:
            ros += ["-p", f"{param}:={value}"]
    if getattr(args, "use_sim_time", False):
        ros += ["-p", "use_sim_time:=true"]
    if getattr(args, "image_topic", None):
        ros += ["-r", f"~/image:={args.image_topic}", "-r", f"~/image/compressed:={args.image_topic}/compressed"]
    if getattr(args, "namespace", None):
        ros += ["-r", f"__ns:=/{args.namespace.lstrip('/')}"]
    extra = list(getattr(args, "ros_args", None) or [])
    if extra and extra[0] == "--ros-args":
        extra = extra[1:]
    return ros + extra


def run(args: argparse.Namespace) -> int:
    """``dicnet node``."""
    return run_node(["dicnet-node", *build_ros_args(args)])


if __name__ == "__main__":
    raise SystemExit(main())

"""The ROS 2 anomaly node: camera images in, anomaly score / mask (+ colour, overlay, semantics, domain) out.

Why it is built this way:
- It holds an ``AnomalyModel`` from ``dicnet_ros.inference`` and knows nothing about the runtime behind it
  (TensorRT, ONNX Runtime or PyTorch are imported by the backend, never here).
- One node serves one camera or several: each camera is a ``CameraPipeline`` (subscription, QoS, frame slot,
  decoding, outputs, counters, out-of-domain state, diagnostics), and one ``InferenceWorker`` runs the newest
  frame of every camera through the one model, batched. With ``cameras`` empty the node is the single-camera
  node (``~/image`` in, ``~/anomaly_mask`` out); with ``cameras: [front, rear]`` camera NAME has exactly the
  topics of a single-camera node in namespace NAME (``/NAME/image_raw`` in, ``/NAME/anomaly_node/...`` out).
- A slow model never builds a backlog: each camera keeps only its newest frame; stale / too old / malformed /
  oversized frames are dropped and counted per camera, never queued.
- Colour and overlay images are computed only while someone subscribes.
- Every parameter lives in one table, ``PARAMETERS`` (per-camera ones in ``CAMERA_PARAMETERS``): the node declares
  from it, validates against it, warns about names it does not know, and the launch / config tests check
  ``launch/anomaly.launch.py`` and ``config/anomaly.yaml`` against it. A run-time parameter change can be refused,
  never crash the node; ``ros2 param get threshold`` shows the threshold in use.
- glibc's allocator keeps freed megabyte buffers (``tune_allocator``): fresh mmap pages per frame cost more than
  the DDS transport itself.

Run: ``anomaly_node --ros-args -p model_path:=model.onnx -r ~/image:=/camera/image_raw`` or ``dicnet node``;
several cameras: ``dicnet node --cameras front,left,right,rear``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import NameValidationException
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool

from dicnet_ros.inference.base import AnomalyModel
from dicnet_ros.node.allocator import tune_allocator
from dicnet_ros.node.camera import CameraPipeline, CameraSpec, ModelFacts
from dicnet_ros.node.errors import NodeStartupError, ParameterError
from dicnet_ros.node.model_loading import open_model
from dicnet_ros.node.parameters import (
    CAMERA_PARAMETERS,
    NODE_NAME,
    PARAMETER_NAMES,
    PARAMETERS,
    camera_parameter,
    close_names,
    parameter_descriptor,
    split_camera_parameter,
    validate_parameter,
)
from dicnet_ros.node.worker import InferenceWorker
from dicnet_ros.ros_names import camera_node_prefix
from dicnet_ros.visualization import class_palette

PACKAGE = "dicnet_ros"
#: parameters rclpy itself declares or reads; not ours to warn about
ROS_OWN_PARAMETERS = ("use_sim_time", "start_type_description_service")


class AnomalyNode(Node):
    """Anomaly segmentation of one or several camera streams (see the module docstring)."""

    def __init__(self, model: AnomalyModel | None = None, node_name: str = NODE_NAME, **node_kwargs: Any):
        """``model``: an already opened model (tests, benchmarks); None = open it from the parameters."""
        super().__init__(node_name, **node_kwargs)
        self._allocator = tune_allocator()
        self._owns_model = model is None
        self.steady_clock = Clock(clock_type=ClockType.STEADY_TIME)
        self.cameras: list[CameraPipeline] = []
        self._worker: InferenceWorker | None = None
        try:
            self._p = self._declare_parameters()
            specs = self._camera_specs()
            self._warn_unknown_parameters()
            batch = min(len(specs), self._p["max_batch"] or len(specs))
            self._model = model if model is not None else open_model(
                self._p["model_path"], self._p["backend"], self._p["device"], self._p["engine_cache_dir"],
                self._p["num_threads"], batch)
            self._setup_model(specs)
            self._worker = InferenceWorker(self._model, [], self._p["max_batch"], f"{node_name}_inference")
            facts = self._model_facts()
            # rclpy checks each camera's topic names here (camera.NAME.image_topic is free text)
            self.cameras = [CameraPipeline(self, spec, self._p, self._worker.notify, facts) for spec in specs]
        except (ParameterError, NodeStartupError, NameValidationException) as exc:
            if self._owns_model and getattr(self, "_model", None) is not None:
                self._model.close()
            self.destroy_node()
            raise NodeStartupError(" ".join(str(exc).split())) from None
        self._worker.cameras = self.cameras
        self._apply_thresholds()
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if self.multi_camera:
            self.create_service(SetBool, "~/enable", self._on_enable_all)
        self.create_timer(self._p["diagnostics_period_s"], self._publish_diagnostics)
        self._worker.start()
        self._log_ready()

    # ---------------------------------------------------------------------------------------------- parameters
    @property
    def multi_camera(self) -> bool:
        return bool(self._p["cameras"])

    def _declare_parameters(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for spec in PARAMETERS:
            values[spec.name] = self._declare(spec.name, spec)
        self.add_pre_set_parameters_callback(self._resolve_set)
        self.add_on_set_parameters_callback(self._validate_set)
        self.add_post_set_parameters_callback(self._apply_set)
        return values

    def _declare(self, name: str, spec: Any) -> Any:
        """Declare one parameter from its spec; the value given at start is validated (with the name) first."""
        overrides = getattr(self, "_parameter_overrides", None)  # rclpy keeps CLI / YAML overrides here
        if isinstance(overrides, dict) and name in overrides:
            value = validate_parameter(name, overrides[name].value)
            overrides[name] = Parameter(name, value=value)  # int given for a double: accept it
        default: Any = spec.default
        if isinstance(default, list) and not default:
            default = Parameter.Type.STRING_ARRAY  # an empty list has no type of its own
        try:
            self.declare_parameter(name, default, parameter_descriptor(spec))
        except Exception as exc:  # rclpy's own range / type checks
            raise ParameterError(f"parameter '{name}': {' '.join(str(exc).split())}") from None
        try:
            value = self.get_parameter(name).value
        except Exception:  # a typed parameter declared without a value: its default
            value = spec.default
        return validate_parameter(name, value if value is not None else spec.default)

    def _camera_specs(self) -> list[CameraSpec]:
        """One spec per camera: the single camera on ``~/image``, or camera NAME on /NAME/image_raw."""
        p = self._p
        if not p["cameras"]:
            return [CameraSpec("", "~/image", p["image_transport"], p["input_qos"], "~",
                               self.get_fully_qualified_name())]
        ns = self.get_namespace().rstrip("/")
        specs = []
        for name in p["cameras"]:
            own = {spec.name: self._declare(camera_parameter(name, spec.name), spec) for spec in CAMERA_PARAMETERS}
            prefix = camera_node_prefix(ns, name, self.get_name())
            specs.append(CameraSpec(name, own["image_topic"] or f"{ns}/{name}/image_raw",
                                    own["image_transport"] or p["image_transport"], own["input_qos"] or p["input_qos"],
                                    prefix, prefix, own["threshold"]))
        return specs

    def _warn_unknown_parameters(self) -> None:
        """A misspelled parameter would be ignored silently by rclpy: say so once, with the close valid names."""
        overrides = getattr(self, "_parameter_overrides", None) or {}
        known = set(PARAMETER_NAMES) | set(ROS_OWN_PARAMETERS) | {
            camera_parameter(c, s.name) for c in self._p["cameras"] for s in CAMERA_PARAMETERS}
        for name in sorted(overrides):
            if name in known or name.startswith("qos_overrides."):
                continue
            camera = split_camera_parameter(name)
            if camera and camera[0] not in self._p["cameras"]:
                where = f"camera '{camera[0]}' is not one of cameras [{', '.join(self._p['cameras'])}]"
            else:
                where = f"unknown parameter{close_names(name, known)}"
            self.get_logger().warning(f"ignoring parameter '{name}': {where}")

    def _resolve_set(self, params: list[Parameter]) -> list[Parameter]:
        """threshold NaN means the model's calibrated threshold: store that number, so param get shows it."""
        resolved = []
        for param in params:
            if (param.name == "threshold" and isinstance(param.value, float) and math.isnan(param.value)
                    and math.isfinite(getattr(self, "_model_threshold", math.inf))):
                param = Parameter("threshold", value=self._model_threshold)
            resolved.append(param)
        return resolved

    def _validate_set(self, params: list[Parameter]) -> SetParametersResult:
        """Refuse invalid run-time changes with a reason that names the parameter; never raise."""
        for param in params:
            if param.name not in PARAMETER_NAMES and not split_camera_parameter(param.name):
                continue
            try:
                value = validate_parameter(param.name, param.value)
            except ParameterError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            if param.name == "threshold" and math.isnan(value):
                return SetParametersResult(successful=False, reason=(
                    "parameter 'threshold': the model has no calibrated threshold; give a number"))
        return SetParametersResult(successful=True)

    def _apply_set(self, params: list[Parameter]) -> None:
        changed = False
        for param in params:
            camera = split_camera_parameter(param.name)
            if param.name not in PARAMETER_NAMES and not camera:
                continue
            try:
                value = validate_parameter(param.name, param.value)
            except ParameterError:
                continue  # refused by _validate_set already
            if camera:
                for pipeline in self.cameras:
                    if pipeline.spec.name == camera[0] and camera[1] == "threshold":
                        self._camera_thresholds[camera[0]] = value
                        changed = True
                continue
            self._p[param.name] = value
            if param.name == "threshold":
                changed = True
            if param.name == "domain_alarm_frames":
                for pipeline in self.cameras:
                    pipeline.domain.frames = int(value)
        if changed:
            self._apply_thresholds()
            for pipeline in self.cameras:
                self.get_logger().info(f"{pipeline.spec.label} threshold set to {pipeline.mask_threshold():g}")

    # ---------------------------------------------------------------------------------------------- set-up
    def _setup_model(self, specs: list[CameraSpec]) -> None:
        self._model_threshold = float(self._model.threshold)
        self._camera_thresholds = {spec.name: spec.threshold for spec in specs}
        threshold = self._p["threshold"]
        if math.isnan(threshold):
            inheriting = [spec for spec in specs if not math.isfinite(spec.threshold)]
            if not math.isfinite(self._model_threshold) and inheriting:
                raise NodeStartupError(f"model {self._model.path} has no calibrated threshold (its metadata "
                                       "threshold is null): set the threshold parameter (threshold:=VALUE, "
                                       "dicnet node --threshold VALUE)")
            if math.isfinite(self._model_threshold):
                self._p["threshold"] = self._model_threshold
                self.set_parameters([Parameter("threshold", value=self._model_threshold)])
        if self._p["warmup"]:
            start = time.perf_counter()
            try:
                self._model.warmup()
            except Exception as exc:  # a model that loads but cannot run: one FATAL line, not a traceback
                raise NodeStartupError(f"model {self._model.path} failed its warm-up run ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())[:300]})") from None
            self.get_logger().info(f"warm-up took {(time.perf_counter() - start) * 1e3:.0f} ms")

    def _model_facts(self) -> ModelFacts:
        """What the cameras' outputs need to know about the model (the same for every camera)."""
        meta = self._model.metadata
        pre = meta.preprocess_config
        export = meta.export or {}
        size = export.get("input_size")
        # a graph exported for one fixed input size gets that size; outputs are resized back (see CameraPipeline)
        fixed = (int(size[0]), int(size[1])) if size and not export.get("dynamic", True) else None
        return ModelFacts(self._model, (float(meta.display_range[0]), float(meta.display_range[1])),
                          class_palette(max(meta.num_classes, 1)), (int(pre.width), int(pre.height)), fixed)

    def _apply_thresholds(self) -> None:
        """Each camera's mask threshold: its own when set, else the node's; the model keeps the node's."""
        node_threshold = self._p["threshold"]
        if math.isfinite(node_threshold):
            self._model.threshold = node_threshold
        for camera in self.cameras:
            own = self._camera_thresholds.get(camera.spec.name, math.nan)
            camera.threshold = own if math.isfinite(own) else node_threshold

    def _log_ready(self) -> None:
        from dicnet_ros.inference.cpu_features import int8_notice

        line, warning = int8_notice(self._model)  # an INT8 model on the CPU: which integer kernels run it
        if line:
            self.get_logger().info(line)
        if warning:
            self.get_logger().warning(warning)
        info = self._model.describe()
        domain = self._model.domain_threshold
        inputs = ", ".join(f"{c.spec.label}: {c.topic} ({c.spec.input_qos}, {c.spec.transport}, decoder "
                           f"{c.decoder_name})" for c in self.cameras)
        self.get_logger().info(
            f"ready: {info.get('backend')} on {info.get('device')}, model {info.get('model')}, threshold "
            f"{self._p['threshold']:g}, domain alarm "
            f"{'threshold ' + format(domain, 'g') if domain is not None else 'unavailable (model has no domain score)'}"
            f", {len(self.cameras)} camera(s) [{inputs}], max_batch {self._p['max_batch'] or 'all'}, outputs at "
            f"{self._p['output_resolution']} resolution, DDS: {self.cameras[0].watch.profile_description()}, "
            f"allocator: {self._allocator}")

    # ---------------------------------------------------------------------------------------------- services
    def _on_enable_all(self, request: Any, response: Any) -> Any:
        for camera in self.cameras:
            camera.set_enabled(bool(request.data))
        response.success = True
        response.message = f"processing {'enabled' if request.data else 'paused'} on {len(self.cameras)} camera(s)"
        self.get_logger().info(response.message)
        return response

    # ---------------------------------------------------------------------------------------------- state
    def camera(self, name: str = "") -> CameraPipeline:
        """The pipeline of camera ``name`` ("" = the single camera, or the first)."""
        if not name:
            return self.cameras[0]
        for camera in self.cameras:
            if camera.spec.name == name:
                return camera
        raise KeyError(f"no camera {name!r}; cameras: {[c.spec.name for c in self.cameras]}")

    def stats(self, camera: str | None = None) -> dict[str, int]:
        """Counters since start (one camera's, or summed over every camera when ``camera`` is None): received,
        processed, dropped_stale (replaced in our slot), dropped_queue (replaced in the DDS queue, from sequence
        gaps), dropped_too_old, dropped_bad, dropped_paused, errors."""
        snapshots = [c.stats.snapshot() for c in self.cameras] if camera is None else [
            self.camera(camera).stats.snapshot()]
        return {key: sum(s[key] for s in snapshots) for key in snapshots[0]}

    def timings(self, camera: str = "") -> list[tuple[float, float]]:
        """Recent frames' (ms waiting in the slot, ms of node work besides inference): the node's own overhead."""
        stats = self.camera(camera).stats
        with stats.lock:
            return list(stats.timings)

    @property
    def model(self) -> AnomalyModel:
        return self._model

    def _publish_diagnostics(self) -> None:
        info = self._model.describe()
        statuses = [camera.status(info) for camera in self.cameras]
        if self.multi_camera:
            processed = sum(c.stats.snapshot()["processed"] for c in self.cameras)
            values = {"cameras": ",".join(c.spec.name for c in self.cameras), "processed": str(processed),
                      "max_batch": str(self._p["max_batch"]), "backend": str(info.get("backend")),
                      "device": str(info.get("device")), "precision": str(info.get("precision")),
                      "model": str(info.get("model"))}
            worst = max(s.level for s in statuses)
            statuses.insert(0, DiagnosticStatus(
                level=worst, name=f"{self.get_fully_qualified_name()}: anomaly segmentation",
                message=f"{len(self.cameras)} cameras, one model" + ("" if worst == DiagnosticStatus.OK else
                                                                    "; a camera reports a problem"),
                hardware_id=f"{info.get('backend')}:{info.get('device')}",
                values=[KeyValue(key=k, value=v) for k, v in values.items()]))
        array = DiagnosticArray(status=statuses)
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(array)

    # ---------------------------------------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop the worker, release the model (if we opened it) and destroy the node."""
        if self._worker is not None:
            self._worker.stop()
        for camera in self.cameras:
            camera.close()
        if self._owns_model and getattr(self, "_model", None) is not None:
            self._model.close()
        self.destroy_node()

"""The ROS 2 anomaly node: camera image in, anomaly score / mask (+ colour, overlay, semantics) out.

Why it is built this way:
- It holds an ``AnomalyModel`` from ``dicnet_ros.inference`` and knows nothing about the runtime behind it
  (TensorRT, ONNX Runtime or PyTorch are imported by the backend, never here).
- Inference runs on a worker thread fed by a one-frame slot: a slow model never builds a backlog, the newest
  frame always wins, and stale / too old / malformed frames are dropped and counted, never queued.
- Colour and overlay images are computed only while someone subscribes; the score and mask always are.
- Camera QoS mismatches (the most common "no output" complaint) are reported loudly with the fix; with
  ``input_qos: auto`` the subscription follows the camera's reliability, and a publisher that is matched but
  delivers nothing (large frames lost between processes) is reported once with its cause.
- Frames are sized before decoding (``max_input_pixels``): a tiny JPEG claiming 12000 x 12000 pixels is
  refused and counted, never decoded.
- glibc's allocator is told to keep freed megabyte buffers (``tune_allocator``): otherwise every frame's
  message buffers (taken by the executor thread, built by the worker) are fresh mmap pages, and the page
  faults cost more than the DDS transport itself (~2.5 ms per 2.7 MB 720p image, in and out).
- Every parameter lives in one table, ``PARAMETERS``: the node declares from it, validates against it, and
  the launch / config tests check ``launch/anomaly.launch.py`` and ``config/anomaly.yaml`` against it.

Run: ``anomaly_node --ros-args -p model_path:=model.onnx -r ~/image:=/camera/image_raw`` or ``dicnet node``.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from typing import Any

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, qos_policy_name_from_kind
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32
from std_srvs.srv import SetBool

from dicnet_ros.image_conversion import (
    ImageConversionError,
    ImageTooLargeError,
    check_pixel_count,
    compressed_msg_to_rgb,
    make_image_decoder,
)
from dicnet_ros.inference.base import AnomalyModel
from dicnet_ros.node.allocator import tune_allocator
from dicnet_ros.node.diagnostics import NodeStats, diagnostic_status
from dicnet_ros.node.errors import NodeStartupError, ParameterError
from dicnet_ros.node.input_watch import InputWatch
from dicnet_ros.node.model_loading import open_model
from dicnet_ros.node.parameters import (
    NODE_NAME,
    PARAMETER_NAMES,
    PARAMETERS,
    parameter_descriptor,
    validate_parameter,
)
from dicnet_ros.node.publishing import PublishingMixin
from dicnet_ros.node.qos import QOS_FIX, auto_preset, make_qos
from dicnet_ros.text import bounded
from dicnet_ros.visualization import class_palette

PACKAGE = "dicnet_ros"


# keys of the problems `_check_publisher_qos` finds (per camera publisher); it replaces only these
PUBLISHER_CHECK_KEYS = ("type:", "rel:", "dur:")


class AnomalyNode(PublishingMixin, Node):
    """Anomaly segmentation of one camera stream (see module docstring for topics and behaviour)."""

    def __init__(self, model: AnomalyModel | None = None, node_name: str = NODE_NAME, **node_kwargs: Any):
        """``model``: an already opened model (tests, benchmarks); None = open it from the parameters."""
        super().__init__(node_name, **node_kwargs)
        self._allocator = tune_allocator()
        self._owns_model = model is None
        self._stop = threading.Event()
        self._slot_cv = threading.Condition()
        self._slot: tuple[Any, float] | None = None
        self._stats = NodeStats()
        self._qos_problems: dict[str, str] = {}
        self._last_seq: dict[bytes, int] = {}  # publisher gid -> last publication sequence number
        self._image_sub: Any = None
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
            f"decoder {self._decoder_name}), outputs at {self._p['output_resolution']} resolution, DDS: "
            f"{self._watch.profile_description()}, allocator: {self._allocator}")

    # ---------------------------------------------------------------------------------------------- parameters
    def _declare_parameters(self) -> dict[str, Any]:
        overrides = getattr(self, "_parameter_overrides", None)  # rclpy keeps CLI / YAML overrides here
        values: dict[str, Any] = {}
        for spec in PARAMETERS:
            if isinstance(overrides, dict) and spec.name in overrides:
                value = validate_parameter(spec.name, overrides[spec.name].value)
                overrides[spec.name] = Parameter(spec.name, value=value)  # int given for a double: accept it
            try:
                self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))
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

        self._compressed = self._p["image_transport"] == "compressed"
        self._expected_type = "sensor_msgs/msg/CompressedImage" if self._compressed else "sensor_msgs/msg/Image"
        if self._compressed:
            self._decode = functools.partial(compressed_msg_to_rgb, max_pixels=self._p["max_input_pixels"])
            self._decoder_name = "cv2.imdecode"
        else:
            self._decode, self._decoder_name = make_image_decoder()
        self._watch = InputWatch(self._p["no_frame_warn_s"])
        self._follow_soon: Any = None  # one-shot timer: follow a newly matched camera's QoS
        self._subscribe(make_qos(self._p["input_qos"], self._p["input_depth"]))
        self._enabled = bool(self._p["enabled"])
        self.create_service(SetBool, "~/enable", self._on_enable)
        self.create_timer(self._p["diagnostics_period_s"], self._publish_diagnostics)
        # DDS housekeeping runs on the steady clock: under use_sim_time the node clock stands still until a bag
        # publishes /clock, and a replayed camera's QoS must be followed before its first frame, not after it
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._first_check = self.create_timer(1.0, self._first_qos_check, clock=self._steady)
        if self._p["qos_check_period_s"] > 0:
            self.create_timer(self._p["qos_check_period_s"], self._check_publisher_qos, clock=self._steady)
        self.create_timer(0.5, self._watch_input, clock=self._steady)

    def _subscribe(self, qos: Any) -> None:
        """(Re)create the camera subscription with ``qos``; DDS loss counts of the old one are kept."""
        if self._image_sub is not None:
            self._watch.subscription_replaced()
            self.destroy_subscription(self._image_sub)
        self._in_qos = qos
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_input_incompatible_qos,
                                            incompatible_type=self._on_input_incompatible_type,
                                            message_lost=self._on_message_lost, matched=self._on_input_matched)
        self._image_sub = self.create_subscription(
            CompressedImage if self._compressed else Image, "~/image/compressed" if self._compressed else "~/image",
            self._on_image, qos, event_callbacks=events)

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
        now = time.monotonic()
        self._watch.frame_arrived(now)
        with stats.lock:
            stats.received += 1
            # a gap is a frame DDS lost in transport (already counted by message_lost) or one replaced in the queue
            stats.dropped_queue += self._watch.queue_share_of_gap(gap)
            stats.last_received = now
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

    def _on_message_lost(self, event: Any) -> None:
        """DDS counted best-effort frames that were sent after the match and never arrived (lost fragments)."""
        self._watch.lost_total(int(event.total_count))
        with self._stats.lock:
            self._stats.dropped_undelivered = self._watch.lost

    def _on_input_matched(self, event: Any) -> None:
        self._watch.matched(int(event.current_count), time.monotonic())
        if self._p["input_qos"] == "auto" and int(event.current_count_change) > 0 and self._follow_soon is None:
            # soon, not at the next 0.5 s tick (a reliable camera's first frames count), and not from inside this
            # subscription's own event callback, since following may replace the subscription
            self._follow_soon = self.create_timer(0.02, self._follow_once, clock=self._steady)

    def _follow_once(self) -> None:
        if self._follow_soon is not None:
            self.destroy_timer(self._follow_soon)
            self._follow_soon = None
        self._follow_publishers()

    def _watch_input(self) -> None:
        """Twice a second: follow the camera's reliability (input_qos auto) and report a silent publisher."""
        if self._p["input_qos"] == "auto":
            self._follow_publishers()
        warning = self._watch.silent_publisher_warning(time.monotonic(), self._image_sub.topic_name,
                                                       self._in_qos.reliability == ReliabilityPolicy.RELIABLE,
                                                       self._p["input_qos"])
        key = "silent:input"
        if warning is None:
            self._qos_problems.pop(key, None)
            return
        first = key not in self._qos_problems
        self._qos_problems[key] = warning  # before the count: whoever sees the count finds the report
        if first:
            with self._stats.lock:
                self._stats.no_frame_warnings += 1
            self.get_logger().warning(warning)

    def _follow_publishers(self) -> None:
        """input_qos auto: reliable when every camera publisher is reliable, else best effort (matches any)."""
        topic = self._image_sub.topic_name
        try:
            infos = [i for i in self.get_publishers_info_by_topic(topic) if i.topic_type == self._expected_type]
        except Exception:  # graph queries can fail during shutdown
            return
        if not infos:
            return
        want = auto_preset([i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos])
        qos = make_qos(want, self._p["input_depth"])
        if qos.reliability == self._in_qos.reliability:
            return
        self.get_logger().info(f"input_qos auto: {len(infos)} publisher(s) on {topic}, "
                               f"{'all reliable' if want == 'reliable' else 'best effort among them'}: "
                               f"subscribing {want.replace('_', ' ')} (depth {self._p['input_depth']})")
        self._subscribe(qos)

    def _on_input_incompatible_qos(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        if self._p["input_qos"] == "auto" and policy == "RELIABILITY":
            return  # a best-effort camera appeared while auto subscribes reliable: _follow_publishers switches
        fix = QOS_FIX.get(policy, "make the camera's QoS and input_qos agree")
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
            if (qos.reliability == ReliabilityPolicy.BEST_EFFORT and ours.reliability == ReliabilityPolicy.RELIABLE
                    and self._p["input_qos"] != "auto"):
                problems[f"rel:{who}"] = (f"{who} publishes {topic} BEST_EFFORT but input_qos="
                                          f"{self._p['input_qos']} is RELIABLE: no images will arrive; set "
                                          "input_qos:=auto")
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
        # replace only this check's own findings: QoS events and the silent-camera report stay until their owners
        # clear them (wiping the latter re-counted and re-logged the same silence at every check)
        others = {k: v for k, v in self._qos_problems.items() if not k.startswith(PUBLISHER_CHECK_KEYS)}
        self._qos_problems = {**others, **problems}

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
            if not self._compressed:
                check_pixel_count(int(msg.width), int(msg.height), self._p["max_input_pixels"])
            image = self._decode(msg)
        except ImageConversionError as exc:  # malformed, or over max_input_pixels: counted apart, never decoded
            kind, verb = ("too_large", "refusing an image") if isinstance(exc, ImageTooLargeError) else (
                "bad", "skipping bad image")
            count = stats.count_dropped(kind)
            self.get_logger().error(f"{verb} on {self._image_sub.topic_name} (frame_id "
                                    f"'{bounded(header.frame_id)}', {count} so far): {exc}", throttle_duration_sec=5.0)
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
        transport = {"input_reliability": "reliable" if self._in_qos.reliability == ReliabilityPolicy.RELIABLE
                     else "best_effort", "dds_profile": self._watch.profile_description()}
        status = diagnostic_status(self._stats, self._model, self._p, self._enabled, self._qos_problems,
                                   self._image_sub.topic_name, self.get_fully_qualified_name(), transport)
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

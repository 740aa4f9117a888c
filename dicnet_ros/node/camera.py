"""One camera of the anomaly node: its subscription, QoS, frame slot, decoding, outputs, counters and state.

Why a pipeline per camera inside one node: a vehicle carries 4 to 8 cameras, and one model (one runtime
session, one set of inference threads, one GPU engine) serves them all. Everything that belongs to one camera
lives here, once: the camera topic and its QoS following, DDS loss and queue accounting, the one-frame slot
(the newest frame wins), the checks a hostile or broken publisher meets before decoding, the out-of-domain
state, the lazily computed outputs, and the camera's /diagnostics status. The single-camera node is a node with
one pipeline whose topics are the node's own (``~/image`` -> ``~/anomaly_mask``); a multi-camera node gives
camera NAME the topics a single-camera node in namespace NAME has (``/NAME/anomaly_node/anomaly_mask``).

The pipeline knows nothing about the runtime behind the model; ``InferenceWorker`` takes its frames, batches
them with other cameras' and hands each result back to ``finish``.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks, qos_policy_name_from_kind
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32
from std_srvs.srv import SetBool

from dicnet_ros.image_conversion import (
    ImageConversionError,
    ImageTooLargeError,
    array_to_image_msg,
    check_pixel_count,
    compressed_msg_to_rgb,
    make_image_decoder,
)
from dicnet_ros.inference.base import InferenceResult
from dicnet_ros.node.diagnostics import NodeStats, diagnostic_status
from dicnet_ros.node.domain import OUT_OF_DOMAIN, DomainMonitor
from dicnet_ros.node.input_watch import InputWatch
from dicnet_ros.node.qos import QOS_FIX, auto_preset, make_qos
from dicnet_ros.text import bounded
from dicnet_ros.visualization import colorize_labels, colorize_score, overlay

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
# keys of the problems `check_publisher_qos` finds (per camera publisher); it replaces only these
PUBLISHER_CHECK_KEYS = ("type:", "rel:", "mixed:")
DIAGNOSTIC_LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN, "ERROR": DiagnosticStatus.ERROR}


@dataclass(frozen=True)
class CameraSpec:
    """Where one camera's frames come from and where its outputs go."""

    name: str  # "" for the single-camera node
    image_topic: str  # "~/image" (remappable) or a full topic
    transport: str  # raw | compressed
    input_qos: str  # a preset of qos.INPUT_QOS_PRESETS
    output_prefix: str  # "~" or "/NAME/anomaly_node"
    status_name: str  # the /diagnostics status name
    threshold: float = math.nan  # NaN = the node's threshold

    @property
    def subscribed_topic(self) -> str:
        if self.transport != "compressed" or self.image_topic.endswith("/compressed"):
            return self.image_topic
        return f"{self.image_topic}/compressed"

    @property
    def label(self) -> str:
        return self.name or "camera"


@dataclass(frozen=True)
class ModelFacts:
    """What every camera's outputs need to know about the model, worked out once by the node."""

    model: Any
    score_range: tuple[float, float]  # the colour map's range (metadata display_range)
    palette: np.ndarray  # colours of the class ids
    network_size: tuple[int, int]  # (width, height) the network runs at
    fixed_input: tuple[int, int] | None  # the only input size of a fixed-size export, else None


@dataclass
class Frame:
    """A decoded camera frame on its way through the model."""

    image: np.ndarray  # what the outputs are sized to (input, or network size with output_resolution network)
    model_input: np.ndarray  # what the model runs on (the image, or resized to a fixed-size export)
    header: Any
    stamp_ns: int
    received_at: float  # time.monotonic() when the callback took it
    started: float  # time.monotonic() when the worker took it


class CameraPipeline:
    """Everything of one camera inside the anomaly node (see the module docstring)."""

    def __init__(self, node: Any, spec: CameraSpec, params: dict[str, Any], notify: Callable[[], None],
                 facts: ModelFacts) -> None:
        """``node``: the rclpy node hosting this camera; ``params``: the node's live parameter values (shared,
        changed at run time); ``notify``: wakes the inference worker when a frame is waiting; ``facts``: the
        model's."""
        self.node = node
        self.model = facts.model
        self.score_range = facts.score_range
        self.palette = facts.palette
        self.network_size = facts.network_size
        self.fixed_input = facts.fixed_input
        self.spec = spec
        self._p = params
        self._notify = notify
        self._logger = node.get_logger() if not spec.name else node.get_logger().get_child(spec.name)
        self.stats = NodeStats()
        self.qos_problems: dict[str, str] = {}
        self.enabled = bool(params["enabled"])
        self._slot_lock = threading.Lock()
        self._slot: tuple[Any, float] | None = None
        self.waiting_since: float | None = None  # when the slot last went from empty to full (fair scheduling)
        self._subs: dict[str, Any] = {}  # reliability ("reliable" | "best_effort") -> subscription
        self._input_topic = ""  # the resolved camera topic: set once, read by every thread
        self._follow_soon: Any = None
        self._compressed = spec.transport == "compressed"
        self.expected_type = COMPRESSED_TYPE if self._compressed else IMAGE_TYPE
        if self._compressed:
            self._decode: Callable[[Any], np.ndarray] = functools.partial(
                compressed_msg_to_rgb, max_pixels=params["max_input_pixels"])
            self.decoder_name = "decode_compressed"
        else:
            self._decode, self.decoder_name = make_image_decoder()
        self.threshold = math.nan  # the threshold in use; set by the node (_apply_thresholds)
        self.domain = DomainMonitor(facts.model.domain_threshold, params["domain_alarm_frames"])
        self.watch = InputWatch(params["no_frame_warn_s"])
        self._setup_outputs()
        steady = node.steady_clock
        self._subscribe(self._wanted_reliabilities_at_start())
        self._first_check = node.create_timer(1.0, self._first_qos_check, clock=steady)
        self._timers = [self._first_check]
        if params["qos_check_period_s"] > 0:
            self._timers.append(node.create_timer(params["qos_check_period_s"], self.check_publisher_qos,
                                                  clock=steady))
        self._timers.append(node.create_timer(0.5, self._watch_input, clock=steady))

    # ------------------------------------------------------------------------------------------------ set-up
    def _topic(self, name: str) -> str:
        return f"{self.spec.output_prefix}/{name}"

    def _setup_outputs(self) -> None:
        p, node = self._p, self.node
        out_qos = make_qos(p["output_qos"], p["output_depth"])
        events = PublisherEventCallbacks(incompatible_qos=self._on_output_incompatible_qos)

        def pub(msg_type: Any, name: str, wanted: bool = True) -> Any:
            return node.create_publisher(msg_type, self._topic(name), out_qos, event_callbacks=events) if wanted \
                else None

        self.pub_score = pub(Image, "anomaly_score")
        self.pub_mask = pub(Image, "anomaly_mask")
        self.pub_score_color = pub(Image, "anomaly_score_color", p["publish_score_color"])
        self.pub_overlay = pub(Image, "overlay", p["publish_overlay"])
        self.pub_semantic = pub(Image, "semantic", p["publish_semantic"])
        self.pub_semantic_color = pub(Image, "semantic_color", p["publish_semantic"])
        self.pub_msp = pub(Image, "msp_score", p["publish_msp"])
        self.pub_latency = node.create_publisher(Float32, self._topic("latency_ms"), out_qos)
        self.pub_domain = node.create_publisher(DiagnosticArray, self._topic("domain"), out_qos)
        self.enable_service = node.create_service(SetBool, self._topic("enable"), self._on_enable)

    @property
    def topic(self) -> str:
        """The camera topic as subscribed (resolved: remaps and namespace applied)."""
        return self._input_topic

    # ------------------------------------------------------------------------------------------------ input QoS
    def _wanted_reliabilities_at_start(self) -> tuple[str, ...]:
        preset = self.spec.input_qos
        if preset == "auto":
            return ("best_effort",)  # matches every camera until the publishers are known
        return ("reliable",) if preset in ("default", "reliable") else ("best_effort",)

    def _subscribe(self, reliabilities: tuple[str, ...]) -> None:
        """(Re)create the camera subscription(s): one per reliability in ``reliabilities``. A camera topic with
        both reliable and best-effort publishers gets both (each frame is taken once, deduplicated by
        publisher and sequence number), so one idle best-effort publisher never downgrades a reliable camera."""
        if tuple(sorted(self._subs)) == tuple(sorted(reliabilities)):
            return
        if self._subs:
            self.watch.subscription_replaced()
        for reliability in list(self._subs):
            if reliability not in reliabilities:
                self.node.destroy_subscription(self._subs.pop(reliability))
        for reliability in reliabilities:
            if reliability in self._subs:
                continue
            events = SubscriptionEventCallbacks(
                incompatible_qos=self._on_input_incompatible_qos, incompatible_type=self._on_input_incompatible_type,
                message_lost=functools.partial(self._on_message_lost, reliability),
                matched=self._on_input_matched)
            topic = self.spec.subscribed_topic
            self.watch.subscribed(time.monotonic(), [bytes(i.endpoint_gid) for i in self._publishers_on(topic)])
            self._subs[reliability] = self.node.create_subscription(
                CompressedImage if self._compressed else Image, topic, self._on_image,
                make_qos(reliability, self._p["input_depth"]), event_callbacks=events)
            self._input_topic = self._input_topic or self._subs[reliability].topic_name

    @property
    def reliable(self) -> bool:
        """The subscription serves reliable publishers reliably (alone, or beside a best-effort one)."""
        return "reliable" in self._subs

    def reliability_description(self) -> str:
        return " + ".join(sorted(self._subs)) if self._subs else "none"

    def _publishers(self) -> list[Any]:
        return self._publishers_on(self.topic)

    def _publishers_on(self, topic: str) -> list[Any]:
        try:
            return [i for i in self.node.get_publishers_info_by_topic(topic) if i.topic_type == self.expected_type]
        except Exception:  # graph queries can fail during shutdown (and before the first subscription exists)
            return []

    def follow_publishers(self) -> None:
        """input_qos auto: reliable for reliable publishers, best effort for best-effort ones (both when mixed)."""
        infos = self._publishers()
        if not infos:
            return
        reliable = [i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos]
        wanted = tuple(sorted({"reliable" if r else "best_effort" for r in reliable}))
        if auto_preset(reliable) == "reliable":
            wanted = ("reliable",)
        if tuple(sorted(self._subs)) == wanted:
            return
        mixed = len(wanted) == 2
        self._logger.info(
            f"input_qos auto: {len(infos)} publisher(s) on {self.topic}, "
            + ("mixed reliability: subscribing reliable AND best effort (each frame taken once)" if mixed else
               f"{'all reliable' if wanted == ('reliable',) else 'all best effort'}: subscribing "
               f"{wanted[0].replace('_', ' ')}") + f" (depth {self._p['input_depth']})")
        self._subscribe(wanted)

    def _follow_once(self) -> None:
        if self._follow_soon is not None:
            self.node.destroy_timer(self._follow_soon)
            self._follow_soon = None
        self.follow_publishers()

    # ------------------------------------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Any, info: Any) -> None:
        """Executor thread: put the frame in the slot (replacing an unprocessed one) and return at once.

        Frames the DDS queue replaced before we took them show up as gaps in the publisher's sequence numbers
        (``dropped_queue``); a frame taken twice (by both subscriptions of a mixed camera) is ignored.
        """
        gap = self._sequence_gap(info)
        if gap is None:
            return  # already taken through the other subscription
        now = time.monotonic()
        self.watch.frame_arrived(now)
        stats = self.stats
        with stats.lock:
            stats.received += 1
            stats.dropped_queue += gap[0]
            stats.before_first_frame += gap[1]
            stats.last_received = now
            if not self.enabled:
                stats.dropped_paused += 1
                return
        with self._slot_lock:
            if self._slot is not None:
                with stats.lock:
                    stats.dropped_stale += 1
            else:
                self.waiting_since = now
            self._slot = (msg, now)
        self._notify()

    def _sequence_gap(self, info: Any) -> tuple[int, int] | None:
        """(queue drops, frames before the first one taken) since the last frame taken from this frame's publisher;
        None: this frame was taken already."""
        if not isinstance(info, dict) or info.get("publication_sequence_number") is None:
            return 0, 0
        gid = info.get("publisher_gid", {})
        key = bytes(gid.get("data", b"")) if isinstance(gid, dict) else b""
        return self.watch.sequence(key, int(info["publication_sequence_number"]), time.monotonic())

    def _on_enable(self, request: Any, response: Any) -> Any:
        self.set_enabled(bool(request.data))
        response.success = True
        response.message = "processing enabled" if self.enabled else "processing paused"
        self._logger.info(response.message)
        return response

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        if not enabled:
            with self._slot_lock:
                self._slot = None
                self.waiting_since = None

    def _on_message_lost(self, reliability: str, event: Any) -> None:
        """DDS counted best-effort frames that were sent after the match and never arrived (lost fragments)."""
        self.watch.lost_total(int(event.total_count), reliability)
        with self.stats.lock:
            self.stats.dropped_undelivered = self.watch.lost

    def _on_input_matched(self, event: Any) -> None:
        self.watch.matched(int(event.current_count), time.monotonic())
        if int(event.current_count_change) > 0:
            self.watch.publishers_present([bytes(i.endpoint_gid) for i in self._publishers()], time.monotonic())
        if self.spec.input_qos == "auto" and int(event.current_count_change) > 0 and self._follow_soon is None:
            # soon, not at the next 0.5 s tick (a reliable camera's first frames count), and not from inside this
            # subscription's own event callback, since following may replace the subscription
            self._follow_soon = self.node.create_timer(0.02, self._follow_once, clock=self.node.steady_clock)

    def _watch_input(self) -> None:
        """Twice a second: follow the camera's reliability (input_qos auto) and report a silent publisher."""
        if self.spec.input_qos == "auto":
            self.follow_publishers()
        warning = self.watch.silent_publisher_warning(time.monotonic(), self.topic, self.reliable,
                                                      self.spec.input_qos)
        key = "silent:input"
        if warning is None:
            self.qos_problems.pop(key, None)
            return
        first = key not in self.qos_problems
        self.qos_problems[key] = warning  # before the count: whoever sees the count finds the report
        if first:
            with self.stats.lock:
                self.stats.no_frame_warnings += 1
            self._logger.warning(warning)

    def _on_input_incompatible_qos(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        if self.spec.input_qos == "auto" and policy == "RELIABILITY":
            return  # a best-effort camera appeared while auto subscribes reliable: follow_publishers adds one
        fix = QOS_FIX.get(policy, "make the camera's QoS and input_qos agree")
        msg = (f"incompatible QoS with a publisher on {self.topic}: policy {policy} (input_qos={self.spec.input_qos}); "
               f"no images will arrive. Fix: {fix}")
        self.qos_problems["event:input"] = msg
        self._logger.warning(msg, throttle_duration_sec=5.0)

    def _on_input_incompatible_type(self, event: Any) -> None:
        msg = (f"a publisher on {self.topic} has another message type than {self.expected_type}; "
               "for sensor_msgs/CompressedImage set image_transport:=compressed")
        self.qos_problems["event:type"] = msg
        self._logger.warning(msg, throttle_duration_sec=5.0)

    def _on_output_incompatible_qos(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        self._logger.warning(
            f"a subscriber of this node's outputs requests incompatible QoS (policy {policy}, output_qos="
            f"{self._p['output_qos']}); set output_qos:=reliable or make the subscriber best effort",
            throttle_duration_sec=5.0)

    def _first_qos_check(self) -> None:
        """One second after start (discovery done): also say so when nobody publishes the camera topic."""
        self._first_check.cancel()
        self.check_publisher_qos(report_missing=True)

    def check_publisher_qos(self, report_missing: bool = False) -> None:
        """Compare every camera publisher's QoS / type with the subscription and say what to change."""
        topic = self.topic
        problems: dict[str, str] = {}
        try:
            infos = self.node.get_publishers_info_by_topic(topic)
        except Exception:  # graph queries can fail during shutdown
            return
        best_effort_sub = "best_effort" in self._subs
        for info in infos:
            who = f"{info.node_namespace.rstrip('/')}/{info.node_name}"
            qos = info.qos_profile
            if info.topic_type != self.expected_type:
                problems[f"type:{who}"] = (f"{who} publishes {info.topic_type} on {topic}, this node expects "
                                           f"{self.expected_type} (image_transport={self.spec.transport})")
            if (qos.reliability == ReliabilityPolicy.BEST_EFFORT and not best_effort_sub
                    and self.spec.input_qos != "auto"):
                problems[f"rel:{who}"] = (f"{who} publishes {topic} BEST_EFFORT but input_qos={self.spec.input_qos} "
                                          "is RELIABLE: no images will arrive from it; set input_qos:=auto")
        if len(self._subs) == 2:
            slow = [f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in infos if i.topic_type ==
                    self.expected_type and i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
            problems["mixed:"] = (f"{topic} has reliable and best-effort publishers; both are served, the best-effort "
                                  f"one(s) ({', '.join(slow)}) may lose large frames between processes")
        if not infos and report_missing:
            other = f"{topic}/compressed" if self.expected_type == IMAGE_TYPE else topic.rsplit("/", 1)[0]
            try:
                alt = self.node.get_publishers_info_by_topic(other)
            except Exception:
                alt = []
            hint = (f"; {other} has publishers: set image_transport:="
                    f"{'compressed' if other.endswith('compressed') else 'raw'}") if alt else (
                "; check the remapping (image_topic:=...) and the namespace")
            self._logger.warning(f"no publisher on {topic} yet{hint}")
        new = {k: v for k, v in problems.items() if self.qos_problems.get(k) != v}
        for text in new.values():
            self._logger.warning(text)
        # replace only this check's own findings: QoS events and the silent-camera report stay until their owners
        # clear them (wiping the latter re-counted and re-logged the same silence at every check)
        others = {k: v for k, v in self.qos_problems.items() if not k.startswith(PUBLISHER_CHECK_KEYS)}
        self.qos_problems = {**others, **problems}

    # ------------------------------------------------------------------------------------------------ frames
    def take(self) -> tuple[Any, float] | None:
        """The waiting frame (message, arrival time), emptying the slot; None when there is none."""
        with self._slot_lock:
            item, self._slot, self.waiting_since = self._slot, None, None
        return item

    def prepare(self, msg: Any, received_at: float) -> Frame | None:
        """Worker thread: check and decode one frame; None when it is dropped (counted and logged here)."""
        started = time.monotonic()
        header = msg.header
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        max_age_ms = self._p["max_age_ms"]
        if max_age_ms > 0 and stamp_ns > 0:
            age_ms = (self.node.get_clock().now().nanoseconds - stamp_ns) / 1e6
            if age_ms > max_age_ms:
                with self.stats.lock:
                    self.stats.dropped_too_old += 1
                self._logger.warning(f"dropping frames older than max_age_ms={max_age_ms:g} (this one {age_ms:.0f} "
                                     "ms)", throttle_duration_sec=5.0)
                return None
        try:
            if not self._compressed:
                check_pixel_count(int(msg.width), int(msg.height), self._p["max_input_pixels"])
            image = self._decode(msg)
        except ImageConversionError as exc:  # malformed, or over max_input_pixels: counted apart, never published
            kind, verb = ("too_large", "refusing an image") if isinstance(exc, ImageTooLargeError) else (
                "bad", "skipping bad image")
            count = self.stats.count_dropped(kind)
            self._logger.error(f"{verb} on {self.topic} (frame_id '{bounded(header.frame_id)}', {count} so far): "
                               f"{exc}", throttle_duration_sec=5.0)
            return None
        if self._p["output_resolution"] == "network" and (image.shape[1], image.shape[0]) != self.network_size:
            image = cv2.resize(image, self.network_size, interpolation=cv2.INTER_LINEAR)
        model_input = image
        if self.fixed_input is not None and (image.shape[1], image.shape[0]) != self.fixed_input:
            model_input = cv2.resize(image, self.fixed_input, interpolation=cv2.INTER_LINEAR)
        return Frame(np.ascontiguousarray(image), np.ascontiguousarray(model_input), header, stamp_ns, received_at,
                     started)

    def finish(self, frame: Frame, result: InferenceResult) -> None:
        """Worker thread: the model's answer for ``frame`` -> domain state, outputs, latency, counters."""
        size = frame.image.shape[:2]
        change = self.domain.update(result.domain_score)
        if change is not None and change.state == OUT_OF_DOMAIN:  # (rclpy wants one severity per call site)
            self._logger.warning(f"{self.spec.label}: {change.describe()}")
        elif change is not None:
            self._logger.info(f"{self.spec.label}: {change.describe()}")
        self._publish_domain(frame.header, result.domain_score)
        policy = self._p["out_of_domain_mask"]
        out_of_domain = self.domain.state == OUT_OF_DOMAIN
        if not (out_of_domain and policy == "suppress"):
            score, mask, labels = self._at_size(result, size)
            if out_of_domain and policy == "empty":
                mask = np.zeros(size, bool)
            self._publish(score, mask, labels, frame.image, frame.header)
            self._publish_msp(result, size, frame.header)
        now_ns = self.node.get_clock().now().nanoseconds
        latency_ms = (now_ns - frame.stamp_ns) / 1e6 if frame.stamp_ns > 0 else (
            time.monotonic() - frame.received_at) * 1e3
        self.pub_latency.publish(Float32(data=float(latency_ms)))
        inference_ms = result.timings_ms.get("inference", math.nan)
        done = time.monotonic()
        stats = self.stats
        with stats.lock:
            stats.processed += 1
            stats.batched += int(result.timings_ms.get("batch", 1.0) > 1)
            stats.window_processed += 1
            stats.window_latency.append(latency_ms)
            stats.window_inference.append(inference_ms)
            stats.window_batch.append(result.timings_ms.get("batch", 1.0))
            # (waiting in the slot, node work besides inference), both in ms
            stats.timings.append(((frame.started - frame.received_at) * 1e3, (done - frame.started) * 1e3
                                  - inference_ms))

    def failed(self, exc: BaseException) -> None:
        """The model (or publishing) failed on this camera's frame: counted, logged throttled, never fatal."""
        with self.stats.lock:
            self.stats.errors += 1
            self.stats.window_errors += 1
        self._logger.error(f"inference failed: {type(exc).__name__}: {bounded(str(exc), 300)}",
                           throttle_duration_sec=5.0)

    # ------------------------------------------------------------------------------------------------ outputs
    def mask_threshold(self) -> float:
        return self.threshold if math.isfinite(self.threshold) else float(self.model.threshold)

    def _at_size(self, result: InferenceResult, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray,
                                                                                np.ndarray | None]:
        """(score, mask, labels) at ``size`` (H, W) with this camera's threshold: resized only when the model
        answered at another size (fixed-size or network-resolution export)."""
        score, mask, labels = result.anomaly_score, result.anomaly_mask, result.semantic_labels
        threshold = self.mask_threshold()
        if score.shape[:2] != tuple(size):
            dsize = (int(size[1]), int(size[0]))
            score = cv2.resize(score, dsize, interpolation=cv2.INTER_LINEAR)
            mask = score > threshold
            if labels is not None:
                labels = cv2.resize(np.ascontiguousarray(labels, np.uint8), dsize, interpolation=cv2.INTER_NEAREST)
        elif threshold != self.model.threshold:
            mask = score > threshold
        return score, mask, labels

    def _publish_msp(self, result: InferenceResult, size: tuple[int, int], header: Any) -> None:
        """The baseline map beside the score, when asked for and the model has it."""
        pub = self.pub_msp
        if pub is None or pub.get_subscription_count() == 0:
            return
        msp = result.extras.get("msp")
        if msp is None:
            self._logger.warning("publish_msp is set but the model exports no msp_score output", once=True)
            return
        if msp.shape[:2] != tuple(size):
            msp = cv2.resize(msp, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
        pub.publish(array_to_image_msg(np.ascontiguousarray(msp, np.float32), "32FC1", header))

    def _publish(self, score: np.ndarray, mask_bool: np.ndarray, labels: np.ndarray | None, image: np.ndarray,
                 header: Any) -> None:
        """Score and mask always; colour / overlay / semantic colour only for subscribers (they cost time)."""
        # even the score and mask are only copied into messages for subscribers: a 1280x720 score is 3.7 MB.
        # The mask (0.9 MB, what most consumers act on) goes first, so it does not wait for the score's transport.
        if self.pub_mask.get_subscription_count() > 0:
            mask = np.multiply(mask_bool.view(np.uint8), np.uint8(255))
            self.pub_mask.publish(array_to_image_msg(mask, "mono8", header))
        if self.pub_score.get_subscription_count() > 0:
            self.pub_score.publish(array_to_image_msg(score, "32FC1", header))
        p = self._p
        lo, hi = self.score_range
        pub = self.pub_score_color
        heat = None  # the score colour map, computed once for ~/anomaly_score_color and the score overlay
        if pub is not None and p["publish_score_color"] and pub.get_subscription_count() > 0:
            heat = colorize_score(score, lo, hi, p["colormap"])
            pub.publish(array_to_image_msg(heat, "rgb8", header))
        pub = self.pub_overlay
        if pub is not None and p["publish_overlay"] and pub.get_subscription_count() > 0:
            if p["overlay_source"] == "mask":
                blended = overlay(image, mask_bool, p["overlay_alpha"])
            else:
                blended = overlay(image, score, p["overlay_alpha"], (lo, hi), p["colormap"],
                                  heat=heat if heat is not None and heat.shape == image.shape else None)
            pub.publish(array_to_image_msg(blended, "rgb8", header))
        if self.pub_semantic is not None and labels is not None:
            labels = np.ascontiguousarray(labels, dtype=np.uint8)
            self.pub_semantic.publish(array_to_image_msg(labels, "mono8", header))
            pub = self.pub_semantic_color
            if pub is not None and pub.get_subscription_count() > 0:
                pub.publish(array_to_image_msg(colorize_labels(labels, self.palette), "rgb8", header))
        elif self.pub_semantic is not None:
            self._logger.warning("publish_semantic is set but the model has no segmentation output", once=True)

    def _publish_domain(self, header: Any, score: float | None) -> None:
        """~/domain: this frame's domain score and the camera's state, stamped with the frame's header."""
        if self.pub_domain.get_subscription_count() == 0:
            return
        level, message = self.domain.status()
        values = {**self.domain.values(score),
                  "frame_in_domain": "unknown" if score is None or not self.domain.available else
                  str(not self.domain.out(score)).lower(),
                  "state": self.domain.state, "out_of_domain_mask": self._p["out_of_domain_mask"]}
        status = DiagnosticStatus(level=DIAGNOSTIC_LEVELS[level], name=f"{self.spec.status_name}: domain",
                                  message=message, hardware_id=self.spec.label,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header = header
        self.pub_domain.publish(array)

    # ------------------------------------------------------------------------------------------------ diagnostics
    def status(self, backend_info: dict[str, str]) -> DiagnosticStatus:
        """This camera's /diagnostics status; starts the next measurement window."""
        transport = {"input_reliability": self.reliability_description(),
                     "dds_profile": self.watch.profile_description()}
        level, message = self.domain.status()
        domain = {"domain_state": self.domain.state, **self.domain.values(self.domain.last_score),
                  "domain_message": message,
                  "domain_frames_out": str(self.domain.frames_out), "out_of_domain_mask": self._p["out_of_domain_mask"]}
        status = diagnostic_status(self.stats, backend_info, self.mask_threshold(), self._p, self.enabled,
                                   self.qos_problems, self.topic, self.spec.status_name, {**transport, **domain})
        if DIAGNOSTIC_LEVELS[level] > status.level and self.enabled:
            consequence = {"publish": "outputs published, flagged in ~/domain",
                           "empty": "masks published empty", "suppress": "anomaly outputs withheld"}[
                self._p["out_of_domain_mask"]] if self.domain.state == OUT_OF_DOMAIN else "alarm not raised yet"
            status.level, status.message = DIAGNOSTIC_LEVELS[level], f"{message}; {consequence}"
        return status

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()

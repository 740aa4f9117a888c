"""The rclpy side of the bag tools, for evaluating the ROS node itself: ``play_bag`` replays a bag into ROS at
its recorded pace with /clock following the bag time, and ``BagRecorder`` records topics into a rosbag2 in
process. rclpy and the ROS message packages are imported only inside these functions, so importing
:mod:`dicnet_ros.bag` never needs ROS.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer

from dicnet_ros.bag.integrity import seal_bag
from dicnet_ros.bag.messages import (
    BAG_VERSION,
    STORAGES,
    BagError,
    UnsupportedMessageError,
    _one_line,
    bounded,
    typestore,
)
from dicnet_ros.bag.read import iter_raw, open_bag, require_topic
from dicnet_ros.bag.write import Staging, is_own_bag

# ------------------------------------------------------------------------------------- rclpy player/recorder


def ros_message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> the rclpy message class (from the installed ROS Python packages)."""
    parts = str(msgtype).split("/")
    if len(parts) != 3:
        raise UnsupportedMessageError(f"{bounded(msgtype)!r} is not a ROS message type (package/msg/Name)")
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise UnsupportedMessageError(
            f"ROS Python type {bounded(msgtype)} is not installed ({_one_line(exc)})"
        ) from exc


def play_bag(
    bag: str | Path,
    node_topic_map: Mapping[str, str],
    rate: float = 1.0,
    publish_clock: bool = True,
    clock_hz: float = 100.0,
    wait_for_subscribers: float = 5.0,
    node: Any = None,
    qos_depth: int = 10,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Replay ``bag`` into ROS: publish each mapped topic (bag topic -> ROS topic) at its recorded pace.

    Messages go out as their original CDR bytes deserialised into rclpy types, so stamps and data are
    untouched. With ``publish_clock`` /clock (rosgraph_msgs/Clock) follows the bag time, so nodes run with
    ``use_sim_time:=true`` see the drive's time. ``rate`` scales playback speed (2.0 = twice real time;
    ``math.inf`` = as fast as possible). Returns the number of messages published.
    """
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message

    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    own_node = node is None
    if own_node:
        node = rclpy.create_node("dicnet_bag_player")
    published = 0
    try:
        with open_bag(bag) as reader:
            conns: list[Connection] = []
            pubs: dict[int, tuple[Any, Any]] = {}
            by_topic: dict[str, Any] = {}
            for topic, target in node_topic_map.items():
                topic_conns, msgtype = require_topic(reader, topic)
                cls = ros_message_class(msgtype)
                if target not in by_topic:
                    by_topic[target] = node.create_publisher(cls, target, QoSProfile(
                        depth=qos_depth, reliability=ReliabilityPolicy.RELIABLE))
                for c in topic_conns:
                    pubs[c.id] = (by_topic[target], cls)
                    conns.append(c)
            clock_pub = clock_cls = time_cls = None
            if publish_clock:
                from builtin_interfaces.msg import Time
                from rosgraph_msgs.msg import Clock

                clock_cls, time_cls = Clock, Time
                clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
            _wait_for_subscribers(node, list(by_topic.values()), wait_for_subscribers)

            def send_clock(t_ns: int) -> None:
                if clock_pub is not None:
                    stamp = time_cls(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)
                    clock_pub.publish(clock_cls(clock=stamp))

            wall0 = bag0 = None
            for conn, timestamp, raw in iter_raw(reader, conns):
                if should_stop is not None and should_stop():
                    break
                if wall0 is None:
                    wall0, bag0 = time.monotonic(), timestamp
                    send_clock(timestamp)
                elif math.isfinite(rate):
                    due = wall0 + (timestamp - bag0) / 1e9 / rate
                    while (now := time.monotonic()) < due:
                        time.sleep(min(due - now, 1.0 / clock_hz))
                        send_clock(bag0 + int(min(now - wall0, due - wall0) * rate * 1e9))
                send_clock(timestamp)
                pub, cls = pubs[conn.id]
                pub.publish(deserialize_message(bytes(raw), cls))
                published += 1
    finally:
        if own_node:
            node.destroy_node()
        if own_context:
            rclpy.try_shutdown()
    return published


SUBSCRIBER_SETTLE_S = 3.0


def _wait_for_subscribers(node: Any, publishers: Sequence[Any], timeout: float) -> None:
    """Give DDS discovery up to ``timeout`` s so the first frames are not published to nobody; then up to
    ``SUBSCRIBER_SETTLE_S`` more until every subscription is reliable (as the player publishes): a subscriber
    that follows the publisher's QoS (the node's ``input_qos: auto``) first matches best effort and re-subscribes
    reliable, and a frame sent in between is lost to it."""
    from rclpy.qos import ReliabilityPolicy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(p.get_subscription_count() > 0 for p in publishers):
        time.sleep(0.05)
    if not all(p.get_subscription_count() > 0 for p in publishers):
        return  # nobody listens (yet): play anyway, as ros2 bag play does

    def settled(pub: Any) -> bool:
        infos = node.get_subscriptions_info_by_topic(pub.topic_name)
        return bool(infos) and pub.get_subscription_count() >= len(infos) and all(
            i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)

    settle = time.monotonic() + SUBSCRIBER_SETTLE_S
    while time.monotonic() < settle and not all(settled(p) for p in publishers):
        time.sleep(0.05)


class BagRecorder:
    """Records ROS topics (serialized, untouched) into a rosbag2 via rosbags, stamped with the node clock.

    Under ``use_sim_time`` the node clock is the replayed /clock, so the recording lines up with the input bag.
    Subscription callbacks only queue the bytes; one writer thread owns the storage (sqlite connections must
    stay on the thread that made them, and executors call back from any thread). Call ``close()`` (or use as a
    context manager) to finish the bag; the caller spins ``node``.
    """

    def __init__(self, node: Any, out: str | Path, topics: Mapping[str, str], storage: str = "sqlite3",
                 qos_depth: int = 50, overwrite: bool = False) -> None:
        import queue
        import threading

        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
        self.out = Path(out)
        self.node = node
        self.topics = dict(topics)
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)
        self._staging = Staging(self.out, overwrite, is_own_bag)
        try:
            self._staging.create()
        except BaseException:
            self._staging.discard()
            raise
        self._queue: queue.Queue[tuple[str, int, bytes] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._keep = True
        self._thread = threading.Thread(target=self._write_loop, args=(STORAGES[storage],), daemon=True,
                                        name="dicnet_bag_recorder")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._staging.discard()
            raise BagError(f"cannot create {self.out}: {_one_line(self._error)}") from self._error
        qos = QoSProfile(depth=qos_depth, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = [node.create_subscription(ros_message_class(msgtype), topic, self._callback(topic), qos,
                                               raw=True) for topic, msgtype in self.topics.items()]

    def _callback(self, topic: str) -> Callable[[bytes], None]:
        def enqueue(raw: bytes) -> None:
            self._queue.put((topic, self.node.get_clock().now().nanoseconds, bytes(raw)))
            self.counts[topic] += 1

        return enqueue

    def _write_loop(self, plugin: StoragePlugin) -> None:
        try:
            writer = Writer(self._staging.path, version=BAG_VERSION, storage_plugin=plugin)
            writer.open()
            conns = {t: writer.add_connection(t, m, typestore=typestore()) for t, m in self.topics.items()}
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (item := self._queue.get()) is not None:
                topic, stamp, raw = item
                writer.write(conns[topic], stamp, raw)
        except Exception as exc:
            self._error = exc
        finally:
            if self._keep and self._error is None:
                writer.close()
            else:
                writer.abort()

    def close(self, keep: bool = True) -> None:
        """Finish the bag and move it into place (``keep=False`` discards it)."""
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        self._keep = keep
        self._queue.put(None)
        self._thread.join()
        if keep and self._error is None:
            try:
                seal_bag(self._staging.path, "dicnet BagRecorder")
            except BaseException:
                self._staging.discard()
                raise
            self._staging.commit()
            return
        self._staging.discard()
        if self._error is not None:
            raise BagError(f"recording {self.out} failed: {_one_line(self._error)}") from self._error

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(keep=exc_type is None)

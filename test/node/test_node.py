"""The anomaly node end to end over real DDS (rclpy + Fast DDS from PyPI) with the tiny ONNX model.

The nodes run in this process on a MultiThreadedExecutor in a background thread, next to a tester node that
publishes camera images and subscribes to every output; messages still go through the RMW / DDS layer.
Startup failures are checked by running the console entry point as a subprocess (exit code + log line).
A random ROS_DOMAIN_ID isolates the session from parallel runs.
"""

from __future__ import annotations

import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float32, Header  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from dicnet_ros.image_conversion import SUPPORTED_ENCODINGS, image_msg_to_array  # noqa: E402
from dicnet_ros.integrity import restamp  # noqa: E402
from dicnet_ros.node import AnomalyNode, tune_allocator  # noqa: E402
from dicnet_ros.visualization import colorize_score, overlay  # noqa: E402

DOMAIN_ID = random.randint(1, 200)
OUTPUTS = ("anomaly_score", "anomaly_mask", "anomaly_score_color", "overlay", "semantic", "semantic_color")
RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
RNG = np.random.default_rng(1)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, period: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    return predicate()


def header(sec: int, frame_id: str = "camera_optical") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = sec, 123_456_789
    return h


def image_msg(array: np.ndarray, encoding: str, stamp: int, step_pad: int = 0) -> Image:
    """Hand-built Image (little endian, optional row padding) of any encoding."""
    h, w = array.shape[:2]
    rows = array.reshape(h, -1).view(np.uint8)
    if step_pad:
        rows = np.concatenate([rows, np.zeros((h, step_pad), np.uint8)], axis=1)
    msg = Image(header=header(stamp), height=h, width=w, encoding=encoding, is_bigendian=0, step=rows.shape[1])
    msg.data = np.ascontiguousarray(rows).tobytes()
    return msg


def random_image(encoding: str, h: int = 17, w: int = 33) -> np.ndarray:
    channels = {"rgb": 3, "bgr": 3, "rgba": 4, "bgra": 4, "mono": 1}[encoding.rstrip("0123456789")]
    dtype = np.uint16 if encoding.endswith("16") else np.uint8
    shape = (h, w) if channels == 1 else (h, w, channels)
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


class Outputs:
    """Subscriptions to every output of one node, messages kept by topic."""

    def __init__(self, tester: Node, prefix: str):
        self.lock = threading.Lock()
        self.msgs: dict[str, list[Any]] = {t: [] for t in (*OUTPUTS, "latency_ms")}
        self.subs = [tester.create_subscription(Image, f"{prefix}/{t}", self._cb(t), RELIABLE) for t in OUTPUTS]
        self.subs.append(tester.create_subscription(Float32, f"{prefix}/latency_ms", self._cb("latency_ms"), RELIABLE))

    def _cb(self, topic: str) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            with self.lock:
                self.msgs[topic].append(msg)
        return store

    def with_stamp(self, topic: str, sec: int) -> list[Any]:
        with self.lock:
            return [m for m in self.msgs[topic] if m.header.stamp.sec == sec]

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.msgs[topic])


class Harness:
    """rclpy context on a random domain + executor thread + tester node + anomaly nodes."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.tester = Node("node_tester", context=self.context)
        self.executor.add_node(self.tester)
        self.nodes: list[AnomalyNode] = []
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.diagnostics: list[DiagnosticArray] = []
        self.tester.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)

    def start(self, namespace: str, model: Path, **params: Any) -> tuple[AnomalyNode, Outputs]:
        overrides = {"model_path": str(model), "backend": "onnxruntime", "device": "cpu", "num_threads": 1,
                     "publish_semantic": True, **params}
        node = AnomalyNode(context=self.context, namespace=namespace,
                           parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.nodes.append(node)
        self.executor.add_node(node)
        outputs = Outputs(self.tester, f"/{namespace}/anomaly_node")
        # lazy colour outputs need our subscriptions matched before the first frame
        assert wait_until(lambda: all(node.count_subscribers(f"/{namespace}/anomaly_node/{t}") > 0 for t in OUTPUTS))
        return node, outputs

    def publisher(self, msg_type: Any, topic: str, reliable: bool = True) -> Any:
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE if reliable else
                         ReliabilityPolicy.BEST_EFFORT)
        pub = self.tester.create_publisher(msg_type, topic, qos)
        assert wait_until(lambda: pub.get_subscription_count() > 0), f"nobody subscribes {topic}"
        return pub

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        for node in self.nodes:
            node.close()
        self.tester.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=5.0)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    os.environ["ROS_DOMAIN_ID"] = str(DOMAIN_ID)  # for the subprocess tests
    h = Harness()
    yield h
    h.close()


@pytest.fixture(scope="module")
def main_node(harness: Harness, tiny_onnx: Path) -> tuple[AnomalyNode, Outputs, Any]:
    node, outputs = harness.start("cam_main", tiny_onnx)
    pub = harness.publisher(Image, "/cam_main/anomaly_node/image")
    return node, outputs, pub


def send(pub: Any, msg: Any, outputs: Outputs, topic: str = "anomaly_mask", timeout: float = 10.0) -> Any:
    """Publish until the output with this stamp arrives (the input is best effort: re-send like a camera)."""
    sec = msg.header.stamp.sec
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(msg)
        got = wait_until(lambda: outputs.with_stamp(topic, sec), timeout=1.0)
        if got:
            return got[-1]
    raise AssertionError(f"no {topic} for stamp {sec}")


def check_outputs(node: AnomalyNode, outputs: Outputs, sec: int, size: tuple[int, int],
                  frame_id: str = "camera_optical") -> None:
    """Every output for frame ``sec`` is there, with the input header, encoding, size and consistent values."""
    expected = {"anomaly_score": "32FC1", "anomaly_mask": "mono8", "anomaly_score_color": "rgb8", "overlay": "rgb8",
                "semantic": "mono8", "semantic_color": "rgb8"}
    msgs = {t: wait_until(lambda t=t: outputs.with_stamp(t, sec), timeout=5.0) for t in expected}
    for topic, encoding in expected.items():
        assert msgs[topic], f"no {topic} for stamp {sec}"
        msg = msgs[topic][-1]
        assert msg.encoding == encoding, topic
        assert (msg.height, msg.width) == size, topic
        assert msg.header.stamp.sec == sec and msg.header.stamp.nanosec == 123_456_789, topic
        assert msg.header.frame_id == frame_id, topic
    score = image_msg_to_array(msgs["anomaly_score"][-1])
    mask = image_msg_to_array(msgs["anomaly_mask"][-1])
    assert score.dtype == np.float32 and np.isfinite(score).all()
    np.testing.assert_array_equal(mask, (score > node.model.threshold).astype(np.uint8) * 255)
    assert set(np.unique(mask)) <= {0, 255}
    labels = image_msg_to_array(msgs["semantic"][-1])
    assert labels.max() < node.model.metadata.num_classes


def test_every_encoding(main_node: tuple) -> None:
    node, outputs, pub = main_node
    for i, encoding in enumerate(SUPPORTED_ENCODINGS):
        sec = 100 + i
        send(pub, image_msg(random_image(encoding), encoding, sec, step_pad=4 if i % 2 else 0), outputs)
        check_outputs(node, outputs, sec, (17, 33))
    assert wait_until(lambda: outputs.count("latency_ms") >= len(SUPPORTED_ENCODINGS))
    sec = 150
    send(pub, image_msg(random_image("rgb8", 48, 64), "rgb8", sec), outputs)
    check_outputs(node, outputs, sec, (48, 64))


def test_bad_messages_are_skipped_and_counted(main_node: tuple, harness: Harness) -> None:
    node, outputs, pub = main_node
    good = random_image("rgb8")
    bad = [image_msg(good, "yuv422", 200), image_msg(good, "rgb8", 201), image_msg(good, "rgb8", 202),
           image_msg(random_image("mono16"), "mono16", 203)]
    bad[1].step = 33 * 3 - 1  # step too small
    bad[2].data = bad[2].data[:-10]  # data too short
    bad[3].step = 33 * 2 + 1  # 16-bit step not a multiple of 2
    for msg in bad:
        before = node.stats()["dropped_bad"]
        for _ in range(20):  # best effort: re-send until the node has seen it
            pub.publish(msg)
            if wait_until(lambda before=before: node.stats()["dropped_bad"] > before, timeout=0.5):
                break
        assert node.stats()["dropped_bad"] > before, msg.encoding
    assert not outputs.with_stamp("anomaly_mask", 200)
    send(pub, image_msg(good, "rgb8", 210), outputs)  # still alive
    assert node.stats()["errors"] == 0

    def reported() -> bool:
        for array in list(harness.diagnostics):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if status.name.startswith("/cam_main/anomaly_node") and int(values.get("dropped_bad", 0)) >= 4:
                    assert values["backend"] == "onnxruntime" and values["device"] == "cpu"
                    assert {"fps", "latency_p50_ms", "latency_p95_ms", "inference_p50_ms", "dropped_stale",
                            "dropped_queue", "dropped_too_old", "model", "dropped_undelivered", "dropped_too_large",
                            "input_reliability", "dds_profile"} <= set(values)
                    assert values["precision"] == "fp32"  # the tiny model is an FP32 export
                    return True
        return False

    assert wait_until(reported, timeout=5.0), "dropped_bad not reported on /diagnostics"


def test_burst_leaves_no_backlog(main_node: tuple) -> None:
    node, outputs, pub = main_node
    frame = random_image("bgr8", 360, 640)
    first, n = 1000, 100
    msgs = [image_msg(frame, "bgr8", first + i) for i in range(n)]
    before = node.stats()
    for msg in msgs:
        pub.publish(msg)
    last = wait_until(lambda: outputs.with_stamp("anomaly_mask", first + n - 1), timeout=15.0)
    assert last, "the newest frame of the burst was not processed"
    time.sleep(0.5)
    processed = {m.header.stamp.sec for m in outputs.msgs["anomaly_mask"] if first <= m.header.stamp.sec < first + n}
    after = node.stats()
    assert len(processed) < n // 2, f"processed {len(processed)} of {n}: a backlog"
    dropped = sum(after[k] - before[k] for k in ("dropped_stale", "dropped_queue", "before_first_frame"))
    assert dropped >= n - len(processed) - 5, (after, before)  # (a few may be lost on the wire: best effort)
    assert max(processed) == first + n - 1
    # nothing after the newest frame: the last output is the newest input
    assert outputs.msgs["anomaly_mask"][-1].header.stamp.sec == first + n - 1


def test_enable_service(main_node: tuple, harness: Harness) -> None:
    node, outputs, pub = main_node
    client = harness.tester.create_client(SetBool, "/cam_main/anomaly_node/enable")
    assert client.wait_for_service(timeout_sec=5.0)

    def call(value: bool) -> Any:
        future = client.call_async(SetBool.Request(data=value))
        assert wait_until(future.done, timeout=5.0)
        return future.result()

    assert call(False).success
    paused_before = node.stats()["dropped_paused"]
    msg = image_msg(random_image("rgb8"), "rgb8", 300)
    for _ in range(5):
        pub.publish(msg)
        time.sleep(0.1)
    assert wait_until(lambda: node.stats()["dropped_paused"] > paused_before, timeout=3.0)
    time.sleep(0.3)
    assert not outputs.with_stamp("anomaly_mask", 300)
    assert call(True).success
    send(pub, image_msg(random_image("rgb8"), "rgb8", 301), outputs)


def test_threshold_parameter_changes_the_mask(main_node: tuple, harness: Harness) -> None:
    node, outputs, pub = main_node
    client = AsyncParameterClient(harness.tester, "/cam_main/anomaly_node")
    assert client.wait_for_services(timeout_sec=5.0)
    default = node.model.threshold

    def set_params(**values: Any) -> list[Any]:
        future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        assert wait_until(future.done, timeout=5.0)
        return future.result().results

    assert set_params(threshold=-1e9)[0].successful
    mask = image_msg_to_array(send(pub, image_msg(random_image("rgb8"), "rgb8", 400), outputs))
    assert (mask == 255).all()
    assert set_params(threshold=1e9)[0].successful
    mask = image_msg_to_array(send(pub, image_msg(random_image("rgb8"), "rgb8", 401), outputs))
    assert (mask == 0).all()
    rejected = set_params(overlay_alpha=1.7)[0]
    assert not rejected.successful and "overlay_alpha" in rejected.reason
    rejected = set_params(colormap="rainbowish")[0]
    assert not rejected.successful and "colormap" in rejected.reason
    rejected = set_params(backend="torch")[0]  # read-only at run time
    assert not rejected.successful
    assert set_params(threshold=math.nan)[0].successful  # back to the model's calibrated threshold
    assert node.model.threshold == pytest.approx(default)


def test_max_age_drops_old_frames(main_node: tuple, harness: Harness) -> None:
    node, outputs, pub = main_node
    client = AsyncParameterClient(harness.tester, "/cam_main/anomaly_node")
    assert client.wait_for_services(timeout_sec=5.0)
    future = client.set_parameters([Parameter("max_age_ms", value=500.0)])
    assert wait_until(future.done, timeout=5.0) and future.result().results[0].successful
    try:
        before = node.stats()["dropped_too_old"]
        old = image_msg(random_image("rgb8"), "rgb8", 500)  # stamp 500 s after the epoch: very old
        for _ in range(10):
            pub.publish(old)
            if wait_until(lambda: node.stats()["dropped_too_old"] > before, timeout=0.5):
                break
        assert node.stats()["dropped_too_old"] > before
        fresh = image_msg(random_image("rgb8"), "rgb8", 0)
        fresh.header.stamp = node.get_clock().now().to_msg()
        fresh_sec = fresh.header.stamp.sec
        pub.publish(fresh)
        assert wait_until(lambda: outputs.with_stamp("anomaly_mask", fresh_sec), timeout=5.0)
    finally:
        future = client.set_parameters([Parameter("max_age_ms", value=0.0)])
        wait_until(future.done, timeout=5.0)


def test_colour_and_overlay_match_visualization(main_node: tuple, harness: Harness) -> None:
    """The colour map is computed once and reused by the score overlay: both must equal the library's."""
    node, outputs, pub = main_node
    client = AsyncParameterClient(harness.tester, "/cam_main/anomaly_node")
    assert client.wait_for_services(timeout_sec=5.0)
    rgb = random_image("rgb8", 48, 64)
    lo, hi = node.model.metadata.score_range
    for sec, source in ((800, "score"), (801, "mask")):
        future = client.set_parameters([Parameter("overlay_source", value=source),
                                        Parameter("overlay_alpha", value=0.3)])
        assert wait_until(future.done, timeout=5.0) and all(r.successful for r in future.result().results)
        send(pub, image_msg(rgb, "rgb8", sec), outputs)
        msgs = {t: wait_until(lambda t=t, sec=sec: outputs.with_stamp(t, sec), timeout=5.0)[-1]
                for t in ("anomaly_score", "anomaly_mask", "anomaly_score_color", "overlay")}
        score = image_msg_to_array(msgs["anomaly_score"])
        np.testing.assert_array_equal(image_msg_to_array(msgs["anomaly_score_color"]),
                                      colorize_score(score, lo, hi, "turbo"))
        values = score if source == "score" else image_msg_to_array(msgs["anomaly_mask"]) > 0
        np.testing.assert_array_equal(image_msg_to_array(msgs["overlay"]), overlay(rgb, values, 0.3, (lo, hi)))
    future = client.set_parameters([Parameter("overlay_source", value="score"), Parameter("overlay_alpha", value=0.5)])
    assert wait_until(future.done, timeout=5.0)


def test_allocator_tuning() -> None:
    """The node process keeps freed image buffers (see tune_allocator); the opt-out and the env are respected."""
    state = tune_allocator()
    assert state == tune_allocator()  # idempotent
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert state in ("glibc buffers recycled", "left to the environment (GLIBC_TUNABLES / MALLOC_*_THRESHOLD_)",
                         "off (DICNET_MALLOC_TUNING=0)")
    code = "from dicnet_ros.node import tune_allocator; print(tune_allocator())"
    for env, expected in (({"DICNET_MALLOC_TUNING": "0"}, "off"),
                          ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, "left to the environment")):
        base = {k: v for k, v in os.environ.items() if k not in ("DICNET_MALLOC_TUNING", "GLIBC_TUNABLES")}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={**base, **env}, check=True).stdout
        assert out.startswith(expected), out


def test_network_resolution(harness: Harness, tiny_onnx: Path) -> None:
    node, outputs = harness.start("cam_net", tiny_onnx, output_resolution="network")
    pub = harness.publisher(Image, "/cam_net/anomaly_node/image")
    pre = node.model.metadata.preprocess_config
    send(pub, image_msg(random_image("bgr8", 17, 33), "bgr8", 600), outputs)
    check_outputs(node, outputs, 600, (pre.height, pre.width))


def test_msp_baseline_topic(harness: Harness, tiny_onnx: Path) -> None:
    node, outputs = harness.start("cam_msp", tiny_onnx, publish_msp=True)
    got: list[Any] = []
    harness.tester.create_subscription(Image, "/cam_msp/anomaly_node/msp_score", got.append, RELIABLE)
    assert wait_until(lambda: node.count_subscribers("/cam_msp/anomaly_node/msp_score") > 0)
    pub = harness.publisher(Image, "/cam_msp/anomaly_node/image")
    rgb = random_image("rgb8", 40, 56)
    send(pub, image_msg(rgb, "rgb8", 700), outputs)
    assert wait_until(lambda: any(m.header.stamp.sec == 700 for m in got))
    msg = next(m for m in got if m.header.stamp.sec == 700)
    assert msg.encoding == "32FC1" and (msg.height, msg.width) == (40, 56)
    msp = image_msg_to_array(msg)
    expected = node.model.infer(rgb).extras["msp"]
    np.testing.assert_allclose(msp, expected, atol=1e-5)
    assert msp.min() >= 0.0 and msp.max() <= 1.0


def test_shipped_int8_model_runs_in_the_node(harness: Harness) -> None:
    """`model:=models/dicnet_sim_default_int8.onnx`: the QDQ graph serves frames and /diagnostics names int8."""
    from dicnet_ros.resources import package_file

    node, outputs = harness.start("cam_int8", package_file("models/dicnet_sim_default_int8.onnx"))
    pub = harness.publisher(Image, "/cam_int8/anomaly_node/image")
    rgb = random_image("rgb8", 72, 128)
    send(pub, image_msg(rgb, "rgb8", 800), outputs)
    check_outputs(node, outputs, 800, (72, 128))
    assert node.model.describe()["precision"] == "int8"

    def reported() -> bool:
        return any(kv.key == "precision" and kv.value == "int8" for array in list(harness.diagnostics)
                   for status in array.status if status.name.startswith("/cam_int8/anomaly_node")
                   for kv in status.values)

    assert wait_until(reported, timeout=5.0), "precision int8 not reported on /diagnostics"


def test_compressed_input_and_qos_warning(harness: Harness, tiny_onnx: Path) -> None:
    node, outputs = harness.start("cam_jpeg", tiny_onnx, image_transport="compressed", input_qos="reliable")
    topic = "/cam_jpeg/anomaly_node/image/compressed"
    pub = harness.publisher(CompressedImage, topic)
    rgb = random_image("rgb8", 40, 56)
    ok, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1])
    assert ok
    msg = CompressedImage(header=header(700), format="jpeg")
    msg.data = jpeg.tobytes()
    send(pub, msg, outputs)
    check_outputs(node, outputs, 700, (40, 56))
    # a best-effort camera against this reliable subscription: the node must say so and how to fix it
    harness.tester.create_publisher(CompressedImage, topic, QoSProfile(depth=1,
                                                                       reliability=ReliabilityPolicy.BEST_EFFORT))
    problems = wait_until(lambda: " ".join(node.camera().qos_problems.values()), timeout=10.0)
    assert "RELIABILITY" in problems or "BEST_EFFORT" in problems
    assert "input_qos" in problems


def run_node_process(*ros_args: str, timeout_after_ready: float | None = None) -> subprocess.CompletedProcess:
    """The node's console entry point as a process; with ``timeout_after_ready`` it is stopped (SIGINT) that long
    after it logged "ready:" (else it must exit by itself)."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "PYTHONUNBUFFERED": "1"}
    code = "import sys; from dicnet_ros.node.entry import main; sys.exit(main())"
    command = [sys.executable, "-c", code, "--ros-args", *ros_args]
    if timeout_after_ready is None:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "ready:" in line:
            time.sleep(timeout_after_ready)
            proc.send_signal(2)
            break
    rest, _ = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(command, proc.returncode, "".join(lines) + rest, "")


def onnx_with_metadata(source: Path, target: Path, **changes: Any) -> Path:
    """A copy of ``source`` whose DiCNet metadata has ``changes`` (None = JSON null)."""
    import json

    import onnx

    from dicnet_ros.metadata import METADATA_KEY

    model = onnx.load(str(source))
    entry = next(e for e in model.metadata_props if e.key == METADATA_KEY)
    data = json.loads(entry.value)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        section = data
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    entry.value = json.dumps(data)
    onnx.save(model, str(target))
    restamp(target)  # a deliberate edit: record the weights checksum again
    return target


def onnx_failing_at_run(source: Path, target: Path) -> Path:
    """A graph with the DiCNet inputs, outputs and metadata that loads fine and fails on its first run (a Reshape
    to rows of 7 values, which no image of the network's size fills)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Constant", [], ["shape"],
                              value=helper.make_tensor("s", TensorProto.INT64, [2], [-1, 7])),
             helper.make_node("Reshape", ["x", "shape"], ["anomaly_score"]),
             helper.make_node("Cast", ["anomaly_score"], ["semantic_labels"], to=TensorProto.UINT8)]
    graph = helper.make_graph(nodes, "fails", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                              ["n", "h", "w", 3])],
                              [helper.make_tensor_value_info("anomaly_score", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("semantic_labels", TensorProto.UINT8, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.extend(onnx.load(str(source)).metadata_props)
    onnx.save(model, str(target))
    restamp(target)  # a deliberate edit: record the weights checksum again
    return target


@pytest.mark.parametrize(("args", "expected"), [
    (("-p", "model_path:={null_threshold}"), "has no calibrated threshold (its metadata threshold is null): set the "
                                             "threshold parameter"),
    (("-p", "model_path:={huge}"), "metadata field 'preprocess.height' must be a positive integer up to 8192"),
    (("-p", "model_path:={fails}"), "failed its warm-up run"),
    (("-p", "model_path:=/nonexistent/model.onnx"), "model file not found: /nonexistent/model.onnx"),
    (("-p", "model_path:={corrupt}", "-p", "backend:=onnxruntime"), "cannot load model"),
    (("-p", "model_path:={tiny}", "-p", "overlay_alpha:=1.7"), "parameter 'overlay_alpha' must be in [0, 1], got 1.7"),
    (("-p", "model_path:={tiny}", "-p", "backend:=tensorrt"), "backend 'tensorrt'"),
    (("-p", "model_path:={tiny}", "-p", "cameras:=[front]", "-p", "camera.front.image_topic:=front cam"),
     "front cam"),
])
def test_startup_errors_exit_cleanly(args: tuple[str, ...], expected: str, tiny_onnx: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 definitely not protobuf" * 10)
    files = {"corrupt": corrupt, "tiny": tiny_onnx}
    if "{null_threshold}" in " ".join(args):
        files["null_threshold"] = onnx_with_metadata(tiny_onnx, tmp_path / "null.onnx", threshold=None)
    if "{huge}" in " ".join(args):
        files["huge"] = onnx_with_metadata(tiny_onnx, tmp_path / "huge.onnx", preprocess__height=60000,
                                           preprocess__width=60000)
    if "{fails}" in " ".join(args):
        files["fails"] = onnx_failing_at_run(tiny_onnx, tmp_path / "fails.onnx")
    args = tuple(a.format(**files) for a in args)
    proc = run_node_process(*args)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert expected in output, output
    assert "Traceback" not in output, output


def jpeg_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A few hundred bytes of valid JPEG whose frame header claims ``width x height`` pixels."""
    ok, enc = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 10])
    assert ok
    data = bytearray(enc.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5: sof + 7] = height.to_bytes(2, "big")
    data[sof + 7: sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def test_decompression_bomb_is_refused_before_decoding(harness: Harness, tiny_onnx: Path) -> None:
    """A tiny JPEG claiming 12000x12000 pixels is refused from its header, counted, and the node keeps serving."""
    node, outputs = harness.start("cam_bomb", tiny_onnx, image_transport="compressed")
    pub = harness.publisher(CompressedImage, "/cam_bomb/anomaly_node/image/compressed")
    bomb = CompressedImage(header=header(900), format="jpeg")
    bomb.data = jpeg_bomb()
    assert len(bomb.data) < 1000
    started = time.monotonic()
    for _ in range(20):
        pub.publish(bomb)
        if wait_until(lambda: node.stats()["dropped_too_large"] > 0, timeout=0.5):
            break
    assert node.stats()["dropped_too_large"] >= 1
    assert time.monotonic() - started < 5.0
    _, jpeg = cv2.imencode(".jpg", random_image("bgr8", 40, 56))
    good = CompressedImage(header=header(901), format="jpeg")
    good.data = jpeg.tobytes()
    send(pub, good, outputs)  # still serving
    assert not outputs.with_stamp("anomaly_mask", 900)
    assert node.stats()["errors"] == 0 and node.stats()["dropped_bad"] == 0


def test_raw_image_over_the_pixel_limit_is_refused(harness: Harness, tiny_onnx: Path) -> None:
    node, outputs = harness.start("cam_limit", tiny_onnx, max_input_pixels=64 * 48)
    pub = harness.publisher(Image, "/cam_limit/anomaly_node/image")
    for _ in range(20):
        pub.publish(image_msg(random_image("rgb8", 49, 64), "rgb8", 910))
        if wait_until(lambda: node.stats()["dropped_too_large"] > 0, timeout=0.5):
            break
    assert node.stats()["dropped_too_large"] >= 1
    send(pub, image_msg(random_image("rgb8", 48, 64), "rgb8", 911), outputs)  # exactly at the limit: fine
    assert not outputs.with_stamp("anomaly_mask", 910)


def test_integer_threshold_is_accepted_at_run_time(main_node: tuple, harness: Harness) -> None:
    """`ros2 param set ... threshold 1` sends an integer: it means 1.0, not a type error."""
    node, _outputs, _pub = main_node
    client = AsyncParameterClient(harness.tester, "/cam_main/anomaly_node")
    assert client.wait_for_services(timeout_sec=5.0)
    default = node.model.threshold
    try:
        future = client.set_parameters([Parameter("threshold", value=1)])
        assert wait_until(future.done, timeout=5.0)
        result = future.result().results[0]
        assert result.successful, result.reason
        assert node.model.threshold == 1.0
        future = client.set_parameters([Parameter("threshold", value="high")])
        assert wait_until(future.done, timeout=5.0)
        rejected = future.result().results[0]
        assert not rejected.successful and "threshold" in rejected.reason
    finally:
        future = client.set_parameters([Parameter("threshold", value=math.nan)])
        wait_until(future.done, timeout=5.0)
    assert node.model.threshold == pytest.approx(default)


def test_matched_publisher_without_frames_is_reported(harness: Harness, tiny_onnx: Path) -> None:
    """A camera that is matched but delivers nothing: one warning naming the cause, counted in diagnostics."""
    # the publisher-QoS check runs often here: it must not wipe the silent-camera report (it once did)
    node, _outputs = harness.start("cam_silent", tiny_onnx, no_frame_warn_s=1.0, qos_check_period_s=0.2)
    harness.tester.create_publisher(Image, "/cam_silent/anomaly_node/image",
                                    QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    assert wait_until(lambda: node.stats()["no_frame_warnings"] >= 1, timeout=10.0)
    problem = node.camera().qos_problems.get("silent:input", "")
    assert "matched" in problem and "no frame arrived" in problem and "Fix:" in problem, problem
    time.sleep(1.5)
    assert node.stats()["no_frame_warnings"] == 1  # once per silence, not every tick


def test_auto_qos_follows_a_reliable_camera_before_the_bag_clock_starts(harness: Harness, tiny_onnx: Path) -> None:
    """use_sim_time with no /clock yet (a bag replay about to start): input_qos auto still re-subscribes reliable
    to a reliable camera at once (here: within 3 s), so the replay's first frame is not sent to a best-effort
    subscription that is about to be replaced (`make demo` lost it now and then while the node clock stood still)."""
    node, _outputs = harness.start("cam_simtime", tiny_onnx, use_sim_time=True, input_qos="auto")
    topic = "/cam_simtime/anomaly_node/image"

    def node_subscribes_reliable() -> bool:
        infos = harness.tester.get_subscriptions_info_by_topic(topic)
        return bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)

    assert not node_subscribes_reliable()  # auto starts best effort, matching any camera
    harness.publisher(Image, topic, reliable=True)
    assert wait_until(node_subscribes_reliable, timeout=3.0), harness.tester.get_subscriptions_info_by_topic(topic)
    assert node.get_clock().now().nanoseconds == 0  # the node clock never moved: no /clock was published


def test_one_node_serves_several_cameras(harness: Harness, tiny_onnx: Path) -> None:
    """cameras: [mcfront, mcrear]: each camera reads /NAME/image_raw (rear compressed), publishes the topics of a
    single-camera node in namespace NAME with its own header, size, threshold, counters and diagnostics; frames of
    one size from both cameras run as one batch."""
    params = {"model_path": str(tiny_onnx), "backend": "onnxruntime", "device": "cpu", "num_threads": 1,
              "cameras": ["mcfront", "mcrear"], "camera.mcrear.image_transport": "compressed",
              "camera.mcrear.threshold": -1e9, "diagnostics_period_s": 0.2, "publish_semantic": True}
    node = AnomalyNode(context=harness.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    harness.nodes.append(node)
    harness.executor.add_node(node)
    assert [c.spec.name for c in node.cameras] == ["mcfront", "mcrear"]
    front_out = Outputs(harness.tester, "/mcfront/anomaly_node")
    rear_out = Outputs(harness.tester, "/mcrear/anomaly_node")
    assert wait_until(lambda: node.count_subscribers("/mcrear/anomaly_node/anomaly_mask") > 0)
    front = harness.publisher(Image, "/mcfront/image_raw")
    rear = harness.publisher(CompressedImage, "/mcrear/image_raw/compressed")
    rgb = random_image("rgb8", 40, 56)
    jpeg = CompressedImage(header=header(901, "rear_optical"), format="jpeg")
    jpeg.data = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    send(rear, jpeg, rear_out)
    send(front, image_msg(random_image("rgb8", 24, 30), "rgb8", 902), front_out)
    check_outputs(node, front_out, 902, (24, 30))
    rear_mask = image_msg_to_array(wait_until(lambda: rear_out.with_stamp("anomaly_mask", 901))[-1])
    assert rear_mask.shape == (40, 56) and (rear_mask == 255).all()  # its own threshold: everything anomalous
    assert rear_out.with_stamp("anomaly_mask", 901)[-1].header.frame_id == "rear_optical"
    assert not front_out.with_stamp("anomaly_mask", 901) and not rear_out.with_stamp("anomaly_mask", 902)
    assert node.stats("mcfront")["processed"] >= 1 and node.stats("mcrear")["processed"] >= 1
    # both cameras at once, same size: one batch of two (publish pairs until the worker caught both waiting)
    same = random_image("rgb8", 24, 30)
    jpeg.data = cv2.imencode(".png", same[:, :, ::-1])[1].tobytes()
    for sec in range(910, 960):
        jpeg.header = header(sec, "rear_optical")
        rear.publish(jpeg)
        front.publish(image_msg(same, "rgb8", sec))
        if wait_until(lambda: node.stats("mcrear")["batched"] > 0, timeout=0.2):
            break
    assert node.stats("mcrear")["batched"] > 0 and node.stats("mcfront")["batched"] > 0
    statuses = wait_until(lambda: {s.name: {kv.key: kv.value for kv in s.values} for a in harness.diagnostics
                                   for s in a.status if s.name.startswith(("/mcfront", "/mcrear", "/anomaly_node"))},
                          timeout=5.0)
    assert {"/mcfront/anomaly_node: anomaly segmentation", "/mcrear/anomaly_node: anomaly segmentation",
            "/anomaly_node: anomaly segmentation"} <= set(statuses)
    assert statuses["/mcrear/anomaly_node: anomaly segmentation"]["input_topic"] == "/mcrear/image_raw/compressed"
    assert float(statuses["/mcrear/anomaly_node: anomaly segmentation"]["threshold"]) == -1e9


def test_threshold_parameter_never_kills_the_node(harness: Harness, tiny_onnx: Path, tmp_path: Path) -> None:
    """A model without a calibrated threshold (metadata null) runs with a given one; setting NaN at run time is
    refused with a reason, never a crash; with a calibrated model, NaN means (and shows) the model's threshold."""
    null = onnx_with_metadata(tiny_onnx, tmp_path / "null.onnx", threshold=None)
    node, outputs = harness.start("cam_null", null, threshold=0.25)
    result = node.set_parameters([Parameter("threshold", value=float("nan"))])[0]
    assert not result.successful and "no calibrated threshold" in result.reason
    assert node.get_parameter("threshold").value == 0.25 and node.camera().mask_threshold() == 0.25
    pub = harness.publisher(Image, "/cam_null/anomaly_node/image")
    send(pub, image_msg(random_image("rgb8", 20, 30), "rgb8", 1300), outputs)  # still alive and answering
    calibrated, _ = harness.start("cam_cal", tiny_onnx)
    model_threshold = calibrated.model.metadata.threshold
    assert calibrated.get_parameter("threshold").value == pytest.approx(model_threshold)  # param get shows it
    assert calibrated.set_parameters([Parameter("threshold", value=1.5)])[0].successful
    assert calibrated.camera().mask_threshold() == 1.5
    assert calibrated.set_parameters([Parameter("threshold", value=float("nan"))])[0].successful
    assert calibrated.get_parameter("threshold").value == pytest.approx(model_threshold)
    assert calibrated.camera().mask_threshold() == pytest.approx(model_threshold)


def test_misspelled_parameters_are_reported(tiny_onnx: Path) -> None:
    proc = run_node_process("-p", f"model_path:={tiny_onnx}", "-p", "threshhold:=0.5", "-p", "camera.x.threshold:=1.0",
                            "-p", "enabled:=false", "-p", "warmup:=false", "--log-level", "info",
                            timeout_after_ready=1.0)
    output = proc.stdout + proc.stderr
    assert "ignoring parameter 'threshhold': unknown parameter (did you mean threshold?)" in output, output
    assert "ignoring parameter 'camera.x.threshold': camera 'x' is not one of cameras []" in output, output


ATTACKS = Path(__file__).resolve().parents[1] / "data" / "attacks"


def test_hostile_compressed_frames_are_refused_and_the_node_keeps_serving(harness: Harness, tiny_onnx: Path) -> None:
    """The outside attack's compressed inputs: a scan bomb inside the pixel limit is refused before decoding (no
    stall: the good frame after it is answered), a truncated JPEG is never published, an EXIF-rotated frame keeps
    its own size (64x48 in, 64x48 out)."""
    node, outputs = harness.start("cam_hostile", tiny_onnx, image_transport="compressed", input_qos="reliable")
    pub = harness.publisher(CompressedImage, "/cam_hostile/anomaly_node/image/compressed")
    good = cv2.imencode(".jpg", random_image("bgr8", 40, 56))[1].tobytes()
    frames = {1400: (ATTACKS / "scan_bomb_1000.jpg").read_bytes(), 1401: good[: len(good) // 2],
              1402: good[: len(good) // 2] + b"\xff\xd9"}
    for sec, data in frames.items():
        msg = CompressedImage(header=header(sec), format="jpeg")
        msg.data = data
        for _ in range(30):  # re-sent like a camera until the node has seen it
            pub.publish(msg)
            if wait_until(lambda sec=sec: node.stats()["dropped_bad"] >= sec - 1399, timeout=1.0):
                break
        assert node.stats()["dropped_bad"] >= sec - 1399, sec
    exif = CompressedImage(header=header(1403), format="jpeg")
    exif.data = (ATTACKS / "exif_rot6_64x48.jpg").read_bytes()
    started = time.monotonic()
    mask = send(pub, exif, outputs)
    assert time.monotonic() - started < 5.0
    assert (mask.height, mask.width) == (48, 64)
    assert not any(outputs.with_stamp("anomaly_mask", sec) for sec in frames)
    assert node.stats()["errors"] == 0


def test_queue_drops_before_the_first_frame_are_counted(harness: Harness, tiny_onnx: Path) -> None:
    """A reliable burst from a publisher that joined after the node was listening: every frame is either received
    or counted as replaced in the DDS queue, also those replaced before the node took its first frame from it."""
    node, _ = harness.start("cam_burst", tiny_onnx, input_qos="reliable")
    time.sleep(1.5)  # the publisher joins after the node's start-up (JOIN_GRACE_S)
    pub = harness.publisher(Image, "/cam_burst/anomaly_node/image")
    msg = image_msg(random_image("rgb8", 16, 16), "rgb8", 1500)
    count = 300
    for _ in range(count):
        pub.publish(msg)
    wait_until(lambda: (s := node.stats())["received"] + s["dropped_queue"] >= count, timeout=15.0)
    stats = node.stats()
    assert stats["received"] + stats["dropped_queue"] == count and stats["before_first_frame"] == 0, stats


def test_an_idle_best_effort_publisher_does_not_downgrade_a_reliable_camera(harness: Harness, tiny_onnx: Path) -> None:
    """input_qos auto with mixed publishers subscribes reliable AND best effort: the reliable camera keeps its
    reliability (every frame of a burst taken or counted), frames are taken once, and the warning names the
    best-effort publisher."""
    node, outputs = harness.start("cam_mixed", tiny_onnx)
    topic = "/cam_mixed/anomaly_node/image"
    reliable = harness.publisher(Image, topic)
    idle = harness.tester.create_publisher(Image, topic, QoSProfile(depth=1,
                                                                    reliability=ReliabilityPolicy.BEST_EFFORT))
    assert wait_until(lambda: node.camera().reliability_description() == "best_effort + reliable", timeout=10.0)
    problems = wait_until(lambda: node.camera().qos_problems.get("mixed:"), timeout=10.0)
    assert problems and "/node_tester" in problems
    before = node.stats()
    send(reliable, image_msg(random_image("rgb8", 20, 24), "rgb8", 1600), outputs)

    def taken_once_each() -> bool:  # (a frame's counters are updated just after its outputs go out)
        after = node.stats()
        return after["received"] - before["received"] == after["processed"] - before["processed"]

    assert wait_until(taken_once_each, timeout=5.0)
    harness.tester.destroy_publisher(idle)
    assert wait_until(lambda: node.camera().reliability_description() == "reliable", timeout=10.0)


def test_a_model_without_a_domain_score_still_runs(harness: Harness, tiny_onnx: Path, tmp_path: Path) -> None:
    """An export from before the domain head: frames are answered, the alarm is 'unavailable' in /diagnostics."""
    import json

    import onnx

    from dicnet_ros.metadata import METADATA_KEY

    old = onnx.load(str(tiny_onnx))
    kept = [o for o in old.graph.output if o.name != "domain_score"]
    del old.graph.output[:]
    old.graph.output.extend(kept)
    entry = next(p for p in old.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(entry.value)
    meta.pop("domain_threshold", None)
    meta.pop("weights_sha256", None)
    entry.value = json.dumps(meta)
    path = tmp_path / "before_domain.onnx"
    onnx.save(old, str(path))
    node, outputs = harness.start("cam_nodomain", path, diagnostics_period_s=0.2)
    pub = harness.publisher(Image, "/cam_nodomain/anomaly_node/image")
    send(pub, image_msg(random_image("rgb8", 30, 40), "rgb8", 1700), outputs)
    assert node.camera().domain.state == "unavailable"
    status = wait_until(lambda: next((s for a in harness.diagnostics for s in a.status
                                      if s.name.startswith("/cam_nodomain/anomaly_node")), None), timeout=5.0)
    values = {kv.key: kv.value for kv in status.values}
    assert values["domain_state"] == "unavailable" and "unavailable" in values["domain_message"]


def test_start_up_names_the_cpus_int8_path() -> None:
    """An INT8 model on the CPU: the start-up log says which integer kernels run it (and warns where the model's
    parity was not measured on that path)."""
    from dicnet_ros.inference.cpu_features import detect_int8_path

    proc = run_node_process("-p", "model_path:=dicnet_sim_default_int8.onnx", "-p", "backend:=onnxruntime",
                            "-p", "device:=cpu", "-p", "enabled:=false", timeout_after_ready=0.5)
    output = proc.stdout + proc.stderr
    assert f"INT8 on {detect_int8_path().cpu}" in output, output
    assert "Traceback" not in output

"""The node with the camera in ANOTHER process, as on a vehicle: real DDS between processes, real frame sizes.

Same-process tests and small frames hide that Fast DDS defaults lose large best-effort frames between processes
(README, "Large images"); here the camera (test/node/fake_camera.py) runs with default middleware settings, the
node runs as its console entry point (so it applies the shipped large-image profile itself), and this process
receives the node's masks. Shutdown by SIGINT is checked on the same process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import node_process  # noqa: E402  (benchmarks/node_process.py: the node as its own process)

CAMERA = Path(__file__).with_name("fake_camera.py")
TOPIC = "/xcam/image_raw"
NODE_NS = "/xproc/anomaly_node"
DOMAIN_ID = random.randint(201, 230)
FASTDDS_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "DICNET_FASTDDS_PROFILE",
                "FASTDDS_BUILTIN_TRANSPORTS")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process with default middleware settings on our test domain."""
    env = {k: v for k, v in os.environ.items() if k not in FASTDDS_VARS}
    return {**env, "ROS_DOMAIN_ID": str(DOMAIN_ID), "PYTHONUNBUFFERED": "1", **extra}


class NodeProcess(node_process.NodeProcess):
    """``anomaly_node`` as its own process (the benchmarks' helper); its log is collected line by line."""

    def __init__(self, *ros_args: str, env: dict[str, str] | None = None) -> None:
        code = "import sys; from dicnet_ros.node.cli import main; sys.exit(main())"
        super().__init__([sys.executable, "-c", code, "--ros-args", *ros_args], env or clean_env())


class Listener:
    """This process: the node's masks (stamp seconds seen) and its /diagnostics."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("xproc_listener", context=self.context)
        self.lock = threading.Lock()
        self.masks: dict[int, float] = {}  # stamp sec -> wall time of arrival
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(Image, f"{NODE_NS}/anomaly_mask", self._on_mask,
                                      QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_mask(self, msg: Any) -> None:
        with self.lock:
            self.masks[msg.header.stamp.sec] = time.time()

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith(NODE_NS):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics["_message"] = status.message

    def answered(self, first: int, count: int) -> dict[int, float]:
        with self.lock:
            return {s: t for s, t in self.masks.items() if first <= s < first + count}

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def run_camera(size: str, reliability: str, rate: float, count: int, first: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(CAMERA), "--topic", TOPIC, "--size", size, "--reliability",
                           reliability, "--rate", str(rate), "--count", str(count), "--first-stamp", str(first)],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node_and_listener(tiny_onnx: Path) -> Iterator[tuple[NodeProcess, Listener]]:
    node = NodeProcess("-p", f"model_path:={tiny_onnx}", "-p", "backend:=onnxruntime", "-p", "device:=cpu",
                       "-p", "num_threads:=1", "-r", "__ns:=/xproc", "-r", f"~/image:={TOPIC}")
    assert node.wait_for("ready:"), node.log
    listener = Listener()
    yield node, listener
    listener.close()
    code = node.stop()
    assert code == 0, node.log


@pytest.mark.slow
@pytest.mark.parametrize(("size", "reliability"), [("1280x720", "reliable"), ("1280x720", "best_effort"),
                                                    ("1920x1080", "reliable"), ("1920x1080", "best_effort")])
def test_camera_in_another_process(node_and_listener: tuple, size: str, reliability: str) -> None:
    """>= 95 % of the frames a default-settings camera publishes after discovery are answered."""
    node, listener = node_and_listener
    first = {"1280x720": 10_000, "1920x1080": 20_000}[size] + (0 if reliability == "reliable" else 5_000)
    count = 25
    sent = run_camera(size, reliability, rate=4.0, count=count, first=first)
    assert sent["published"] == count
    deadline = time.monotonic() + 10
    while len(listener.answered(first, count)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    answered = listener.answered(first, count)
    assert len(answered) >= 0.95 * count, (f"{size} {reliability}: {len(answered)} of {count} answered\n"
                                           + "\n".join(node.lines[-15:]))
    expected = "reliable" if reliability == "reliable" else "best_effort"
    deadline = time.monotonic() + 5
    while listener.diagnostics.get("input_reliability") != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listener.diagnostics.get("input_reliability") == expected, listener.diagnostics  # input_qos auto
    assert listener.diagnostics.get("dds_profile") == "shipped large-image profile"


@pytest.mark.slow
def test_faster_camera_gets_newest_frame_answered(node_and_listener: tuple) -> None:
    """A camera faster than the node: no backlog, the newest frame is answered soon after it was sent.

    The camera publishes 1080p as fast as it can (up to 120 Hz): at 30 Hz the tiny model sometimes kept up."""
    _node, listener = node_and_listener
    first, count = 30_000, 120
    sent = run_camera("1920x1080", "reliable", rate=120.0, count=count, first=first)
    deadline = time.monotonic() + 10
    while sent["last_stamp"] not in listener.answered(first, count) and time.monotonic() < deadline:
        time.sleep(0.05)
    answered = listener.answered(first, count)
    assert sent["last_stamp"] in answered, f"newest frame not answered ({len(answered)} of {count})"
    assert answered[sent["last_stamp"]] - sent["last_publish_wall"] < 2.0  # no queue of old frames ahead of it
    assert len(answered) < count, "the node kept up with the camera: the test does not exercise dropping"


def test_sigint_twice_exits_quietly(tiny_onnx: Path) -> None:
    """ros2 launch forwards a second SIGINT on top of the terminal's: still exit 0, no traceback."""
    node = NodeProcess("-p", f"model_path:={tiny_onnx}", "-p", "backend:=onnxruntime", "-r", "__ns:=/sigint")
    assert node.wait_for("ready:"), node.log
    code = node.stop(signals=2, gap=0.02)
    assert code == 0 and "Traceback" not in node.log, node.log


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_sigint_during_start_exits_quietly(tiny_onnx: Path, delay: float) -> None:
    """Ctrl-C while Python imports rclpy or while the model loads: exit 0, no traceback."""
    node = NodeProcess("-p", f"model_path:={tiny_onnx}", "-p", "backend:=onnxruntime", "-r", "__ns:=/early")
    time.sleep(delay)
    code = node.stop(signals=2, gap=0.02)
    assert code == 0 and "Traceback" not in node.log, node.log


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGQUIT"])
def test_every_stop_signal_exits_cleanly(tiny_onnx: Path, signame: str) -> None:
    """systemd / docker (SIGTERM), a closed terminal (SIGHUP), Ctrl-\\ (SIGQUIT): the same clean stop as Ctrl-C."""
    node = NodeProcess("-p", f"model_path:={tiny_onnx}", "-p", "backend:=onnxruntime", "-r", "__ns:=/sig")
    assert node.wait_for("ready:"), node.log
    node.proc.send_signal(getattr(signal, signame))
    code = node.proc.wait(timeout=30)
    assert code == 0 and "Traceback" not in node.log and "core dumped" not in node.log, node.log


def _gone(pid: int) -> bool:
    """The process ended (a zombie waiting for a reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state or "\nState:\tX" in state


def test_node_leaves_when_its_parent_dies(tiny_onnx: Path) -> None:
    """ros2 launch has no SIGTERM handler: killed, it would orphan its nodes. The node asks the kernel for SIGTERM
    when its parent dies, and stops cleanly."""
    code = ("import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); p.wait()")
    entry = "import sys; from dicnet_ros.node.entry import main; sys.exit(main())"
    parent = subprocess.Popen([sys.executable, "-c", code, sys.executable, "-c", entry, "--ros-args", "-p",
                               f"model_path:={tiny_onnx}", "-p", "backend:=onnxruntime", "-r", "__ns:=/orphan"],
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(parent.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not any("ready:" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("ready:" in line for line in lines), "".join(lines)
    parent.kill()  # SIGKILL: the parent cannot pass anything on
    parent.wait()
    deadline = time.monotonic() + 20
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the node outlived its parent:\n" + "".join(lines))


class CameraListener:
    """This process: each camera's masks (stamp -> (height, width, frame_id)) and each camera's diagnostics."""

    def __init__(self, cameras: list[str]) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("multicam_listener", context=self.context)
        self.lock = threading.Lock()
        self.masks: dict[str, dict[int, tuple[int, int, str]]] = {c: {} for c in cameras}
        self.diagnostics: dict[str, dict[str, str]] = {}
        for camera in cameras:
            self.node.create_subscription(Image, f"/{camera}/anomaly_node/anomaly_mask",
                                          lambda msg, c=camera: self._on_mask(c, msg),
                                          QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_mask(self, camera: str, msg: Any) -> None:
        with self.lock:
            self.masks[camera][msg.header.stamp.sec] = (msg.height, msg.width, msg.header.frame_id)

    def _on_diag(self, msg: Any) -> None:
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def start_camera(camera: str, size: str, count: int, first: int, rate: float = 5.0,
                 compressed: str | None = None) -> subprocess.Popen:
    args = [sys.executable, str(CAMERA), "--topic", f"/{camera}/image_raw", "--size", size, "--rate", str(rate),
            "--count", str(count), "--first-stamp", str(first), "--frame-id", f"{camera}_optical"]
    return subprocess.Popen(args + (["--compressed", compressed] if compressed else []), env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_one_node_serves_three_cameras_in_other_processes(tiny_onnx: Path) -> None:
    """cameras: [xa, xb, xc], each camera its own process: 640x360 raw, 320x240 JPEG (compressed), 640x360 raw that
    stops after a few frames. Every live camera is answered with its own headers and sizes, the stopped one does
    not stall the others, and /diagnostics has a status per camera."""
    cameras = ["xa", "xb", "xc"]
    node = NodeProcess("-p", f"model_path:={tiny_onnx}", "-p", "backend:=onnxruntime", "-p", "device:=cpu",
                       "-p", "num_threads:=1", "-p", "cameras:=[xa, xb, xc]", "-p",
                       "camera.xb.image_transport:=compressed", "-p", "diagnostics_period_s:=0.5")
    listener = CameraListener(cameras)
    try:
        assert node.wait_for("ready:"), node.log
        counts = {"xa": 30, "xb": 30, "xc": 5}
        procs = {"xa": start_camera("xa", "640x360", counts["xa"], 1000),
                 "xb": start_camera("xb", "320x240", counts["xb"], 2000, compressed="jpeg"),
                 "xc": start_camera("xc", "640x360", counts["xc"], 3000)}
        sent = {}
        for camera, proc in procs.items():
            out, _ = proc.communicate(timeout=120)
            sent[camera] = json.loads(out.strip().splitlines()[-1])
            assert sent[camera]["published"] == counts[camera], out
        time.sleep(1.0)
        sizes = {"xa": (360, 640), "xb": (240, 320), "xc": (360, 640)}
        for camera in cameras:
            with listener.lock:
                answered = dict(listener.masks[camera])
            first = sent[camera]["first_stamp"]
            assert len(answered) >= 0.9 * counts[camera], (camera, len(answered), node.log[-2000:])
            assert set(answered) <= set(range(first, first + counts[camera])), camera  # its own stamps only
            assert all(hw_id == (*sizes[camera], f"{camera}_optical") for hw_id in answered.values()), camera
        # xa and xb kept being answered after xc stopped: xc's last frame was long before theirs
        assert max(listener.masks["xa"]) == sent["xa"]["last_stamp"]
        with listener.lock:
            diagnostics = dict(listener.diagnostics)
        for camera in cameras:
            values = diagnostics[f"/{camera}/anomaly_node: anomaly segmentation"]
            assert int(values["processed"]) >= 0.9 * counts[camera] and values["errors"] == "0", (camera, values)
        assert diagnostics["/anomaly_node: anomaly segmentation"]["cameras"] == "xa,xb,xc"
    finally:
        listener.close()
        code = node.stop()
    assert code == 0, node.log


class DomainListener:
    """This process: a camera publisher, the node's ~/domain messages and its /diagnostics status."""

    def __init__(self, namespace: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("domain_listener", context=self.context)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.camera = self.node.create_publisher(Image, f"{namespace}/image", reliable)
        self.lock = threading.Lock()
        self.domain: dict[int, dict[str, str]] = {}  # stamp sec -> values of ~/domain
        self.masks: dict[int, Any] = {}
        self.levels: list[tuple[int, str, str]] = []  # (level, domain_state, message) of /diagnostics
        self.node.create_subscription(DiagnosticArray, f"{namespace}/domain", self._on_domain, reliable)
        self.node.create_subscription(Image, f"{namespace}/anomaly_mask", self._on_mask, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self._on_diag(m, namespace), 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_domain(self, msg: Any) -> None:
        with self.lock:
            self.domain[msg.header.stamp.sec] = {kv.key: kv.value for kv in msg.status[0].values}

    def _on_mask(self, msg: Any) -> None:
        with self.lock:
            self.masks[msg.header.stamp.sec] = np.frombuffer(bytes(msg.data), np.uint8)

    def _on_diag(self, msg: Any, namespace: str) -> None:
        for status in msg.status:
            if status.name.startswith(namespace):
                values = {kv.key: kv.value for kv in status.values}
                with self.lock:
                    self.levels.append((int.from_bytes(status.level, "little") if isinstance(status.level, bytes)
                                        else int(status.level), values.get("domain_state", ""), status.message))

    def send(self, rgb: np.ndarray, sec: int, timeout: float = 10.0) -> dict[str, str]:
        """Publish a frame until its ~/domain message is back; its values."""
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3)
        msg.header.stamp.sec, msg.header.frame_id = sec, "cam"
        msg.data = rgb.tobytes()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.camera.publish(msg)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                with self.lock:
                    if sec in self.domain and sec in self.masks:
                        return self.domain[sec]
                time.sleep(0.02)
        raise AssertionError(f"no ~/domain for stamp {sec}")

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def test_degenerate_frames_raise_the_alarm_and_good_frames_clear_it() -> None:
    """The shipped model in a node process: simulator frames are in domain (OK), black / white / noise frames
    raise WARN then ERROR after domain_alarm_frames, the mask is empty while out of domain (out_of_domain_mask
    empty), and good frames bring the camera back to OK."""
    pytest.importorskip("rosbags")  # good frames from the shipped demo bag
    from dicnet_ros.bag.read import iter_images
    from dicnet_ros.resources import package_file

    good = [f.rgb for f in iter_images(package_file("models/demo/sim_demo_stream"), "/camera/image_raw")][:6]
    node = NodeProcess("-p", "backend:=onnxruntime", "-p", "device:=cpu", "-p", "domain_alarm_frames:=3",
                       "-p", "out_of_domain_mask:=empty", "-p", "diagnostics_period_s:=0.3", "-p",
                       "threshold:=-1000.0", "-r", "__ns:=/dom")
    listener = DomainListener("/dom/anomaly_node")
    try:
        assert node.wait_for("ready:"), node.log
        assert "domain alarm threshold" in node.log, node.log
        sec = 100
        for rgb in good[:3]:
            values = listener.send(rgb, sec)
            assert values["frame_in_domain"] == "true" and values["state"] == "in_domain", values
            sec += 1
        rng = np.random.default_rng(0)
        h, w = good[0].shape[:2]
        bad = [np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), 255, np.uint8),
               rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.zeros((h, w, 3), np.uint8)]
        states = []
        for rgb in bad:
            values = listener.send(rgb, sec)
            assert values["frame_in_domain"] == "false", values
            states.append(values["state"])
            sec += 1
        assert states[:2] == ["in_domain", "in_domain"] and states[2:] == ["out_of_domain", "out_of_domain"], states
        with listener.lock:
            assert not listener.masks[sec - 1].any()  # threshold -1000 would mark every pixel: the mask is empty
        time.sleep(1.0)
        with listener.lock:
            levels = list(listener.levels)
        assert any(level == 2 and state == "out_of_domain" for level, state, _ in levels), levels
        assert any("out of domain" in message for _, _, message in levels)
        for rgb in good[3:6]:
            values = listener.send(rgb, sec)
            sec += 1
        assert values["state"] == "in_domain", values
        with listener.lock:
            assert listener.masks[sec - 1].all()  # back in domain: the mask is published as computed
        assert "out of domain" in node.log and "back in domain" in node.log
    finally:
        listener.close()
        code = node.stop()
    assert code == 0, node.log

"""An outside fuzz client: attacks the node (its own process, real DDS), the model loader and the bag tools.

    python benchmarks/fuzz_node.py --seconds 120 --json fuzz.json         # the full run
    python benchmarks/fuzz_node.py --seconds 20                           # what the test suite runs

What it does, as a broken or hostile upstream publisher, file or user would:
- a node with two cameras (``raw``: sensor_msgs/Image, ``jpeg``: CompressedImage) runs as ``dicnet node`` in its
  own process; this process publishes, for ``--seconds``, a stream where every other frame is hostile:
  malformed raw frames (unknown encodings, short data, wrong / odd steps, zero or huge sizes, wrong endianness
  flags), malformed compressed frames (random bytes, header bombs claiming 12000x12000, the progressive-JPEG scan
  bomb, truncated JPEG / PNG with and without their end markers, corrupt entropy data, EXIF-rotated frames),
  reliable bursts, and bad parameters at run time (wrong types, NaN / inf thresholds, out-of-range values,
  unknown names); each hostile frame is followed by a good frame with a unique stamp;
- bad parameters at start and bad model files (empty, truncated, random bytes, JSON garbage metadata, huge
  metadata sizes): each must end the node with one FATAL line, no traceback, within the time limit;
- bad bags (random metadata.yaml, truncated storage, wrong types in metadata, missing topics): ``dicnet bag-eval``
  must answer with one line and a non-zero exit, no traceback.
Verdicts: crashes (node process gone, a traceback anywhere), hangs (a good frame after a hostile one answered
later than ``--hang-s``, default 2 s, or not at all), wrong outputs (a mask whose stamp was never sent as a good
frame, or whose size is not the input's), memory (node RSS above its steady state after warm-up by more than
``--memory-mb``, default 500). Prints a table, writes JSON, exits 1 when any verdict fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from node_process import NodeProcess, dicnet_node_command, proc_stats  # benchmarks/node_process.py

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ROOT / "test" / "data" / "attacks"
RAW, JPEG = "fuzzraw", "fuzzjpeg"


@dataclass
class Verdicts:
    """Everything counted during a run; ``ok`` is the pass / fail of the whole run."""

    hostile_frames: int = 0
    good_frames: int = 0
    good_answered: int = 0
    hangs: list[str] = field(default_factory=list)
    wrong_outputs: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    start_failures_checked: int = 0
    bad_start: list[str] = field(default_factory=list)
    bad_bags_checked: int = 0
    bad_bag: list[str] = field(default_factory=list)
    parameter_sets: int = 0
    rss_steady_mb: float = 0.0
    rss_peak_mb: float = 0.0
    worst_answer_s: float = 0.0

    @property
    def memory_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_steady_mb

    def ok(self, memory_mb: float) -> bool:
        return not (self.hangs or self.wrong_outputs or self.crashes or self.bad_start or self.bad_bag) and \
            self.memory_growth_mb <= memory_mb


# ------------------------------------------------------------------------------------------------ hostile data
def good_rgb(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8), (size[1], size[0]))


def hostile_raw(rng: np.random.Generator) -> dict[str, Any]:
    """Fields of one malformed sensor_msgs/Image."""
    h, w = int(rng.integers(1, 80)), int(rng.integers(1, 80))
    kind = rng.integers(0, 8)
    fields: dict[str, Any] = {"height": h, "width": w, "encoding": "rgb8", "is_bigendian": 0, "step": w * 3,
                              "data": rng.integers(0, 256, h * w * 3, dtype=np.uint8).tobytes()}
    if kind == 0:
        names = ["yuv422", "bayer_rggb8", "32FC1", "", "x" * 300, "rgb9"]
        fields["encoding"] = names[int(rng.integers(0, len(names)))]
    elif kind == 1:
        fields["data"] = fields["data"][: int(rng.integers(0, len(fields["data"])))]
    elif kind == 2:
        fields["step"] = int(rng.integers(0, w * 3))
    elif kind == 3:
        fields.update(height=0, width=0, data=b"")
    elif kind == 4:
        fields.update(height=60000, width=60000)  # claims 3.6 G pixels with a few bytes of data
    elif kind == 5:
        fields.update(encoding="mono16", step=w * 2 + 1, is_bigendian=1)
    elif kind == 6:
        fields.update(height=2**31 - 1, width=2**31 - 1, step=2**31 - 1)
    else:
        fields.update(encoding="rgba8", step=w * 4, data=fields["data"])  # 4 channels claimed, 3 given
    return fields


def hostile_compressed(rng: np.random.Generator) -> tuple[str, bytes]:
    """(format, data) of one malformed sensor_msgs/CompressedImage."""
    good = cv2.imencode(".jpg", good_rgb(rng, (120, 160)))[1].tobytes()
    png = cv2.imencode(".png", good_rgb(rng, (60, 80)))[1].tobytes()
    kind = int(rng.integers(0, 9))
    if kind == 0:
        return "jpeg", rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
    if kind == 1:  # header bomb: a valid small JPEG whose frame header claims 12000 x 12000
        data = bytearray(good)
        sof = data.find(b"\xff\xc0")
        data[sof + 5: sof + 9] = (12000).to_bytes(2, "big") * 2
        return "jpeg", bytes(data)
    if kind == 2:
        return "jpeg", (ATTACKS / "scan_bomb_1000.jpg").read_bytes()
    if kind == 3:
        return "jpeg", good[: int(rng.integers(2, len(good) - 2))]
    if kind == 4:
        return "jpeg", good[: len(good) // 2] + b"\xff\xd9"
    if kind == 5:
        cut = int(rng.integers(600, len(good) - 600))
        return "jpeg", good[:cut] + rng.integers(0, 256, 400, dtype=np.uint8).tobytes() + good[cut + 400:]
    if kind == 6:
        return "png", png[: int(rng.integers(8, len(png) - 12))]
    if kind == 7:
        return "png", png[:60] + bytes([png[60] ^ 0xFF]) + png[61:]
    return "jpeg; compressedDepth", rng.integers(0, 256, 64, dtype=np.uint8).tobytes()


BAD_PARAMETER_VALUES: list[tuple[str, Any]] = [
    ("threshold", float("nan")), ("threshold", float("inf")), ("threshold", "high"), ("threshold", True),
    ("overlay_alpha", 7.0), ("overlay_alpha", -1), ("colormap", "rainbow-unicorn"), ("max_age_ms", -5.0),
    ("out_of_domain_mask", "explode"), ("domain_alarm_frames", 0), ("camera.fuzzraw.threshold", float("inf")),
    ("camera.fuzzjpeg.threshold", "x"), ("no_such_parameter", 1), ("model_path", "/etc/passwd"),
    ("threshold", 1e308), ("overlay_source", 3), ("publish_overlay", "yes"),
]


# ------------------------------------------------------------------------------------------------ node process
def start_node(model: Path, env: dict[str, str]) -> NodeProcess:
    """``dicnet node`` with two cameras, a raw and a compressed one."""
    return NodeProcess(dicnet_node_command(
        "--model", str(model), "--backend", "onnxruntime", "--device", "cpu", "--cameras", f"{RAW},{JPEG}",
        "--ros-args", "-p", f"camera.{JPEG}.image_transport:=compressed", "-p", "input_qos:=reliable"), env)


class Client:
    """This process's DDS side: publishers of both cameras, their masks, and a parameter client."""

    def __init__(self, domain: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        self.rclpy, self.Image, self.CompressedImage = rclpy, Image, CompressedImage
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("fuzz_client", context=self.context)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.raw = self.node.create_publisher(Image, f"/{RAW}/image_raw", reliable)
        self.jpeg = self.node.create_publisher(CompressedImage, f"/{JPEG}/image_raw/compressed", reliable)
        self.lock = threading.Lock()
        self.masks: dict[str, dict[int, tuple[float, int, int]]] = {RAW: {}, JPEG: {}}
        for camera in (RAW, JPEG):
            self.node.create_subscription(Image, f"/{camera}/anomaly_node/anomaly_mask",
                                          lambda msg, c=camera: self._on_mask(c, msg), reliable)
        self.params = AsyncParameterClient(self.node, "/anomaly_node")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_mask(self, camera: str, msg: Any) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.masks[camera][stamp] = (time.monotonic(), msg.height, msg.width)

    def wait_matched(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.raw.get_subscription_count() and self.jpeg.get_subscription_count() and \
                    self.node.count_publishers(f"/{RAW}/anomaly_node/anomaly_mask"):
                return True
            time.sleep(0.05)
        return False

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        from std_msgs.msg import Header

        h = Header(frame_id=frame_id)
        h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        return h

    def send_raw(self, fields: dict[str, Any], stamp_ns: int) -> None:
        msg = self.Image(header=self.header(stamp_ns, "fuzz_raw"))
        for key, value in fields.items():
            setattr(msg, key, value)
        self.raw.publish(msg)

    def send_compressed(self, fmt: str, data: bytes, stamp_ns: int) -> None:
        msg = self.CompressedImage(header=self.header(stamp_ns, "fuzz_jpeg"), format=fmt)
        msg.data = data
        self.jpeg.publish(msg)

    def set_parameter(self, name: str, value: Any) -> None:
        from rclpy.parameter import Parameter

        with contextlib.suppress(Exception):  # rclpy refuses some values on this side already: no attack on the node
            self.params.set_parameters([Parameter(name, value=value)])

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def stream_attack(args: argparse.Namespace, model: Path, env: dict[str, str], verdicts: Verdicts) -> None:
    """The node under a stream of hostile frames, bursts and parameter sets, each followed by a good frame."""
    rng = np.random.default_rng(args.seed)
    node = start_node(model, env)
    client = Client(int(env["ROS_DOMAIN_ID"]))
    sent: dict[str, dict[int, tuple[float, tuple[int, int]]]] = {RAW: {}, JPEG: {}}  # stamp -> (sent at, (h, w))
    bursts: set[int] = set()  # stamps of the (valid, 64x96) burst frames
    try:
        if not node.wait_for("ready:", 120.0) or not client.wait_matched():
            verdicts.crashes.append("node did not start: " + " | ".join(node.lines[-5:]))
            return
        stamp = 1_000_000_000_000

        def good_frame(camera: str) -> None:
            nonlocal stamp
            stamp += 1_000_000
            h, w = (int(v) for v in rng.integers(24, 200, 2))
            rgb = good_rgb(rng, (h, w))
            if camera == RAW:
                client.send_raw({"height": h, "width": w, "encoding": "rgb8", "is_bigendian": 0, "step": w * 3,
                                 "data": rgb.tobytes()}, stamp)
            else:
                client.send_compressed("jpeg", cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes(), stamp)
            sent[camera][stamp] = (time.monotonic(), (h, w))
            verdicts.good_frames += 1

        def await_answer(camera: str, limit: float) -> None:
            """The last good frame of ``camera`` must be answered within ``limit`` s (else: a hang)."""
            last = max(sent[camera])
            sent_at = sent[camera][last][0]
            while time.monotonic() - sent_at < limit:
                with client.lock:
                    answered = client.masks[camera].get(last)
                if answered:
                    verdicts.worst_answer_s = max(verdicts.worst_answer_s, answered[0] - sent_at)
                    return
                time.sleep(0.01)
            verdicts.hangs.append(f"{camera}: good frame {last} not answered within {limit:g} s")

        for camera in (RAW, JPEG):  # warm-up: the steady state
            for _ in range(5):
                good_frame(camera)
                await_answer(camera, 10.0)
        verdicts.hangs.clear()
        time.sleep(1.0)
        verdicts.rss_steady_mb = proc_stats(node.pid)[0]
        deadline = time.monotonic() + args.seconds
        round_ = 0
        while time.monotonic() < deadline:
            round_ += 1
            action = round_ % 5
            if action in (0, 1):
                client.send_raw(hostile_raw(rng), stamp + 1)
                verdicts.hostile_frames += 1
                camera = RAW
            elif action in (2, 3):
                fmt, data = hostile_compressed(rng)
                client.send_compressed(fmt, data, stamp + 1)
                verdicts.hostile_frames += 1
                camera = JPEG
            elif round_ % 15 == 4:  # a reliable burst of good-sized frames
                burst = good_rgb(rng, (64, 96))
                for _ in range(200):
                    client.send_raw({"height": 64, "width": 96, "encoding": "rgb8", "is_bigendian": 0,
                                     "step": 96 * 3, "data": burst.tobytes()}, stamp + 1)
                verdicts.hostile_frames += 200
                bursts.add(stamp + 1)
                camera = RAW
            else:
                name, value = BAD_PARAMETER_VALUES[round_ % len(BAD_PARAMETER_VALUES)]
                client.set_parameter(name, value)
                verdicts.parameter_sets += 1
                camera = RAW if round_ % 2 else JPEG
            good_frame(camera)
            await_answer(camera, args.hang_s)
            verdicts.rss_peak_mb = max(verdicts.rss_peak_mb, proc_stats(node.pid)[0])
            if node.proc.poll() is not None:
                verdicts.crashes.append(f"node exited with {node.proc.returncode} during the stream")
                break
        time.sleep(1.0)
        with client.lock:
            masks = {camera: dict(found) for camera, found in client.masks.items()}
        for camera in (RAW, JPEG):
            for got_stamp, (_, h, w) in masks[camera].items():
                if camera == RAW and got_stamp in bursts:
                    if (h, w) != (64, 96):
                        verdicts.wrong_outputs.append(f"{camera}: mask {h}x{w} for a 64x96 burst frame")
                elif got_stamp not in sent[camera]:
                    verdicts.wrong_outputs.append(f"{camera}: mask for stamp {got_stamp} that was never a good frame")
                elif (h, w) != sent[camera][got_stamp][1]:
                    verdicts.wrong_outputs.append(f"{camera}: mask {h}x{w} for a {sent[camera][got_stamp][1]} frame")
            verdicts.good_answered += sum(1 for s in sent[camera] if s in masks[camera])
    finally:
        client.close()
        code = node.stop()
        log = "\n".join(node.lines)
        if code != 0:
            verdicts.crashes.append(f"node exit code {code} at the end: " + " | ".join(node.lines[-5:]))
        if "Traceback" in log:
            verdicts.crashes.append("traceback in the node's log: " + log[log.index("Traceback"):][:500])
        noise = [line for line in node.lines if line.startswith(("Corrupt JPEG", "libpng", "Premature end"))]
        if len(noise) > 5:
            verdicts.crashes.append(f"{len(noise)} decoder lines on the node's stderr (past its log throttle)")


# ------------------------------------------------------------------------------------------------ start-up
def bad_models(folder: Path, model: Path) -> dict[str, Path]:
    """Broken model files of every kind a disk, a download or a user produces."""
    import onnx

    from dicnet_ros.metadata import METADATA_KEY

    good = model.read_bytes()
    files = {"empty": b"", "truncated": good[: len(good) // 3], "random": os.urandom(4096),
             "flipped": good[:2000] + bytes(b ^ 0xFF for b in good[2000:2100]) + good[2100:]}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(data)
    proto = onnx.load(str(model))
    for name, meta in (("garbage_metadata", "{not json"), ("huge_metadata", None), ("list_metadata", "[1, 2]")):
        entry = next(e for e in proto.metadata_props if e.key == METADATA_KEY)
        original = entry.value
        if meta is None:
            data = json.loads(original)
            data["preprocess"].update(height=60000, width=60000)
            meta = json.dumps(data)
        entry.value = meta
        paths[name] = folder / f"{name}.onnx"
        onnx.save(proto, str(paths[name]))
        entry.value = original
    paths["directory"] = folder / "a_directory.onnx"
    paths["directory"].mkdir()
    return paths


def start_attack(model: Path, env: dict[str, str], folder: Path, verdicts: Verdicts) -> None:
    """Bad parameters and bad model files at start: one FATAL line, no traceback, quick exit."""
    cases: list[list[str]] = [["-p", f"model_path:={path}"] for path in bad_models(folder, model).values()]
    cases += [["-p", f"model_path:={model}", "-p", spec] for spec in (
        "overlay_alpha:=7.0", "threshold:=inf", "backend:=warp-drive", "device:=cuda:banana", "input_depth:=0",
        "cameras:=[a, a]", "cameras:=[1bad]", "max_input_pixels:=-1", "output_qos:=loud", "max_batch:=999")]
    cases.append(["-p", f"model_path:={model}", "-p", "threshold:=abc"])
    entry = "import sys; from dicnet_ros.node.entry import main; sys.exit(main())"
    for case in cases:
        verdicts.start_failures_checked += 1
        try:
            proc = subprocess.run([sys.executable, "-c", entry, "--ros-args", *case], env=env, capture_output=True,
                                  text=True, timeout=60)
        except subprocess.TimeoutExpired:
            verdicts.bad_start.append(f"{case[-1]}: no exit within 60 s")
            continue
        output = proc.stdout + proc.stderr
        fatal = [line for line in output.splitlines() if "[FATAL]" in line]
        if proc.returncode == 0 or "Traceback" in output or len(fatal) != 1:
            verdicts.bad_start.append(f"{case[-1]}: exit {proc.returncode}, {len(fatal)} FATAL line(s)"
                                      + (", a traceback" if "Traceback" in output else "") + f": {output[-300:]}")


def bag_attack(model: Path, env: dict[str, str], folder: Path, verdicts: Verdicts) -> None:
    """Broken bags: one line from bag-eval, non-zero exit, no traceback."""
    bags: dict[str, Path] = {}
    for name in ("random_metadata", "list_metadata", "no_storage", "truncated_mcap", "empty_folder"):
        bag = folder / f"bag_{name}"
        bag.mkdir()
        bags[name] = bag
    (bags["random_metadata"] / "metadata.yaml").write_bytes(os.urandom(2048))
    (bags["list_metadata"] / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: [9]\n"
                                                         "  storage_identifier: [mcap]\n  relative_file_paths: 7\n")
    (bags["no_storage"] / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: 9\n"
                                                      "  storage_identifier: mcap\n  relative_file_paths: [x.mcap]\n")
    (bags["truncated_mcap"] / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: 9\n"
                                                          "  storage_identifier: mcap\n"
                                                          "  relative_file_paths: [t.mcap]\n")
    demo = ROOT / "models" / "demo" / "sim_demo_stream" / "sim_demo_stream.mcap"
    (bags["truncated_mcap"] / "t.mcap").write_bytes(demo.read_bytes()[:50_000] if demo.exists() else b"\x89MCAP0\r\n")
    for name, bag in bags.items():
        verdicts.bad_bags_checked += 1
        out = folder / f"out_{name}"
        try:
            proc = subprocess.run([sys.executable, "-m", "dicnet_ros.cli", "bag-eval", "--bag", str(bag), "--model",
                                   str(model), "--out", str(out), "--no-progress"], env=env, capture_output=True,
                                  text=True, timeout=120)
        except subprocess.TimeoutExpired:
            verdicts.bad_bag.append(f"{name}: no exit within 120 s")
            continue
        output = (proc.stdout + proc.stderr).strip()
        errors = [line for line in output.splitlines() if "error" in line.lower()]
        if proc.returncode == 0 or "Traceback" in output or not errors or out.exists():
            verdicts.bad_bag.append(f"{name}: exit {proc.returncode}: {output[-300:]}")


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "dicnet_sim_default.onnx")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the hostile stream")
    parser.add_argument("--hang-s", type=float, default=2.0)
    parser.add_argument("--memory-mb", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=("stream", "start", "bags"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(100, 200)), "PYTHONUNBUFFERED": "1"}
    verdicts = Verdicts()
    with tempfile.TemporaryDirectory(prefix="dicnet_fuzz_") as tmp:
        folder = Path(tmp)
        if "stream" not in args.skip:
            stream_attack(args, args.model, env, verdicts)
        if "start" not in args.skip:
            start_attack(args.model, env, folder, verdicts)
        if "bags" not in args.skip:
            bag_attack(args.model, env, folder, verdicts)
    ok = verdicts.ok(args.memory_mb)
    rows = [
        ("hostile frames / parameter sets sent", f"{verdicts.hostile_frames} / {verdicts.parameter_sets}", True),
        ("good frames answered", f"{verdicts.good_answered} of {verdicts.good_frames}",
         verdicts.good_answered == verdicts.good_frames),
        (f"hangs (good frame after a hostile one > {args.hang_s:g} s)", str(len(verdicts.hangs)), not verdicts.hangs),
        ("slowest answer after a hostile frame", f"{verdicts.worst_answer_s:.2f} s", not verdicts.hangs),
        ("crashes / tracebacks", str(len(verdicts.crashes)), not verdicts.crashes),
        ("wrong-sized or mis-stamped outputs", str(len(verdicts.wrong_outputs)), not verdicts.wrong_outputs),
        ("node RSS steady / peak", f"{verdicts.rss_steady_mb:.0f} / {verdicts.rss_peak_mb:.0f} MB",
         verdicts.memory_growth_mb <= args.memory_mb),
        ("bad starts (parameters, model files) answered with one FATAL line",
         f"{verdicts.start_failures_checked - len(verdicts.bad_start)} of {verdicts.start_failures_checked}",
         not verdicts.bad_start),
        ("bad bags answered with one error line", f"{verdicts.bad_bags_checked - len(verdicts.bad_bag)} of "
         f"{verdicts.bad_bags_checked}", not verdicts.bad_bag),
    ]
    print("| check | result | ok |\n|---|---|---|")
    for name, value, good in rows:
        print(f"| {name} | {value} | {'yes' if good else 'NO'} |")
    for problem in verdicts.hangs + verdicts.crashes + verdicts.wrong_outputs + verdicts.bad_start + verdicts.bad_bag:
        print(f"- {problem}")
    if args.json:
        args.json.write_text(json.dumps({**verdicts.__dict__, "ok": ok, "seconds": args.seconds}, indent=1,
                                        default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

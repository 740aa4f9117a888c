"""Several cameras: ONE multi-camera node against the same number of single-camera nodes, measured in one run.

    python benchmarks/bench_multicam.py --cameras 1 2 4 8 --seconds 25 --json multicam.json
    python benchmarks/bench_multicam.py --cameras 8 --soak 300        # 8 cameras, 5 minutes, memory over time

Every camera is its own process (``camera`` mode of this script: plain rclpy, reliable, default middleware
settings) publishing 640x360 bgr8 frames at 10 Hz stamped with the wall clock. The node side is either one
``dicnet node --cameras c0,c1,...`` process or N ``dicnet node --namespace cK --image-topic /cK/image_raw``
processes (the shipped large-image Fast DDS profile, as the entry points apply it). This process subscribes to
every camera's ``/cK/anomaly_node/anomaly_mask`` and reports, per setup: frames answered per second per camera
and in all, the slowest camera's rate against the mean (starvation), latency (image stamp -> mask receipt) p50 /
p95 over all cameras and the worst camera's p95, and the node processes' RSS (sum, sampled each second after the
warm-up, peak) and CPU (user + system seconds per wall second, from /proc). The two setups of one camera count run
back to back, the order alternating between counts, so both see the same machine. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from node_process import NodeProcess, dicnet_node_command, proc_stats  # benchmarks/node_process.py

from dicnet_ros.inference.cpu_features import cpu_name
from dicnet_ros.preprocessing import parse_size

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ camera process
def run_camera(topic: str, size: str, rate: float, seconds: float) -> int:
    """One camera: wait for a subscriber, publish frames stamped with the wall clock for ``seconds``."""
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    width, height = parse_size(size)
    rclpy.init()
    node = rclpy.create_node("bench_camera")
    pub = node.create_publisher(Image, topic, QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                                                         reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 120
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let input_qos auto switch to reliable
    frame = np.random.default_rng(abs(hash(topic)) % 2**32).integers(0, 256, (height, width, 3), np.uint8).tobytes()
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        msg = Image(height=height, width=width, encoding="bgr8", is_bigendian=0, step=width * 3)
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        msg.header.frame_id = topic
        msg.data = frame
        pub.publish(msg)
        sent += 1
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    print(json.dumps({"topic": topic, "sent": sent}), flush=True)
    time.sleep(0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


# ------------------------------------------------------------------------------------------------ measuring
class MaskListener:
    """Every camera's masks: receipt time - image stamp (ms), and when they came."""

    def __init__(self, cameras: list[str], domain: int) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("bench_listener", context=self.context)
        self.lock = threading.Lock()
        self.latency: dict[str, list[tuple[float, float]]] = {c: [] for c in cameras}  # (arrival, ms)
        for camera in cameras:
            self.node.create_subscription(Image, f"/{camera}/anomaly_node/anomaly_mask",
                                          lambda msg, c=camera: self._on_mask(c, msg),
                                          QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_mask(self, camera: str, msg: Any) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.latency[camera].append((time.monotonic(), (now - stamp) / 1e6))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


def start_nodes(setup: str, cameras: list[str], model: str, env: dict[str, str]) -> list[NodeProcess]:
    dicnet = dicnet_node_command("--model", model, "--backend", "onnxruntime", "--device", "cpu")
    if setup == "multi":
        commands = [[*dicnet, "--cameras", ",".join(cameras)]]
    else:
        commands = [[*dicnet, "--namespace", c, "--image-topic", f"/{c}/image_raw"] for c in cameras]
    return [NodeProcess(cmd, env, new_session=True) for cmd in commands]


def wait_ready(nodes: list[NodeProcess], timeout: float = 120.0) -> None:
    for node in nodes:
        if not node.wait_for("ready:", timeout):
            raise RuntimeError(f"node did not start (exit code {node.proc.poll()}): {' | '.join(node.lines[-5:])}")


def measure(setup: str, count: int, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    domain = random.randint(100, 200)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("FASTDDS", "FASTRTPS", "DICNET_FASTDDS"))},
           "ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1"}
    cameras = [f"c{i}" for i in range(count)]
    nodes = start_nodes(setup, cameras, args.model, env)
    listener = None
    cams: list[subprocess.Popen] = []
    try:
        wait_ready(nodes)
        listener = MaskListener(cameras, domain)
        cams = [subprocess.Popen([sys.executable, __file__, "camera", "--topic", f"/{c}/image_raw", "--size",
                                  args.size, "--rate", str(args.rate), "--seconds", str(seconds + 2)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cameras]
        time.sleep(args.warmup + 1.5)  # cameras match, settle and warm the node up
        t0, cpu0 = time.monotonic(), sum(proc_stats(p.pid)[1] for p in nodes)
        rss: list[tuple[float, float]] = []
        while time.monotonic() - t0 < seconds - args.warmup:
            rss.append((time.monotonic() - t0, sum(proc_stats(p.pid)[0] for p in nodes)))
            time.sleep(1.0)
        t1, cpu1 = time.monotonic(), sum(proc_stats(p.pid)[1] for p in nodes)
        with listener.lock:
            window = {c: [ms for at, ms in v if t0 <= at <= t1] for c, v in listener.latency.items()}
    finally:
        for node in nodes:  # all at once, then wait for each
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGINT)
        for node in nodes:
            node.stop(signals=0)
        for cam in cams:
            if cam.poll() is None:
                cam.kill()
        if listener is not None:
            listener.close()
    span = t1 - t0
    rates = {c: len(v) / span for c, v in window.items()}
    every = [ms for v in window.values() for ms in v]
    mean_rate = float(np.mean(list(rates.values())))
    return {
        "setup": setup, "cameras": count, "seconds": span,
        "fps_per_camera": rates, "fps_total": sum(rates.values()), "fps_mean": mean_rate,
        "fps_min_over_mean": min(rates.values()) / mean_rate if mean_rate else 0.0,
        "latency_p50_ms": float(np.percentile(every, 50)) if every else float("nan"),
        "latency_p95_ms": float(np.percentile(every, 95)) if every else float("nan"),
        "latency_p95_worst_camera_ms": max((float(np.percentile(v, 95)) for v in window.values() if v),
                                           default=float("nan")),
        "rss_mb_mean": float(np.mean([r for _, r in rss])) if rss else 0.0,
        "rss_mb_peak": max((r for _, r in rss), default=0.0),
        "rss_mb_series": rss,
        "cpu_cores": (cpu1 - cpu0) / span,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "camera":
        parser = argparse.ArgumentParser()
        parser.add_argument("camera")
        parser.add_argument("--topic", required=True)
        parser.add_argument("--size", default="640x360")
        parser.add_argument("--rate", type=float, default=10.0)
        parser.add_argument("--seconds", type=float, default=20.0)
        a = parser.parse_args()
        return run_camera(a.topic, a.size, a.rate, a.seconds)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "dicnet_sim_default.onnx"))
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=25.0, help="measured seconds per setup (after warm-up)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--soak", type=float, default=0.0,
                        help="instead: run ONE multi-camera node with the largest --cameras for this many seconds "
                             "and report its memory over time")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    rows = []
    if args.soak:
        row = measure("multi", max(args.cameras), args, args.soak + args.warmup)
        series = row["rss_mb_series"]
        tail = [r for t, r in series if t >= 0.5 * series[-1][0]] if series else []
        head = [r for t, r in series if t <= 0.25 * series[-1][0]] if series else []
        row["rss_growth_mb"] = (float(np.mean(tail)) - float(np.mean(head))) if head and tail else float("nan")
        rows.append(row)
        print(f"soak {row['cameras']} cameras, {row['seconds']:.0f} s on {machine}: fps per camera min "
              f"{min(row['fps_per_camera'].values()):.2f} / mean {row['fps_mean']:.2f}, RSS first quarter "
              f"{np.mean(head):.0f} MB, second half {np.mean(tail):.0f} MB (growth {row['rss_growth_mb']:+.0f} MB), "
              f"peak {row['rss_mb_peak']:.0f} MB")
    else:
        for i, count in enumerate(args.cameras):
            order = ("multi", "single") if i % 2 == 0 else ("single", "multi")
            pair = {}
            for setup in order:
                pair[setup] = measure(setup, count, args, args.seconds + args.warmup)
                row = pair[setup]
                print(f"measured {count} camera(s), {setup}: {row['fps_total']:.1f} frames/s, RSS "
                      f"{row['rss_mb_mean']:.0f} MB", flush=True)
            rows += [pair["multi"], pair["single"]]
        print(f"\n{args.size} at {args.rate:g} Hz per camera, reliable, each camera its own process; {machine}; "
              f"model {Path(args.model).name} (onnxruntime, CPU)\n")
        print("| cameras | node(s) | frames/s all | frames/s per camera (min / mean) | latency p50 / p95 ms "
              "(worst camera p95) | RSS MB (peak) | CPU cores |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            label = "1 multi-camera node" if row["setup"] == "multi" else f"{row['cameras']} single-camera nodes"
            print(f"| {row['cameras']} | {label} | {row['fps_total']:.1f} | "
                  f"{min(row['fps_per_camera'].values()):.2f} / {row['fps_mean']:.2f} | {row['latency_p50_ms']:.0f} / "
                  f"{row['latency_p95_ms']:.0f} ({row['latency_p95_worst_camera_ms']:.0f}) | {row['rss_mb_mean']:.0f} "
                  f"({row['rss_mb_peak']:.0f}) | {row['cpu_cores']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "size": args.size, "rate": args.rate, "rows": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

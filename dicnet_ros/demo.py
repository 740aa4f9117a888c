"""`make demo` / `dicnet demo`: the real node on the default model over the shipped camera stream.

Nothing here is a shortcut around the product: the stream is a rosbag2 replayed by our player over real DDS
into the real ``AnomalyNode`` (which runs the shipped fused ONNX model through the same inference interface
as on a vehicle), and every output the summary reports comes back over ROS topics. The demo then writes

    demo_out/overlays/frame_NNN.png   the node's ~/overlay frames        demo_out/overlay.gif   the same, animated
    demo_out/output_bag/              input, ground truth and every node output, with the original stamps
    demo_out/summary.json, summary.md frames, FPS, latency p50/p95, drops, AUROC / AUPR / FPR95 of DiCNet and MSP

The metrics pair the node's published score maps (and its MSP baseline map) with the bag's ground-truth
masks by header stamp, so they measure exactly what the node published.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.resources import package_file

DEMO_BAG = "models/demo/sim_demo_stream"
NODE_NAME = "anomaly_node"
GT_TOPIC = "/camera/anomaly_gt"


@dataclass
class _Collected:
    """Outputs of the node, keyed by header stamp (ns)."""

    score: dict[int, np.ndarray] = field(default_factory=dict)
    msp: dict[int, np.ndarray] = field(default_factory=dict)
    overlay: dict[int, np.ndarray] = field(default_factory=dict)
    image_arrival: dict[int, float] = field(default_factory=dict)  # wall clock, s
    score_arrival: dict[int, float] = field(default_factory=dict)
    first_output: float | None = None
    last_output: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _image_array(msg: Any) -> np.ndarray:
    from dicnet_ros.image_conversion import image_msg_to_array

    return np.array(image_msg_to_array(msg), copy=True)


def _collector(node: Any, collected: _Collected, ns: str) -> list[Any]:
    """Subscriptions that keep what the node publishes (reliable, deep enough for the whole stream)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)

    def keep(store: dict[int, np.ndarray], counts_as_output: bool = False):
        def callback(msg: Any) -> None:
            with collected.lock:
                now = time.monotonic()
                stamp = _stamp_ns(msg.header)
                store[stamp] = _image_array(msg)
                if counts_as_output:
                    collected.score_arrival[stamp] = now
                    collected.first_output = collected.first_output or now
                    collected.last_output = now

        return callback

    def image_arrived(msg: Any) -> None:
        with collected.lock:
            collected.image_arrival.setdefault(_stamp_ns(msg.header), time.monotonic())

    return [
        node.create_subscription(Image, f"{ns}/anomaly_score", keep(collected.score, True), qos),
        node.create_subscription(Image, f"{ns}/msp_score", keep(collected.msp), qos),
        node.create_subscription(Image, f"{ns}/overlay", keep(collected.overlay), qos),
        node.create_subscription(Image, f"{ns}/image", image_arrived, qos),
    ]


def _ground_truth(bag: Path, gt_topic: str) -> dict[int, np.ndarray]:
    """Ground-truth masks of the stream by header stamp (255 anomaly, 0 normal, 128 ignore)."""
    from dicnet_ros.bag import decode_gt_mask, deserialize, iter_raw, open_bag, require_topic, stamp_to_ns

    masks: dict[int, np.ndarray] = {}
    with open_bag(bag) as reader:
        conns, msgtype = require_topic(reader, gt_topic)
        for _, _, raw in iter_raw(reader, conns):
            msg = deserialize(raw, msgtype)
            masks[stamp_to_ns(msg.header.stamp)] = decode_gt_mask(msg)
    return masks


def _metrics(scores: dict[int, np.ndarray], gt: dict[int, np.ndarray], score_range: tuple[float, float]) -> dict:
    """Both protocols with the project's one evaluator on the evaluation label (1 anomaly, 255 void)."""
    from dicnet_ros.data.label_encoding import ANOMALY, VOID
    from dicnet_ros.metrics import AnomalyEvaluator

    evaluator = AnomalyEvaluator(anomaly_ids=(ANOMALY,), ignore_ids=(VOID,), score_range=score_range,
                                 keep_exact_pooled=True)
    used = 0
    for stamp, score in sorted(scores.items()):
        mask = gt.get(stamp)
        if mask is None or mask.shape != score.shape[:2]:
            continue
        evaluator.update(score.reshape(mask.shape), mask)
        used += 1
    if used == 0:
        return {"frames": 0}
    result = evaluator.compute()
    return {"frames": used, "per_image": result["per_image"], "pooled": result["pooled"]}


def _write_animation(frames: list[np.ndarray], out_dir: Path) -> Path | None:
    """overlay.gif with Pillow when it is installed, else overlay.mp4 with OpenCV."""
    if not frames:
        return None
    try:
        from PIL import Image as PILImage

        images = [PILImage.fromarray(f) for f in frames]
        path = out_dir / "overlay.gif"
        images[0].save(path, save_all=True, append_images=images[1:], duration=200, loop=0, optimize=True)
        return path
    except ImportError:
        import cv2

        path = out_dir / "overlay.mp4"
        h, w = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (w, h))
        for f in frames:
            writer.write(f[:, :, ::-1])
        writer.release()
        return path


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def render_summary(summary: dict[str, Any]) -> str:
    """The Markdown table printed at the end of the demo (also summary.md)."""
    s = summary
    lines = [
        "## dicnet_ros demo summary",
        "",
        f"- model: `{s['model']}` ({s['backend']} on {s['device']}), threshold {s['threshold']:.4g}",
        f"- stream: `{s['bag']}`, {s['frames_published']} frames, playback speed x{s['speed']:g}",
        f"- node: {s['frames_processed']} frames processed, {s['frames_dropped']} dropped, "
        f"{_fmt(s['fps'])} FPS, latency image->score p50 {_fmt(s['latency_p50_ms'])} ms / "
        f"p95 {_fmt(s['latency_p95_ms'])} ms (wall clock, received frame to received score map)",
        "",
        "| method | protocol | AUROC % | AUPR % | FPR95 % |",
        "|---|---|---|---|---|",
    ]
    for name in ("dicnet", "msp"):
        m = s["metrics"].get(name) or {}
        for protocol in ("per_image", "pooled"):
            p = m.get(protocol) or {}
            lines.append(f"| {'DiCNet' if name == 'dicnet' else 'MSP'} | {protocol} | {_fmt(p.get('auroc'), True)} | "
                         f"{_fmt(p.get('aupr'), True)} | {_fmt(p.get('fpr95'), True)} |")
    lines += ["", f"Outputs in `{s['out_dir']}`: overlays/, {s['animation'] or 'no animation'}, output_bag/, "
              "summary.json"]
    return "\n".join(lines) + "\n"


def run_demo(out_dir: Path, model: str = "", bag: str = "", rate: float = 1.0, backend: str = "auto",
             device: str = "auto", startup_timeout: float = 30.0) -> dict[str, Any]:
    """Replay the demo stream into the node, collect its outputs, write the demo folder, return the summary."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from dicnet_ros.bag import BagRecorder, bag_dataset_info, play_bag
    from dicnet_ros.node import AnomalyNode, NodeStartupError
    from dicnet_ros.node.middleware import apply_large_image_profile

    bag_path = Path(bag) if bag else package_file(DEMO_BAG)
    if not bag_path.exists():
        raise SystemExit(f"demo stream not found: {bag_path}")
    info = bag_dataset_info(bag_path)
    image_topic = info.get("image_topic") or "/camera/image_raw"
    gt_topic = info.get("gt_topic") or GT_TOPIC
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "overlays").mkdir(parents=True)

    ns = f"/{NODE_NAME}"
    # the same DDS settings as `dicnet node`, so other tools on this machine (RViz, ros2 topic) see what a node sees
    print(f"DDS: {apply_large_image_profile()}")
    rclpy.init()
    try:
        params = [Parameter("model_path", value=model), Parameter("backend", value=backend),
                  Parameter("device", value=device), Parameter("publish_msp", value=True),
                  Parameter("use_sim_time", value=True)]  # the node's clock follows the replayed /clock
        try:
            node = AnomalyNode(parameter_overrides=params)
        except NodeStartupError as exc:
            raise SystemExit(f"the node could not start: {exc}") from None
        described = node.model.describe()
        threshold = node.model.threshold
        score_range = node.model.metadata.score_range
        listener = rclpy.create_node("dicnet_demo_listener",
                                     parameter_overrides=[Parameter("use_sim_time", value=True)])
        collected = _Collected()
        subscriptions = _collector(listener, collected, ns)
        recorder = BagRecorder(listener, out_dir / "output_bag", {
            f"{ns}/image": "sensor_msgs/msg/Image",
            gt_topic: "sensor_msgs/msg/Image",
            f"{ns}/anomaly_score": "sensor_msgs/msg/Image",
            f"{ns}/anomaly_mask": "sensor_msgs/msg/Image",
            f"{ns}/overlay": "sensor_msgs/msg/Image",
            f"{ns}/msp_score": "sensor_msgs/msg/Image",
        })
        # one executor per node, as two processes would have: the listener's large copies never delay the
        # node's image callback (rclpy's multi-threaded executor schedules every callback through Python)
        executors = [SingleThreadedExecutor(), SingleThreadedExecutor()]
        executors[0].add_node(node)
        executors[1].add_node(listener)
        spinners = [threading.Thread(target=e.spin, daemon=True) for e in executors]
        for spinner in spinners:
            spinner.start()
        try:
            deadline = time.monotonic() + startup_timeout  # DDS discovery of the node's private topics
            while time.monotonic() < deadline and any(
                    listener.count_publishers(f"{ns}/{t}") == 0 for t in ("anomaly_score", "overlay")):
                time.sleep(0.05)
            print(f"[demo] replaying {bag_path} (speed x{rate:g}) into {ns}/image ...", flush=True)
            started = time.monotonic()
            published = play_bag(bag_path, {image_topic: f"{ns}/image", gt_topic: gt_topic}, rate=rate,
                                 publish_clock=True, clock_hz=20.0, node=listener)
            # (a 100 Hz /clock costs rclpy's time-source callbacks enough CPU here to drop frames)
            frames = published // 2 if gt_topic else published
            idle_deadline = time.monotonic() + 10.0  # let the last frame finish
            while time.monotonic() < idle_deadline and len(collected.score) < frames:
                time.sleep(0.05)
            time.sleep(0.5)
            wall = time.monotonic() - started
            stats = node.stats()
        finally:
            for executor, spinner in zip(executors, spinners, strict=True):
                executor.shutdown()
                spinner.join(timeout=5.0)
            recorder.close()
            for sub in subscriptions:
                listener.destroy_subscription(sub)
            listener.destroy_node()
            node.close()
    finally:
        rclpy.try_shutdown()

    import cv2

    overlays = [collected.overlay[k] for k in sorted(collected.overlay)]
    for i, frame in enumerate(overlays):
        cv2.imwrite(str(out_dir / "overlays" / f"frame_{i:03d}.png"), frame[:, :, ::-1])
    animation = _write_animation(overlays, out_dir)
    gt = _ground_truth(bag_path, gt_topic)
    processed = len(collected.score)
    span = (collected.last_output or 0) - (collected.first_output or 0)
    # end to end on the wall clock: the camera frame reaching a subscriber -> its score map reaching one
    latencies = np.asarray([1e3 * (t - collected.image_arrival[s]) for s, t in collected.score_arrival.items()
                            if s in collected.image_arrival], np.float64)
    summary = {
        "out_dir": str(out_dir),
        "bag": str(bag_path),
        "model": described.get("model"),
        "backend": described.get("backend"),
        "device": described.get("device"),
        "threshold": float(threshold),
        "speed": rate,
        "frames_published": frames,
        "frames_processed": processed,
        "frames_dropped": int(frames - processed),
        "node_stats": stats,
        "fps": (processed - 1) / span if processed > 1 and span > 0 else None,
        "wall_s": wall,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies.size else None,
        "animation": animation.name if animation else None,
        "metrics": {
            "dicnet": _metrics(collected.score, gt, score_range),
            "msp": _metrics(collected.msp, gt, (0.0, 1.0)) if collected.msp else None,
        },
        "metric_notes": "anomaly pixels are positives; per_image = anomaly-seg protocol (mean over frames with "
                        "anomalies), pooled = all pixels of the stream; ground truth from the bag, paired by stamp",
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out_dir / "summary.md").write_text(render_summary(summary))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (replaced on every run)")
    parser.add_argument("--model", default="", help="model file (default: the shipped default model)")
    parser.add_argument("--bag", default="", help=f"camera stream to replay (default: {DEMO_BAG})")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="playback speed (1.0 = as recorded: the shipped stream is 5 frames per second)")
    parser.add_argument("--backend", default="auto", help="auto | onnxruntime | tensorrt | torch")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    summary = run_demo(Path(args.out), args.model, args.bag, args.rate, args.backend, args.device)
    print(render_summary(summary))
    return 0 if summary["frames_processed"] > 0 else 1

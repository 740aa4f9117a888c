"""`make demo` / `dicnet demo`: the real node on the default model over the shipped camera stream.

Nothing here is a shortcut around the product: the stream is a rosbag2 replayed by our player over real DDS
into the real ``AnomalyNode`` (which runs the shipped fused ONNX model through the same inference interface
as on a vehicle), and every output the summary reports comes back over ROS topics. The demo then writes

    demo_out/overlays/frame_NNN.png   the node's ~/overlay frames with the ground truth's outline and a legend
    demo_out/overlay.gif              the same, animated        demo_out/overlay_grid.png   six of them in a grid
    demo_out/output_bag/              input, ground truth and every node output, with the original stamps
    demo_out/summary.json, summary.md frames, FPS, latency p50/p95, drops, AUROC / AUPR / FPR95 of DiCNet and MSP

``--bag`` replays any drive: the camera topic is raw ``Image`` or ``CompressedImage`` (``--image-topic``, else the
one ``make-bag`` recorded, else the bag's only image topic), fed to the node's ``~/image`` or
``~/image/compressed``. The metrics pair the node's published score maps (and its MSP baseline map) with the
bag's ground-truth masks by header stamp (``bag.ground_truth``: the same conventions and tolerance as
``bag-eval``), so they measure exactly what the node published. The output folder is replaced on every run, but
only when the demo wrote it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.metrics.domain import DomainTally, summary_line
from dicnet_ros.resources import package_file

DEMO_BAG = "models/demo/sim_demo_stream"
NODE_NAME = "anomaly_node"
GT_TOPIC = "/camera/anomaly_gt"
GRID_FRAMES, GRID_COLUMNS = 6, 3


@dataclass
class _Collected:
    """Outputs of the node, keyed by header stamp (ns)."""

    score: dict[int, np.ndarray] = field(default_factory=dict)
    msp: dict[int, np.ndarray] = field(default_factory=dict)
    overlay: dict[int, np.ndarray] = field(default_factory=dict)
    domain_score: dict[int, float | None] = field(default_factory=dict)  # from ~/domain; None: the frame had none
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


@dataclass
class DemoStream:
    """The drive the demo replays: where it is, its camera topic (raw or compressed) and its ground truth."""

    bag: Path
    image_topic: str
    compressed: bool
    gt_topic: str
    integrity: Any
    frames: int = 0  # camera messages in the bag
    ground_truth: Any = None  # bag.GroundTruth, None without a ground-truth topic
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # frame stamp -> evaluation label
    no_metrics: str | None = None  # why there are no metrics, when there are none


def open_stream(bag: str = "", image_topic: str = "", gt_topic: str | None = None) -> DemoStream:
    """Check the drive (checksums, topics, ground truth) before any node starts; a problem is a BagError."""
    from dicnet_ros.bag import (
        COMPRESSED_TYPE,
        IMAGE_TYPES,
        BagError,
        bag_dataset_info,
        find_image_topic,
        open_bag,
        read_ground_truth,
        require_topic,
        verify_bag,
    )

    bag_path = Path(bag) if bag else package_file(DEMO_BAG)
    if not bag_path.exists():
        raise BagError(f"demo stream not found: {bag_path}")
    integrity = verify_bag(bag_path)
    info = bag_dataset_info(bag_path)
    gt = info.get("gt_topic") if gt_topic is None else gt_topic
    with open_bag(bag_path) as reader:
        image_topic = image_topic or info.get("image_topic") or find_image_topic(reader, [gt] if gt else [])
        conns, msgtype = require_topic(reader, image_topic, IMAGE_TYPES)
        if gt:
            require_topic(reader, gt)
    stream = DemoStream(bag_path, image_topic, msgtype == COMPRESSED_TYPE, gt or "", integrity,
                        sum(c.msgcount for c in conns))
    if not gt:
        stream.no_metrics = "the bag has no ground-truth topic (--gt-topic)"
        return stream
    try:
        stream.ground_truth, stream.masks = read_ground_truth(bag_path, image_topic, gt)
    except ValueError as exc:  # mask values that fit no convention
        stream.no_metrics = str(exc)
        return stream
    stream.no_metrics = stream.ground_truth.nothing_to_evaluate()
    return stream


#: What the demo writes into its folder (a folder holding nothing else was written by the demo, also before the
#: demo left its marker file).
DEMO_FILES = frozenset({"overlays", "output_bag", "summary.json", "summary.md", "overlay.gif", "overlay.mp4",
                        "overlay_grid.png"})


def is_demo_output(folder: Path) -> bool:
    """A folder the demo wrote: it has the tools' marker, or holds only what the demo writes."""
    from dicnet_ros.bag import is_marked_output

    if is_marked_output(folder):
        return True
    return folder.is_dir() and not folder.is_symlink() and {p.name for p in folder.iterdir()} <= DEMO_FILES


def _prepare_out_dir(out_dir: Path, bag: Path) -> None:
    """Replace the demo's own earlier output; never a folder the demo did not write, nor one holding the bag."""
    from dicnet_ros.bag import check_output, mark_output, refuse_overlap

    refuse_overlap(out_dir, {"the replayed bag": bag})
    check_output(out_dir, overwrite=True, replaceable=is_demo_output)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "overlays").mkdir(parents=True)
    mark_output(out_dir, "dicnet demo")


def _annotate(frames: dict[int, np.ndarray], masks: dict[int, np.ndarray], display_range: tuple[float, float],
              threshold: float) -> list[np.ndarray]:
    """The node's overlays with the ground truth's anomaly outline and a legend, in stamp order."""
    from dicnet_ros.data.label_encoding import ANOMALY
    from dicnet_ros.visualization import draw_outline, score_legend, with_legend

    out = []
    for stamp in sorted(frames):
        frame = frames[stamp]
        mask = masks.get(stamp)
        if mask is not None and mask.shape == frame.shape[:2]:
            frame = draw_outline(frame, mask == ANOMALY)
        legend = score_legend(frame.shape[1], display_range, threshold=threshold,
                              outline_color=(255, 255, 255) if masks else None)
        out.append(with_legend(frame, legend))
    return out


def _overlay_grid(frames: dict[int, np.ndarray], masks: dict[int, np.ndarray], display_range: tuple[float, float],
                  threshold: float) -> np.ndarray | None:
    """Six evenly spaced overlays with their outlines in a 3 x 2 grid above one legend (docs/images)."""
    from dicnet_ros.data.label_encoding import ANOMALY
    from dicnet_ros.visualization import contact_sheet, draw_outline, score_legend, with_legend

    stamps = sorted(frames)
    if not stamps:
        return None
    picks = [stamps[int(i)] for i in np.linspace(0, len(stamps) - 1, min(GRID_FRAMES, len(stamps)))]
    size = frames[picks[0]].shape
    tiles = [draw_outline(frames[s], masks[s] == ANOMALY) if s in masks and masks[s].shape == size[:2] else frames[s]
             for s in picks if frames[s].shape == size]
    sheet = contact_sheet(tiles, min(GRID_COLUMNS, len(tiles)))
    return with_legend(sheet, score_legend(sheet.shape[1], display_range, threshold=threshold,
                                           outline_color=(255, 255, 255) if masks else None))


def _collector(node: Any, collected: _Collected, ns: str, compressed: bool = False) -> list[Any]:
    """Subscriptions that keep what the node publishes (reliable, deep enough for the whole stream)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

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

    def domain_arrived(msg: Any) -> None:
        values = {kv.key: kv.value for status in msg.status for kv in status.values}
        with collected.lock:
            text = values.get("domain_score", "")
            collected.domain_score[_stamp_ns(msg.header)] = float(text) if text else None

    def image_arrived(msg: Any) -> None:
        with collected.lock:
            collected.image_arrival.setdefault(_stamp_ns(msg.header), time.monotonic())

    return [
        node.create_subscription(Image, f"{ns}/anomaly_score", keep(collected.score, True), qos),
        node.create_subscription(Image, f"{ns}/msp_score", keep(collected.msp), qos),
        node.create_subscription(Image, f"{ns}/overlay", keep(collected.overlay), qos),
        node.create_subscription(DiagnosticArray, f"{ns}/domain", domain_arrived, qos),
        node.create_subscription(CompressedImage, f"{ns}/image/compressed", image_arrived, qos) if compressed
        else node.create_subscription(Image, f"{ns}/image", image_arrived, qos),
    ]


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
    ]
    if s.get("domain"):
        lines.append(f"- {summary_line(s['domain'], split_metrics=False)}")
    lines += [f"- {line}" for line in s.get("ground_truth_lines", [])]
    if s.get("no_metrics"):
        lines += [f"- no metrics: {s['no_metrics']}"]
    lines += [
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
    lines += ["", f"Outputs in `{s['out_dir']}`: overlays/, {s['animation'] or 'no animation'}, overlay_grid.png, "
              "output_bag/, summary.json"]
    return "\n".join(lines) + "\n"


def run_demo(out_dir: Path, model: str = "", bag: str = "", rate: float = 1.0, backend: str = "auto",
             device: str = "auto", startup_timeout: float = 30.0, image_topic: str = "",
             gt_topic: str | None = None) -> dict[str, Any]:
    """Replay the demo stream (or ``bag``) into the node, collect its outputs, write the demo folder, return the
    summary. A bag that cannot be replayed (missing, damaged, no such topic) is a ``BagError`` before anything is
    started or written."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from dicnet_ros.bag import BagRecorder, play_bag
    from dicnet_ros.node import AnomalyNode, NodeStartupError
    from dicnet_ros.node.middleware import apply_large_image_profile

    stream = open_stream(bag, image_topic, gt_topic)
    bag_path, gt_topic = stream.bag, stream.gt_topic
    for line in stream.integrity.unverified:
        print(f"[demo] {bag_path} NOT verifiable: {line}")
    if stream.no_metrics:
        print(f"[demo] no metrics: {stream.no_metrics}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, bag_path)
    node_input = f"/{NODE_NAME}/image" + ("/compressed" if stream.compressed else "")

    ns = f"/{NODE_NAME}"
    # the same DDS settings as `dicnet node`, so other tools on this machine (RViz, ros2 topic) see what a node sees
    print(f"DDS: {apply_large_image_profile()}")
    rclpy.init()
    try:
        params = [Parameter("model_path", value=model), Parameter("backend", value=backend),
                  Parameter("device", value=device), Parameter("publish_msp", value=True),
                  Parameter("image_transport", value="compressed" if stream.compressed else "raw"),
                  Parameter("use_sim_time", value=True)]  # the node's clock follows the replayed /clock
        try:
            node = AnomalyNode(parameter_overrides=params)
        except NodeStartupError as exc:
            raise SystemExit(f"the node could not start: {exc}") from None
        described = node.model.describe()
        threshold = node.model.threshold
        domain_threshold = node.model.domain_threshold
        score_range = node.model.metadata.score_range
        display_range = node.model.metadata.display_range  # the node's colours (~/overlay)
        listener = rclpy.create_node("dicnet_demo_listener",
                                     parameter_overrides=[Parameter("use_sim_time", value=True)])
        collected = _Collected()
        subscriptions = _collector(listener, collected, ns, stream.compressed)
        recorder = BagRecorder(listener, out_dir / "output_bag", {
            node_input: "sensor_msgs/msg/CompressedImage" if stream.compressed else "sensor_msgs/msg/Image",
            **({gt_topic: "sensor_msgs/msg/Image"} if gt_topic else {}),
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
                    listener.count_publishers(f"{ns}/{t}") == 0 for t in ("anomaly_score", "overlay", "domain")):
                time.sleep(0.05)
            print(f"[demo] replaying {stream.image_topic} of {bag_path} (speed x{rate:g}) into {node_input} ...",
                  flush=True)
            started = time.monotonic()
            topic_map = {stream.image_topic: node_input, **({gt_topic: gt_topic} if gt_topic else {})}
            published = play_bag(bag_path, topic_map, rate=rate, publish_clock=True, clock_hz=20.0, node=listener)
            # (a 100 Hz /clock costs rclpy's time-source callbacks enough CPU here to drop frames)
            frames = stream.frames if published else 0
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

    gt = stream.masks if not stream.no_metrics else {}
    overlays = _annotate(collected.overlay, gt, display_range, threshold)
    for i, frame in enumerate(overlays):
        cv2.imwrite(str(out_dir / "overlays" / f"frame_{i:03d}.png"), frame[:, :, ::-1])
    animation = _write_animation(overlays, out_dir)
    grid = _overlay_grid(collected.overlay, gt, display_range, threshold)
    if grid is not None:
        cv2.imwrite(str(out_dir / "overlay_grid.png"), grid[:, :, ::-1])
    processed = len(collected.score)
    span = (collected.last_output or 0) - (collected.first_output or 0)
    # end to end on the wall clock: the camera frame reaching a subscriber -> its score map reaching one
    latencies = np.asarray([1e3 * (t - collected.image_arrival[s]) for s, t in collected.score_arrival.items()
                            if s in collected.image_arrival], np.float64)
    domain = DomainTally(domain_threshold)
    for stamp in sorted(collected.domain_score):  # every processed frame, also one whose outputs were withheld
        domain.add(collected.domain_score[stamp])
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
        "domain": domain.summary(),
        "fps": (processed - 1) / span if processed > 1 and span > 0 else None,
        "wall_s": wall,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies.size else None,
        "animation": animation.name if animation else None,
        "image_topic": stream.image_topic,
        "ground_truth": stream.ground_truth.summary() if stream.ground_truth is not None else None,
        "ground_truth_lines": stream.ground_truth.lines() if stream.ground_truth is not None else [],
        "no_metrics": stream.no_metrics,
        "integrity": stream.integrity.summary(),
        "metrics": {
            "dicnet": _metrics(collected.score, gt, score_range) if gt else None,
            "msp": _metrics(collected.msp, gt, (0.0, 1.0)) if collected.msp and gt else None,
        },
        "metric_notes": "anomaly pixels are positives; per_image = anomaly-seg protocol (mean over frames with "
                        "anomalies), pooled = all pixels of the stream; ground truth from the bag, paired by stamp",
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out_dir / "summary.md").write_text(render_summary(summary))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dicnet_ros.cli_options import add_inference_arguments

    parser.add_argument("--out", default="demo_out",
                        help="output folder (replaced on every run; only a folder the demo wrote)")
    add_inference_arguments(parser)
    parser.add_argument("--bag", default="", help=f"camera stream to replay (default: {DEMO_BAG})")
    parser.add_argument("--image-topic", default="",
                        help="the bag's camera topic, Image or CompressedImage (default: the one make-bag recorded, "
                             "else the bag's only image topic besides the ground truth)")
    parser.add_argument("--gt-topic", default=None,
                        help="the bag's ground-truth mask topic (default: the one make-bag recorded; '' = none)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="playback speed (1.0 = as recorded: the shipped stream is 5 frames per second)")


def run(args: argparse.Namespace) -> int:
    from dicnet_ros.installation import missing_dependency_message
    from dicnet_ros.resources import resolve_model

    try:
        from dicnet_ros.bag import BagError
    except ModuleNotFoundError as exc:  # the bag extra (rosbags) replays the stream
        message = missing_dependency_message("demo", exc.name or "")
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2

    os.environ.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    try:
        model = str(resolve_model(args.model))
        summary = run_demo(Path(args.out), model, args.bag, args.rate, args.backend, args.device,
                           image_topic=args.image_topic, gt_topic=args.gt_topic)
    except (BagError, FileNotFoundError, ValueError) as exc:
        print(f"dicnet demo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(render_summary(summary))
    return 0 if summary["frames_processed"] > 0 else 1

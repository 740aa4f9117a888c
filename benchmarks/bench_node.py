"""End-to-end latency of the anomaly node vs bare ``model.infer`` on the same model, in the same run.

    python benchmarks/bench_node.py --model models/dicnet_sim_default.onnx --sizes 640x360 1280x720 [--color]

e2e = publish of a camera ``sensor_msgs/Image`` (rgb8, stamped now) -> receipt of ``~/anomaly_mask`` (and, with
``--color``, of the last of mask, ``~/anomaly_score_color`` and ``~/overlay``: "e2e all"), through real DDS and
the rclpy executors (the node and the bench's camera/consumer node are separate rclpy nodes in this process; rclpy
has no intra-process shortcut). So the transport a user experiences is inside e2e. Frames are sent one at a time
(the next after every awaited output arrived, plus a short pause): this is latency, not queueing.

Overheads (each p50 and p95, in ms):
- ovh: quantile differences, e2e p50 - bare p50 (p95 likewise). Bare inference is timed on the very same
  ``AnomalyModel`` object, one bare call interleaved with each e2e frame, so both see the same machine load.
- paired: per frame, e2e - the bare call of the same iteration; then p50 / p95 over frames.
- exact: per frame, e2e - the duration of the node's own ``model.infer`` call for that frame (the bench wraps
  it): what remains is transport in and out, executor wake-ups, decoding, resizing, message building and
  publishing. It does not suffer from run-to-run inference jitter, which on a busy CPU is larger than the
  overhead itself.

``--cross-process`` measures what a camera in ANOTHER process sees (the normal case on a vehicle): the node runs
as its own console entry point (``dicnet_ros.node.cli``), this process is the camera (default middleware
settings) and the consumer of ``~/anomaly_mask``; per size it reports publish -> mask latency for each camera
reliability and node DDS setting (the shipped large-image profile, or none), next to the in-process e2e of the
same model in the same run, and how many frames got no answer within 3 s.

The project's bar: node overhead <= max(10 % of inference, 5 ms). "ok" needs both paired p50 and exact p50 within
it (with --color: the "e2e all" versions). Without ``--model`` a random-weight "lite" model (the shipped demo
architecture) is exported to a temporary folder (needs the training extras). The node tunes glibc's allocator
(see ``dicnet_ros.node.tune_allocator``), as it does in its own process; ``--no-allocator-tuning`` shows the cost
of not doing so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.preprocessing import parse_size


def build_lite_model(folder: Path, network: tuple[int, int]) -> Path:
    """Random-weight lite DiCNet exported as fused ONNX with a dynamic input size."""
    from dicnet_training.export import ExportOptions, export_onnx

    from dicnet_ros.inference.random_models import random_checkpoint

    ckpt = random_checkpoint(folder / "lite.pt", "lite", network, num_classes=13)
    return export_onnx(ckpt, folder / "lite.onnx", ExportOptions(dynamic=True)).onnx_path


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "mean": float(a.mean()),
            "n": len(values)}


def time_bare(model: Any, image: np.ndarray, frames: int) -> list[float]:
    """Milliseconds of ``frames`` bare ``model.infer`` calls (no ROS anywhere)."""
    out = []
    for _ in range(frames):
        start = time.perf_counter()
        model.infer(image)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def _stamp_key(msg: Any) -> int:
    """Frames are matched by their stamp: the node copies the input header to every output."""
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def run_size(model: Any, size: tuple[int, int], frames: int, warmup: int, color: bool,
             domain_id: int) -> dict[str, Any]:
    """One resolution: interleaved bare inference and e2e frames; returns the row of the report."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from dicnet_ros.image_conversion import array_to_image_msg
    from dicnet_ros.node import AnomalyNode

    width, height = size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    bare = time_bare(model, image, warmup + 3)  # warm-up; also sets the pause between frames

    # the node's own inference time per frame (frames go one at a time, so the last call is this frame's)
    node_infer: list[float] = []
    infer = model.infer

    def timed_infer(img: np.ndarray) -> Any:
        start = time.perf_counter()
        try:
            return infer(img)
        finally:
            node_infer.append((time.perf_counter() - start) * 1e3)

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = AnomalyNode(model=model, context=context, parameter_overrides=[Parameter("warmup", value=False)])
    # an instance attribute shadowing the method: the node's calls are timed, the bare calls below use ``infer``
    # (the method itself); deleted after the run
    model.infer = timed_infer
    bench = Node("bench_camera", context=context)
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pub = bench.create_publisher(Image, "/anomaly_node/image", reliable)
    topics = ["anomaly_mask", *(("anomaly_score_color", "overlay") if color else ())]
    received: dict[str, dict[int, float]] = {t: {} for t in topics}
    lock = threading.Lock()
    arrived = threading.Condition(lock)

    def receiver(topic: str) -> Any:
        def on_msg(msg: Any) -> None:
            now = time.perf_counter()
            with arrived:
                received[topic][_stamp_key(msg)] = now
                arrived.notify_all()
        return on_msg

    for topic in topics:  # colour / overlay are lazy: subscribing them makes the node compute them
        bench.create_subscription(Image, f"/anomaly_node/{topic}", receiver(topic), reliable)
    # like production: the node on its own single-threaded executor; the camera/consumer on another
    executors = [SingleThreadedExecutor(context=context) for _ in range(2)]
    executors[0].add_node(node)
    executors[1].add_node(bench)
    spins = [threading.Thread(target=ex.spin, daemon=True) for ex in executors]
    for spin in spins:
        spin.start()
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the node see every output subscriber too (lazy outputs)
    pause = 0.2 * float(np.median(bare)) / 1e3 + 0.005
    e2e_mask: list[float] = []
    e2e_all: list[float] = []
    bare = []
    inner: list[float] = []
    lost = 0
    for i in range(warmup + frames):
        # one bare inference and one e2e frame per iteration: both see the same machine load
        bare_ms = _time_call(infer, image)  # the model's own method, not the timed wrapper
        time.sleep(pause)
        msg = array_to_image_msg(image, "rgb8")
        msg.header.frame_id = "camera"
        msg.header.stamp = node.get_clock().now().to_msg()
        key = _stamp_key(msg)
        calls = len(node_infer)
        sent = time.perf_counter()
        pub.publish(msg)
        with arrived:
            complete = arrived.wait_for(lambda k=key: all(k in received[t] for t in topics), timeout=10.0)
        if not complete or len(node_infer) != calls + 1:
            lost += 1
            continue
        if i >= warmup:
            e2e_mask.append((received["anomaly_mask"][key] - sent) * 1e3)
            e2e_all.append((max(received[t][key] for t in topics) - sent) * 1e3)
            bare.append(bare_ms)
            inner.append(node_infer[-1])
        time.sleep(pause)
    del model.infer  # back to the class's method
    node_stats = node.stats()
    node_timings = node.timings()[-len(e2e_mask):] if e2e_mask else []
    for ex in executors:
        ex.shutdown(timeout_sec=2.0)
    node._owns_model = False
    node.close()
    bench.destroy_node()
    rclpy.shutdown(context=context)
    for spin in spins:
        spin.join(timeout=5)

    b = stats(bare)
    budget = max(0.10 * b["p50"], 5.0)
    row: dict[str, Any] = {"size": f"{width}x{height}", "color": color, "bare_ms": b, "node_infer_ms": stats(inner),
                           "budget_ms": budget, "lost": lost, "node_stats": node_stats,
                           "node_work_besides_inference_ms": stats([t[1] for t in node_timings])
                           if node_timings else {}}
    for name, e2e in (("mask", e2e_mask), ("all", e2e_all)):
        e = stats(e2e)
        row[name] = {
            "e2e_ms": e,
            "overhead_ms": {q: e[q] - b[q] for q in ("p50", "p95")},
            "paired_overhead_ms": stats([x - y for x, y in zip(e2e, bare, strict=True)]),
            "exact_overhead_ms": stats([x - y for x, y in zip(e2e, inner, strict=True)]),
        }
    held = row["all"]
    row["within_budget"] = max(held["paired_overhead_ms"]["p50"], held["exact_overhead_ms"]["p50"]) <= budget
    return row


def _node_process(model_path: Path, backend: str, device: str, threads: int, domain_id: int,
                  profile: str) -> Any:
    """The node as its own process (its entry point, so it applies its DDS profile itself); waits for 'ready'."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if "PROFILES_FILE" not in k}
    env.update(ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1", DICNET_FASTDDS_PROFILE=profile)
    args = ["--ros-args", "-p", f"model_path:={model_path}", "-p", f"backend:={backend}", "-p", f"device:={device}",
            "-p", "warmup:=true", "-r", "~/image:=/bench/image_raw"]
    if threads:
        args += ["-p", f"num_threads:={threads}"]
    code = "import sys; from dicnet_ros.node.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 120
    while not any("ready:" in line for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("node process did not start:\n" + "".join(lines[-20:]))
        time.sleep(0.1)
    return proc


def run_cross_process(model_path: Path, sizes: list[tuple[int, int]], frames: int, warmup: int, backend: str,
                      device: str, threads: int, domain_id: int, cases: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """publish -> ~/anomaly_mask latency with the node in another process, per (profile, camera reliability)."""
    import signal

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from dicnet_ros.image_conversion import array_to_image_msg

    rows = []
    for profile, reliability in cases:
        proc = _node_process(model_path, backend, device, threads, domain_id, profile)
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain_id)
        bench = rclpy.create_node("bench_camera", context=context)
        rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        pub = bench.create_publisher(Image, "/bench/image_raw", QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=5 if reliability == "reliable" else 1, reliability=rel))
        received: dict[int, float] = {}
        arrived = threading.Condition()

        def on_mask(msg: Any, received: dict[int, float] = received, arrived: Any = arrived) -> None:
            now = time.perf_counter()
            with arrived:
                received[_stamp_key(msg)] = now
                arrived.notify_all()

        bench.create_subscription(Image, "/anomaly_node/anomaly_mask", on_mask,
                                  QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(bench)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        deadline = time.monotonic() + 20
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)  # input_qos auto follows the camera's reliability (re-subscribes within 0.5 s)
        for width, height in sizes:
            image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
            e2e: list[float] = []
            lost = 0
            for i in range(warmup + frames):
                msg = array_to_image_msg(image, "rgb8")
                msg.header.frame_id = "camera"
                msg.header.stamp = bench.get_clock().now().to_msg()
                key = _stamp_key(msg)
                sent = time.perf_counter()
                pub.publish(msg)
                with arrived:
                    ok = arrived.wait_for(lambda k=key, got=received: k in got, timeout=3.0)
                if not ok:
                    lost += i >= warmup
                elif i >= warmup:
                    e2e.append((received[key] - sent) * 1e3)
                time.sleep(0.05)
            rows.append({"size": f"{width}x{height}", "mode": "cross-process", "camera": reliability,
                         "node_dds": "shipped profile" if profile == "" else profile, "frames": frames,
                         "unanswered": lost, "e2e_ms": stats(e2e) if e2e else {}})
        executor.shutdown(timeout_sec=2.0)
        bench.destroy_node()
        rclpy.shutdown(context=context)
        spin.join(timeout=5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    return rows


def _time_call(infer: Any, image: np.ndarray) -> float:
    """Milliseconds of one ``infer(image)`` call."""
    start = time.perf_counter()
    infer(image)
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model file (default: a random-weight lite model)")
    parser.add_argument("--network", type=parse_size, default=(320, 184),
                        help="network size WxH of the generated lite model (default 320x184)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="runtime threads (0 = default)")
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(640, 360), (1280, 720)])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--color", action="store_true", help="also subscribe the colour and overlay outputs")
    parser.add_argument("--no-allocator-tuning", action="store_true",
                        help="keep glibc's default allocator thresholds (sets DICNET_MALLOC_TUNING=0)")
    parser.add_argument("--cross-process", action="store_true",
                        help="also run the node in its own process and the camera here (default DDS settings): "
                             "publish -> mask latency per camera reliability and node DDS profile")
    parser.add_argument("--json", type=Path, default=Path("bench_node.json"))
    args = parser.parse_args(argv)
    if args.no_allocator_tuning:
        os.environ["DICNET_MALLOC_TUNING"] = "0"

    from dicnet_ros.inference import load_model

    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or build_lite_model(Path(tmp), args.network)
        options = {"threads": args.threads} if args.threads else {}
        model = load_model(model_path, args.backend, args.device, **options)
        model.warmup()
        domain = random.randint(1, 200)
        rows = [run_size(model, size, args.frames, args.warmup, args.color, domain) for size in args.sizes]
        info = model.describe()
        model.close()
        cross = []
        if args.cross_process:
            cases = [("", "reliable"), ("", "best_effort"), ("none", "reliable"), ("none", "best_effort")]
            cross = run_cross_process(Path(model_path), args.sizes, args.frames, args.warmup, args.backend,
                                      args.device, args.threads, domain + 1, cases)

    try:
        from dicnet_ros.node import tune_allocator
        allocator = tune_allocator()
    except ImportError:  # an older node without it
        allocator = "default (node does not tune it)"
    print(f"model {info.get('model')} ({info.get('backend')} on {info.get('device')}), "
          f"{'with' if args.color else 'without'} colour/overlay subscribers, allocator: {allocator}; times in ms")
    print("ovh = e2e p - bare p; paired = per-frame e2e - bare of the same iteration; exact = per-frame e2e - the "
          "node's own infer call; in-node = node work besides inference (its diagnostics); ok = paired and exact "
          "p50 <= budget" + (" (on 'all' = last of mask, colour, overlay)" if args.color else ""))
    header = (f"{'size':>10} {'output':>6} | {'e2e p50':>7} {'p95':>6} | {'bare p50':>8} {'p95':>6} | "
              f"{'ovh p50':>7} {'p95':>6} | {'paired p50':>10} {'p95':>6} | {'exact p50':>9} {'p95':>6} | "
              f"{'in-node':>7} | {'budget':>6} | ok")
    print(header)
    print("-" * len(header))
    for r in rows:
        for name in ("mask", "all") if args.color else ("mask",):
            o = r[name]
            print(f"{r['size']:>10} {name:>6} | {o['e2e_ms']['p50']:7.2f} {o['e2e_ms']['p95']:6.2f} | "
                  f"{r['bare_ms']['p50']:8.2f} {r['bare_ms']['p95']:6.2f} | {o['overhead_ms']['p50']:7.2f} "
                  f"{o['overhead_ms']['p95']:6.2f} | {o['paired_overhead_ms']['p50']:10.2f} "
                  f"{o['paired_overhead_ms']['p95']:6.2f} | {o['exact_overhead_ms']['p50']:9.2f} "
                  f"{o['exact_overhead_ms']['p95']:6.2f} | "
                  f"{r['node_work_besides_inference_ms'].get('p50', float('nan')):7.2f} | {r['budget_ms']:6.2f} | "
                  f"{'yes' if r['within_budget'] else 'NO'}{f' ({lost} lost)' if (lost := r['lost']) else ''}")
    if cross:
        print("\ncross-process: camera (this process, default DDS settings) -> node process -> mask back here; ms")
        head = (f"{'size':>10} | {'camera':>11} | {'node DDS':>15} | {'e2e p50':>7} {'p95':>6} | unanswered | "
                "in-process p50")
        print(head)
        print("-" * len(head))
        in_process = {r["size"]: r["mask"]["e2e_ms"]["p50"] for r in rows}
        for r in cross:
            e = r["e2e_ms"]
            print(f"{r['size']:>10} | {r['camera']:>11} | {r['node_dds']:>15} | {e.get('p50', float('nan')):7.2f} "
                  f"{e.get('p95', float('nan')):6.2f} | {r['unanswered']:>4} of {r['frames']:<3} | "
                  f"{in_process.get(r['size'], float('nan')):7.2f}")
    args.json.write_text(json.dumps({"model": info, "allocator": allocator, "rows": rows, "cross_process": cross},
                                    indent=2))
    print(f"wrote {args.json}")
    return 0 if all(r["within_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

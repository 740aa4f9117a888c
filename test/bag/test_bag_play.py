"""Replay into ROS (bag/play.py): play_bag publishes /clock and the bag's messages, BagRecorder records them, and
the real node on use_sim_time, fed by play_bag, scores each frame as bag-eval does. Needs rclpy (skipped without)."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from bag_helpers import RATE, T0, H, W, _make, _read_topic

from dicnet_ros import bag as bagmod
from dicnet_ros.cli import main as dicnet


def _ros_context():
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("rosgraph_msgs.msg")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=random.randint(1, 200))
    return rclpy, ctx


def _spin(rclpy, ctx, nodes):
    from rclpy.executors import MultiThreadedExecutor

    executor = MultiThreadedExecutor(context=ctx)
    for node in nodes:
        executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return executor, thread


def test_play_bag_publishes_clock_and_messages(dataset: Path, tmp_path: Path) -> None:
    rclpy, ctx = _ros_context()
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    bag = _make(dataset, tmp_path / "drive")
    listener = rclpy.create_node("listener", context=ctx,
                                 parameter_overrides=[Parameter("use_sim_time", value=True)])
    player = rclpy.create_node("player", context=ctx)
    got: list[tuple[int, int, int]] = []
    listener.create_subscription(
        Image, "/cam", lambda m: got.append((bagmod.stamp_to_ns(m.header.stamp),
                                             listener.get_clock().now().nanoseconds, len(m.data))),
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    recorder = bagmod.BagRecorder(listener, tmp_path / "rec", {"/cam": bagmod.IMAGE_TYPE})
    executor, thread = _spin(rclpy, ctx, [listener])
    try:
        n = bagmod.play_bag(bag, {"/camera/image_raw": "/cam"}, rate=10.0, node=player)
        deadline = time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        executor.shutdown()
        thread.join(5)
        recorder.close()
        listener.destroy_node()
        player.destroy_node()
        rclpy.shutdown(context=ctx)
    expected = [T0 + round(i * 1e9 / RATE) for i in range(4)]
    assert n == 4
    assert [g[0] for g in got] == expected
    assert all(g[2] == W * H * 3 for g in got)
    assert all(g[1] >= T0 for g in got)  # the listener's clock is the bag's (simulated) time
    recorded = _read_topic(tmp_path / "rec", "/cam")
    assert [bagmod.stamp_to_ns(m.header.stamp) for _, m in recorded] == expected
    assert all(t >= T0 for t, _ in recorded)


def test_node_replay_with_sim_time(dataset: Path, tmp_path: Path, tiny_onnx: Path, model) -> None:
    """The real node on use_sim_time, fed by play_bag; its recorded scores equal bag-eval's for each frame."""
    node_mod = pytest.importorskip("dicnet_ros.node.anomaly_node")
    rclpy, ctx = _ros_context()
    from rclpy.parameter import Parameter

    bag = _make(dataset, tmp_path / "drive")
    sim = [Parameter("use_sim_time", value=True)]
    node = node_mod.AnomalyNode(model=model, context=ctx, parameter_overrides=[
        *sim, Parameter("warmup", value=False), Parameter("input_qos", value="reliable"),
        Parameter("input_depth", value=10)])
    rec_node = rclpy.create_node("recorder", context=ctx, parameter_overrides=sim)
    player = rclpy.create_node("player", context=ctx)
    recorder = bagmod.BagRecorder(rec_node, tmp_path / "node_out", {
        "/anomaly_node/anomaly_score": bagmod.IMAGE_TYPE, "/camera/anomaly_gt": bagmod.IMAGE_TYPE})
    executor, thread = _spin(rclpy, ctx, [node, rec_node])
    try:
        bagmod.play_bag(bag, {"/camera/image_raw": "/anomaly_node/image", "/camera/anomaly_gt": "/camera/anomaly_gt"},
                        rate=2.0, node=player)
        deadline = time.monotonic() + 10
        while recorder.counts["/anomaly_node/anomaly_score"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        executor.shutdown()
        thread.join(5)
        recorder.close()
        node.close()
        rec_node.destroy_node()
        player.destroy_node()
        rclpy.shutdown(context=ctx)
    assert recorder.counts["/anomaly_node/anomaly_score"] >= 3  # the node may drop a stale frame, never garble one
    out = tmp_path / "node_eval"
    rc = dicnet(["bag-eval", "--bag", str(tmp_path / "node_out"), "--score-topic", "/anomaly_node/anomaly_score",
                 "--gt-topic", "/camera/anomaly_gt", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["dicnet"]["pooled"]["auroc"] is not None
    from dicnet_ros.image_conversion import image_msg_to_array, image_msg_to_rgb

    inputs = {bagmod.stamp_to_ns(m.header.stamp): m for _, m in _read_topic(bag, "/camera/image_raw")}
    for _, score in _read_topic(tmp_path / "node_out", "/anomaly_node/anomaly_score"):
        image = image_msg_to_rgb(inputs[bagmod.stamp_to_ns(score.header.stamp)])
        np.testing.assert_array_equal(image_msg_to_array(score), model.infer(image).anomaly_score)
    shutil.rmtree(out)

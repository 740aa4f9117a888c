"""`dicnet make-bag` on every real-benchmark layout (the ground truth in the bag's mask convention, read back
exactly, images unchanged) and `dicnet bag-eval` with the benchmark protocol, equal to `dicnet evaluate` on the
same frames."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test/real_fixtures.py

from bag_helpers import _eval, _make, _read_topic
from real_fixtures import (
    make_anomaly_folder,
    make_fishyscapes_pebal,
    make_fishyscapes_smiyc,
    make_lost_and_found,
    make_road_anomaly,
    make_smiyc,
)

from dicnet_ros.bag.messages import image_msg_rgb, read_gt_mask
from dicnet_ros.bag.read import bag_dataset_info
from dicnet_ros.cli import main as dicnet
from dicnet_ros.data import open_dataset
from dicnet_ros.data.label_encoding import resolve_encoding


def bag_convention(label: np.ndarray) -> np.ndarray:
    """Evaluation label (0 / 1 / 255) -> the bag's mask (0 normal, 255 anomaly, 128 ignore)."""
    return np.select([label == 1, label == 255], [255, 128], 0).astype(np.uint8)


def test_make_bag_reads_every_benchmark_layout_back_exactly(tmp_path: Path) -> None:
    """Every layout, the ObstacleTrack with a 1920x1080 WebP frame: masks and pixels come back exactly."""
    laf = tmp_path / "dataset_LostAndFound"
    make_lost_and_found(laf, real_size_frame=False)
    layouts = {
        "smiyc_anomaly": (make_smiyc(tmp_path / "smiyc_a", "anomaly"), tmp_path / "smiyc_a", []),
        "smiyc_obstacle": (make_smiyc(tmp_path / "smiyc_o", "obstacle", frames=("validation_1", "validation_2"),
                                      unlabelled=(), real_size_frame=True), tmp_path / "smiyc_o", []),
        "lost_and_found": (None, laf, []),
        "fishyscapes_smiyc": (make_fishyscapes_smiyc(tmp_path / "fishy", laf), tmp_path / "fishy",
                              ["--laf-root", str(laf)]),
        "fishyscapes_pebal": (make_fishyscapes_pebal(tmp_path / "fs_pebal"), tmp_path / "fs_pebal", []),
        "road_anomaly": (make_road_anomaly(tmp_path / "ra"), tmp_path / "ra", []),
        "anomaly_folder": (make_anomaly_folder(tmp_path / "mine", anomaly_value=2), tmp_path / "mine",
                           ["--anomaly-values", "2", "--void-values", "255"]),
    }
    for name, (_, root, extra) in layouts.items():
        bag = _make(root, tmp_path / f"bag_{name}", *extra)
        options = {"fishyscapes_smiyc": {"laf_root": laf},
                   "anomaly_folder": {"encoding": resolve_encoding(None, "2", "255")[0]}}.get(name, {})
        ds = open_dataset(root, "test", **options)
        gts = [read_gt_mask(msg) for _, msg in _read_topic(bag, "/camera/anomaly_gt")]
        images = [image_msg_rgb(msg, "sensor_msgs/msg/Image") for _, msg in _read_topic(bag, "/camera/image_raw")]
        assert len(gts) == len(ds) == len(images) > 0, name
        for i in range(len(ds)):
            sample = ds[i]
            np.testing.assert_array_equal(gts[i], bag_convention(sample.label), err_msg=name)
            np.testing.assert_array_equal(images[i], sample.image, err_msg=name)
            assert (sample.label == 1).any(), name  # every fixture frame shows an anomaly
    tracks = {name: bag_dataset_info(tmp_path / f"bag_{name}")["component_track"] for name in layouts}
    assert tracks == {"smiyc_anomaly": "anomaly", "smiyc_obstacle": "obstacle", "lost_and_found": "obstacle",
                      "fishyscapes_smiyc": "anomaly", "fishyscapes_pebal": "anomaly", "road_anomaly": "anomaly",
                      "anomaly_folder": "anomaly"}


def test_bag_eval_benchmark_protocol_equals_evaluate(tiny_onnx: Path, tmp_path: Path) -> None:
    """ObstacleTrack: make-bag records the obstacle track, bag-eval applies it, and its numbers are `dicnet
    evaluate --model`'s on the same frames (raw rgb8 frames carry the pixels unchanged)."""
    make_smiyc(tmp_path / "data", "obstacle", frames=("validation_1", "validation_2"), unlabelled=(),
               size=(90, 160))
    bag = _make(tmp_path / "data", tmp_path / "drive")
    assert _eval(bag, tmp_path / "bag_eval", tiny_onnx, "--no-out-bag") == 0
    bag_metrics = json.loads((tmp_path / "bag_eval" / "metrics.json").read_text())
    assert bag_metrics["component_track"] == "obstacle"
    assert dicnet(["evaluate", "--model", str(tiny_onnx), "--data", str(tmp_path / "data"),
                   "--out", str(tmp_path / "direct"), "--no-progress"]) == 0
    direct = json.loads((tmp_path / "direct" / "report.json").read_text())
    assert direct["info"]["track"] == "obstacle"
    for method in ("dicnet", "msp", "maxlogit"):
        got, want = bag_metrics["metrics"]["benchmark"][method], direct["benchmark"][method]
        assert got["pixel"] == want["pixel"], method
        assert got["components"] == want["components"], method
    assert got["components"]["num_frames"] == 2
    report = (tmp_path / "bag_eval" / "report.md").read_text()
    assert "## Benchmark protocol (component track obstacle)" in report
    # --track overrides the recorded one
    assert _eval(bag, tmp_path / "bag_eval_anomaly", tiny_onnx, "--no-out-bag", "--track", "anomaly") == 0
    assert json.loads((tmp_path / "bag_eval_anomaly" / "metrics.json").read_text())["component_track"] == "anomaly"

"""`dicnet demo` end to end: the real node over real DDS, fed by the shipped stream, writes the demo folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")  # the demo replays a bag (bag extra)

from dicnet_ros.demo import DEMO_BAG, render_summary, run_demo
from dicnet_ros.resources import package_file


def test_demo_stream_ships_with_ground_truth() -> None:
    from dicnet_ros.bag import bag_dataset_info, iter_images

    bag = package_file(DEMO_BAG)
    info = bag_dataset_info(bag)
    assert info["image_topic"] == "/camera/image_raw" and info["gt_topic"] == "/camera/anomaly_gt"
    frames = list(iter_images(bag, info["image_topic"]))
    assert len(frames) == 30 and frames[0].rgb.shape == (216, 384, 3)


@pytest.mark.slow
def test_demo_runs_the_node_and_writes_every_output(tiny_onnx: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    out = tmp_path / "demo_out"
    summary = run_demo(out, model=str(tiny_onnx), rate=2.0)
    assert summary["frames_published"] == 30
    assert summary["frames_processed"] >= 20  # best-effort camera QoS may drop a frame on a loaded machine
    assert summary["frames_processed"] + summary["frames_dropped"] == 30
    assert summary["latency_p50_ms"] is not None and summary["latency_p50_ms"] >= 0
    for name in ("dicnet", "msp"):
        metrics = summary["metrics"][name]
        assert metrics["frames"] == summary["frames_processed"]
        for protocol in ("per_image", "pooled"):
            assert 0.0 <= metrics[protocol]["auroc"] <= 1.0 and np.isfinite(metrics[protocol]["aupr"])
    overlays = sorted((out / "overlays").glob("frame_*.png"))
    assert len(overlays) == summary["frames_processed"]
    assert (out / "overlay.gif").stat().st_size > 0 or (out / "overlay.mp4").stat().st_size > 0
    assert (out / "output_bag" / "metadata.yaml").is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["frames_processed"] == summary["frames_processed"]
    assert "| DiCNet | per_image |" in render_summary(summary)
    domain = summary["domain"]  # every processed frame's ~/domain message arrived (else: not available)
    assert domain["available"] and domain["frames"] == summary["frames_processed"]
    assert "Out-of-domain alarm:" in render_summary(summary)


def _user_bag(path: Path, frames: int = 6) -> Path:
    """A drive as a user records it: jpeg CompressedImage on their own topic, 0/1 masks stamped 3 ms late."""
    pytest.importorskip("rosbags")
    from rosbags.rosbag2 import Writer

    from dicnet_ros import bag as bagmod

    rng = np.random.default_rng(5)
    ts = bagmod.typestore()
    writer = Writer(path, version=bagmod.BAG_VERSION, storage_plugin=bagmod.STORAGES["mcap"])
    with writer:
        cam = writer.add_connection("/front/camera/compressed", bagmod.COMPRESSED_TYPE, typestore=ts)
        gt = writer.add_connection("/front/mask", bagmod.IMAGE_TYPE, typestore=ts)
        for i in range(frames):
            stamp = 1_700_000_000_000_000_000 + i * 200_000_000
            image = np.full((64, 96, 3), 90, np.uint8)
            mask = np.zeros((64, 96), np.uint8)
            y, x = int(rng.integers(5, 40)), int(rng.integers(5, 60))
            image[y:y + 14, x:x + 20] = rng.integers(0, 255, 3)
            mask[y:y + 14, x:x + 20] = 1
            writer.write(cam, stamp, ts.serialize_cdr(bagmod.rgb_to_bag_compressed(image, "jpeg", stamp, "f"),
                                                      bagmod.COMPRESSED_TYPE))
            writer.write(gt, stamp, ts.serialize_cdr(bagmod.array_to_bag_image(mask, "mono8", stamp + 3_000_000, "f"),
                                                     bagmod.IMAGE_TYPE))
    return path


@pytest.mark.slow
def test_demo_replays_any_camera_topic_of_a_users_bag(tiny_onnx: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`dicnet demo --bag` used to work only for /camera/image_raw (others: a traceback): a compressed camera on
    the user's own topic (found in the bag once the masks are named), with 0/1 masks a few ms off, gives overlays
    and metrics."""
    from dicnet_ros.visualization import LEGEND_HEIGHT

    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(1, 200)))
    bag = _user_bag(tmp_path / "drive")
    summary = run_demo(tmp_path / "out", model=str(tiny_onnx), bag=str(bag), rate=2.0, gt_topic="/front/mask")
    assert summary["image_topic"] == "/front/camera/compressed" and summary["frames_published"] == 6
    assert summary["frames_processed"] >= 4
    assert summary["ground_truth"]["convention"] == "0-1" and summary["ground_truth"]["pairing"]["paired"] == 6
    assert summary["metrics"]["dicnet"]["frames"] == summary["frames_processed"]
    import cv2

    frame = cv2.imread(str(tmp_path / "out" / "overlays" / "frame_000.png"))
    assert frame.shape == (64 + LEGEND_HEIGHT, 96, 3)
    assert cv2.imread(str(tmp_path / "out" / "overlay_grid.png")).shape[0] == 2 * 64 + LEGEND_HEIGHT


def test_demo_out_is_replaced_only_when_the_demo_wrote_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dicnet_ros.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["demo", "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not written by this tool" in err[0]
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert main(["demo", "--out", str(package_file(DEMO_BAG).parent)]) == 2
    assert "holds the replayed bag" in capsys.readouterr().err
    from dicnet_ros.demo import is_demo_output

    older = tmp_path / "demo_out"  # what a demo run wrote before the marker file existed
    (older / "overlays").mkdir(parents=True)
    (older / "summary.json").write_text("{}")
    assert is_demo_output(older) and not is_demo_output(mine)

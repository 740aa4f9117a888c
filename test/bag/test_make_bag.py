"""make-bag: topics, stamps, encodings and pixels written, the frame limit, MCAP chunk CRCs; outputs of make-bag
and bag-eval refused when present and staged until complete (bag/write.py)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from bag_helpers import RATE, T0, _err, _eval, _make, _mcap_chunks, _no_leftovers, _read_topic, _storage_file
from rosbags.rosbag2 import Reader

from dicnet_ros import bag as bagmod
from dicnet_ros.cli import main as dicnet

# ---------------------------------------------------------------------------------------------------------- make-bag


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("compressed", [None, "png"])
def test_make_bag_contents(dataset: Path, tmp_path: Path, storage: str, compressed: str | None) -> None:
    from dicnet_ros.data import open_dataset

    extra = ["--storage", storage, "--camera-info-topic", "/camera/camera_info", "--frame-id", "cam0"]
    if compressed:
        extra += ["--compressed", compressed]
    out = _make(dataset, tmp_path / "b", *extra)
    cam = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    with Reader(out) as reader:
        topics = {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}
    n = 4
    assert topics == {cam: (bagmod.COMPRESSED_TYPE if compressed else bagmod.IMAGE_TYPE, n),
                      "/camera/anomaly_gt": (bagmod.IMAGE_TYPE, n), "/camera/camera_info": (bagmod.CAMERA_INFO_TYPE, n)}
    expected = [T0 + round(i * 1e9 / RATE) for i in range(n)]
    ds = open_dataset(dataset, "test")
    frames = list(bagmod.iter_images(out, cam))
    assert [f.timestamp for f in frames] == expected
    assert [f.stamp_ns for f in frames] == expected
    assert {f.frame_id for f in frames} == {"cam0"}
    for f in frames:  # raw and png are lossless
        np.testing.assert_array_equal(f.rgb, ds[f.index].image)
    gts = _read_topic(out, "/camera/anomaly_gt")
    for i, (t, msg) in enumerate(gts):
        assert t == expected[i] and bagmod.stamp_to_ns(msg.header.stamp) == expected[i]
        assert msg.encoding == "mono8" and msg.header.frame_id == "cam0"
        gt = bagmod.read_gt_mask(msg)  # the values make-bag writes: 255 anomaly, 128 ignore, 0 normal
        label = ds[i].label
        np.testing.assert_array_equal(gt == bagmod.GT_ANOMALY, label == 13)
        np.testing.assert_array_equal(gt == bagmod.GT_IGNORE, label == 255)
        np.testing.assert_array_equal(bagmod.decode_gt_mask(msg), np.select([label == 13, label == 255], [1, 255], 0))
    info = bagmod.bag_dataset_info(out)
    assert info["dataset"]["anomaly_ids"] == [13] and info["dataset"]["class_names"][0] == "unlabeled"
    assert info["gt_topic"] == "/camera/anomaly_gt" and info["image_topic"] == cam


def test_make_bag_bgr8_and_limit(dataset: Path, tmp_path: Path) -> None:
    from dicnet_ros.data import open_dataset

    out = _make(dataset, tmp_path / "b", "--encoding", "bgr8", "--limit", "2", "--gt-topic", "")
    with Reader(out) as reader:
        assert set(reader.topics) == {"/camera/image_raw"}
    frames = list(bagmod.iter_images(out, "/camera/image_raw"))
    assert len(frames) == 2 and frames[0].msg.encoding == "bgr8"
    np.testing.assert_array_equal(frames[1].rgb, open_dataset(dataset, "test")[1].image)


def test_make_bag_writes_mcap_chunk_crcs(dataset: Path, tmp_path: Path, tiny_onnx: Path) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", "mcap")
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 0
    for mcap in (_storage_file(bag), _storage_file(tmp_path / "eval" / "drive_dicnet")):
        data = mcap.read_bytes()
        chunks = _mcap_chunks(mcap)
        assert chunks, mcap
        for _, crc, start, length in chunks:
            assert crc != 0 and crc == zlib.crc32(data[start : start + length]), mcap


# ----------------------------------------------------------------------------------------------------------- outputs


def test_existing_output_refused_then_overwritten(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    bag = _make(dataset, tmp_path / "drive")
    capsys.readouterr()
    assert dicnet(["make-bag", "--dataset", str(dataset), "--out", str(bag), "--no-progress"]) != 0
    msg = _err(capsys)
    assert "exists" in msg and "--overwrite" in msg
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _eval(bag, out, tiny_onnx) != 0
    assert "exists" in _err(capsys)
    assert (out / "keep.txt").read_text() == "mine"
    assert _eval(bag, out, tiny_onnx, "--overwrite") != 0  # not a folder bag-eval wrote: never deleted
    assert "not written by this tool" in _err(capsys) and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty folder loses nothing
    assert _eval(bag, out, tiny_onnx, "--overwrite") == 0
    assert (out / "metrics.json").is_file() and (out / bagmod.OUTPUT_MARKER).is_file()
    assert _eval(bag, out, tiny_onnx, "--overwrite", "--no-out-bag") == 0  # bag-eval's own folder: replaced
    assert not (out / "drive_dicnet").exists()
    _no_leftovers(tmp_path)


def test_failure_midway_leaves_nothing(dataset: Path, tmp_path: Path, model, monkeypatch) -> None:
    bag = _make(dataset, tmp_path / "drive")
    calls = {"n": 0}
    real = model.infer

    def flaky(image: np.ndarray):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real(image)

    monkeypatch.setattr(model, "infer", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        bagmod.evaluate_bag(bag, tmp_path / "out", model=model, progress=False)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)

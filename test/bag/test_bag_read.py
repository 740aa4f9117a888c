"""Reading bags (bag/read.py, bag/messages.py): a bag given as folder, metadata.yaml or storage file, paths that are
no bag, damaged and truncated bags, missing topics and wrong types, bad frames, text from the bag bounded, frames
streamed from the reader."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from bag_helpers import (
    RATE,
    T0,
    H,
    W,
    _err,
    _eval,
    _make,
    _mcap_chunks,
    _no_leftovers,
    _scene,
    _stamp,
    _storage_file,
    _write_bag,
)
from rosbags.rosbag2 import Reader

from dicnet_ros import bag as bagmod

# ---------------------------------------------------------------------------------------------- opening and locating


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_every_reader_takes_folder_metadata_or_storage_file(dataset: Path, tmp_path: Path, storage: str) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", storage)
    for path in (bag, bag / "metadata.yaml", _storage_file(bag)):
        info = bagmod.bag_dataset_info(path)
        assert info["image_topic"] == "/camera/image_raw" and info["gt_topic"] == "/camera/anomaly_gt", path
        assert bagmod.read_custom_data(path)["dicnet.rate_hz"] == str(RATE)
        with bagmod.open_bag(path) as reader:
            assert reader.path == bag and reader.topics["/camera/image_raw"].msgcount == 4
        assert [f.stamp_ns for f in bagmod.iter_images(path, "/camera/image_raw")] == [_stamp(i) for i in range(4)]
        assert bagmod.locate_bag(path).name == "drive"
    lone = tmp_path / f"lone{_storage_file(bag).suffix}"  # a storage file without metadata.yaml: read on its own
    shutil.copy(_storage_file(bag), lone)
    assert bagmod.bag_dataset_info(lone) == {}
    assert len(list(bagmod.iter_images(lone, "/camera/image_raw"))) == 4


def test_bag_path_that_is_no_bag_is_one_clear_line(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", "mcap")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    other_yaml = bag / "other.yaml"
    other_yaml.write_text("a: 1")
    stray = bag / "stray.mcap"  # in the folder, but not one of the bag's files
    shutil.copy(_storage_file(bag), stray)
    capsys.readouterr()
    for path, words in ((notes, "not a rosbag2"), (other_yaml, "not a rosbag2"), (tmp_path / "nothing", "not found"),
                        (stray, "not a file of the bag")):
        assert _eval(path, tmp_path / "out", tiny_onnx) != 0
        msg = _err(capsys)
        assert words in msg and str(path) in msg, msg
        with pytest.raises(bagmod.BagError, match=words):
            bagmod.bag_dataset_info(path)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("crcs", ["written", "zeroed"])
def test_corrupted_mcap_chunk(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys, crcs: str) -> None:
    """~2000 changed bytes in the middle of a chunk fail bag-eval with one line naming the file, where the chunk has
    a CRC; a CRC of 0 means "not computed" (writers may skip it), so such a bag still reads, reported as not
    verifiable."""
    bag = _make(dataset, tmp_path / "drive", "--storage", "mcap")
    mcap = _storage_file(bag)
    data = bytearray(mcap.read_bytes())
    (crc_at, _, start, length), *_ = _mcap_chunks(mcap)
    if crcs == "zeroed":  # as another writer would leave it: no chunk CRC and no whole-file checksum recorded
        data[crc_at : crc_at + 4] = bytes(4)
        mcap.write_bytes(bytes(data))
        meta = bag / "metadata.yaml"
        meta.write_text("\n".join(line for line in meta.read_text().splitlines() if "storage_crc32" not in line))
        assert _eval(bag, tmp_path / "out", tiny_onnx) == 0
        report = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert report["num_frames"] == 4
        assert any("1 of 1 chunks carry no CRC" in line for line in report["integrity"]["not_verifiable"]), report
        return
    middle = start + length // 2
    data[middle - 1000 : middle + 1000] = bytes(b ^ 0xFF for b in data[middle - 1000 : middle + 1000])
    mcap.write_bytes(bytes(data))
    capsys.readouterr()
    assert _eval(bag, tmp_path / "out", tiny_onnx) != 0
    msg = _err(capsys)
    assert f"{mcap} is damaged: chunk 0" in msg and "checksum" in msg.lower(), msg
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)
    with pytest.raises(bagmod.CorruptBagError, match="checksum"):
        list(bagmod.iter_images(bag, "/camera/image_raw"))


def test_missing_topic_lists_topics(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    bag = _make(dataset, tmp_path / "drive", "--compressed", "png")
    capsys.readouterr()
    assert _eval(bag, tmp_path / "out", tiny_onnx, "--image-topic", "/camera/image_raw") != 0
    msg = _err(capsys)
    assert "/camera/image_raw not found" in msg and "did you mean /camera/image_raw/compressed" in msg
    assert "/camera/anomaly_gt (sensor_msgs/msg/Image)" in msg
    assert "/camera/image_raw/compressed (sensor_msgs/msg/CompressedImage)" in msg
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def test_wrong_message_type(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys) -> None:
    bag = _make(dataset, tmp_path / "drive", "--camera-info-topic", "/camera/camera_info")
    capsys.readouterr()
    assert _eval(bag, tmp_path / "out", tiny_onnx, "--image-topic", "/camera/camera_info") != 0
    assert "carries sensor_msgs/msg/CameraInfo" in _err(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("damage", ["truncate_half", "truncate_tail", "no_metadata"])
def test_corrupt_bag(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys, storage: str, damage: str) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", storage)
    data = next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))
    if damage == "no_metadata":
        (bag / "metadata.yaml").unlink()
    else:
        size = data.stat().st_size
        os.truncate(data, size // 2 if damage == "truncate_half" else size - 300)
    capsys.readouterr()
    assert _eval(bag, tmp_path / "out", tiny_onnx) != 0
    msg = _err(capsys)
    assert "metadata.yaml" in msg if damage == "no_metadata" else ("truncated" in msg or "damaged" in msg)
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


def _rgb_frames(n: int, topic: str = "/camera/image_raw", encoding: str = "rgb8") -> list[tuple[str, str, object]]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        msg = bagmod.array_to_bag_image(_scene(rng, True)[0], "rgb8", _stamp(i), "cam")
        frames.append((topic, bagmod.IMAGE_TYPE, dataclasses.replace(msg, encoding=encoding)))
    return frames


@pytest.mark.parametrize("damage", ["short_data", "undecodable_jpeg", "gt_short_data"])
def test_bad_frame_error_names_topic_index_and_stamp(tmp_path: Path, tiny_onnx: Path, capsys, damage: str) -> None:
    """A bad frame stops bag-eval (as before: no skipping), and the one error line says which frame it was."""
    frames = _rgb_frames(4)
    topic, bad = "/camera/image_raw", 2
    if damage == "undecodable_jpeg":
        topic = "/camera/image_raw/compressed"
        frames = [(topic, bagmod.COMPRESSED_TYPE, bagmod.rgb_to_bag_compressed(np.zeros((H, W, 3), np.uint8), "jpeg",
                                                                             _stamp(i), "cam")) for i in range(4)]
        junk = dataclasses.replace(frames[bad][2], data=np.frombuffer(b"not a jpeg " * 50, np.uint8))
        frames[bad] = (topic, bagmod.COMPRESSED_TYPE, junk)
    elif damage == "gt_short_data":
        for i in range(4):
            gt = bagmod.array_to_bag_image(np.zeros((H, W), np.uint8), "mono8", _stamp(i), "cam")
            frames.append(("/camera/anomaly_gt", bagmod.IMAGE_TYPE, gt))
        topic, bad = "/camera/anomaly_gt", 1
        frames[4 + bad] = (topic, bagmod.IMAGE_TYPE, dataclasses.replace(frames[4 + bad][2],
                                                                          data=frames[4 + bad][2].data[:-W]))
    else:
        frames[bad] = (topic, bagmod.IMAGE_TYPE, dataclasses.replace(frames[bad][2], data=frames[bad][2].data[:-300]))
    bag = _write_bag(tmp_path / "bag", frames)
    gt = ["--gt-topic", "/camera/anomaly_gt"] if damage == "gt_short_data" else ["--gt-topic", ""]
    capsys.readouterr()
    image_topic = topic if damage == "undecodable_jpeg" else "/camera/image_raw"
    assert _eval(bag, tmp_path / "out", tiny_onnx, "--image-topic", image_topic, *gt) != 0
    expected = f"bad frame on {topic} #{bad} (stamp {T0 // 10**9}.{bad * 200_000_000:09d} s): "
    msg = _err(capsys)
    assert expected in msg, msg
    assert not (tmp_path / "out").exists()
    if damage != "gt_short_data":
        with pytest.raises(bagmod.BagError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            list(bagmod.iter_images(bag, topic))


# ------------------------------------------------------------------------------------------------------ bounded text


def test_bounded_cuts_and_cleans_text() -> None:
    assert bagmod.bounded("/camera/image_raw") == "/camera/image_raw"
    long = bagmod.bounded("x" * 10_000_000)
    assert len(long) == bagmod.TEXT_LIMIT and long.endswith("…")
    assert bagmod.bounded("a\n b\t\x1b[2J c", 80) == "a b ?[2J c"
    assert bagmod.bounded(" " * 5000 + "tail", 10).endswith("…")
    assert bagmod.format_stamp(12_345_678_901) == "12.345678901 s"


def test_text_from_the_bag_is_bounded(tmp_path: Path, tiny_onnx: Path, capsys, caplog) -> None:
    """Topic names, encodings and metadata from a hostile bag reach the log only cut to a sane length."""
    hostile = "\x1b[2J" + "E" * 5000
    frames = _rgb_frames(1) + _rgb_frames(1, "/camera/hostile", encoding=hostile)
    gt = bagmod.array_to_bag_image(np.zeros((H, W), np.uint8), "mono8", _stamp(0), "cam")
    frames.append(("/camera/anomaly_gt", bagmod.IMAGE_TYPE, dataclasses.replace(gt, encoding=hostile)))
    frames += [(f"/extra_{i:02d}", bagmod.IMAGE_TYPE, frames[0][2]) for i in range(30)]
    frames.append(("/a" + "t" * 5000, bagmod.IMAGE_TYPE, frames[0][2]))  # sorts first: the listing shows it
    bag = _write_bag(tmp_path / "bag", frames, storage="sqlite3",
                     custom={"dicnet.gt_topic": json.dumps("/" + "g" * 5000)})
    capsys.readouterr()
    for image_topic, gt_topic, cut_here in (("/missing", "", True), ("/camera/hostile", "", False),
                                            ("/camera/image_raw", "/camera/anomaly_gt", True)):
        assert _eval(bag, tmp_path / "out", tiny_onnx, "--image-topic", image_topic, "--gt-topic", gt_topic) != 0
        msg = _err(capsys)
        assert len(msg) < 1000 and "\x1b" not in msg and "E" * 300 not in msg, (len(msg), msg[:300])
        assert "…" in msg or not cut_here, msg  # image_conversion may already have cut the camera's encoding
    caplog.set_level(logging.INFO, logger="dicnet_ros.bag")
    with pytest.raises(bagmod.TopicNotFoundError) as info:  # the gt topic named in the bag's metadata
        bagmod.evaluate_bag(bag, tmp_path / "out", image_topic="/camera/image_raw", model=object(), progress=False)
    assert len(str(info.value)) < 1000 and "… and 14 more" in str(info.value)
    assert caplog.records and all(len(r.getMessage()) < 300 for r in caplog.records)


# --------------------------------------------------------------------------------------------------------- streaming


def test_images_are_streamed_from_the_reader(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    bag = _make(dataset, tmp_path / "drive")
    pulled = {"n": 0}
    real = Reader.messages

    def counting(self, *args, **kwargs):
        for item in real(self, *args, **kwargs):
            pulled["n"] += 1
            yield item

    monkeypatch.setattr(Reader, "messages", counting)
    frames = bagmod.iter_images(bag, "/camera/image_raw")
    assert isinstance(frames, types.GeneratorType)
    assert pulled["n"] == 0
    first = next(frames)
    assert first.index == 0 and pulled["n"] == 1  # one message read for one frame: no list of all messages
    frames.close()

"""Bag tools: make-bag -> bag-eval reproduces direct evaluation; output bag contents; errors; streaming; replay.

The dataset is a tiny StreetHazards tree built here (no simulator); the model is the ``tiny_onnx`` fixture.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import struct
import threading
import time
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")

from rosbags.rosbag2 import Reader, Writer

from dicnet_ros import bag as bagmod
from dicnet_ros.cli import main as dicnet

W, H = 96, 64
RATE = 5.0
T0 = 1_700_000_000_000_000_000
PROTOCOL_KEYS = ("auroc", "aupr", "fpr95")


def _scene(rng: np.random.Generator, anomaly: bool) -> tuple[np.ndarray, np.ndarray]:
    """Smooth image (so jpeg stays close) + raw StreetHazards label (1..13, 14 = anomaly, 0 = ignored)."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, int(rng.integers(40, 200)))], -1).astype(np.uint8)
    label = np.where(yy > H // 2, 8, 2).astype(np.uint8)  # road below, building above
    x0, y0 = int(rng.integers(5, 50)), int(rng.integers(5, 30))
    img[y0 : y0 + 12, x0 : x0 + 20] = rng.integers(0, 255, 3)
    label[y0 : y0 + 12, x0 : x0 + 20] = 14 if anomaly else 11
    label[0, :4] = 0  # raw 0 -> ignore_id
    return img, label


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sh")
    rng = np.random.default_rng(3)
    for town, flags in (("t5", (True, True, False)), ("t6", (True,))):
        for sub in ("images", "annotations"):
            (root / "test" / sub / "test" / town).mkdir(parents=True)
        for i, anomaly in enumerate(flags):
            img, label = _scene(rng, anomaly)
            cv2.imwrite(str(root / f"test/images/test/{town}/{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / f"test/annotations/test/{town}/{i}.png"), label)
    return root


@pytest.fixture(scope="module")
def model(tiny_onnx: Path):
    from dicnet_ros.inference import load_model

    m = load_model(tiny_onnx)
    yield m
    m.close()


@pytest.fixture(scope="module")
def direct_metrics(dataset: Path, model) -> dict:
    """What `dicnet evaluate` computes: load_model(...).infer + AnomalyEvaluator on the dataset images."""
    from dicnet_ros.data import open_dataset
    from dicnet_ros.metrics import AnomalyEvaluator

    ds = open_dataset(dataset, "test")
    ev = AnomalyEvaluator(ds.spec.anomaly_ids, ignore_ids=(ds.spec.ignore_id,),
                          score_range=model.metadata.score_range, keep_exact_pooled=True, per_image=True)
    for i in range(len(ds)):
        sample = ds[i]
        ev.update(model.infer(sample.image).anomaly_score, sample.label)
    return ev.compute()


def _make(dataset: Path, out: Path, *extra: str) -> Path:
    rc = dicnet(["make-bag", "--dataset", str(dataset), "--split", "test", "--out", str(out), "--rate", str(RATE),
                 "--start-time", str(T0 / 1e9), "--no-progress", *extra])
    assert rc == 0
    return out


def _eval(bag: Path, out: Path, model_path: Path, *extra: str) -> int:
    return dicnet(["bag-eval", "--bag", str(bag), "--model", str(model_path), "--backend", "auto", "--out", str(out),
                   "--no-progress", *extra])


def _read_topic(path: Path, topic: str) -> list[tuple[int, object]]:
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        msgtype = conns[0].msgtype
        return [(t, bagmod.typestore().deserialize_cdr(raw, msgtype)) for _, t, raw in reader.messages(conns)]


def _no_leftovers(parent: Path) -> None:
    assert not [p for p in parent.iterdir() if ".partial-" in p.name], "staging directory left behind"


def _storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


def _stamp(i: int) -> int:
    return T0 + round(i * 1e9 / RATE)


def _write_bag(path: Path, frames: list[tuple[str, str, object]], storage: str = "mcap",
               custom: dict[str, str] | None = None) -> Path:
    """A bag written with rosbags alone, as another tool would: frames are (topic, msgtype, message), frame i of
    each topic stamped ``_stamp(i)``."""
    ts = bagmod.typestore()
    writer = Writer(path, version=bagmod.BAG_VERSION, storage_plugin=bagmod.STORAGES[storage])
    for key, value in (custom or {}).items():
        writer.set_custom_data(key, value)
    counts: dict[str, int] = {}
    with writer:
        conns = {}
        for topic, msgtype, msg in frames:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            index = counts[topic] = counts.get(topic, -1) + 1
            writer.write(conns[topic], _stamp(index), ts.serialize_cdr(msg, msgtype))
    return path


def _mcap_chunks(path: Path) -> list[tuple[int, int, int, int]]:
    """(offset of the CRC field, stored CRC, offset of the records, their length) of each chunk, per the spec."""
    data = path.read_bytes()
    pos, chunks = 8, []
    while pos < len(data):
        opcode, length = struct.unpack_from("<BQ", data, pos)
        body = pos + 9
        if opcode in (0x0F, 0x02):
            break
        if opcode == 0x06:
            (crc,) = struct.unpack_from("<I", data, body + 24)
            (name_len,) = struct.unpack_from("<I", data, body + 28)
            (records_len,) = struct.unpack_from("<Q", data, body + 32 + name_len)
            chunks.append((body + 24, crc, body + 40 + name_len, records_len))
        pos = body + length
    return chunks


# --------------------------------------------------------------------------------------------------- make-bag


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
        gt = bagmod.decode_gt_mask(msg)
        label = ds[i].label
        np.testing.assert_array_equal(gt == bagmod.GT_ANOMALY, label == 13)
        np.testing.assert_array_equal(gt == bagmod.GT_IGNORE, label == 255)
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


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_eval_on_the_storage_file_finds_make_bag_topics(dataset: Path, tmp_path: Path, tiny_onnx: Path,
                                                            storage: str) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", storage)
    assert _eval(_storage_file(bag), tmp_path / "eval", tiny_onnx) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["image_topic"] == "/camera/image_raw" and report["gt_topic"] == "/camera/anomaly_gt"
    assert report["num_frames"] == 4 and report["metrics"]["dicnet"]["pooled"]["auroc"] is not None
    assert report["bag"] == str(bag.resolve()) and (tmp_path / "eval" / "drive_dicnet").is_dir()


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


def test_make_bag_writes_mcap_chunk_crcs(dataset: Path, tmp_path: Path, tiny_onnx: Path) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", "mcap")
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 0
    for mcap in (_storage_file(bag), _storage_file(tmp_path / "eval" / "drive_dicnet")):
        data = mcap.read_bytes()
        chunks = _mcap_chunks(mcap)
        assert chunks, mcap
        for _, crc, start, length in chunks:
            assert crc != 0 and crc == zlib.crc32(data[start : start + length]), mcap


@pytest.mark.parametrize("crcs", ["written", "zeroed"])
def test_corrupted_mcap_chunk(dataset: Path, tmp_path: Path, tiny_onnx: Path, capsys, crcs: str) -> None:
    """~2000 changed bytes in the middle of a chunk fail bag-eval with one line, where the chunk has a CRC; a CRC of
    0 means "not computed" (writers may skip it), so such a bag still reads."""
    bag = _make(dataset, tmp_path / "drive", "--storage", "mcap")
    mcap = _storage_file(bag)
    data = bytearray(mcap.read_bytes())
    (crc_at, _, start, length), *_ = _mcap_chunks(mcap)
    if crcs == "zeroed":
        data[crc_at : crc_at + 4] = bytes(4)
        mcap.write_bytes(bytes(data))
        assert _eval(bag, tmp_path / "out", tiny_onnx) == 0
        assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_frames"] == 4
        return
    middle = start + length // 2
    data[middle - 1000 : middle + 1000] = bytes(b ^ 0xFF for b in data[middle - 1000 : middle + 1000])
    mcap.write_bytes(bytes(data))
    capsys.readouterr()
    assert _eval(bag, tmp_path / "out", tiny_onnx) != 0
    msg = _err(capsys)
    assert str(bag) in msg and "checksum" in msg.lower() and "damaged" in msg, msg
    assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)
    with pytest.raises(bagmod.CorruptBagError, match="checksum"):
        list(bagmod.iter_images(bag, "/camera/image_raw"))


# --------------------------------------------------------------------------------------------------- bag-eval


def _assert_same(metrics: dict, direct: dict, exact: bool) -> None:
    for proto in ("per_image", "pooled"):
        for key in PROTOCOL_KEYS:
            got, want = metrics[proto][key], direct[proto][key]
            if exact:
                assert got == want, (proto, key, got, want)
            else:
                assert got is not None and abs(got - want) < 0.15, (proto, key, got, want)
    assert metrics["per_image"]["num_images"] == direct["per_image"]["num_images"]
    assert metrics["per_image"]["skipped_no_anomaly"] == direct["per_image"]["skipped_no_anomaly"] == 1


@pytest.mark.parametrize(
    ("storage", "compressed"),
    [("sqlite3", None), ("mcap", None), ("sqlite3", "png"), ("mcap", "png"), ("mcap", "jpeg")],
)
def test_bag_eval_reproduces_direct_metrics(dataset: Path, tmp_path: Path, tiny_onnx: Path, direct_metrics: dict,
                                            storage: str, compressed: str | None) -> None:
    extra = ["--storage", storage] + (["--compressed", compressed] if compressed else [])
    bag = _make(dataset, tmp_path / "drive", *extra)
    out = tmp_path / "eval"
    assert _eval(bag, out, tiny_onnx) == 0
    report = json.loads((out / "metrics.json").read_text())
    _assert_same(report["metrics"]["dicnet"], direct_metrics, exact=compressed != "jpeg")
    assert report["num_frames"] == 4 and report["unmatched"] == {"score": 0, "gt": 0}
    for name in ("report.md", "roc.png", "pr.png", "qualitative.png"):
        assert (out / name).stat().st_size > 0
    assert report["latency"]["inference"]["count"] == 4 and report["latency"]["inference"]["p95_ms"] > 0
    text = (out / "report.md").read_text()
    assert "| DiCNet | per-image |" in text and "| DiCNet | pooled |" in text
    out_bag = out / "drive_dicnet"
    suffix = ".mcap" if storage == "mcap" else ".db3"
    assert any(p.suffix == suffix for p in out_bag.iterdir())
    _no_leftovers(tmp_path)


def test_output_bag_contents(dataset: Path, tmp_path: Path, tiny_onnx: Path, model) -> None:
    bag = _make(dataset, tmp_path / "drive", "--camera-info-topic", "/camera/camera_info")
    out = tmp_path / "eval"
    assert _eval(bag, out, tiny_onnx, "--out-bag", "result", "--threshold", "0.5") == 0
    result = out / "result"
    with Reader(bag) as reader:
        inputs = {name: info.msgcount for name, info in reader.topics.items()}
    with Reader(result) as reader:
        outputs = {name: (info.msgtype, info.msgcount) for name, info in reader.topics.items()}
    for name, count in inputs.items():  # the input is copied unchanged
        assert outputs[name][1] == count
        assert [t for t, _ in _read_topic(result, name)] == [t for t, _ in _read_topic(bag, name)]
    images = _read_topic(bag, "/camera/image_raw")
    stamps = [(t, bagmod.stamp_to_ns(m.header.stamp), m.header.frame_id) for t, m in images]
    for topic, encoding in (("/dicnet/anomaly_score", "32FC1"), ("/dicnet/anomaly_mask", "mono8"),
                            ("/dicnet/overlay", "rgb8")):
        assert outputs[topic] == (bagmod.IMAGE_TYPE, 4)
        msgs = _read_topic(result, topic)
        assert [(t, bagmod.stamp_to_ns(m.header.stamp), m.header.frame_id) for t, m in msgs] == stamps
        assert {m.encoding for _, m in msgs} == {encoding}
        assert {(m.width, m.height) for _, m in msgs} == {(W, H)}
    from dicnet_ros.image_conversion import image_msg_to_array, image_msg_to_rgb

    model.threshold = 0.5
    for (_, img), (_, score), (_, mask) in zip(images, _read_topic(result, "/dicnet/anomaly_score"),
                                               _read_topic(result, "/dicnet/anomaly_mask"), strict=True):
        expected = model.infer(image_msg_to_rgb(img))
        np.testing.assert_array_equal(image_msg_to_array(score), expected.anomaly_score)
        np.testing.assert_array_equal(image_msg_to_array(mask), expected.anomaly_mask.astype(np.uint8) * 255)
    assert json.loads((out / "metrics.json").read_text())["threshold"] == 0.5


def test_score_topic_mode_matches_model_run(dataset: Path, tmp_path: Path, tiny_onnx: Path) -> None:
    """Evaluating recorded scores (what the node publishes) gives the model run's numbers, without a model."""
    bag = _make(dataset, tmp_path / "drive")
    assert _eval(bag, tmp_path / "a", tiny_onnx) == 0
    rc = dicnet(["bag-eval", "--bag", str(tmp_path / "a" / "drive_dicnet"), "--score-topic", "/dicnet/anomaly_score",
                 "--gt-topic", "/camera/anomaly_gt", "--out", str(tmp_path / "b"), "--no-progress"])
    assert rc == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]["dicnet"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]["dicnet"]
    for proto in ("per_image", "pooled"):
        assert [a[proto][k] for k in PROTOCOL_KEYS] == [b[proto][k] for k in PROTOCOL_KEYS]


class _WithExtras:
    """A model wrapper whose ``extras`` are only ``keep`` (an older export: no baselines, or MSP alone)."""

    def __init__(self, inner, keep: tuple[str, ...]) -> None:
        self.inner, self.metadata, self.keep = inner, inner.metadata, keep

    threshold = property(lambda self: self.inner.threshold)

    def infer(self, image: np.ndarray):
        res = self.inner.infer(image)
        res.extras = {k: v for k, v in res.extras.items() if k in self.keep}
        return res

    def describe(self) -> dict[str, str]:
        return self.inner.describe()


def _direct(dataset: Path, model, method: str, frames: list[int] | None = None) -> dict:
    """What direct evaluation gives for one map of ``model.infer`` (``"dicnet"`` = the score) on the dataset."""
    from dicnet_ros.data import open_dataset
    from dicnet_ros.metrics import AnomalyEvaluator

    ds = open_dataset(dataset, "test")
    ev = AnomalyEvaluator(ds.spec.anomaly_ids, ignore_ids=(ds.spec.ignore_id,), keep_exact_pooled=True,
                          per_image=True)
    for i in range(len(ds)) if frames is None else frames:
        sample = ds[i]
        result = model.infer(sample.image)
        ev.update(result.anomaly_score if method == "dicnet" else result.extras[method], sample.label)
    return ev.compute()


def _same_numbers(got: dict, want: dict) -> None:
    for proto in ("per_image", "pooled"):
        assert [got[proto][k] for k in PROTOCOL_KEYS] == [want[proto][k] for k in PROTOCOL_KEYS], proto
    assert got["per_image"]["num_images"] == want["per_image"]["num_images"]


def test_baseline_columns_msp_and_maxlogit_present_or_na(dataset: Path, tmp_path: Path, model) -> None:
    """MaxLogit is reported beside MSP (metrics.json, report.md, curves) with the numbers direct evaluation of
    ``extras`` gives; a model without them shows n/a, and DiCNet's numbers never change."""
    bag = _make(dataset, tmp_path / "drive")
    both = bagmod.evaluate_bag(bag, tmp_path / "both", model=model, write_bag=False, progress=False)
    for method in ("msp", "maxlogit"):
        _same_numbers(both.metrics[method], _direct(dataset, model, method))
    text = (tmp_path / "both" / "report.md").read_text()
    assert "| MSP | pooled |" in text and "| MaxLogit | per-image |" in text and "n/a (" not in text
    msp_only = bagmod.evaluate_bag(bag, tmp_path / "msp", model=_WithExtras(model, ("msp",)), write_bag=False,
                                   progress=False)
    assert msp_only.metrics["msp"] == both.metrics["msp"] and msp_only.metrics["maxlogit"] is None
    assert "MaxLogit: n/a (the model exposes no `maxlogit` score map" in (tmp_path / "msp" / "report.md").read_text()
    plain = bagmod.evaluate_bag(bag, tmp_path / "plain", model=_WithExtras(model, ()), write_bag=False, progress=False)
    assert plain.metrics["msp"] is None and plain.metrics["maxlogit"] is None
    text = (tmp_path / "plain" / "report.md").read_text()
    assert "MSP: n/a" in text and "MaxLogit: n/a" in text and "| MaxLogit |" not in text
    for other in (msp_only, plain):
        assert other.metrics["dicnet"] == both.metrics["dicnet"]
    assert both.metrics["by_family"] == {}  # a StreetHazards tree has no simulator manifest


def test_score_topic_mode_evaluates_the_recorded_baselines_it_has(dataset: Path, tmp_path: Path, model) -> None:
    """A recorded node run (score + msp_score, as the node publishes with publish_msp): MSP from the recording,
    MaxLogit n/a because the bag has no maxlogit_score topic."""
    from dicnet_ros.data import open_dataset

    ds = open_dataset(dataset, "test")
    frames: list[tuple[str, str, object]] = []
    for i in range(len(ds)):
        sample = ds[i]
        result = model.infer(sample.image)
        for topic, arr, enc in (("/anomaly_node/anomaly_score", result.anomaly_score, "32FC1"),
                                ("/anomaly_node/msp_score", result.extras["msp"], "32FC1"),
                                ("/camera/anomaly_gt", bagmod.gt_mask_from_labels(sample.label, ds.spec.anomaly_ids,
                                                                                  ds.spec.ignore_id), "mono8")):
            frames.append((topic, bagmod.IMAGE_TYPE, bagmod.array_to_bag_image(arr, enc, _stamp(i), "cam")))
    bag = _write_bag(tmp_path / "node_out", frames)
    result = bagmod.evaluate_bag(bag, tmp_path / "eval", score_topic="/anomaly_node/anomaly_score",
                                 gt_topic="/camera/anomaly_gt", progress=False)
    _same_numbers(result.metrics["dicnet"], _direct(dataset, model, "dicnet"))
    _same_numbers(result.metrics["msp"], _direct(dataset, model, "msp"))
    assert result.metrics["maxlogit"] is None
    meta = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert meta["baseline_topics"] == {"msp": "/anomaly_node/msp_score"}
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "| MSP | pooled |" in text and "MaxLogit: n/a (the bag has no `maxlogit_score` topic" in text


# -------------------------------------------------------------------------------------------- per family

SIM_FAMILIES = {"animals": 3, "toys": 3, "mixed": 2}  # frames per group of the split below (visible anomalies)


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 simulator test images at 96x64 with toys and animals (seed 2: 3 of each alone, 2 with both)."""
    pytest.importorskip("pybullet")
    from dicnet_ros.data.sim.generator import generate_split

    root = tmp_path_factory.mktemp("sim")
    generate_split(root, "test", 8, seed=2, size=(W, H), anomaly_set="toys,animals", workers=1, progress=False)
    return root


def _finite(results: dict) -> bool:
    return all(results[proto][k] is not None and np.isfinite(results[proto][k])
               for proto in ("per_image", "pooled") for k in PROTOCOL_KEYS)


def test_make_bag_records_frame_families_from_the_manifest(sim_dataset: Path, tmp_path: Path) -> None:
    from dicnet_ros.data.sim.manifest import visible_families

    result = bagmod.make_bag(sim_dataset, tmp_path / "drive", rate=RATE, start_ns=T0, progress=False)
    manifest = json.loads((sim_dataset / "sim_manifest_test.json").read_text())
    expected = {_stamp(i): visible_families(entry) for i, entry in enumerate(manifest["images"])}
    assert result.frame_families == expected
    info = bagmod.bag_dataset_info(result.path)
    assert info[bagmod.FRAME_FAMILIES_KEY] == {str(k): list(v) for k, v in expected.items()}
    groups = bagmod.frame_groups(info)
    assert {g: list(groups.values()).count(g) for g in set(groups.values())} == SIM_FAMILIES
    limited = bagmod.make_bag(sim_dataset, tmp_path / "two", rate=RATE, start_ns=T0, limit=2, progress=False)
    assert list(limited.frame_families) == [_stamp(0), _stamp(1)]


def test_bag_eval_reports_per_family(sim_dataset: Path, tmp_path: Path, tiny_onnx: Path, model) -> None:
    """by_family: every family and mixed, finite numbers for DiCNet, MSP and MaxLogit, frame counts adding up to
    the total, each group's numbers those of direct evaluation of its frames; the output bag carries the
    families on, and --families-from lends them to a recording without them."""
    bag = _make(sim_dataset, tmp_path / "drive", "--storage", "mcap")
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    by_family = report["metrics"]["by_family"]
    assert list(by_family) == ["animals", "toys", "mixed"]
    assert {g: r["num_frames"] for g, r in by_family.items()} == SIM_FAMILIES
    assert sum(r["num_frames"] for r in by_family.values()) == report["num_frames"] == 8
    for results in by_family.values():
        assert all(_finite(results[method]) for method in ("dicnet", "msp", "maxlogit"))
    groups = bagmod.frame_groups(bagmod.bag_dataset_info(bag))
    animals = [i for i in range(8) if groups[_stamp(i)] == "animals"]
    for method in ("dicnet", "maxlogit"):
        _same_numbers(by_family["animals"][method], _direct(sim_dataset, model, method, animals))
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "## Per anomaly family" in text
    for group, count in SIM_FAMILIES.items():
        for label in ("DiCNet", "MSP", "MaxLogit"):
            assert f"| {group} | {count} | {label} | per-image |" in text
    # --score-topic on the output bag: the families travelled with it
    out_bag = tmp_path / "eval" / "drive_dicnet"
    assert dicnet(["bag-eval", "--bag", str(out_bag), "--score-topic", "/dicnet/anomaly_score", "--gt-topic",
                   "/camera/anomaly_gt", "--out", str(tmp_path / "scores"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "scores" / "metrics.json").read_text())["metrics"]["by_family"]
    assert {g: r["dicnet"]["pooled"]["aupr"] for g, r in again.items()} == {
        g: r["dicnet"]["pooled"]["aupr"] for g, r in by_family.items()}
    # a recording without metadata (as `ros2 bag record` writes) gets the families of the drive it replayed
    recorded_from = {"/anomaly_node/anomaly_score": "/dicnet/anomaly_score", "/camera/anomaly_gt": "/camera/anomaly_gt"}
    recording = _write_bag(tmp_path / "node_out", [(topic, bagmod.IMAGE_TYPE, msg)
                                                   for topic, source in recorded_from.items()
                                                   for _, msg in _read_topic(out_bag, source)])
    plain = bagmod.evaluate_bag(recording, tmp_path / "plain", score_topic="/anomaly_node/anomaly_score",
                                gt_topic="/camera/anomaly_gt", progress=False)
    assert plain.metrics["by_family"] == {}
    lent = bagmod.evaluate_bag(recording, tmp_path / "lent", score_topic="/anomaly_node/anomaly_score",
                               gt_topic="/camera/anomaly_gt", progress=False, families_from=bag)
    assert {g: r["num_frames"] for g, r in lent.metrics["by_family"].items()} == SIM_FAMILIES


def test_frames_without_families_count_only_overall() -> None:
    gt = np.zeros((4, 6), np.uint8)
    gt[1:3, 2:4] = bagmod.GT_ANOMALY
    score = np.where(gt == bagmod.GT_ANOMALY, 0.9, 0.1).astype(np.float32)
    acc = bagmod.MetricsAccumulator((0.0, 1.0), {1: "toys", 2: "toys", 3: bagmod.MIXED})
    for stamp in (1, 2, 3, 4, 5):  # 4 and 5: no family information
        acc.update({"dicnet": score, "maxlogit": -score}, gt, stamp=stamp)
    metrics = acc.compute()
    assert metrics["dicnet"]["num_images"] == 5 and metrics["msp"] is None
    assert {g: r["num_frames"] for g, r in metrics["by_family"].items()} == {"toys": 2, "mixed": 1}
    assert metrics["by_family"]["toys"]["msp"] is None and metrics["by_family"]["toys"]["maxlogit"]["num_images"] == 2


@pytest.mark.parametrize("value", ['["toys"]', '{"12": "toys"}', '{"twelve": ["toys"]}', '{"12": [""]}'])
def test_malformed_frame_families_are_one_clear_error(value: str) -> None:
    info = {bagmod.FRAME_FAMILIES_KEY: json.loads(value)}
    with pytest.raises(bagmod.BagError, match=r"dicnet\.frame_families"):
        bagmod.frame_groups(info)


# ------------------------------------------------------------------------------------------------------ errors


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1
    return err[0]


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
    assert _eval(bag, out, tiny_onnx, "--overwrite") == 0
    assert (out / "metrics.json").is_file() and not (out / "keep.txt").exists()
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


# --------------------------------------------------------------------------------------------------- streaming


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


# ------------------------------------------------------------------------------------------- replay into ROS


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


def test_bag_eval_matches_dicnet_evaluate(dataset: Path, tmp_path: Path) -> None:
    """bag-eval (fused ONNX over a bag) against `dicnet evaluate` (the PyTorch checkpoint over the image files)."""
    from dicnet_training.config import load_config
    from dicnet_training.evaluation import evaluate
    from dicnet_training.export import ExportOptions, export_onnx

    from dicnet_ros.data.streethazards import STREETHAZARDS_SPEC
    from dicnet_ros.inference.random_models import random_checkpoint
    from dicnet_ros.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = random_checkpoint(tmp_path / "sh.pt", "tiny", (96, 64), num_classes=STREETHAZARDS_SPEC.num_classes)
    data = load_checkpoint(ckpt)
    data["metadata"]["class_names"] = list(STREETHAZARDS_SPEC.class_names)
    save_checkpoint(ckpt, {k: v for k, v in data.items() if k != "format"})
    onnx_path = export_onnx(ckpt, tmp_path / "sh.onnx", ExportOptions(dynamic=True)).onnx_path

    bag = _make(dataset, tmp_path / "drive")
    assert _eval(bag, tmp_path / "eval", onnx_path) == 0
    from_bag = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["dicnet"]
    cfg = load_config("ci", [f"data.root={dataset}", "data.kind=streethazards", "eval.qualitative=0"])
    report = evaluate(ckpt, cfg, tmp_path / "evaluate", "test", False, "cpu", show_progress=False)
    from_evaluate = report["methods"]["dicnet_" + report["info"]["scoring_mode"]]
    assert report["info"]["num_images"] == 4
    for protocol in ("per_image", "pooled"):
        for metric in ("auroc", "aupr", "fpr95"):
            assert from_bag[protocol][metric] == pytest.approx(from_evaluate[protocol][metric], abs=2e-3), (
                protocol, metric)

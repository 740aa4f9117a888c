"""Helpers shared by the bag tests (test/bag): a tiny StreetHazards scene, `dicnet make-bag` / `dicnet bag-eval`
runs, bags written with rosbags alone, reading topics back, MCAP chunk offsets, direct evaluation to compare with,
and the one error line a failing command prints. Fixtures are in conftest.py next to this module."""

from __future__ import annotations

import struct
from pathlib import Path

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


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1
    return err[0]

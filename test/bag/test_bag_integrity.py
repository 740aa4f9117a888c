"""Checksums of bags (bag/integrity.py): every bag the tools write is sealed (mcap chunk CRCs, a CRC-32 of each
storage file in metadata.yaml), a flipped byte in any bag fails bag-eval with the file named, and what another
recorder left unprotected is reported as not verifiable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from bag_helpers import _err, _eval, _make, _mcap_chunks, _no_leftovers, _scene, _stamp, _storage_file, _write_bag

from dicnet_ros import bag as bagmod
from dicnet_ros.demo import DEMO_BAG
from dicnet_ros.resources import package_file


def _flip_one_byte(path: Path, at: int | None = None) -> int:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    return at


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_one_flipped_byte_fails_bag_eval_with_the_file_named(dataset: Path, tmp_path: Path, tiny_onnx: Path,
                                                            capsys, storage: str) -> None:
    """sqlite3 has no checksum of its own: before make-bag recorded one, a changed pixel went unnoticed."""
    bag = _make(dataset, tmp_path / "drive", "--storage", storage)
    assert not bagmod.verify_bag(bag).unverified
    storage_file = _storage_file(bag)
    _flip_one_byte(storage_file)
    capsys.readouterr()
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 2
    msg = _err(capsys)
    assert f"{storage_file} is damaged" in msg and "checksum" in msg, msg
    assert not (tmp_path / "eval").exists()
    _no_leftovers(tmp_path)


def test_shipped_demo_stream_carries_checksums_that_catch_a_flipped_byte(tmp_path: Path) -> None:
    shipped = package_file(DEMO_BAG)
    mcap = next(shipped.glob("*.mcap"))
    chunks = _mcap_chunks(mcap)
    assert chunks and all(crc != 0 for _, crc, _, _ in chunks)
    integrity = bagmod.verify_bag(shipped)
    assert integrity.unverified == [] and len(integrity.verified) == 2
    copy = tmp_path / "stream"
    shutil.copytree(shipped, copy)
    _, _, start, length = chunks[len(chunks) // 2]
    _flip_one_byte(copy / mcap.name, start + length // 2)  # one pixel byte inside a chunk
    with pytest.raises(bagmod.CorruptBagError, match=rf"{mcap.name} is damaged: chunk {len(chunks) // 2} .*checksum"):
        bagmod.verify_bag(copy)


def _foreign_frames(n: int = 3) -> list[tuple[str, str, object]]:
    rng = np.random.default_rng(1)
    frames: list[tuple[str, str, object]] = []
    for i in range(n):
        image, label = _scene(rng, True)
        frames.append(("/cam", bagmod.IMAGE_TYPE, bagmod.array_to_bag_image(image, "rgb8", _stamp(i), "c")))
        frames.append(("/gt", bagmod.IMAGE_TYPE, bagmod.array_to_bag_image((label == 14).astype(np.uint8), "mono8",
                                                                          _stamp(i), "c")))
    return frames


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_what_another_recorder_left_unprotected_is_reported(tmp_path: Path, tiny_onnx: Path, capsys,
                                                           storage: str) -> None:
    bag = _write_bag(tmp_path / "theirs", _foreign_frames(), storage=storage)
    capsys.readouterr()
    assert _eval(bag, tmp_path / "eval", tiny_onnx, "--gt-topic", "/gt", "--no-out-bag") == 0
    why = "chunks carry no CRC" if storage == "mcap" else "sqlite3 keeps no checksum of message contents"
    assert f"input bag NOT verifiable: {_storage_file(bag).name}: " in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(report["integrity"]["not_verifiable"]) == 1 and why in report["integrity"]["not_verifiable"][0]
    assert why in (tmp_path / "eval" / "report.md").read_text()


def test_chunk_crcs_of_another_recorder_are_checked_first(tmp_path: Path) -> None:
    """An mcap from a recorder that writes chunk CRCs (as ros2 bag record does) but no whole-file checksum."""
    bag = _write_bag(tmp_path / "theirs", _foreign_frames(), storage="mcap")
    assert bagmod.add_mcap_chunk_crcs(bag) == 1
    assert bagmod.verify_bag(bag).verified == ["theirs.mcap: 1 of 1 chunks carry a CRC-32"]
    _, _, start, length = _mcap_chunks(_storage_file(bag))[0]
    _flip_one_byte(_storage_file(bag), start + length // 3)
    with pytest.raises(bagmod.CorruptBagError, match=r"theirs\.mcap is damaged: chunk 0 \(at byte \d+\) fails"):
        bagmod.verify_bag(bag)


def test_output_bags_are_sealed(dataset: Path, tmp_path: Path, tiny_onnx: Path) -> None:
    bag = _make(dataset, tmp_path / "drive", "--storage", "sqlite3")
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 0
    out_bag = tmp_path / "eval" / "drive_dicnet"
    integrity = bagmod.verify_bag(out_bag)
    assert integrity.unverified == [] and "recorded by dicnet bag-eval" in integrity.verified[0]
    assert bagmod.is_own_bag(out_bag) and bagmod.is_own_bag(bag)

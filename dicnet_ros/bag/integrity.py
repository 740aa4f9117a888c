"""Is a bag still the bag that was written? Checksums written with every bag this package makes (``seal_bag``) and
checked before a bag is evaluated or replayed (``verify_bag``), so a flipped byte fails with the file named instead
of changing the metrics quietly.

What covers what:

- mcap: each chunk carries a CRC-32 of its records (MCAP spec). rosbags' writer leaves it 0 ("not computed"), so
  ``seal_bag`` fills it in (``add_mcap_chunk_crcs``); ``ros2 bag record`` writes it itself. ``verify_bag`` checks
  every uncompressed chunk before the first message is used (rosbags' reader checks non-zero CRCs again while
  reading, also for compressed chunks) and reports chunks with CRC 0: they cannot be verified.
- sqlite3: neither rosbag2's schema nor rosbags keeps a checksum of message contents, and sqlite itself only
  notices damage to its own page structure ("database disk image is malformed"). So ``seal_bag`` records a CRC-32
  of every storage file in the bag's ``metadata.yaml`` (``custom_data`` ``dicnet.storage_crc32``) and
  ``verify_bag`` compares it; a sqlite3 bag written by another tool has no such record and is reported as not
  verifiable.
- metadata.yaml itself is text a person may edit; its content is checked by what reads it (``read.py``).

Checking costs one sequential read of each storage file (CRC-32 runs at more than 1 GB/s), far less than
decoding and inferring the frames.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from dicnet_ros.bag.messages import CUSTOM_PREFIX, CorruptBagError, bounded
from dicnet_ros.bag.read import BagLocation, locate_bag, read_metadata

#: custom_data keys (after ``CUSTOM_PREFIX``): which tool wrote the bag, and the CRC-32 of each storage file.
WRITTEN_BY_KEY = "written_by"
STORAGE_CRC_KEY = "storage_crc32"
READ_BLOCK = 1 << 20

MCAP_MAGIC = b"\x89MCAP0\r\n"
_RECORD_HEAD = struct.Struct("<BQ")  # opcode, record length
_CHUNK_FIXED = struct.Struct("<QQQI")  # message start time, end time, uncompressed size, uncompressed CRC
_CHUNK_OPCODE, _DATA_END_OPCODE, _FOOTER_OPCODE = 0x06, 0x0F, 0x02


# ------------------------------------------------------------------------------------------------------ mcap chunks


@dataclass
class _Chunk:
    crc_offset: int
    crc: int
    compression: bytes
    records_offset: int
    records_length: int


def _mcap_chunks(file: BinaryIO, path: Path) -> Iterator[_Chunk]:
    """Walk an MCAP data section record by record (published layout: opcode, length, body) and yield its chunks."""
    file.seek(0)
    if file.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
        raise CorruptBagError(f"{path} is not an MCAP file (bad magic)")
    while len(head := file.read(_RECORD_HEAD.size)) == _RECORD_HEAD.size:
        opcode, length = _RECORD_HEAD.unpack(head)
        if opcode in (_DATA_END_OPCODE, _FOOTER_OPCODE):
            return
        body = file.tell()
        if opcode == _CHUNK_OPCODE:
            fixed = file.read(_CHUNK_FIXED.size + 4)
            if len(fixed) < _CHUNK_FIXED.size + 4:
                raise CorruptBagError(f"{path}: truncated chunk record at byte {body}")
            *_, crc = _CHUNK_FIXED.unpack_from(fixed)
            (name_len,) = struct.unpack_from("<I", fixed, _CHUNK_FIXED.size)
            compression = file.read(min(name_len, 64))
            file.seek(body + _CHUNK_FIXED.size + 4 + name_len)
            size = file.read(8)
            if len(size) < 8:
                raise CorruptBagError(f"{path}: truncated chunk record at byte {body}")
            (records_length,) = struct.unpack("<Q", size)
            if body + _CHUNK_FIXED.size + 12 + name_len + records_length > body + length:
                raise CorruptBagError(f"{path}: chunk at byte {body} claims more data than its record holds")
            yield _Chunk(body + _CHUNK_FIXED.size - 4, crc, compression, file.tell(), records_length)
        file.seek(body + length)


def _crc_of_range(file: BinaryIO, offset: int, length: int) -> int:
    file.seek(offset)
    crc, left = 0, length
    while left > 0:
        block = file.read(min(READ_BLOCK, left))
        if not block:
            break
        crc = zlib.crc32(block, crc)
        left -= len(block)
    return crc


def add_mcap_chunk_crcs(bag: Path) -> int:
    """Fill in the CRC-32 of every chunk in the bag's .mcap files that has none; returns how many were filled.

    Why this way: rosbags' MCAP writer (``rosbags.rosbag2.storage_mcap.McapWriter.close_chunk``, rosbags 0.11)
    always writes ``uncompressed_crc = 0``, "not computed" in the MCAP spec, and has no option to compute it, so
    bytes corrupted later would be read back without notice. Patching that 4-byte field once the writer has
    closed the file depends only on the published MCAP record layout, not on rosbags' internals (a subclass of
    its writer would), and leaves every other byte as rosbags wrote it. rosbags' reader checks a non-zero chunk
    CRC whenever it loads the chunk, as does ``mcap doctor``; a CRC already set is kept.
    """
    filled = 0
    for path in sorted(Path(bag).glob("*.mcap")):
        with path.open("r+b") as file:
            for chunk in list(_mcap_chunks(file, path)):
                if chunk.crc == 0 and not chunk.compression:  # this package never compresses chunks
                    crc = _crc_of_range(file, chunk.records_offset, chunk.records_length)
                    file.seek(chunk.crc_offset)
                    file.write(struct.pack("<I", crc))
                    filled += 1
    return filled


# ------------------------------------------------------------------------------------------------- sealing a bag


def file_crc32(path: Path) -> str:
    """CRC-32 of a whole file as 8 hex digits."""
    with path.open("rb") as file:
        return f"{_crc_of_range(file, 0, path.stat().st_size):08x}"


def seal_bag(folder: Path, tool: str) -> None:
    """After the writer closed ``folder``: fill the mcap chunk CRCs, then record the tool and every storage file's
    CRC-32 in metadata.yaml's ``custom_data`` (kept as the writer wrote it otherwise)."""
    folder = Path(folder)
    add_mcap_chunk_crcs(folder)
    meta_path = folder / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
    info = meta["rosbag2_bagfile_information"]
    files = [folder / Path(str(name)).name for name in info.get("relative_file_paths") or []]
    custom = info.get("custom_data") or {}
    custom[CUSTOM_PREFIX + WRITTEN_BY_KEY] = json.dumps(tool)
    custom[CUSTOM_PREFIX + STORAGE_CRC_KEY] = json.dumps({p.name: file_crc32(p) for p in files if p.is_file()})
    info["custom_data"] = custom
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ verifying a bag


@dataclass
class Integrity:
    """What could be checked in one bag, and what could not (reported by bag-eval and the demo)."""

    storage: str
    verified: list[str] = field(default_factory=list)  # one line per file
    unverified: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"verified: {line}" for line in self.verified] + [f"NOT verifiable: {line}" for line in
                                                                   self.unverified]

    def summary(self) -> dict[str, Any]:
        return {"storage": self.storage, "verified": self.verified, "not_verifiable": self.unverified}


def _recorded_crcs(location: BagLocation) -> tuple[dict[str, str], str]:
    """{file name: crc hex} and the writing tool from the bag's metadata ({} / '' when it records none)."""
    if location.metadata is None:
        return {}, ""
    custom = read_metadata(location.metadata).get("custom_data") or {}
    try:
        crcs = json.loads(str(custom.get(CUSTOM_PREFIX + STORAGE_CRC_KEY, "{}")))
        tool = json.loads(str(custom.get(CUSTOM_PREFIX + WRITTEN_BY_KEY, '""')))
    except json.JSONDecodeError as exc:
        raise CorruptBagError(f"{location.metadata}: {CUSTOM_PREFIX}{STORAGE_CRC_KEY} is not valid JSON: "
                              f"{bounded(exc)}") from exc
    if not isinstance(crcs, dict) or not all(isinstance(v, str) for v in crcs.values()):
        raise CorruptBagError(f"{location.metadata}: {CUSTOM_PREFIX}{STORAGE_CRC_KEY} must map file names to "
                              "CRC-32 hex strings")
    return {str(k): v for k, v in crcs.items()}, str(tool)


def storage_files(location: BagLocation) -> list[Path]:
    """The storage files of a bag: those its metadata.yaml lists (that exist), or the lone file itself."""
    if location.metadata is None:
        return [location.path]
    names = read_metadata(location.metadata).get("relative_file_paths") or []
    return [location.path / Path(str(name)).name for name in names if (location.path / Path(str(name)).name).is_file()]


def verify_bag(path: str | Path) -> Integrity:
    """Check every checksum the bag carries; a mismatch is a ``CorruptBagError`` naming the file.

    Returns which files were verified and which could not be (mcap chunks without a CRC, sqlite3 files without a
    recorded checksum), so a report can say so.
    """
    location = locate_bag(path)
    crcs, tool = _recorded_crcs(location)
    files = storage_files(location)
    storage = "mcap" if any(f.suffix == ".mcap" for f in files) else "sqlite3"
    result = Integrity(storage)
    writer = tool or "the tool that wrote it"
    for file in files:
        recorded = crcs.get(file.name)
        if file.suffix == ".mcap":  # chunk by chunk first: its error says where the damage is
            _verify_mcap(file, result, whole_file_checked=recorded is not None)
        if recorded is not None:
            actual = file_crc32(file)
            if actual != recorded.lower():
                raise CorruptBagError(f"{file} is damaged: its CRC-32 checksum is {actual}, {writer} recorded "
                                      f"{recorded} in metadata.yaml (bytes changed after it was written)")
            result.verified.append(f"{file.name}: whole-file CRC-32 recorded by {writer}")
        elif file.suffix != ".mcap":
            result.unverified.append(
                f"{file.name}: sqlite3 keeps no checksum of message contents and the bag records none (bags written "
                "by dicnet make-bag / bag-eval do); changed bytes inside a message would go unnoticed")
    return result


def _verify_mcap(path: Path, result: Integrity, whole_file_checked: bool) -> None:
    checked = compressed = missing = 0
    with path.open("rb") as file:
        for index, chunk in enumerate(list(_mcap_chunks(file, path))):
            if chunk.crc == 0:
                missing += 1
            elif chunk.compression:
                compressed += 1  # the CRC is of the uncompressed records: rosbags checks it while reading
            else:
                if _crc_of_range(file, chunk.records_offset, chunk.records_length) != chunk.crc:
                    raise CorruptBagError(f"{path} is damaged: chunk {index} (at byte {chunk.crc_offset - 33}) fails "
                                          "its CRC-32 checksum")
                checked += 1
    total = checked + compressed + missing
    if checked or compressed:
        extra = f" ({compressed} compressed, checked while reading)" if compressed else ""
        result.verified.append(f"{path.name}: {checked + compressed} of {total} chunks carry a CRC-32{extra}")
    if missing and not whole_file_checked:
        result.unverified.append(f"{path.name}: {missing} of {total} chunks carry no CRC (written without one), so "
                                 "changed bytes in them cannot be detected")
    if total == 0 and not whole_file_checked:
        result.unverified.append(f"{path.name}: no chunks (unchunked MCAP): nothing carries a CRC")

"""Writing bags and outputs: ``make_bag`` (dataset split -> camera drive with ground-truth masks; the mask
topic is mono8, 255 = anomaly, 0 = normal, 128 = ignore; simulator data also gets each frame's anomaly families
in the metadata, see :mod:`dicnet_ros.bag.families`), the staging that makes every output appear atomically
(a hidden temporary directory beside the target, renamed into place only when the run succeeds), the chunk
CRCs of the mcap files written here (``add_mcap_chunk_crcs``), and copying a connection into another bag.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Writer

from dicnet_ros.bag.families import FRAME_FAMILIES_KEY, encode_frame_families
from dicnet_ros.bag.messages import (
    BAG_VERSION,
    CAMERA_INFO_TYPE,
    COMPRESSED_FORMATS,
    COMPRESSED_TYPE,
    CUSTOM_PREFIX,
    GT_ENCODING_DOC,
    IMAGE_ENCODINGS,
    IMAGE_TYPE,
    STORAGES,
    BagError,
    OutputExistsError,
    array_to_bag_image,
    camera_info,
    gt_mask_from_labels,
    rgb_to_bag_compressed,
    typestore,
)

# ------------------------------------------------------------------------------------------- atomic outputs


class Staging:
    """A hidden temp dir beside ``target`` holding ``path`` until ``commit`` renames it into place.

    ``discard`` (or a failed run) deletes it, so no partial output is ever left under the final name.
    """

    def __init__(self, target: str | Path, overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        check_output(self.target, overwrite)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        self.path = self.dir / self.target.name

    def commit(self) -> Path:
        """Move the staged output to the target (replacing an old one only with ``overwrite``)."""
        try:
            if not self.path.exists():
                raise BagError(f"internal error: nothing was written for {self.target}")
            if self.target.exists() or self.target.is_symlink():
                check_output(self.target, self.overwrite)
                self.target.rename(self.dir / f"{self.target.name}.old")  # deleted with the staging dir
            self.path.rename(self.target)
        finally:
            self.discard()
        return self.target

    def discard(self) -> None:
        """Delete the staging directory and whatever is in it."""
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def staged_output(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a not-yet-existing path beside ``target``; it becomes ``target`` only if the block succeeds."""
    staging = Staging(target, overwrite)
    try:
        yield staging.path
    except BaseException:
        staging.discard()
        raise
    staging.commit()


def check_output(target: Path, overwrite: bool) -> None:
    """Refuse an existing output path (early, before any work) unless ``overwrite``."""
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputExistsError(f"output {target} exists; remove it or pass --overwrite")


# ------------------------------------------------------------------------------------------------ mcap CRCs

MCAP_MAGIC = b"\x89MCAP0\r\n"
_RECORD_HEAD = struct.Struct("<BQ")  # opcode, record length
_CHUNK_FIXED = struct.Struct("<QQQI")  # message start time, end time, uncompressed size, uncompressed CRC
_CHUNK_OPCODE, _DATA_END_OPCODE, _FOOTER_OPCODE = 0x06, 0x0F, 0x02


def add_mcap_chunk_crcs(bag: Path) -> int:
    """Fill in the CRC-32 of every chunk in the bag's .mcap files that has none; returns how many were filled.

    Why this way: rosbags' MCAP writer (``rosbags.rosbag2.storage_mcap.McapWriter.close_chunk``, rosbags 0.11)
    always writes ``uncompressed_crc = 0``, "not computed" in the MCAP spec, and has no option to compute it, so
    bytes corrupted later would be read back without notice. Patching that 4-byte field once the writer has
    closed the file depends only on the published MCAP record layout, not on rosbags' internals (a subclass of
    its writer would), and leaves every other byte as rosbags wrote it. rosbags' reader checks a non-zero chunk
    CRC whenever it loads the chunk (so bag-eval, iter_images and play_bag do), as does ``mcap doctor``; a CRC
    already set (by a future rosbags) is kept. Costs one extra read of the file.
    """
    return sum(_fill_chunk_crcs(path) for path in sorted(Path(bag).glob("*.mcap")))


def _fill_chunk_crcs(path: Path) -> int:
    """Walk the data section record by record; write each uncompressed chunk's CRC-32 where it is 0."""
    filled = 0
    with path.open("r+b") as file:
        if file.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise BagError(f"{path} is not an MCAP file (bad magic)")
        while len(head := file.read(_RECORD_HEAD.size)) == _RECORD_HEAD.size:
            opcode, length = _RECORD_HEAD.unpack(head)
            if opcode in (_DATA_END_OPCODE, _FOOTER_OPCODE):
                break
            body = file.tell()
            if opcode == _CHUNK_OPCODE:
                *_, crc = _CHUNK_FIXED.unpack(file.read(_CHUNK_FIXED.size))
                (name_len,) = struct.unpack("<I", file.read(4))
                compression = file.read(name_len)
                (records_len,) = struct.unpack("<Q", file.read(8))
                if crc == 0 and not compression:  # this package never compresses chunks
                    records = file.read(records_len)
                    file.seek(body + _CHUNK_FIXED.size - 4)
                    file.write(struct.pack("<I", zlib.crc32(records)))
                    filled += 1
            file.seek(body + length)
    return filled


# ----------------------------------------------------------------------------------------------- make-bag


@dataclass
class MakeBagResult:
    """What make_bag wrote, for the CLI summary and tests."""

    path: Path
    num_frames: int
    topics: dict[str, str]  # name -> type
    start_ns: int
    stamps_ns: list[int] = field(default_factory=list)
    frame_families: dict[int, tuple[str, ...]] = field(default_factory=dict)  # stamp -> visible anomaly families


def make_bag(
    dataset: str | Path,
    out: str | Path,
    split: str = "test",
    rate: float = 10.0,
    compressed: str | None = None,
    storage: str = "sqlite3",
    image_topic: str = "/camera/image_raw",
    gt_topic: str | None = "/camera/anomaly_gt",
    camera_info_topic: str | None = None,
    frame_id: str = "camera",
    limit: int | None = None,
    encoding: str = "rgb8",
    start_ns: int | None = None,
    overwrite: bool = False,
    kind: str = "auto",
    progress: bool = True,
    dataset_options: dict[str, Any] | None = None,
) -> MakeBagResult:
    """Write a dataset split as a camera drive: frame i is stamped ``t0 + i / rate`` on every topic.

    With ``compressed`` ('jpeg' or 'png') the camera goes to ``<image_topic>/compressed`` as CompressedImage;
    the ground truth stays raw mono8 (see the module docstring for its values). When the dataset has a
    simulator manifest, the visible anomaly families of each frame go into the metadata (``families`` module).
    ``dataset_options`` go to ``open_dataset`` (a benchmark's ``preset`` / ``encoding`` / ``track``); a benchmark's
    masks arrive as 0 / 1 / 255 and are stored in the bag's convention like every other data set, and its component
    track is recorded so ``bag-eval`` applies the same size rules.
    """
    from tqdm import tqdm

    from dicnet_ros.data import open_dataset
    from dicnet_ros.data.sim.manifest import image_families

    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"--rate must be a positive number of frames per second, got {rate}")
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; use one of {', '.join(IMAGE_ENCODINGS)}")
    if compressed is not None and compressed not in COMPRESSED_FORMATS:
        raise ValueError(f"unknown compression {compressed!r}; use one of {', '.join(COMPRESSED_FORMATS)}")
    out = Path(out)
    check_output(out, overwrite)
    ds = open_dataset(dataset, split, kind=kind, **(dataset_options or {}))
    spec = ds.spec
    families_of_image = image_families(ds.root, split)
    count = len(ds) if limit is None else max(0, min(int(limit), len(ds)))
    if count == 0:
        raise ValueError(f"nothing to write: {dataset} split {split!r} has {len(ds)} images, limit {limit}")
    t0 = time.time_ns() if start_ns is None else int(start_ns)
    cam_topic = f"{image_topic.rstrip('/')}/compressed" if compressed else image_topic
    topics = {cam_topic: COMPRESSED_TYPE if compressed else IMAGE_TYPE}
    if gt_topic:
        topics[gt_topic] = IMAGE_TYPE
    if camera_info_topic:
        topics[camera_info_topic] = CAMERA_INFO_TYPE
    if len(topics) != 1 + bool(gt_topic) + bool(camera_info_topic):
        raise ValueError(f"topic names must differ: {cam_topic}, {gt_topic}, {camera_info_topic}")
    ts = typestore()
    stamps: list[int] = []
    frame_families: dict[int, tuple[str, ...]] = {}
    with staged_output(out, overwrite) as staged:
        writer = Writer(staged, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        custom = {
            "dataset": spec.to_dict(),
            "source": {"root": str(Path(dataset).resolve()), "split": split, "kind": ds.kind,
                       **(ds.describe() if hasattr(ds, "describe") else {})},
            "component_track": getattr(ds, "track", None),
            "image_topic": cam_topic,
            "gt_topic": gt_topic or "",
            "camera_info_topic": camera_info_topic or "",
            "gt_encoding": GT_ENCODING_DOC,
            "rate_hz": rate,
            "frame_id": frame_id,
        }
        for key, value in custom.items():
            writer.set_custom_data(CUSTOM_PREFIX + key, json.dumps(value))
        with writer:
            conns = {name: writer.add_connection(name, msgtype, typestore=ts) for name, msgtype in topics.items()}
            for i in tqdm(range(count), desc=f"make-bag {out.name}", unit="frame", disable=not progress):
                sample = ds[i]
                stamp = t0 + round(i * 1e9 / rate)
                stamps.append(stamp)
                if families := families_of_image.get(Path(sample.path).resolve()):
                    frame_families[stamp] = families
                if compressed:
                    msg = rgb_to_bag_compressed(sample.image, compressed, stamp, frame_id)
                else:
                    pixels = sample.image if encoding == "rgb8" else cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
                    msg = array_to_bag_image(pixels, encoding, stamp, frame_id)
                writer.write(conns[cam_topic], stamp, ts.serialize_cdr(msg, topics[cam_topic]))
                if gt_topic:
                    gt = gt_mask_from_labels(sample.label, spec.anomaly_ids, spec.ignore_id)
                    writer.write(conns[gt_topic], stamp,
                                 ts.serialize_cdr(array_to_bag_image(gt, "mono8", stamp, frame_id), IMAGE_TYPE))
                if camera_info_topic:
                    h, w = sample.image.shape[:2]
                    writer.write(conns[camera_info_topic], stamp,
                                 ts.serialize_cdr(camera_info(w, h, stamp, frame_id), CAMERA_INFO_TYPE))
            if frame_families:  # custom_data is written when the writer closes
                writer.set_custom_data(CUSTOM_PREFIX + FRAME_FAMILIES_KEY, encode_frame_families(frame_families))
        add_mcap_chunk_crcs(staged)
    return MakeBagResult(out, count, topics, t0, stamps, frame_families)


def _add_conn(writer: Writer, conn: Connection) -> Connection:
    """Copy a connection into another bag with its own definition, hash and QoS."""
    ts = typestore()
    ext = conn.ext
    kwargs: dict[str, Any] = {"serialization_format": getattr(ext, "serialization_format", "cdr"),
                              "offered_qos_profiles": getattr(ext, "offered_qos_profiles", ())}
    if conn.msgdef.data and conn.digest:
        kwargs.update(msgdef=conn.msgdef.data, rihs01=conn.digest)
    else:
        kwargs["typestore"] = ts
    return writer.add_connection(conn.topic, conn.msgtype, **kwargs)

"""Reading bags: open a rosbag2 (directory, .db3 or .mcap) with one-line errors for missing, damaged or
truncated storage, check that a topic exists with a usable type, stream raw messages and decoded camera frames
one at a time, and read what ``make_bag`` stored in ``metadata.yaml`` (``custom_data``, storage identifier).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError

from dicnet_ros.bag.messages import (
    CUSTOM_PREFIX,
    IMAGE_TYPES,
    BagError,
    CorruptBagError,
    TopicNotFoundError,
    UnsupportedMessageError,
    _one_line,
    deserialize,
    image_msg_rgb,
    stamp_to_ns,
)

try:  # rosbags' sqlite3 storage reads through apsw, whose errors are not sqlite3's
    from apsw import Error as _ApswError
except ImportError:  # pragma: no cover - older rosbags use the stdlib sqlite3
    _ApswError = sqlite3.DatabaseError
#: Exceptions a damaged or truncated storage file raises while being opened or read.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    ReaderError, sqlite3.DatabaseError, _ApswError, struct.error, EOFError, KeyError, ValueError, OSError,
)


# ------------------------------------------------------------------------------------------------- reading


def _topic_listing(reader: Reader) -> str:
    topics = reader.topics
    if not topics:
        return "the bag has no topics"
    return "topics in the bag: " + ", ".join(f"{name} ({info.msgtype})" for name, info in sorted(topics.items()))


@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator[Reader]:
    """Open a bag for reading, turning every rosbags/sqlite/mcap failure into a one-line ``BagError``."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise CorruptBagError(
            f"{path} has no metadata.yaml: not a rosbag2 directory, or a recording that did not finish "
            "(try `ros2 bag reindex`)"
        )
    try:
        reader = Reader(path)
        reader.open()
    except STORAGE_ERRORS as exc:
        raise CorruptBagError(f"cannot read bag {path} (damaged or truncated?): {_one_line(exc)}") from exc
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def read_custom_data(path: str | Path) -> dict[str, str]:
    """The ``custom_data`` mapping of a bag directory's metadata.yaml (empty if absent or not a directory)."""
    meta = Path(path) / "metadata.yaml"
    if not meta.is_file():
        return {}
    try:
        info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information", {})
    except yaml.YAMLError as exc:
        raise CorruptBagError(f"{meta} is not valid YAML: {_one_line(exc)}") from exc
    return {str(k): str(v) for k, v in (info.get("custom_data") or {}).items()}


def bag_dataset_info(path: str | Path) -> dict[str, Any]:
    """What ``make_bag`` stored: ``dataset`` (spec dict), ``image_topic``, ``gt_topic``, ... (empty if none)."""
    out: dict[str, Any] = {}
    for key, value in read_custom_data(path).items():
        if key.startswith(CUSTOM_PREFIX):
            try:
                out[key[len(CUSTOM_PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError:
                out[key[len(CUSTOM_PREFIX) :]] = value
    return out


def require_topic(
    reader: Reader, topic: str, allowed_types: Sequence[str] | None = None
) -> tuple[list[Connection], str]:
    """Connections and type of ``topic``, or an error that lists what the bag has / what the type should be."""
    topics = reader.topics
    if topic not in topics:
        hint = ""
        if f"{topic}/compressed" in topics:
            hint = f" (did you mean {topic}/compressed?)"
        raise TopicNotFoundError(f"topic {topic} not found in {reader.path}{hint}; {_topic_listing(reader)}")
    info = topics[topic]
    if info.msgtype is None or (allowed_types is not None and info.msgtype not in allowed_types):
        raise UnsupportedMessageError(
            f"topic {topic} carries {info.msgtype or 'several message types'}; expected "
            f"{' or '.join(allowed_types or ['a single type'])}"
        )
    return list(info.connections), str(info.msgtype)


def iter_raw(reader: Reader, connections: Sequence[Connection] = ()) -> Iterator[tuple[Connection, int, bytes]]:
    """Stream (connection, bag timestamp ns, CDR bytes) in time order, one message at a time.

    Storage errors mid-stream (truncated .db3/.mcap) become ``CorruptBagError``; nothing is buffered.
    """
    try:
        yield from reader.messages(connections=connections)
    except STORAGE_ERRORS as exc:
        raise CorruptBagError(f"bag {reader.path} is damaged or truncated: {_one_line(exc)}") from exc


@dataclass
class BagImage:
    """One decoded camera frame from a bag, with the stamps needed to write outputs beside it."""

    index: int
    timestamp: int  # bag receive time, ns
    stamp_ns: int  # header stamp, ns
    frame_id: str
    rgb: np.ndarray
    msg: Any


def iter_images(path: str | Path, topic: str) -> Iterator[BagImage]:
    """Stream the decoded frames of ``topic`` (Image or CompressedImage) straight from the storage reader."""
    with open_bag(path) as reader:
        connections, msgtype = require_topic(reader, topic, IMAGE_TYPES)
        for index, (_, timestamp, raw) in enumerate(iter_raw(reader, connections)):
            msg = deserialize(raw, msgtype)
            yield BagImage(index, timestamp, stamp_to_ns(msg.header.stamp), msg.header.frame_id,
                           image_msg_rgb(msg, msgtype), msg)


def _storage_of(path: Path) -> str:
    """'mcap' or 'sqlite3': the storage of a bag directory (from metadata.yaml) or a bare storage file."""
    if path.is_dir():
        try:
            info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
            return "mcap" if str(info.get("storage_identifier", "")).lower() == "mcap" else "sqlite3"
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return "sqlite3"
    return "mcap" if path.suffix == ".mcap" else "sqlite3"

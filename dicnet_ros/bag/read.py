"""Reading bags: find a rosbag2 from whatever path names it (folder, its metadata.yaml, or a storage file in
it), open it with one-line errors for missing, damaged or truncated storage, check that a topic exists with a
usable type, stream raw messages and decoded camera frames one at a time, and read what ``make_bag`` stored in
``metadata.yaml`` (``custom_data``, storage identifier).

``metadata.yaml`` is read once, through ``read_metadata``, which checks its shape (UTF-8 YAML, the mapping rosbag2
writes, the types of the fields the tools use) so a damaged or hand-edited file is one line naming it, never a
traceback from deep inside a reader. Checksums of the storage files are :mod:`dicnet_ros.bag.integrity`'s job; a
damaged sqlite page or mcap record met while streaming becomes ``CorruptBagError`` here.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
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
    about_frame,
    bounded,
    deserialize,
    image_msg_rgb,
    stamp_to_ns,
)

try:  # rosbags' sqlite3 storage reads through apsw, whose errors are not sqlite3's
    from apsw import Error as _ApswError
except ImportError:  # pragma: no cover - older rosbags use the stdlib sqlite3
    _ApswError = sqlite3.DatabaseError
#: Exceptions a damaged or truncated storage file raises while being opened or read (OverflowError: a record
#: length field overwritten with garbage, in an mcap chunk that has no CRC to catch it first).
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    ReaderError, sqlite3.DatabaseError, _ApswError, struct.error, EOFError, KeyError, ValueError, OSError,
    OverflowError,
)


#: Storage files rosbags reads on their own; inside a rosbag2 folder they may also be zstd-compressed files.
STORAGE_SUFFIXES = (".db3", ".mcap")
#: How many topics an error message lists before "… and N more" (a bag may have thousands).
LISTED_TOPICS = 20

# ------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BagLocation:
    """Where a bag is, whatever path named it; ``path`` is what rosbags opens."""

    path: Path  # the rosbag2 folder, or a storage file with no metadata.yaml beside it
    metadata: Path | None  # the folder's metadata.yaml; None for a storage file read on its own

    @property
    def name(self) -> str:
        """The bag's name: the folder's, or the lone storage file's without its suffix."""
        return self.path.name if self.metadata is not None else self.path.stem


def locate_bag(path: str | Path) -> BagLocation:
    """Resolve a bag path the way every tool here takes it: the rosbag2 folder, its metadata.yaml, or a
    storage file (.db3 / .mcap) inside it.

    A storage file with a metadata.yaml beside it is read through its folder, so the message counts, the other
    split files and what ``make_bag`` stored in ``custom_data`` (topic names, dataset) are all there. A storage
    file without one is read on its own, as rosbags allows (no ``custom_data`` then).
    """
    given = Path(path)
    if not given.exists():
        raise BagError(f"bag not found: {given}")
    if given.is_dir():
        folder = given
    elif given.name == "metadata.yaml":
        folder = given.parent
    elif given.name.endswith(STORAGE_SUFFIXES) or given.name.endswith(tuple(f"{s}.zstd" for s in STORAGE_SUFFIXES)):
        folder = given.parent
        if given.suffix in STORAGE_SUFFIXES and not (folder / "metadata.yaml").is_file():
            return BagLocation(given, None)
        _require_listed(given, folder / "metadata.yaml")
    else:
        raise BagError(
            f"{given} is not a rosbag2: give the bag folder, its metadata.yaml, or a "
            f"{' / '.join(STORAGE_SUFFIXES)} storage file in it"
        )
    if not (folder / "metadata.yaml").is_file():
        raise CorruptBagError(
            f"{folder} has no metadata.yaml: not a rosbag2 directory, or a recording that did not finish "
            "(try `ros2 bag reindex`)"
        )
    return BagLocation(folder, folder / "metadata.yaml")


def _require_listed(storage_file: Path, metadata: Path) -> None:
    """Refuse a storage file that its folder's metadata.yaml does not list: reading the folder would read others.

    An unreadable metadata.yaml is left for ``open_bag`` to report.
    """
    try:
        names = [PurePath(str(p)).name for p in read_metadata(metadata).get("relative_file_paths") or []]
    except BagError:
        return
    if names and storage_file.name not in names:
        listed = ", ".join(bounded(n) for n in names[:LISTED_TOPICS]) + (" …" if len(names) > LISTED_TOPICS else "")
        raise BagError(
            f"{storage_file} is not a file of the bag in {storage_file.parent} (its metadata.yaml lists {listed}); "
            "give the bag folder"
        )


def _topic_listing(reader: Reader) -> str:
    """'topics in the bag: /a (type), ...': names and types bounded, at most ``LISTED_TOPICS`` of them."""
    topics = reader.topics
    if not topics:
        return "the bag has no topics"
    items = sorted(topics.items())
    listing = ", ".join(f"{bounded(name)} ({bounded(info.msgtype)})" for name, info in items[:LISTED_TOPICS])
    if len(items) > LISTED_TOPICS:
        listing += f", … and {len(items) - LISTED_TOPICS} more"
    return "topics in the bag: " + listing


@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator[Reader]:
    """Open a bag (any path ``locate_bag`` takes), turning every rosbags/sqlite/mcap failure into a one-line
    ``BagError``."""
    location = locate_bag(path)
    bag = location.path
    if location.metadata is not None:
        read_metadata(location.metadata)  # one line naming the file for a broken metadata.yaml
    try:
        reader = Reader(bag)
        reader.open()
    except (TypeError, AttributeError) as exc:  # metadata of the right shape but values rosbags cannot use
        raise CorruptBagError(f"cannot read bag {bag}: {location.metadata or bag} holds values rosbags cannot "
                              f"use: {_one_line(exc)}") from exc
    except STORAGE_ERRORS as exc:
        raise CorruptBagError(f"cannot read bag {bag} (damaged or truncated?): {_one_line(exc)}") from exc
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def read_custom_data(path: str | Path) -> dict[str, str]:
    """The ``custom_data`` mapping of a bag's metadata.yaml (empty for a storage file read on its own)."""
    meta = locate_bag(path).metadata
    if meta is None:
        return {}
    return {str(k): str(v) for k, v in (read_metadata(meta).get("custom_data") or {}).items()}


#: Fields of ``rosbag2_bagfile_information`` the tools (and rosbags) use, with the type each must have.
_METADATA_FIELDS: dict[str, tuple[type, ...]] = {
    "version": (int,),
    "storage_identifier": (str,),
    "relative_file_paths": (list,),
    "topics_with_message_count": (list,),
    "custom_data": (dict, type(None)),
    "duration": (dict,),
    "starting_time": (dict,),
    "message_count": (int,),
    "files": (list, type(None)),
    "compression_format": (str, type(None)),
    "compression_mode": (str, type(None)),
}


def read_metadata(meta: Path) -> dict[str, Any]:
    """The ``rosbag2_bagfile_information`` mapping of a metadata.yaml, its fields of the types rosbag2 writes; any
    other file (random bytes, not YAML, a list where a string belongs) is a ``CorruptBagError`` naming it."""
    where = f"{meta} is not a valid rosbag2 metadata file"
    try:
        text = meta.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptBagError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise CorruptBagError(f"cannot read {meta}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CorruptBagError(f"{where}: {_one_line(exc)}") from None
    info = data.get("rosbag2_bagfile_information") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise CorruptBagError(f"{where}: no rosbag2_bagfile_information mapping")
    for key, types in _METADATA_FIELDS.items():
        if key in info and (not isinstance(info[key], types) or isinstance(info[key], bool)):
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise CorruptBagError(f"{where}: {key} must be {kinds}, got {type(info[key]).__name__} "
                                  f"{bounded(str(info[key]))!r}")
    for name in info.get("relative_file_paths") or []:
        if not isinstance(name, str):
            raise CorruptBagError(f"{where}: relative_file_paths must list file names, got {bounded(str(name))!r}")
    for entry in info.get("topics_with_message_count") or []:
        topic = entry.get("topic_metadata") if isinstance(entry, dict) else None
        if not (isinstance(topic, dict) and isinstance(topic.get("name"), str) and isinstance(topic.get("type"), str)
                and isinstance(entry.get("message_count"), int)):
            raise CorruptBagError(f"{where}: topics_with_message_count entries need topic_metadata.name and .type "
                                  f"(text) and message_count (a number), got {bounded(str(entry))!r}")
    custom = info.get("custom_data") or {}
    for key, value in custom.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise CorruptBagError(f"{where}: custom_data {bounded(str(key))!r} must be text, got "
                                  f"{type(value).__name__}")
    return info


#: Types of the ``custom_data`` entries the tools read (after ``CUSTOM_PREFIX``, JSON-decoded).
_CUSTOM_TYPES: dict[str, tuple[type, ...]] = {
    "image_topic": (str,), "gt_topic": (str,), "camera_info_topic": (str,), "gt_encoding": (str,),
    "frame_id": (str,), "dataset": (dict,), "source": (dict,), "rate_hz": (int, float),
}


def bag_dataset_info(path: str | Path) -> dict[str, Any]:
    """What ``make_bag`` stored: ``dataset`` (spec dict), ``image_topic``, ``gt_topic``, ... (empty if none).

    An entry the tools read with the wrong type (a list where a topic name belongs) is a ``CorruptBagError``
    naming the metadata file and the entry."""
    out: dict[str, Any] = {}
    for key, value in read_custom_data(path).items():
        if key.startswith(CUSTOM_PREFIX):
            name = key[len(CUSTOM_PREFIX) :]
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError:
                out[name] = value
            types = _CUSTOM_TYPES.get(name)
            if types is not None and (not isinstance(out[name], types) or isinstance(out[name], bool)):
                raise CorruptBagError(
                    f"{locate_bag(path).metadata}: custom_data {bounded(key)!r} must be "
                    f"{' or '.join(t.__name__ for t in types)} (JSON), got {type(out[name]).__name__} "
                    f"{bounded(str(out[name]))!r}")
    return out


def require_topic(
    reader: Reader, topic: str, allowed_types: Sequence[str] | None = None
) -> tuple[list[Connection], str]:
    """Connections and type of ``topic``, or an error that lists what the bag has / what the type should be."""
    topics = reader.topics
    if topic not in topics:
        hint = ""
        if f"{topic}/compressed" in topics:
            hint = f" (did you mean {bounded(f'{topic}/compressed')}?)"
        raise TopicNotFoundError(f"topic {bounded(topic)} not found in {reader.path}{hint}; {_topic_listing(reader)}")
    info = topics[topic]
    if info.msgtype is None or (allowed_types is not None and info.msgtype not in allowed_types):
        raise UnsupportedMessageError(
            f"topic {bounded(topic)} carries {bounded(info.msgtype or 'several message types')}; expected "
            f"{' or '.join(allowed_types or ['a single type'])}"
        )
    return list(info.connections), str(info.msgtype)


def find_image_topic(reader: Reader, exclude: Sequence[str] = ()) -> str:
    """The camera topic of a bag that does not name one: its only Image / CompressedImage topic (``exclude``: the
    ground truth and other image topics that are not the camera). Several or none: an error that lists them."""
    candidates = sorted(name for name, info in reader.topics.items()
                        if info.msgtype in IMAGE_TYPES and name not in exclude)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise TopicNotFoundError(f"{reader.path} has no sensor_msgs Image or CompressedImage topic to use as the "
                                 f"camera; {_topic_listing(reader)}")
    shown = ", ".join(bounded(c) for c in candidates[:LISTED_TOPICS]) + (" …" if len(candidates) > LISTED_TOPICS
                                                                          else "")
    raise BagError(f"{reader.path} has several image topics ({shown}); name the camera with --image-topic")


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
    """Stream the decoded frames of ``topic`` (Image or CompressedImage) straight from the storage reader.

    A frame that cannot be decoded raises a ``BagError`` naming the topic, its index and its header stamp.
    """
    with open_bag(path) as reader:
        connections, msgtype = require_topic(reader, topic, IMAGE_TYPES)
        for index, (_, timestamp, raw) in enumerate(iter_raw(reader, connections)):
            with about_frame(topic, index):
                msg = deserialize(raw, msgtype)
            stamp = stamp_to_ns(msg.header.stamp)
            with about_frame(topic, index, stamp):
                rgb = image_msg_rgb(msg, msgtype)
            yield BagImage(index, timestamp, stamp, msg.header.frame_id, rgb, msg)


def _storage_of(path: str | Path) -> str:
    """'mcap' or 'sqlite3': the storage of a bag (from metadata.yaml, or a lone storage file's suffix)."""
    location = locate_bag(path)
    if location.metadata is None:
        return "mcap" if location.path.suffix == ".mcap" else "sqlite3"
    info = read_metadata(location.metadata)
    return "mcap" if str(info.get("storage_identifier", "")).lower() == "mcap" else "sqlite3"

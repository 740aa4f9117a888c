"""Message-level vocabulary of the bag tools: type names, ground-truth mask values, storages, the typestore,
the error classes, and the helpers that build rosbags messages (Image, CompressedImage, CameraInfo) or decode
them (CDR bytes, camera images, ground-truth masks). Every other module of :mod:`dicnet_ros.bag` builds on this
one, and it imports none of them.

Ground-truth topic (``sensor_msgs/Image``, ``mono8`` / ``8UC1`` or ``mono16`` / ``16UC1``, stamped like the
camera image). ``make_bag`` writes this package's convention::

    255 = anomaly pixel      0 = normal pixel      128 = ignore (dataset ignore_id; any other value is ignored too)

and ``bag-eval`` also reads the other common ones (0/1 with 255 void, 0/255), declared or detected: see
:data:`dicnet_ros.data.label_encoding.MASK_CONVENTIONS`. ``decode_gt_mask`` turns a mask into the evaluation
label (0 normal, 1 anomaly, 255 void) through the convention's ``LabelEncoding``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin
from rosbags.typesys import Stores, get_typestore

from dicnet_ros.data.label_encoding import MASK_CONVENTIONS, LabelEncoding
from dicnet_ros.text import bounded

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)

GT_NORMAL = 0
GT_IGNORE = 128
GT_ANOMALY = 255
GT_ENCODING_DOC = "mono8: 255 = anomaly, 0 = normal, 128 = ignore (any other value is ignored)"
#: The convention make_bag writes (``GT_ENCODING_DOC``), as a LabelEncoding.
MAKE_BAG_CONVENTION = MASK_CONVENTIONS["dicnet"]
#: Image encodings a ground-truth mask may have: 8- or 16-bit single channel, under either name.
GT_IMAGE_ENCODINGS = {"mono8": "mono8", "8UC1": "mono8", "mono16": "mono16", "16UC1": "mono16"}

STORAGES: dict[str, StoragePlugin] = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
IMAGE_ENCODINGS = ("rgb8", "bgr8")
COMPRESSED_FORMATS = ("jpeg", "png")
DEFAULT_NAMESPACE = "/dicnet"
CUSTOM_PREFIX = "dicnet."
BAG_VERSION = 9
REASON_LIMIT = 240  # characters of a wrapped exception's message, which may itself quote bag text

_TYPESTORE: Any = None


class BagError(RuntimeError):
    """Anything wrong with a bag or an output path; the message is one line a user can act on."""


class TopicNotFoundError(BagError):
    """The requested topic is not in the bag (the message lists the topics that are)."""


class UnsupportedMessageError(BagError):
    """The topic exists but carries a message type (or image encoding) the tool cannot use."""


class CorruptBagError(BagError):
    """The bag cannot be read to the end: missing metadata.yaml, truncated or damaged storage file."""


class OutputExistsError(BagError):
    """The output path exists and ``overwrite`` was not given."""


def typestore() -> Any:
    """The ROS 2 Kilted typestore, built once (it parses every message definition)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


def _one_line(text: object) -> str:
    """An exception's message for a one-line error: bounded, because it may quote text from the bag."""
    return bounded(text, REASON_LIMIT)


def format_stamp(stamp_ns: int) -> str:
    """Nanoseconds -> '12.345678901 s', exact (no float rounding), as a header stamp is written."""
    sign = "-" if stamp_ns < 0 else ""
    sec, nsec = divmod(abs(int(stamp_ns)), 1_000_000_000)
    return f"{sign}{sec}.{nsec:09d} s"


@contextlib.contextmanager
def about_frame(topic: str, index: int, stamp_ns: int | None = None) -> Iterator[None]:
    """Say which frame a ``BagError`` raised in the block is about (same class, so callers' handling holds).

    The message becomes 'bad frame on <topic> #<index> (stamp <sec.nsec> s): <reason>', ``index`` being the
    0-based message index on that topic; before the message is decoded the stamp is not known yet.
    """
    try:
        yield
    except BagError as exc:
        stamp = f"stamp {format_stamp(stamp_ns)}" if stamp_ns is not None else "stamp unknown"
        raise type(exc)(f"bad frame on {bounded(topic)} #{index} ({stamp}): {exc}") from exc


# ------------------------------------------------------------------------------------------- stamps & messages


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rosbags or rclpy) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _header(stamp_ns: int, frame_id: str) -> Any:
    types = typestore().types
    stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def array_to_bag_image(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """numpy -> rosbags ``sensor_msgs/msg/Image`` (the construction side; decoding lives in image_conversion).

    ``encoding`` is the ROS name of the array's layout: rgb8/bgr8 (H,W,3 uint8), mono8 (H,W uint8) or 32FC1
    (H,W float32, written in the host byte order and flagged as such).
    """
    layouts = {"rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "mono8": (np.uint8, 1), "32FC1": (np.float32, 1)}
    if encoding not in layouts:
        raise ValueError(f"cannot build an Image with encoding {encoding!r}; use one of {', '.join(layouts)}")
    dtype, channels = layouts[encoding]
    arr = np.ascontiguousarray(array, dtype=dtype)
    if (arr.ndim == 2 and channels != 1) or (arr.ndim == 3 and arr.shape[2] != channels) or arr.ndim not in (2, 3):
        raise ValueError(f"array of shape {array.shape} does not match encoding {encoding}")
    height, width = arr.shape[:2]
    return typestore().types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(sys.byteorder == "big" and arr.itemsize > 1),
        step=width * channels * arr.itemsize,
        data=arr.reshape(-1).view(np.uint8),
    )


def rgb_to_bag_compressed(rgb: np.ndarray, fmt: str, stamp_ns: int, frame_id: str) -> Any:
    """RGB -> rosbags ``sensor_msgs/msg/CompressedImage`` as compressed_image_transport writes it."""
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"unknown compression {fmt!r}; use one of {', '.join(COMPRESSED_FORMATS)}")
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return typestore().types[COMPRESSED_TYPE](
        header=_header(stamp_ns, frame_id), format=f"rgb8; {fmt} compressed bgr8", data=buf.reshape(-1)
    )


def camera_info(width: int, height: int, stamp_ns: int, frame_id: str) -> Any:
    """A plausible pinhole CameraInfo (fx = fy = width, centred principal point): datasets carry no intrinsics."""
    types = typestore().types
    f, cx, cy = float(width), width / 2.0, height / 2.0
    return types[CAMERA_INFO_TYPE](
        header=_header(stamp_ns, frame_id),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5, np.float64),
        k=np.array([f, 0, cx, 0, f, cy, 0, 0, 1], np.float64),
        r=np.eye(3).reshape(-1),
        p=np.array([f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0], np.float64),
        binning_x=0,
        binning_y=0,
        roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def gt_mask_from_labels(label: np.ndarray, anomaly_ids: Sequence[int], ignore_id: int) -> np.ndarray:
    """Dataset class ids -> the ground-truth topic's mono8 mask (255 anomaly / 0 normal / 128 ignore)."""
    mask = np.full(label.shape, GT_NORMAL, np.uint8)
    mask[label == ignore_id] = GT_IGNORE
    mask[np.isin(label, list(anomaly_ids))] = GT_ANOMALY
    return mask


def read_gt_mask(msg: Any) -> np.ndarray:
    """Ground-truth Image message (mono8 / 8UC1 / mono16 / 16UC1) -> (H, W) uint8 / uint16 raw mask values."""
    from dicnet_ros.image_conversion import ImageConversionError, image_msg_to_array

    encoding = str(getattr(msg, "encoding", None))
    if encoding not in GT_IMAGE_ENCODINGS:
        raise UnsupportedMessageError(
            f"ground-truth image has encoding {bounded(encoding)!r}; expected a single-channel mask "
            f"({', '.join(GT_IMAGE_ENCODINGS)})"
        )
    if GT_IMAGE_ENCODINGS[encoding] != encoding:
        msg = dataclasses.replace(msg, encoding=GT_IMAGE_ENCODINGS[encoding])
    try:
        return image_msg_to_array(msg)
    except ImageConversionError as exc:
        raise CorruptBagError(f"bad ground-truth image: {_one_line(exc)}") from exc


def decode_gt_mask(msg: Any, convention: LabelEncoding = MAKE_BAG_CONVENTION) -> np.ndarray:
    """Ground-truth Image message -> (H, W) uint8 evaluation label (0 normal, 1 anomaly, 255 void) under
    ``convention`` (default: the one ``make_bag`` writes)."""
    return convention.apply(read_gt_mask(msg))


def header_stamp_ns(raw: bytes, msgtype: str) -> int:
    """The header stamp of a serialized message that starts with ``std_msgs/Header`` (Image, CompressedImage),
    read from its first bytes: a pre-pass over a bag's stamps need not copy every frame's pixels."""
    if len(raw) >= 12 and raw[0] == 0 and raw[1] in (0, 1):  # CDR encapsulation, big (0) or little (1) endian
        sec, nanosec = struct.unpack_from("<iI" if raw[1] == 1 else ">iI", raw, 4)
        return sec * 1_000_000_000 + nanosec
    return stamp_to_ns(deserialize(raw, msgtype).header.stamp)


def deserialize(raw: bytes, msgtype: str) -> Any:
    """CDR bytes -> rosbags message object, with decoding errors reported as a damaged bag."""
    try:
        return typestore().deserialize_cdr(raw, msgtype)
    except Exception as exc:  # rosbags raises assorted errors on bad CDR
        raise CorruptBagError(f"cannot decode a {bounded(msgtype)} message: {_one_line(exc)}") from exc


def image_msg_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """Raw or compressed image message -> (H, W, 3) uint8 RGB via the node's own conversion."""
    from dicnet_ros.image_conversion import ImageConversionError, compressed_msg_to_rgb, image_msg_to_rgb

    try:
        return compressed_msg_to_rgb(msg) if msgtype == COMPRESSED_TYPE else image_msg_to_rgb(msg)
    except ImageConversionError as exc:
        raise UnsupportedMessageError(f"cannot convert {bounded(msgtype)} message: {_one_line(exc)}") from exc

"""rosbag2 tools: dataset -> bag (``make_bag``), bag -> model -> outputs + metrics (``evaluate_bag``), and a small
rclpy player (``play_bag``) / recorder (``BagRecorder``) for evaluating the ROS node itself.

Everything goes through `rosbags` (pure Python, sqlite3 and mcap storages, no ROS installation needed) and the
same inference interface and image conversion as the node (:func:`dicnet_ros.inference.load_model`,
:mod:`dicnet_ros.image_conversion`), so a bag evaluation measures what the vehicle would compute.

Ground-truth topic encoding (``sensor_msgs/Image``, ``mono8``, same header as the camera image)::

    255 = anomaly pixel      0 = normal pixel      128 = ignore (dataset ignore_id; any other value is ignored too)

It stays raw (lossless) even when the camera topic is compressed. ``make_bag`` stores the dataset spec (class
names, anomaly ids, ignore id) and the topic names as JSON in the bag's ``metadata.yaml`` ``custom_data``
(keys ``dicnet.*``), so ``bag-eval`` finds the ground-truth topic by itself.

Evaluating the node with a bag (recipe; details in ``docs/bag_evaluation.md``)::

    dicnet make-bag --dataset DATA --split test --out drive_bag --rate 10
    dicnet node --model model.onnx --use-sim-time --image-topic /camera/image_raw      # terminal 1
    ros2 bag record -o node_out /anomaly_node/anomaly_score /camera/anomaly_gt         # terminal 2
    # terminal 3: replay on /clock (`ros2 bag play drive_bag --clock 100`, or our player, no ROS CLI needed)
    python -c "from dicnet_ros.bag import play_bag; play_bag('drive_bag', {'/camera/image_raw': \
'/camera/image_raw', '/camera/anomaly_gt': '/camera/anomaly_gt'}, rate=1.0)"
    dicnet bag-eval --bag node_out --score-topic /anomaly_node/anomaly_score --gt-topic /camera/anomaly_gt --out ev

``BagRecorder`` records in-process instead of ``ros2 bag record`` (see test_node_replay_with_sim_time).

Outputs of a tool are written to a hidden temporary directory next to the target and renamed into place at the
end, so a failed or interrupted run never leaves a result that looks complete.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError, WriterError
from rosbags.typesys import Stores, get_typestore

log = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)

GT_NORMAL = 0
GT_IGNORE = 128
GT_ANOMALY = 255
GT_ENCODING_DOC = "mono8: 255 = anomaly, 0 = normal, 128 = ignore (any other value is ignored)"

STORAGES: dict[str, StoragePlugin] = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
IMAGE_ENCODINGS = ("rgb8", "bgr8")
COMPRESSED_FORMATS = ("jpeg", "png")
DEFAULT_NAMESPACE = "/dicnet"
CUSTOM_PREFIX = "dicnet."
BAG_VERSION = 9

_TYPESTORE: Any = None

try:  # rosbags' sqlite3 storage reads through apsw, whose errors are not sqlite3's
    from apsw import Error as _ApswError
except ImportError:  # pragma: no cover - older rosbags use the stdlib sqlite3
    _ApswError = sqlite3.DatabaseError
#: Exceptions a damaged or truncated storage file raises while being opened or read.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    ReaderError, sqlite3.DatabaseError, _ApswError, struct.error, EOFError, KeyError, ValueError, OSError,
)


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
    return " ".join(str(text).split())


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


def decode_gt_mask(msg: Any) -> np.ndarray:
    """Ground-truth Image message (mono8) -> (H, W) uint8 with only 0 / 128 / 255 left."""
    from dicnet_ros.image_conversion import ImageConversionError, image_msg_to_array

    if getattr(msg, "encoding", None) != "mono8":
        raise UnsupportedMessageError(
            f"ground-truth image has encoding {getattr(msg, 'encoding', '?')!r}; expected mono8 ({GT_ENCODING_DOC})"
        )
    try:
        raw = image_msg_to_array(msg)
    except ImageConversionError as exc:
        raise CorruptBagError(f"bad ground-truth image: {_one_line(exc)}") from exc
    lut = np.full(256, GT_IGNORE, np.uint8)
    lut[GT_NORMAL], lut[GT_ANOMALY] = GT_NORMAL, GT_ANOMALY
    return lut[raw]


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


def deserialize(raw: bytes, msgtype: str) -> Any:
    """CDR bytes -> rosbags message object, with decoding errors reported as a damaged bag."""
    try:
        return typestore().deserialize_cdr(raw, msgtype)
    except Exception as exc:  # rosbags raises assorted errors on bad CDR
        raise CorruptBagError(f"cannot decode a {msgtype} message: {_one_line(exc)}") from exc


def image_msg_rgb(msg: Any, msgtype: str) -> np.ndarray:
    """Raw or compressed image message -> (H, W, 3) uint8 RGB via the node's own conversion."""
    from dicnet_ros.image_conversion import ImageConversionError, compressed_msg_to_rgb, image_msg_to_rgb

    try:
        return compressed_msg_to_rgb(msg) if msgtype == COMPRESSED_TYPE else image_msg_to_rgb(msg)
    except ImageConversionError as exc:
        raise UnsupportedMessageError(f"cannot convert {msgtype} message: {_one_line(exc)}") from exc


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


# ----------------------------------------------------------------------------------------------- make-bag


@dataclass
class MakeBagResult:
    """What make_bag wrote, for the CLI summary and tests."""

    path: Path
    num_frames: int
    topics: dict[str, str]  # name -> type
    start_ns: int
    stamps_ns: list[int] = field(default_factory=list)


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
) -> MakeBagResult:
    """Write a dataset split as a camera drive: frame i is stamped ``t0 + i / rate`` on every topic.

    With ``compressed`` ('jpeg' or 'png') the camera goes to ``<image_topic>/compressed`` as CompressedImage;
    the ground truth stays raw mono8 (see the module docstring for its values).
    """
    from tqdm import tqdm

    from dicnet_ros.data import open_dataset

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
    ds = open_dataset(dataset, split, kind=kind)
    spec = ds.spec
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
    with staged_output(out, overwrite) as staged:
        writer = Writer(staged, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        custom = {
            "dataset": spec.to_dict(),
            "source": {"root": str(Path(dataset).resolve()), "split": split, "kind": ds.kind},
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
    return MakeBagResult(out, count, topics, t0, stamps)


# ------------------------------------------------------------------------------------------------ bag-eval


class StampMatcher:
    """Pairs score maps with ground-truth masks by header stamp, whichever arrives first (bounded memory)."""

    def __init__(self, max_pending: int = 256) -> None:
        self.max_pending = max_pending
        self.pending: dict[str, OrderedDict[int, Any]] = {"score": OrderedDict(), "gt": OrderedDict()}
        self.dropped = {"score": 0, "gt": 0}

    def add(self, kind: str, stamp: int, payload: Any) -> tuple[Any, Any] | None:
        """Store ``payload`` ('score' or 'gt'); return (score, gt) once both halves of ``stamp`` are in."""
        other = "gt" if kind == "score" else "score"
        if stamp in self.pending[other]:
            match = self.pending[other].pop(stamp)
            return (payload, match) if kind == "score" else (match, payload)
        queue = self.pending[kind]
        queue[stamp] = payload
        if len(queue) > self.max_pending:
            queue.popitem(last=False)
            self.dropped[kind] += 1
        return None

    def unmatched(self) -> dict[str, int]:
        """Frames that never found a partner (dropped + still pending)."""
        return {k: self.dropped[k] + len(self.pending[k]) for k in self.pending}


class MetricsAccumulator:
    """One AnomalyEvaluator per score map (DiCNet, MSP if the model has it) + mask counts at the threshold."""

    def __init__(self, score_range: tuple[float, float]) -> None:
        self.score_range = score_range
        self.evaluators: dict[str, Any] = {}
        self.mask_counts = np.zeros(4, np.int64)  # tp, fp, fn, tn of the thresholded DiCNet mask
        self.has_mask = False

    def update(self, scores: Mapping[str, np.ndarray], gt: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one frame; ``gt`` is the mono8 mask (255 anomaly / 0 normal / 128 ignore)."""
        from dicnet_ros.metrics import AnomalyEvaluator

        for name, score in scores.items():
            if score.shape != gt.shape:
                raise BagError(f"{name} score map is {score.shape[1]}x{score.shape[0]} but the ground truth is "
                               f"{gt.shape[1]}x{gt.shape[0]}")
            if name not in self.evaluators:
                rng = self.score_range if name == "dicnet" else (0.0, 1.0)
                self.evaluators[name] = AnomalyEvaluator(
                    anomaly_ids=(GT_ANOMALY,), ignore_ids=(GT_IGNORE,), score_range=rng,
                    keep_exact_pooled=True, per_image=True,
                )
            self.evaluators[name].update(score, gt)
        if mask is not None:
            self.has_mask = True
            valid = gt != GT_IGNORE
            pos, pred = (gt == GT_ANOMALY)[valid], mask[valid]
            self.mask_counts += [np.count_nonzero(pos & pred), np.count_nonzero(~pos & pred),
                                 np.count_nonzero(pos & ~pred), np.count_nonzero(~pos & ~pred)]

    def compute(self) -> dict[str, Any]:
        """{'dicnet': evaluator.compute(), 'msp': ... or None, 'mask_at_threshold': {...}}."""
        out: dict[str, Any] = {name: ev.compute() for name, ev in self.evaluators.items()}
        out.setdefault("msp", None)
        if self.has_mask:
            tp, fp, fn, tn = (int(x) for x in self.mask_counts)
            out["mask_at_threshold"] = {
                "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "fpr": fp / (fp + tn) if fp + tn else None,
                "iou": tp / (tp + fp + fn) if tp + fp + fn else None,
            }
        return out


@dataclass
class EvalResult:
    """Summary of one bag evaluation (the same content as metrics.json)."""

    out_dir: Path
    out_bag: Path | None
    num_frames: int
    num_evaluated: int
    metrics: dict[str, Any]
    latency: dict[str, Any]


def latency_summary(values_ms: Sequence[float]) -> dict[str, Any]:
    """p50 / p95 / mean / max in ms and the FPS the mean allows."""
    if not values_ms:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None, "fps": None}
    arr = np.asarray(values_ms, np.float64)
    mean = float(arr.mean())
    return {"count": int(arr.size), "p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "mean_ms": mean, "max_ms": float(arr.max()), "fps": 1000.0 / mean if mean > 0 else None}


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


class _Strip:
    """Collects a few evenly spaced frames for the qualitative PNG (image | GT | score | overlay)."""

    def __init__(self, total: int, count: int) -> None:
        picks = np.linspace(0, max(total - 1, 0), num=min(count, total), dtype=int) if total > 0 else []
        self.wanted: set[int] = {int(i) for i in picks}
        self.rows: dict[int, dict[str, Any]] = {}

    def add(self, index: int, stamp: int, tiles: dict[str, np.ndarray]) -> None:
        if index in self.wanted:
            self.rows[stamp] = {"index": index, **tiles}

    def add_gt(self, stamp: int, gt: np.ndarray) -> None:
        if stamp in self.rows:
            rgb = np.zeros((*gt.shape, 3), np.uint8)
            rgb[gt == GT_ANOMALY] = (255, 255, 255)
            rgb[gt == GT_IGNORE] = (90, 90, 160)
            self.rows[stamp]["gt"] = rgb


def evaluate_bag(
    bag: str | Path,
    out_dir: str | Path,
    image_topic: str | None = None,
    gt_topic: str | None = None,
    model: Any = None,
    score_topic: str | None = None,
    out_bag_name: str | None = None,
    storage: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    threshold: float | None = None,
    overwrite: bool = False,
    strip_frames: int = 4,
    write_bag: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Run ``model`` over every frame of ``image_topic`` (streamed), write the output bag and the report.

    ``model`` is an ``AnomalyModel`` (or a path for ``load_model``). Alternatively ``score_topic`` names a
    32FC1 score topic already in the bag (e.g. recorded from the node), evaluated against ``gt_topic`` by header
    stamp without running any model. The whole ``out_dir`` appears atomically at the end.
    """
    bag = Path(bag)
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite)
    if (model is None) == (score_topic is None):
        raise ValueError("give either a model or a score topic to evaluate")
    if storage is not None and storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
    info = bag_dataset_info(bag) if bag.is_dir() else {}
    image_topic = image_topic or info.get("image_topic") or None
    if gt_topic is None and info.get("gt_topic"):
        gt_topic = info["gt_topic"]
        log.info("using ground-truth topic %s from the bag's metadata", gt_topic)
    with open_bag(bag) as reader:  # validate topics before loading a model or creating anything
        if score_topic is None:
            if not image_topic:
                raise BagError(f"no --image-topic given and the bag does not name one; {_topic_listing(reader)}")
            main_conns, main_type = require_topic(reader, image_topic, IMAGE_TYPES)
        else:
            main_conns, main_type = require_topic(reader, score_topic, (IMAGE_TYPE,))
        gt_conns = require_topic(reader, gt_topic, (IMAGE_TYPE,))[0] if gt_topic else []
        total = sum(c.msgcount for c in main_conns)
        expected_gt = sum(c.msgcount for c in gt_conns)
    if isinstance(model, str | Path):
        from dicnet_ros.inference import load_model

        model = load_model(model)
    if model is not None and threshold is not None:
        model.threshold = threshold
    storage = storage or _storage_of(bag)
    score_range = model.metadata.score_range if model is not None else (0.0, 1.0)
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    with staged_output(out_dir, overwrite) as staged:
        staged.mkdir(parents=True)
        out_bag = staged / (out_bag_name or f"{bag.name.removesuffix(bag.suffix) or 'bag'}_dicnet")
        result = _evaluate_stream(
            bag, staged, out_bag if write_bag and model is not None else None, storage, ns, model, main_type,
            {c.id for c in main_conns}, {c.id for c in gt_conns}, total, expected_gt, score_range, strip_frames,
            progress, image_topic if score_topic is None else score_topic,
        )
        meta = {
            "bag": str(bag.resolve()),
            "image_topic": image_topic,
            "score_topic": score_topic,
            "gt_topic": gt_topic,
            "model": model.describe() if model is not None else None,
            "threshold": model.threshold if model is not None else None,
            "score_range": list(score_range),
            "dataset": info.get("dataset"),
            "gt_encoding": GT_ENCODING_DOC,
            **result,
        }
        (staged / "metrics.json").write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
        (staged / "report.md").write_text(render_report(meta))
        final_bag = out_dir / out_bag.name if out_bag.exists() else None
    return EvalResult(out_dir, final_bag, result["num_frames"], result["num_evaluated"], result["metrics"],
                      result["latency"])


def _storage_of(path: Path) -> str:
    """'mcap' or 'sqlite3': the storage of a bag directory (from metadata.yaml) or a bare storage file."""
    if path.is_dir():
        try:
            info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
            return "mcap" if str(info.get("storage_identifier", "")).lower() == "mcap" else "sqlite3"
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return "sqlite3"
    return "mcap" if path.suffix == ".mcap" else "sqlite3"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _evaluate_stream(
    bag: Path, staged: Path, out_bag: Path | None, storage: str, ns: str, model: Any, main_type: str,
    main_ids: set[int], gt_ids: set[int], total: int, expected_gt: int, score_range: tuple[float, float],
    strip_frames: int, progress: bool, main_topic: str,
) -> dict[str, Any]:
    """The single streaming pass: copy input, infer, write outputs, pair with GT, accumulate metrics."""
    from tqdm import tqdm

    from dicnet_ros.visualization import colorize_score, overlay

    ts = typestore()
    matcher = StampMatcher()
    acc = MetricsAccumulator(score_range)
    strip = _Strip(total, strip_frames)
    infer_ms: list[float] = []
    frame_ms: list[float] = []
    frames = gt_seen = 0
    lo, hi = model.metadata.display_range if model is not None else score_range  # colours for people
    with contextlib.ExitStack() as stack:
        writer = None
        out_conns: dict[str, Connection] = {}
        if out_bag is not None:
            writer = stack.enter_context(Writer(out_bag, version=BAG_VERSION, storage_plugin=STORAGES[storage]))
            writer.set_custom_data(CUSTOM_PREFIX + "source_bag", json.dumps(str(bag.resolve())))
        reader = stack.enter_context(open_bag(bag))
        conn_map: dict[int, Connection] = {}
        if writer is not None:
            conn_map = {c.id: _add_conn(writer, c) for c in reader.connections}
            for name in ("anomaly_score", "anomaly_mask", "overlay"):
                out_conns[name] = writer.add_connection(f"{ns}/{name}", IMAGE_TYPE, typestore=ts)
        bar = stack.enter_context(tqdm(total=total, desc=f"bag-eval {bag.name}", unit="frame", disable=not progress))
        for conn, timestamp, raw in iter_raw(reader):
            if writer is not None:
                writer.write(conn_map[conn.id], timestamp, raw)
            if conn.id in gt_ids:
                gt_msg = deserialize(raw, IMAGE_TYPE)
                gt = decode_gt_mask(gt_msg)
                gt_seen += 1
                stamp = stamp_to_ns(gt_msg.header.stamp)
                strip.add_gt(stamp, gt)
                pair = matcher.add("gt", stamp, gt)
                if pair is not None:
                    acc.update(pair[0][0], pair[1], pair[0][1])
            if conn.id not in main_ids:
                continue
            start = time.perf_counter()
            msg = deserialize(raw, main_type)
            stamp, frame_id = stamp_to_ns(msg.header.stamp), msg.header.frame_id
            if model is not None:
                rgb = image_msg_rgb(msg, main_type)
                res = model.infer(rgb)
                infer_ms.append(float(res.timings_ms.get("inference", res.timings_ms.get("total", math.nan))))
                score = np.asarray(res.anomaly_score, np.float32)
                mask = np.asarray(res.anomaly_mask, bool)
                scores = {"dicnet": score, **{k: np.asarray(v, np.float32) for k, v in res.extras.items()}}
                over = overlay(rgb, mask)  # mask tint: the score itself is on anomaly_score
                if writer is not None:
                    for name, arr, enc in (("anomaly_score", score, "32FC1"),
                                           ("anomaly_mask", mask.astype(np.uint8) * 255, "mono8"),
                                           ("overlay", over, "rgb8")):
                        writer.write(out_conns[name], timestamp,
                                     ts.serialize_cdr(array_to_bag_image(arr, enc, stamp, frame_id), IMAGE_TYPE))
                if frames in strip.wanted:
                    strip.add(frames, stamp, {"image": rgb, "score": colorize_score(score, lo, hi), "overlay": over})
                frame_ms.append((time.perf_counter() - start) * 1e3)
            else:
                score = _decode_score(msg)
                mask = None
                scores = {"dicnet": score}
                if frames in strip.wanted:
                    strip.add(frames, stamp, {"score": colorize_score(score, lo, hi)})
            frames += 1
            bar.update(1)
            if gt_ids:
                pair = matcher.add("score", stamp, (scores, mask))
                if pair is not None:
                    acc.update(pair[0][0], pair[1], pair[0][1])
    if frames != total or gt_seen != expected_gt:
        raise CorruptBagError(
            f"bag {bag} ended early: read {frames} of {total} frames on {main_topic}"
            + (f" and {gt_seen} of {expected_gt} ground-truth masks" if gt_ids else "")
            + " (truncated recording?)"
        )
    metrics = acc.compute() if gt_ids else None
    unmatched = matcher.unmatched() if gt_ids else {"score": 0, "gt": 0}
    evaluated = acc.evaluators["dicnet"].compute()["num_images"] if metrics and "dicnet" in acc.evaluators else 0
    if gt_ids and unmatched["score"]:
        log.warning("%d frames had no ground-truth mask with the same header stamp", unmatched["score"])
    plots: list[str] = []
    if metrics is not None and acc.evaluators:
        plots = write_curves(acc.evaluators, staged)
    if strip.rows:
        write_strip(strip, staged / "qualitative.png")
        plots.append("qualitative.png")
    return {
        "num_frames": frames,
        "num_evaluated": evaluated,
        "unmatched": unmatched,
        "metrics": metrics,
        "latency": {"inference": latency_summary(infer_ms), "per_frame_total": latency_summary(frame_ms)},
        "output_bag": out_bag.name if out_bag is not None else None,
        "output_topics": {f"{ns}/{n}": e for n, e in (("anomaly_score", "32FC1"), ("anomaly_mask", "mono8"),
                                                       ("overlay", "rgb8"))} if out_bag is not None else {},
        "files": plots,
    }


def _decode_score(msg: Any) -> np.ndarray:
    """32FC1 Image (e.g. the node's recorded score topic) -> (H, W) float32 in native byte order."""
    from dicnet_ros.image_conversion import ImageConversionError, image_msg_to_array

    if msg.encoding != "32FC1":
        raise UnsupportedMessageError(f"score image has encoding {msg.encoding!r}; expected 32FC1")
    try:
        return np.ascontiguousarray(image_msg_to_array(msg), np.float32)
    except ImageConversionError as exc:
        raise CorruptBagError(f"bad score image: {_one_line(exc)}") from exc


# ------------------------------------------------------------------------------------------ report & plots


def format_pct(value: Any) -> str:
    """A [0, 1] metric as a percent string, or 'n/a'."""
    return "n/a" if value is None else f"{100.0 * float(value):.2f}"


def render_report(meta: Mapping[str, Any]) -> str:
    """Markdown report: metrics table (both protocols, DiCNet and MSP), latency, files."""
    lines = ["# DiCNet bag evaluation", "", f"- bag: `{meta['bag']}`"]
    for key in ("image_topic", "score_topic", "gt_topic"):
        if meta.get(key):
            lines.append(f"- {key.replace('_', ' ')}: `{meta[key]}`")
    if meta.get("model"):
        lines.append(f"- model: `{meta['model'].get('model')}` ({meta['model'].get('backend')}, "
                     f"{meta['model'].get('device')}), threshold {meta['threshold']:.6g}")
    lines.append(f"- frames: {meta['num_frames']}, evaluated (per-image protocol): {meta['num_evaluated']}")
    metrics = meta.get("metrics")
    lines += ["", "## Metrics", ""]
    if not metrics:
        lines.append("No ground-truth topic: only the outputs and the latency were produced.")
    else:
        lines += [
            "Percent; anomaly pixels are the positives; ground truth " + GT_ENCODING_DOC + ".",
            "Per-image = mean over images with both anomaly and normal pixels (anomaly-seg protocol); "
            "pooled = all pixels at once.",
            "",
            "| method | protocol | AUROC ↑ | AUPR ↑ | FPR95 ↓ |",
            "|---|---|---|---|---|",
        ]
        for name, label in (("dicnet", "DiCNet"), ("msp", "MSP")):
            m = metrics.get(name)
            for proto in ("per_image", "pooled"):
                vals = m.get(proto, {}) if m else {}
                lines.append(f"| {label} | {proto.replace('_', '-')} | {format_pct(vals.get('auroc'))} | "
                             f"{format_pct(vals.get('aupr'))} | {format_pct(vals.get('fpr95'))} |")
        if metrics.get("msp") is None:
            lines += ["", "MSP: n/a (the model exposes no `msp` score map)."]
        at = metrics.get("mask_at_threshold")
        if at:
            lines += ["", f"Mask at the threshold: precision {format_pct(at['precision'])}, recall "
                          f"{format_pct(at['recall'])}, FPR {format_pct(at['fpr'])}, IoU {format_pct(at['iou'])}."]
    lat = meta.get("latency", {})
    lines += ["", "## Latency", "", "| stage | p50 ms | p95 ms | mean ms | FPS |", "|---|---|---|---|---|"]
    for stage, vals in lat.items():
        if vals.get("count"):
            lines.append(f"| {stage.replace('_', ' ')} | {vals['p50_ms']:.2f} | {vals['p95_ms']:.2f} | "
                         f"{vals['mean_ms']:.2f} | {vals['fps']:.1f} |")
    if meta.get("output_bag"):
        topics = ", ".join(f"`{t}` ({e})" for t, e in meta.get("output_topics", {}).items())
        lines += ["", "## Files", "", f"- output bag `{meta['output_bag']}`: input topics + {topics}, "
                                      "original stamps"]
    for name in meta.get("files", []):
        lines.append(f"- ![{name}]({name})")
    return "\n".join(lines) + "\n"


def write_curves(evaluators: Mapping[str, Any], out_dir: Path) -> list[str]:
    """ROC and PR curves (pooled, from each evaluator's score histogram) as PNGs; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_roc, ax_roc = plt.subplots(figsize=(5, 4.5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 4.5))
    try:
        for name, ev in evaluators.items():
            try:
                curve = ev.histogram.curve()
                curve.check_binary()
            except ValueError:
                continue
            tps, fps = curve.tps.astype(np.float64), curve.fps.astype(np.float64)
            tpr, fpr = tps / curve.num_positive, fps / curve.num_negative
            precision = tps / np.maximum(tps + fps, 1)
            label = "DiCNet" if name == "dicnet" else name.upper()
            ax_roc.plot(np.r_[0, fpr], np.r_[0, tpr], label=label)
            ax_pr.plot(tpr, precision, label=label)
        ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (pooled pixels)")
        ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (pooled pixels)", ylim=(0, 1.02))
        for fig, ax, name in ((fig_roc, ax_roc, "roc.png"), (fig_pr, ax_pr, "pr.png")):
            ax.legend(loc="best")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=100)
    finally:
        plt.close(fig_roc)
        plt.close(fig_pr)
    return ["roc.png", "pr.png"]


def write_strip(strip: _Strip, path: Path) -> None:
    """Qualitative grid: one row per selected frame, columns image / GT mask / score colour / overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(strip.rows.values(), key=lambda r: r["index"])
    cols = [c for c in ("image", "gt", "score", "overlay") if any(c in r for r in rows)]
    titles = {"image": "image", "gt": "ground truth", "score": "anomaly score", "overlay": "overlay"}
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3 * len(cols), 2.2 * len(rows)), squeeze=False)
    try:
        for r, row in enumerate(rows):
            for c, col in enumerate(cols):
                ax = axes[r][c]
                ax.axis("off")
                if col in row:
                    ax.imshow(row[col])
                if r == 0:
                    ax.set_title(titles[col])
            axes[r][0].text(-0.02, 0.5, f"#{row['index']}", transform=axes[r][0].transAxes, ha="right", va="center")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------- rclpy player/recorder


def ros_message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> the rclpy message class (from the installed ROS Python packages)."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise UnsupportedMessageError(f"ROS Python type {msgtype} is not installed ({exc})") from exc


def play_bag(
    bag: str | Path,
    node_topic_map: Mapping[str, str],
    rate: float = 1.0,
    publish_clock: bool = True,
    clock_hz: float = 100.0,
    wait_for_subscribers: float = 5.0,
    node: Any = None,
    qos_depth: int = 10,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Replay ``bag`` into ROS: publish each mapped topic (bag topic -> ROS topic) at its recorded pace.

    Messages go out as their original CDR bytes deserialised into rclpy types, so stamps and data are
    untouched. With ``publish_clock`` /clock (rosgraph_msgs/Clock) follows the bag time, so nodes run with
    ``use_sim_time:=true`` see the drive's time. ``rate`` scales playback speed (2.0 = twice real time;
    ``math.inf`` = as fast as possible). Returns the number of messages published.
    """
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message

    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    own_node = node is None
    if own_node:
        node = rclpy.create_node("dicnet_bag_player")
    published = 0
    try:
        with open_bag(bag) as reader:
            conns: list[Connection] = []
            pubs: dict[int, tuple[Any, Any]] = {}
            by_topic: dict[str, Any] = {}
            for topic, target in node_topic_map.items():
                topic_conns, msgtype = require_topic(reader, topic)
                cls = ros_message_class(msgtype)
                if target not in by_topic:
                    by_topic[target] = node.create_publisher(cls, target, QoSProfile(
                        depth=qos_depth, reliability=ReliabilityPolicy.RELIABLE))
                for c in topic_conns:
                    pubs[c.id] = (by_topic[target], cls)
                    conns.append(c)
            clock_pub = clock_cls = time_cls = None
            if publish_clock:
                from builtin_interfaces.msg import Time
                from rosgraph_msgs.msg import Clock

                clock_cls, time_cls = Clock, Time
                clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
            _wait_for_subscribers(node, list(by_topic.values()), wait_for_subscribers)

            def send_clock(t_ns: int) -> None:
                if clock_pub is not None:
                    stamp = time_cls(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)
                    clock_pub.publish(clock_cls(clock=stamp))

            wall0 = bag0 = None
            for conn, timestamp, raw in iter_raw(reader, conns):
                if should_stop is not None and should_stop():
                    break
                if wall0 is None:
                    wall0, bag0 = time.monotonic(), timestamp
                    send_clock(timestamp)
                elif math.isfinite(rate):
                    due = wall0 + (timestamp - bag0) / 1e9 / rate
                    while (now := time.monotonic()) < due:
                        time.sleep(min(due - now, 1.0 / clock_hz))
                        send_clock(bag0 + int(min(now - wall0, due - wall0) * rate * 1e9))
                send_clock(timestamp)
                pub, cls = pubs[conn.id]
                pub.publish(deserialize_message(bytes(raw), cls))
                published += 1
    finally:
        if own_node:
            node.destroy_node()
        if own_context:
            rclpy.try_shutdown()
    return published


def _wait_for_subscribers(node: Any, publishers: Sequence[Any], timeout: float) -> None:
    """Give DDS discovery up to ``timeout`` s so the first frames are not published to nobody."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(p.get_subscription_count() > 0 for p in publishers):
        time.sleep(0.05)


class BagRecorder:
    """Records ROS topics (serialized, untouched) into a rosbag2 via rosbags, stamped with the node clock.

    Under ``use_sim_time`` the node clock is the replayed /clock, so the recording lines up with the input bag.
    Subscription callbacks only queue the bytes; one writer thread owns the storage (sqlite connections must
    stay on the thread that made them, and executors call back from any thread). Call ``close()`` (or use as a
    context manager) to finish the bag; the caller spins ``node``.
    """

    def __init__(self, node: Any, out: str | Path, topics: Mapping[str, str], storage: str = "sqlite3",
                 qos_depth: int = 50, overwrite: bool = False) -> None:
        import queue
        import threading

        from rclpy.qos import QoSProfile, ReliabilityPolicy

        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}; use one of {', '.join(STORAGES)}")
        self.out = Path(out)
        self.node = node
        self.topics = dict(topics)
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)
        self._staging = Staging(self.out, overwrite)
        self._queue: queue.Queue[tuple[str, int, bytes] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._keep = True
        self._thread = threading.Thread(target=self._write_loop, args=(STORAGES[storage],), daemon=True,
                                        name="dicnet_bag_recorder")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._staging.discard()
            raise BagError(f"cannot create {self.out}: {_one_line(self._error)}") from self._error
        qos = QoSProfile(depth=qos_depth, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = [node.create_subscription(ros_message_class(msgtype), topic, self._callback(topic), qos,
                                               raw=True) for topic, msgtype in self.topics.items()]

    def _callback(self, topic: str) -> Callable[[bytes], None]:
        def enqueue(raw: bytes) -> None:
            self._queue.put((topic, self.node.get_clock().now().nanoseconds, bytes(raw)))
            self.counts[topic] += 1

        return enqueue

    def _write_loop(self, plugin: StoragePlugin) -> None:
        try:
            writer = Writer(self._staging.path, version=BAG_VERSION, storage_plugin=plugin)
            writer.open()
            conns = {t: writer.add_connection(t, m, typestore=typestore()) for t, m in self.topics.items()}
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (item := self._queue.get()) is not None:
                topic, stamp, raw = item
                writer.write(conns[topic], stamp, raw)
        except Exception as exc:
            self._error = exc
        finally:
            if self._keep and self._error is None:
                writer.close()
            else:
                writer.abort()

    def close(self, keep: bool = True) -> None:
        """Finish the bag and move it into place (``keep=False`` discards it)."""
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        self._keep = keep
        self._queue.put(None)
        self._thread.join()
        if keep and self._error is None:
            self._staging.commit()
            return
        self._staging.discard()
        if self._error is not None:
            raise BagError(f"recording {self.out} failed: {_one_line(self._error)}") from self._error

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(keep=exc_type is None)


__all__ = [
    "GT_ANOMALY",
    "GT_IGNORE",
    "GT_NORMAL",
    "BagError",
    "BagImage",
    "BagRecorder",
    "CorruptBagError",
    "EvalResult",
    "MakeBagResult",
    "OutputExistsError",
    "TopicNotFoundError",
    "UnsupportedMessageError",
    "WriterError",
    "array_to_bag_image",
    "bag_dataset_info",
    "evaluate_bag",
    "iter_images",
    "make_bag",
    "play_bag",
    "rgb_to_bag_compressed",
]

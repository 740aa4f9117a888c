"""Writing bags and outputs: ``make_bag`` (dataset split -> camera drive with ground-truth masks; the mask
topic is mono8, 255 = anomaly, 0 = normal, 128 = ignore; simulator data also gets each frame's anomaly families
in the metadata, see :mod:`dicnet_ros.bag.families`), the staging that makes every output appear atomically
(a hidden temporary directory beside the target, renamed into place only when the run succeeds) and replaces an
old output only when a tool here wrote it (``OUTPUT_MARKER``, ``is_own_bag``) and it is not an input
(``refuse_overlap``), and copying a connection into another bag. Every bag written here is sealed with checksums
(:func:`dicnet_ros.bag.integrity.seal_bag`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Writer

from dicnet_ros.bag.families import FRAME_FAMILIES_KEY, encode_frame_families
from dicnet_ros.bag.integrity import WRITTEN_BY_KEY, seal_bag
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
    bounded,
    camera_info,
    gt_mask_from_labels,
    rgb_to_bag_compressed,
    typestore,
)
from dicnet_ros.bag.read import read_metadata
from dicnet_ros.ros_names import validate_topic_name

# ------------------------------------------------------------------------------------------- atomic outputs


#: File a tool puts into every output folder it writes (bag-eval's --out, the demo's folder): ``--overwrite`` only
#: ever replaces a folder that has it, so it can never delete what a user keeps under that name.
OUTPUT_MARKER = ".dicnet_output"


def mark_output(folder: Path, tool: str) -> None:
    """Say that ``folder`` was written by ``tool`` (so a later ``--overwrite`` may replace it)."""
    (folder / OUTPUT_MARKER).write_text(json.dumps({"written_by": tool}) + "\n")


def is_marked_output(folder: Path) -> bool:
    """A folder a tool here wrote (it holds ``OUTPUT_MARKER``), or an empty one: replacing it loses nothing."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    return (folder / OUTPUT_MARKER).is_file() or not any(folder.iterdir())


def is_own_bag(folder: Path) -> bool:
    """A bag a tool here wrote (``seal_bag`` records the tool; older make-bag bags record their dataset source),
    holding nothing but metadata.yaml and the storage files it lists; or an empty folder."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = {p.name for p in folder.iterdir()}
    if not entries:
        return True
    try:
        info = read_metadata(folder / "metadata.yaml")
    except BagError:
        return False
    files = {Path(str(f)).name for f in info.get("relative_file_paths") or []}
    custom = info.get("custom_data") or {}
    ours = f"{CUSTOM_PREFIX}{WRITTEN_BY_KEY}" in custom or f"{CUSTOM_PREFIX}source" in custom
    return ours and entries <= {"metadata.yaml", *files}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_overlap(out: Path, inputs: dict[str, Path | None], option: str = "--out") -> None:
    """An output that is an input, holds one or lies inside one would destroy or pollute it: refused whatever
    ``--overwrite`` says. ``inputs``: a label ('the input bag') -> path (None = not given)."""
    target = Path(os.path.abspath(out)).resolve()
    for label, path in inputs.items():
        if path is None:
            continue
        source = Path(os.path.abspath(path)).resolve()
        if _inside(source, target):
            how = "is" if source == target else "holds"
            raise BagError(f"{option} {out} {how} {label} {path}; choose another output folder")
        if _inside(target, source) and source.is_dir():
            raise BagError(f"{option} {out} lies inside {label} {path}; choose an output folder outside it")


def check_output_name(name: str, option: str, reserved: tuple[str, ...] = ()) -> str:
    """A file or folder name the tool creates inside its output folder: one plain path component."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or os.sep in name or (os.altsep is not None and os.altsep in name))
    if bad:
        raise BagError(f"{option} must be a plain name inside the output folder (no / or ..), got {bounded(name)!r}")
    if name in reserved:
        raise BagError(f"{option} {name!r} would clash with the {name} the tool writes; choose another name")
    return name


class Staging:
    """A hidden temp dir beside ``target`` holding ``path`` until ``commit`` renames it into place.

    ``discard`` (or a failed run) deletes it, so no partial output is ever left under the final name. An existing
    ``target`` is replaced only with ``overwrite`` and only when ``replaceable(target)`` says this tool wrote it.
    The folder's name is chosen before ``create`` makes it, so an interrupt (Ctrl-C, SIGTERM) arriving at any
    moment after ``create`` began is cleaned up by ``discard``.
    """

    def __init__(self, target: str | Path, overwrite: bool = False,
                 replaceable: Callable[[Path], bool] = is_marked_output) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.replaceable = replaceable
        check_output(self.target, overwrite, replaceable)
        self.dir = self.target.parent / f".{self.target.name}.partial-{uuid.uuid4().hex[:12]}"
        self.path = self.dir / self.target.name

    def create(self) -> Path:
        """Make the staging folder (its parents too); returns ``path``, which does not exist yet."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(mode=0o700)
        return self.path

    def commit(self) -> Path:
        """Move the staged output to the target (replacing an old one only with ``overwrite``); an interrupt in
        between puts the old one back."""
        old = self.dir / f"{self.target.name}.old"
        try:
            if not self.path.exists():
                raise BagError(f"internal error: nothing was written for {self.target}")
            if self.target.exists() or self.target.is_symlink():
                check_output(self.target, self.overwrite, self.replaceable)
                self.target.rename(old)  # deleted with the staging dir
            self.path.rename(self.target)
        except BaseException:
            if old.exists() and not self.target.exists():
                old.rename(self.target)
            raise
        finally:
            self.discard()
        return self.target

    def discard(self) -> None:
        """Delete the staging directory and whatever is in it."""
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def staged_output(target: str | Path, overwrite: bool = False,
                  replaceable: Callable[[Path], bool] = is_marked_output) -> Iterator[Path]:
    """Yield a not-yet-existing path beside ``target``; it becomes ``target`` only if the block succeeds."""
    staging = Staging(target, overwrite, replaceable)
    try:
        yield staging.create()
    except BaseException:
        staging.discard()
        raise
    staging.commit()


def check_output(target: Path, overwrite: bool, replaceable: Callable[[Path], bool] = is_marked_output) -> None:
    """Refuse an existing output path (early, before any work) unless ``overwrite``, and even then unless
    ``replaceable`` says a tool here wrote it: ``--overwrite`` never deletes what a user keeps there."""
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(f"output {target} exists; remove it or pass --overwrite")
    if not replaceable(target):
        raise OutputExistsError(
            f"output {target} exists and was not written by this tool (no {OUTPUT_MARKER} file, or files it does not "
            "write); --overwrite only replaces this tool's own output: remove it yourself or choose another name")


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
    refuse_overlap(out, {"the dataset": Path(dataset)})
    check_output(out, overwrite, is_own_bag)
    ds = open_dataset(dataset, split, kind=kind, **(dataset_options or {}))
    spec = ds.spec
    families_of_image = image_families(ds.root, split)
    count = len(ds) if limit is None else max(0, min(int(limit), len(ds)))
    if count == 0:
        raise ValueError(f"nothing to write: {dataset} split {split!r} has {len(ds)} images, limit {limit}")
    t0 = time.time_ns() if start_ns is None else int(start_ns)
    cam_topic = f"{image_topic.rstrip('/')}/compressed" if compressed else image_topic
    for option, topic in (("--image-topic", cam_topic), ("--gt-topic", gt_topic),
                          ("--camera-info-topic", camera_info_topic)):
        if topic:
            validate_topic_name(topic, option)
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
    with staged_output(out, overwrite, is_own_bag) as staged:
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
        seal_bag(staged, "dicnet make-bag")
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

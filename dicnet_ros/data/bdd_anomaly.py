"""BDD-Anomaly (anomaly-seg's converted BDD100K 10K segmentation subset, 1280x720).

Layout (anomaly-seg ``create_bdd_dataset.py``)::

    seg/images/{train,val}/<id>.jpg
    seg/train_labels/{train,val}/<id>_train_id.png     # BDD train id + 2, void (255) stored as 1

After the usual -1 shift: 0 void/other, 1..16 in-distribution (road .. bus), 17 train, 18 motorcycle,
19 bicycle. Training uses 17 classes (0..16). The anomaly set defaults to {17, 18, 19} as in the
benchmark; DiCNet's own choice is not recoverable from its code, so it is configurable
(``anomaly_ids=``) and logged. Ids in 17..19 left out of the set are neither trained on nor anomalies:
they decode to ``ignore_id``.

Splits follow the benchmark: 'train' = train-folder images without any anomaly pixel, 'val' = val-folder
images without anomalies, 'test' = images from both folders that contain an anomaly (6280 / 910 / 810 with
the default set). Finding them needs one scan of the label PNGs, cached in a small JSON beside the labels
(or in memory if that folder is read-only). The scan records all of 17..19, so one scan serves every
anomaly set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dicnet_ros.data.base import DatasetSpec, SegmentationDataset, list_images, pair_label, read_label_raw

log = logging.getLogger(__name__)

BDD_CLASSES: tuple[str, ...] = (
    "other",
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
)
#: Shifted ids that never appear in training under the benchmark protocol.
BDD_HELD_OUT: dict[int, str] = {17: "train", 18: "motorcycle", 19: "bicycle"}
BDD_DEFAULT_ANOMALY_IDS: tuple[int, ...] = (17, 18, 19)
BDD_LABEL_OFFSET = 1
BDD_FOLDERS: tuple[str, ...] = ("train", "val")
LABEL_SUFFIX = "_train_id.png"
CACHE_NAME = ".dicnet_anomaly_scan.json"
_CACHE_VERSION = 1
_MEMORY_CACHE: dict[str, dict[str, list[int]]] = {}


def bdd_spec(anomaly_ids: Iterable[int] | None = None) -> DatasetSpec:
    """The BDD-Anomaly spec for an anomaly set (a non-empty subset of {17, 18, 19})."""
    ids = tuple(sorted(int(a) for a in (BDD_DEFAULT_ANOMALY_IDS if anomaly_ids is None else anomaly_ids)))
    if not ids or not set(ids) <= set(BDD_HELD_OUT):
        raise ValueError(
            f"BDD-Anomaly anomaly_ids must be a non-empty subset of {sorted(BDD_HELD_OUT)} "
            f"({', '.join(f'{k} {v}' for k, v in BDD_HELD_OUT.items())}), got {list(ids)}"
        )
    return DatasetSpec(
        name="bdd_anomaly",
        class_names=BDD_CLASSES,
        anomaly_ids=ids,
        ignore_id=255,
        label_offset=BDD_LABEL_OFFSET,
        anomaly_names=tuple(BDD_HELD_OUT[a] for a in ids),
    )


def seg_dir(root: Path) -> Path | None:
    """The folder holding images/ and train_labels/: root/seg, or root itself."""
    for candidate in (root / "seg", root):
        if (candidate / "images").is_dir() and (candidate / "train_labels").is_dir():
            return candidate
    return None


def looks_like_bdd(root: Path) -> bool:
    """True if ``root`` (or root/seg) has the anomaly-seg BDD images/ and train_labels/ folders."""
    return seg_dir(root) is not None


def _scan_one(path: str) -> list[int]:
    """Held-out ids (17..19) present in one label PNG."""
    counts = np.bincount(read_label_raw(path).ravel(), minlength=256)
    return [i for i in BDD_HELD_OUT if counts[i + BDD_LABEL_OFFSET] > 0]


def scan_held_out(labels_dir: Path, labels: Sequence[Path], use_file_cache: bool = True) -> dict[str, list[int]]:
    """{relative label path: held-out ids present}, cached by file list (name, size, mtime) and ids."""
    rels = [p.relative_to(labels_dir).as_posix() for p in labels]
    digest = hashlib.sha1()
    digest.update(json.dumps({"v": _CACHE_VERSION, "ids": sorted(BDD_HELD_OUT), "offset": BDD_LABEL_OFFSET}).encode())
    for rel, path in zip(rels, labels, strict=True):
        st = path.stat()
        digest.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    key = digest.hexdigest()
    memory_key = f"{labels_dir.resolve()}:{key}"
    if memory_key in _MEMORY_CACHE:
        return _MEMORY_CACHE[memory_key]
    cache_path = labels_dir / CACHE_NAME
    if use_file_cache and cache_path.is_file():
        try:
            cached = json.loads(cache_path.read_text())
            if cached.get("key") == key:
                _MEMORY_CACHE[memory_key] = cached["files"]
                log.info("BDD-Anomaly: split scan read from %s", cache_path)
                return cached["files"]
        except (OSError, ValueError, KeyError, AttributeError):
            log.warning("ignoring unreadable split cache %s", cache_path)
    log.info("BDD-Anomaly: scanning %d label PNGs for ids %s (once)", len(labels), sorted(BDD_HELD_OUT))
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        present = list(pool.map(_scan_one, [str(p) for p in labels], chunksize=16))
    files = dict(zip(rels, present, strict=True))
    _MEMORY_CACHE[memory_key] = files
    if use_file_cache:
        tmp = cache_path.with_name(f"{CACHE_NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"version": _CACHE_VERSION, "key": key, "files": files}))
            os.replace(tmp, cache_path)
        except OSError as exc:
            log.info("BDD-Anomaly: cannot write split cache %s (%s); keeping it in memory", cache_path, exc)
            tmp.unlink(missing_ok=True)
    return files


class BDDAnomaly(SegmentationDataset):
    """BDD-Anomaly with the benchmark's anomaly-based train/val/test split."""

    kind = "bdd_anomaly"

    def __init__(
        self, root: str | Path, split: str, anomaly_ids: Iterable[int] | None = None, cache: bool = True
    ) -> None:
        root = Path(root)
        spec = bdd_spec(anomaly_ids)
        super().__init__(root, split, spec)
        seg = seg_dir(root)
        if seg is None:
            raise FileNotFoundError(
                f"BDD-Anomaly root {root} lacks seg/images and seg/train_labels "
                "(anomaly-seg layout: seg/images/{train,val}/<id>.jpg, seg/train_labels/{train,val}/<id>_train_id.png)"
            )
        held_out = sorted(set(BDD_HELD_OUT) - set(spec.anomaly_ids))
        log.info(
            "BDD-Anomaly anomaly set: %s%s",
            ", ".join(f"{a} ({BDD_HELD_OUT[a]})" for a in spec.anomaly_ids),
            f"; ids {held_out} are ignored (neither trained nor scored)" if held_out else "",
        )
        folders = {"train": ("train",), "val": ("val",), "test": BDD_FOLDERS}[split]
        pairs: list[tuple[str, Path, Path]] = []  # (folder, image, label)
        for folder in BDD_FOLDERS:
            images_dir = seg / "images" / folder
            if not images_dir.is_dir():
                if folder in folders:
                    raise FileNotFoundError(f"BDD-Anomaly split {split!r} needs image folder {images_dir}")
                continue
            for image in list_images(images_dir, (".jpg", ".jpeg", ".png")):
                rel = image.relative_to(images_dir).with_suffix("")
                label = seg / "train_labels" / folder / f"{rel.as_posix()}{LABEL_SUFFIX}"
                pair_label(image, label)
                pairs.append((folder, image, label))
        labels_dir = seg / "train_labels"
        present = scan_held_out(labels_dir, [label for _, _, label in pairs], use_file_cache=cache)
        anomalous = set(spec.anomaly_ids)
        counts = {"train": 0, "val": 0, "test": 0}
        for folder, image, label in pairs:
            has_anomaly = bool(anomalous.intersection(present[label.relative_to(labels_dir).as_posix()]))
            target = "test" if has_anomaly else folder
            counts[target] += 1
            if target == split:
                self.items.append((str(image), str(label)))
        log.info("BDD-Anomaly split sizes: train %d, val %d, test %d", counts["train"], counts["val"], counts["test"])
        self._finish(", ".join(str(seg / "images" / f) for f in folders))

"""StreetHazards (CARLA, 1280x720) and simulator datasets in the same folder layout.

Layout (anomaly-seg ``create_dataset.py``; paths relative to the root that holds ``train/`` and ``test/``)::

    train/images/training/t1..t3/N.png     train/annotations/training/t1..t3/N.png    -> split 'train'
    train/images/validation/t4/N.png       train/annotations/validation/t4/N.png      -> split 'val'
    test/images/test/t5,t6/N.png           test/annotations/test/t5,t6/N.png          -> split 'test'

Annotation PNGs store 1..14; the benchmark shifts by -1, giving 13 training classes 0..12 (unlabeled and
'other' are ordinary classes, as in anomaly-seg issues #16/#17) and anomaly id 13 (only in the test towns).
A raw 0 should not occur and is ignored. Any town folder names are accepted. The anomaly-seg ``.odgt``
split files (one JSON list on one line, or CSAIL's one object per line) can replace the folder scan.

A ``dataset.yaml`` in the root (written by ``dicnet sim``) overrides the class table, anomaly ids, ignore id
and label offset, so simulated data needs no separate loader.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dicnet_ros.data.base import (
    DATASET_YAML,
    DatasetSpec,
    SegmentationDataset,
    list_images,
    pair_label,
)

log = logging.getLogger(__name__)

STREETHAZARDS_CLASSES: tuple[str, ...] = (
    "unlabeled",
    "building",
    "fence",
    "other",
    "pedestrian",
    "pole",
    "road line",
    "road",
    "sidewalk",
    "vegetation",
    "car",
    "wall",
    "traffic sign",
)
STREETHAZARDS_ANOMALY_ID = 13
STREETHAZARDS_SPEC = DatasetSpec(
    name="streethazards",
    class_names=STREETHAZARDS_CLASSES,
    anomaly_ids=(STREETHAZARDS_ANOMALY_ID,),
    ignore_id=255,
    label_offset=1,
    anomaly_names=("anomaly",),
)

#: split -> (images dir, annotations dir), relative to the root.
SPLIT_DIRS: dict[str, tuple[str, str]] = {
    "train": ("train/images/training", "train/annotations/training"),
    "val": ("train/images/validation", "train/annotations/validation"),
    "test": ("test/images/test", "test/annotations/test"),
}


def looks_like_streethazards(root: Path) -> bool:
    """True if any of the three split image folders exists under ``root``."""
    return any((root / images).is_dir() for images, _ in SPLIT_DIRS.values())


def spec_for_root(root: Path) -> DatasetSpec:
    """StreetHazards defaults, or the root's dataset.yaml (simulator output) when present."""
    yaml_path = root / DATASET_YAML
    if yaml_path.is_file():
        spec = DatasetSpec.from_yaml(yaml_path)
        log.info(
            "using class table from %s (%d classes, anomaly ids %s)",
            yaml_path,
            spec.num_classes,
            list(spec.anomaly_ids),
        )
        return spec
    return STREETHAZARDS_SPEC


def read_odgt(path: Path) -> list[dict[str, Any]]:
    """Entries of an .odgt file: one JSON list (anomaly-seg) or one JSON object per line (CSAIL)."""
    text = path.read_text().strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None  # more than one JSON document: object per line
    if data is None:
        entries: list[Any] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            entries.extend(value if isinstance(value, list) else [value])
    else:
        entries = data if isinstance(data, list) else [data]
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "fpath_img" not in entry or "fpath_segm" not in entry:
            raise ValueError(f"{path}: entry {number} lacks 'fpath_img'/'fpath_segm': {str(entry)[:120]}")
    return entries


class StreetHazards(SegmentationDataset):
    """StreetHazards folders (or .odgt lists) with the benchmark's -1 label shift."""

    kind = "streethazards"

    def __init__(self, root: str | Path, split: str, odgt: str | Path | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"StreetHazards root is not a directory: {root}")
        super().__init__(root, split, spec_for_root(root))
        if odgt is not None:
            odgt_path = self._find_odgt(Path(odgt))
            self.items = self._items_from_odgt(odgt_path)
            self._finish(str(odgt_path))
        else:
            self.items = self._items_from_folders()
            self._finish(str(self.root / SPLIT_DIRS[split][0]))

    def _find_odgt(self, odgt: Path) -> Path:
        for candidate in (odgt, self.root / odgt):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"odgt split file not found: {odgt} (also looked under {self.root})")

    def _resolve(self, rel: str, odgt_path: Path, what: str) -> Path:
        """odgt paths are relative to the data root; fall back to the odgt's folder, then absolute."""
        for base in (self.root, odgt_path.parent):
            candidate = base / rel
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{odgt_path}: {what} {rel!r} not found under {self.root} or {odgt_path.parent}")

    def _items_from_odgt(self, odgt_path: Path) -> list[tuple[str, str | None]]:
        items: list[tuple[str, str | None]] = []
        for entry in read_odgt(odgt_path):
            image = self._resolve(str(entry["fpath_img"]), odgt_path, "image")
            try:
                label = self._resolve(str(entry["fpath_segm"]), odgt_path, "label")
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"image {image} has no label: {exc}") from exc
            items.append((str(image), str(label)))
        return items

    def _items_from_folders(self) -> list[tuple[str, str | None]]:
        images_rel, labels_rel = SPLIT_DIRS[self.split]
        images_dir, labels_dir = self.root / images_rel, self.root / labels_rel
        if not images_dir.is_dir():
            raise FileNotFoundError(
                f"StreetHazards split {self.split!r}: image folder {images_dir} is missing "
                f"(expected {images_rel}/<town>/N.png under {self.root})"
            )
        items: list[tuple[str, str | None]] = []
        for image in list_images(images_dir):
            label = (labels_dir / image.relative_to(images_dir)).with_suffix(".png")
            items.append(pair_label(image, label))
        return items

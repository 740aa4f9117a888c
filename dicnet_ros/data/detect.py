"""Which loader reads a dataset tree: layout detection and ``open_dataset``.

It sits above the loaders (StreetHazards, BDD-Anomaly, folder), which only know ``base``; this keeps the
shared base free of imports of its own subclasses.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from dicnet_ros.data.base import DATASET_YAML, SPLITS, SegmentationDataset, read_yaml
from dicnet_ros.data.bdd_anomaly import BDDAnomaly, looks_like_bdd
from dicnet_ros.data.folder import FolderDataset
from dicnet_ros.data.streethazards import StreetHazards, looks_like_streethazards

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("auto", "streethazards", "bdd_anomaly", "folder")


class UnknownLayoutError(ValueError):
    """The tree matches no known layout; each tool says how its user names one (a config key, an option)."""


def detect_kind(root: Path) -> str:
    """Guess the dataset layout from the directory tree."""
    if root.is_file() and root.suffix.lower() in (".yaml", ".yml"):
        return "folder"
    yaml_path = root / DATASET_YAML
    if yaml_path.is_file() and "splits" in read_yaml(yaml_path):
        return "folder"
    if looks_like_streethazards(root):
        return "streethazards"
    if looks_like_bdd(root):
        return "bdd_anomaly"
    raise UnknownLayoutError(
        f"cannot tell the dataset layout of {root}: expected a StreetHazards tree "
        "(train/images/training, train/images/validation or test/images/test), a BDD-Anomaly tree "
        "(seg/images + seg/train_labels) or a dataset.yaml with 'splits' (a folder dataset, "
        "dicnet_ros/data/folder.py); or name the layout (streethazards, bdd_anomaly or folder)"
    )


def open_dataset(root: str | Path, split: str, kind: str = "auto", **options: Any) -> SegmentationDataset:
    """Open ``split`` ('train' | 'val' | 'test') of the dataset at ``root``.

    ``kind`` is 'auto' (detect from the tree), 'streethazards' (option ``odgt=``), 'bdd_anomaly'
    (options ``anomaly_ids=``, ``cache=``) or 'folder' (option ``config=`` for a yaml other than
    root/dataset.yaml).
    """
    root = Path(root).expanduser()
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    if not root.exists():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if kind == "auto":
        kind = "streethazards" if options.get("odgt") else detect_kind(root)
        log.info("detected dataset kind %r at %s", kind, root)
    classes: dict[str, type[SegmentationDataset]] = {
        "streethazards": StreetHazards,
        "bdd_anomaly": BDDAnomaly,
        "folder": FolderDataset,
    }
    cls = classes[kind]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "split")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{kind} dataset does not take option(s) {unknown}; it accepts {accepted}")
    return cls(root, split, **options)

"""Generic folder dataset, so users can train and evaluate on their own camera data.

The root holds a ``dataset.yaml`` that names the classes, the anomaly ids and where each split lives.
Images are matched to label PNGs by their path relative to the split's image folder, with the suffix
swapped (``images/train/a/0001.jpg`` -> ``labels/train/a/0001.png``). Label PNGs are single-channel 8-bit
and store ``class id + label_offset``. Example::

    name: my-robot-data
    classes: [road, sidewalk, building, vegetation, sky, car, person]   # training classes, id = index
    anomaly_ids: [7]            # label ids (after the shift) that are anomalies, never trained on
    anomaly_names: [anomaly]    # optional, one name or one per anomaly id
    ignore_id: 255              # optional (default 255): excluded from loss and metrics
    label_offset: 1             # optional (default 1): PNG value - label_offset = class id, so PNG 0 = ignore;
                                # use 0 if the PNGs store class ids directly
    image_suffix: .jpg          # optional: only these image files (string or list; default png/jpg/jpeg/...)
    label_suffix: .png          # optional (default .png): label name = image stem + label_suffix, e.g. _gt.png
    splits:                     # folders relative to this yaml's directory
      train: {images: images/train, labels: labels/train}
      val:   {images: images/val, labels: labels/val}
      test:  {images: images/test, labels: labels/test}   # 'labels' may be left out: every pixel is ignore_id

PNG values that are neither a training class nor an anomaly id decode to ``ignore_id``. ``root`` may be
the directory holding dataset.yaml or the yaml file itself; ``config=`` points at a yaml elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dicnet_ros.data.base import (
    DATASET_YAML,
    IMAGE_SUFFIXES,
    DatasetSpec,
    SegmentationDataset,
    pair_label,
    read_yaml,
    stems,
)

log = logging.getLogger(__name__)


def _suffixes(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    values = value if isinstance(value, list | tuple) else [value]
    return tuple(v if str(v).startswith(".") else f".{v}" for v in map(str, values))


class FolderDataset(SegmentationDataset):
    """Images and label PNGs in user-chosen folders, described by a dataset.yaml."""

    kind = "folder"

    def __init__(self, root: str | Path, split: str, config: str | Path | None = None) -> None:
        root = Path(root)
        if config is None:
            yaml_path = root if root.is_file() else root / DATASET_YAML
        else:
            config = Path(config)
            yaml_path = config if config.is_absolute() or config.is_file() else root / config
        if not yaml_path.is_file():
            raise FileNotFoundError(
                f"folder dataset needs a description file: {yaml_path} not found "
                "(see dicnet_ros/data/folder.py for the schema)"
            )
        data = read_yaml(yaml_path)
        super().__init__(yaml_path.parent, split, DatasetSpec.from_dict(data))
        splits = data.get("splits")
        if not isinstance(splits, dict) or not splits:
            raise ValueError(
                f"{yaml_path}: needs a 'splits' mapping, e.g. splits: {{train: {{images: DIR, labels: DIR}}}}"
            )
        entry = splits.get(split)
        if entry is None:
            raise ValueError(f"{yaml_path}: no split {split!r} (it defines {sorted(splits)})")
        if isinstance(entry, str):
            entry = {"images": entry}
        if not isinstance(entry, dict) or "images" not in entry:
            raise ValueError(f"{yaml_path}: split {split!r} needs an 'images' folder")
        base = yaml_path.parent
        images_dir = base / str(entry["images"])
        labels_dir = base / str(entry["labels"]) if entry.get("labels") is not None else None
        if not images_dir.is_dir():
            raise FileNotFoundError(f"{yaml_path}: image folder of split {split!r} not found: {images_dir}")
        if labels_dir is not None and not labels_dir.is_dir():
            raise FileNotFoundError(f"{yaml_path}: label folder of split {split!r} not found: {labels_dir}")
        image_suffixes = _suffixes(data.get("image_suffix"), IMAGE_SUFFIXES)
        label_suffix = str(data.get("label_suffix", ".png"))
        same_dir = labels_dir is not None and labels_dir.resolve() == images_dir.resolve()
        if same_dir and label_suffix.startswith(".") and "." not in label_suffix[1:]:
            raise ValueError(
                f"{yaml_path}: split {split!r} keeps images and labels in one folder, so label_suffix must "
                f"be more than an extension (e.g. _label.png), got {label_suffix!r}"
            )
        for image, stem in stems(images_dir, image_suffixes, label_suffix if same_dir else None,
                                 "; set image_suffix in the dataset.yaml"):
            if labels_dir is None:
                self.items.append((str(image), None))
            else:
                self.items.append(pair_label(image, labels_dir / f"{stem}{label_suffix}"))
        if labels_dir is None:
            log.info("folder split %r has no labels: every pixel decodes to ignore_id", split)
        self._finish(str(images_dir))

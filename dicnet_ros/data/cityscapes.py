"""Cityscapes (Cordts et al. 2016) fine annotations: the training data of the real-road recipe (19 classes).

Layout (mcordts/cityscapesScripts@0bcc4a72 ``README.md``)::

    leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The ``labelIds`` PNGs are mapped to the 19 training ids with the table of cityscapesScripts'
``helpers/labels.py`` (``LABEL_TO_TRAIN``); every other label id (unlabeled, ego vehicle, ..., caravan, trailer,
license plate) becomes 255 and is ignored. Cityscapes has no anomalies and its test labels are withheld, so only
``train`` and ``val`` are served: anomaly evaluation runs on a benchmark (``dicnet evaluate --data``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicnet_ros.data.base import DatasetSpec, SegmentationDataset, list_images, pair_label

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
#: labelId -> trainId (cityscapesScripts helpers/labels.py); label ids not listed are ignored.
LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}
IGNORE_ID = 255
CITYSCAPES_SPEC = DatasetSpec(name="cityscapes", class_names=CITYSCAPES_CLASSES, anomaly_ids=(), ignore_id=IGNORE_ID,
                              label_offset=0, anomaly_names=())
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_to_train_lut() -> np.ndarray:
    """256-entry table labelId -> trainId (255 = ignore)."""
    lut = np.full(256, IGNORE_ID, np.uint8)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def looks_like_cityscapes(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir()


class Cityscapes(SegmentationDataset):
    """Cityscapes train / val with labelIds mapped to the 19 training ids."""

    kind = "cityscapes"

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root)
        if split == "test":
            raise ValueError("Cityscapes has no anomaly test split (and its test labels are withheld): evaluate on a "
                             "benchmark, e.g. dicnet evaluate --data /data/dataset_AnomalyTrack")
        super().__init__(root, split, CITYSCAPES_SPEC)
        self._lut = label_to_train_lut()
        images_dir = root / "leftImg8bit" / split
        if not images_dir.is_dir():
            raise FileNotFoundError(f"Cityscapes split {split!r}: {images_dir} is missing "
                                    f"(expected leftImg8bit/{split}/<city>/<name>{IMAGE_SUFFIX})")
        for image in list_images(images_dir, (".png",)):
            if not image.name.endswith(IMAGE_SUFFIX):
                continue
            rel = image.relative_to(images_dir)
            name = image.name[: -len(IMAGE_SUFFIX)]
            self.items.append(pair_label(image, root / "gtFine" / split / rel.parent / f"{name}{LABEL_SUFFIX}"))
        self._finish(str(images_dir))

    def has_anomalies(self) -> bool:
        return False

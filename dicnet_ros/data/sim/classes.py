"""Class table of the simulated street benchmark (no pybullet import, so any code can use it)."""

from __future__ import annotations

import numpy as np

#: Known (in-distribution) classes; the train id is the index.
SIM_CLASSES: tuple[str, ...] = (
    "sky",
    "road",
    "lane_marking",
    "sidewalk",
    "building",
    "wall_fence",
    "vegetation",
    "pole",
    "traffic_sign",
    "car",
    "pedestrian",
    "terrain",
)
#: Train id of the anomaly class (only ever present in the test split).
SIM_ANOMALY_ID: int = len(SIM_CLASSES)
SIM_ANOMALY_NAME: str = "anomaly"
#: Train id of outlier proxies: objects of no known class and of no anomaly family, rendered into some TRAINING
#: images (``dicnet sim --outlier-proxies``) for the student's outlier exposure; never in val or test.
SIM_PROXY_ID: int = SIM_ANOMALY_ID + 1
SIM_PROXY_NAME: str = "outlier_proxy"
#: Annotation PNGs store ``class id + LABEL_OFFSET`` so that raw 0 can mean "ignore".
LABEL_OFFSET: int = 1
IGNORE_ID: int = 255
DATASET_NAME: str = "dicnet-sim-streets"

CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(SIM_CLASSES)}

#: RGB colours for visualising label maps (Cityscapes-like), anomaly last.
SIM_CLASS_COLORS: np.ndarray = np.array(
    [
        (70, 130, 180),  # sky
        (128, 64, 128),  # road
        (255, 255, 255),  # lane_marking
        (244, 35, 232),  # sidewalk
        (70, 70, 70),  # building
        (190, 153, 153),  # wall_fence
        (107, 142, 35),  # vegetation
        (153, 153, 153),  # pole
        (220, 220, 0),  # traffic_sign
        (0, 0, 142),  # car
        (220, 20, 60),  # pedestrian
        (152, 251, 152),  # terrain
        (255, 128, 0),  # anomaly
        (255, 0, 255),  # outlier proxy (training images only)
    ],
    dtype=np.uint8,
)

# StreetHazards directory layout: split -> (images dir, annotations dir), relative to the output root.
SPLIT_DIRS: dict[str, tuple[str, str]] = {
    "train": ("train/images/training/t1", "train/annotations/training/t1"),
    "val": ("train/images/validation/t4", "train/annotations/validation/t4"),
    "test": ("test/images/test/t5", "test/annotations/test/t5"),
}


def colorize(label: np.ndarray) -> np.ndarray:
    """Map a train-id label map (H, W) to an RGB image; ids outside the table come out black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(SIM_CLASS_COLORS)] = SIM_CLASS_COLORS
    return lut[label.astype(np.uint8)]

"""Datasets (StreetHazards, BDD-Anomaly, generic folders, simulator output) and training augmentations.

Only numpy, OpenCV and PyYAML are needed to read data; datasets hand out uint8 RGB images and uint8
label ids, and the model's own preprocessing does the rest.
"""

from dicnet_ros.data.base import DatasetSpec, Sample, SegmentationDataset
from dicnet_ros.data.detect import open_dataset

__all__ = ["DatasetSpec", "Sample", "SegmentationDataset", "open_dataset"]

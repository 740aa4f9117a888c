"""Dataset spec, sample type, base dataset and ``open_dataset``: the one way the project reads labelled images.

Datasets hand out uint8 RGB images at their native size; resizing and normalisation belong to
:mod:`dicnet_ros.preprocessing` (inference) and :mod:`dicnet_ros.data.transforms` (training), so no loader
prepares pixels its own way. Labels are decoded once, here, from the raw PNG values with
``class id = raw - label_offset``; anything that is neither a training class nor an anomaly id (raw values
below the offset, unknown values) becomes ``ignore_id``. Only numpy, OpenCV and PyYAML are needed: a torch
``DataLoader`` accepts any object with ``__len__``/``__getitem__``.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Name of the dataset description file the simulator and the folder dataset put in the root.
DATASET_YAML = "dataset.yaml"


@dataclass(frozen=True)
class DatasetSpec:
    """What the label ids mean: stored with checkpoints so training, evaluation and the node agree."""

    name: str
    class_names: tuple[str, ...]
    anomaly_ids: tuple[int, ...]
    ignore_id: int = 255
    label_offset: int = 1
    anomaly_names: tuple[str, ...] = ("anomaly",)
    #: ids of outlier PROXIES in training images (objects of no known class and no test anomaly family): the
    #: teacher ignores them, the student is taught to disagree with the teacher there (outlier exposure)
    outlier_proxy_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "anomaly_ids", tuple(int(a) for a in self.anomaly_ids))
        object.__setattr__(self, "anomaly_names", tuple(str(a) for a in self.anomaly_names))
        object.__setattr__(self, "outlier_proxy_ids", tuple(int(a) for a in self.outlier_proxy_ids))
        object.__setattr__(self, "ignore_id", int(self.ignore_id))
        object.__setattr__(self, "label_offset", int(self.label_offset))
        n = len(self.class_names)
        if n == 0:
            raise ValueError(f"dataset spec {self.name!r}: needs at least one training class")
        if len(set(self.class_names)) != n:
            raise ValueError(f"dataset spec {self.name!r}: duplicate class names in {self.class_names}")
        if not 0 <= self.ignore_id <= 255:
            raise ValueError(f"dataset spec {self.name!r}: ignore_id must fit in uint8, got {self.ignore_id}")
        if not 0 <= self.label_offset <= 255:
            raise ValueError(f"dataset spec {self.name!r}: label_offset must be 0..255, got {self.label_offset}")
        if len(set(self.anomaly_ids)) != len(self.anomaly_ids):
            raise ValueError(f"dataset spec {self.name!r}: duplicate anomaly ids {self.anomaly_ids}")
        for a in self.anomaly_ids:
            if a < n:
                raise ValueError(
                    f"dataset spec {self.name!r}: anomaly id {a} is also a training class "
                    f"({self.class_names[a]!r}); anomaly ids must be >= num_classes ({n})"
                )
            if a > 254 or a == self.ignore_id:
                raise ValueError(f"dataset spec {self.name!r}: anomaly id {a} collides with ignore/uint8 range")
        for a in self.outlier_proxy_ids:
            if a < n or a in self.anomaly_ids or a > 254 or a == self.ignore_id:
                raise ValueError(f"dataset spec {self.name!r}: outlier proxy id {a} collides with a class, an anomaly "
                                 "id or the ignore id")
        if self.ignore_id < n:
            raise ValueError(f"dataset spec {self.name!r}: ignore_id {self.ignore_id} is a training class id (< {n})")
        if len(self.anomaly_names) != len(self.anomaly_ids):
            if len(self.anomaly_names) == 1:  # one generic name for all anomaly ids
                object.__setattr__(self, "anomaly_names", self.anomaly_names * len(self.anomaly_ids))
            else:
                raise ValueError(
                    f"dataset spec {self.name!r}: {len(self.anomaly_names)} anomaly names for "
                    f"{len(self.anomaly_ids)} anomaly ids"
                )

    @property
    def num_classes(self) -> int:
        """Number of training classes (the classifier width)."""
        return len(self.class_names)

    def valid_ids(self) -> tuple[int, ...]:
        """Label ids that carry meaning (training classes, anomalies, outlier proxies); everything else is ignored."""
        return (*range(self.num_classes), *self.anomaly_ids, *self.outlier_proxy_ids)

    def decode_lut(self) -> np.ndarray:
        """256-entry table raw PNG value -> label id, so decoding a label is a single indexing op."""
        lut = np.full(256, self.ignore_id, np.uint8)
        for label_id in self.valid_ids():
            raw = label_id + self.label_offset
            if raw <= 255:
                lut[raw] = label_id
        return lut

    def to_dict(self) -> dict[str, Any]:
        """Plain (YAML/JSON-safe) dict; ``from_dict`` reads it back."""
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "anomaly_ids": list(self.anomaly_ids),
            "ignore_id": self.ignore_id,
            "label_offset": self.label_offset,
            "anomaly_names": list(self.anomaly_names),
            **({"outlier_proxy_ids": list(self.outlier_proxy_ids)} if self.outlier_proxy_ids else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        """Accepts ``to_dict`` output and dataset.yaml files (``classes`` as an alias; unknown keys ignored)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"dataset spec must be a mapping, got {type(data).__name__}")
        classes = data.get("class_names", data.get("classes"))
        if classes is None:
            raise ValueError("dataset spec needs 'classes' (or 'class_names'): the training class names")
        if "anomaly_ids" not in data:
            raise ValueError("dataset spec needs 'anomaly_ids': the label ids that are anomalies")
        kwargs: dict[str, Any] = {
            "name": str(data.get("name", "dataset")),
            "class_names": tuple(classes),
            "anomaly_ids": tuple(_as_list(data["anomaly_ids"])),
        }
        for key in ("ignore_id", "label_offset"):
            if data.get(key) is not None:
                kwargs[key] = int(data[key])
        if data.get("anomaly_names") is not None:
            kwargs["anomaly_names"] = tuple(_as_list(data["anomaly_names"]))
        if data.get("outlier_proxy_ids") is not None:
            kwargs["outlier_proxy_ids"] = tuple(_as_list(data["outlier_proxy_ids"]))
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetSpec:
        """Read a dataset.yaml (the simulator's or a folder dataset's)."""
        return cls.from_dict(read_yaml(path))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset description not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return data


@dataclass
class Sample:
    """One labelled image; plain numpy so it pickles cheaply into DataLoader workers."""

    image: np.ndarray
    label: np.ndarray
    path: str

    def as_dict(self) -> dict[str, Any]:
        """Dict form, which torch's default_collate understands (it does not collate dataclasses)."""
        return {"image": self.image, "label": self.label, "path": self.path}

    @staticmethod
    def collate(samples: Sequence[Sample]) -> dict[str, Any]:
        """Stack same-sized samples into {'image': (N,H,W,3) uint8, 'label': (N,H,W) uint8, 'path': [...]}."""
        if not samples:
            raise ValueError("cannot collate an empty batch")
        shapes = {s.image.shape for s in samples}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack images of different sizes {sorted(shapes)}; crop or resize first")
        return {
            "image": np.stack([s.image for s in samples]),
            "label": np.stack([s.label for s in samples]),
            "path": [s.path for s in samples],
        }


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that puts 2.png before 10.png, so file order is deterministic and human-friendly."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def list_images(directory: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """All image files below ``directory`` (recursive), naturally sorted by relative path."""
    wanted = {s.lower() for s in suffixes}
    files = [p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in wanted]
    return sorted(files, key=lambda p: natural_key(p.relative_to(directory).as_posix()))


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (OpenCV reads BGR; EXIF rotation is ignored to keep
    the geometry identical to the label's)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        raise ValueError(f"cannot decode image {path}")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def read_label_raw(path: str | Path) -> np.ndarray:
    """Read a label PNG exactly as stored (no colour conversion); it must be single-channel 8-bit."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"label not found: {path}")
        raise ValueError(f"cannot decode label {path}")
    if raw.ndim != 2:
        raise ValueError(
            f"label {path} has {raw.shape[2]} channels; labels must be single-channel (grayscale 'L') PNGs "
            "holding class ids, not colour images (palette PNGs are expanded to colour by OpenCV)"
        )
    if raw.dtype != np.uint8:
        raise ValueError(f"label {path} is {raw.dtype}; expected 8-bit class ids")
    return raw


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask of any published convention as its stored values: (H, W) uint8 or uint16.

    Palette PNGs give their palette indices (as PIL reads them; OpenCV would expand them to colours), masks stored
    as three equal channels give one of them; anything else in colour is refused.
    """
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"mask not found: {path}")
        raise ValueError(f"cannot decode mask {path}")
    if raw.ndim == 3:
        from PIL import Image  # only palette masks need it

        with Image.open(path) as image:
            if image.mode == "P":
                return np.asarray(image, dtype=np.uint8).copy()
        if raw.shape[2] >= 3 and np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2]):
            raw = np.ascontiguousarray(raw[..., 0])
        else:
            raise ValueError(f"mask {path} is a colour image; masks must hold one value per pixel "
                             "(grayscale or palette PNG)")
    if raw.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"mask {path} is {raw.dtype}; expected 8- or 16-bit values")
    return raw


class SegmentationDataset:
    """List of (image path, label path or None) plus the spec that decodes the labels.

    Subclasses only fill ``self.items``; reading, decoding and the checks live here once.
    """

    kind: str = "base"

    def __init__(self, root: str | Path, split: str, spec: DatasetSpec) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.root = Path(root)
        self.split = split
        self.spec = spec
        self.items: list[tuple[str, str | None]] = []
        self._lut = spec.decode_lut()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        n = len(self.items)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        image_path, label_path = self.items[index]
        image = read_image(image_path)
        if label_path is None:
            label = np.full(image.shape[:2], self.spec.ignore_id, np.uint8)
        else:
            raw = self.read_label(label_path)
            if raw.shape != image.shape[:2]:
                raise ValueError(
                    f"label {label_path} is {raw.shape[1]}x{raw.shape[0]} but image {image_path} is "
                    f"{image.shape[1]}x{image.shape[0]} (width x height); they must match"
                )
            label = self.decode_label(raw)
        return Sample(image=image, label=label, path=image_path)

    def read_label(self, path: str) -> np.ndarray:
        """The stored label values of one file (readers of other conventions override this)."""
        return read_label_raw(path)

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw PNG values -> class ids (shift by ``label_offset``; unknown values -> ``ignore_id``)."""
        return np.ascontiguousarray(self._lut[raw])

    def has_anomalies(self) -> bool:
        """Only the test split contains anomaly pixels (never train on it)."""
        return self.split == "test"

    def _finish(self, what: str) -> None:
        """Common post-listing check: an empty split is a configuration error, not an empty epoch."""
        if not self.items:
            raise ValueError(f"{self.kind} split {self.split!r} under {self.root} is empty: no images in {what}")
        log.info("%s %s split: %d images from %s", self.kind, self.split, len(self.items), what)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"spec={self.spec.name!r})"
        )


def stems(images_dir: Path, suffixes: Iterable[str], skip_suffix: str | None = None,
          hint: str = "") -> list[tuple[Path, str]]:
    """(image, stem) of every image below ``images_dir``: the stem is its relative path without the suffix, the
    name its label is found by. Two images with one stem would share a label: an error (``hint`` says what to do);
    files ending in ``skip_suffix`` (labels in the same folder) are not images."""
    seen: dict[str, Path] = {}
    out = []
    for image in list_images(images_dir, suffixes):
        if skip_suffix and image.name.endswith(skip_suffix):
            continue
        stem = image.relative_to(images_dir).with_suffix("").as_posix()
        if stem in seen:
            raise ValueError(f"{seen[stem]} and {image} share the name {stem!r}, so they would share a label{hint}")
        seen[stem] = image
        out.append((image, stem))
    return out


def pair_by_stem(images_dir: Path, labels_dir: Path, suffixes: Iterable[str],
                 label_suffix: str = ".png") -> list[tuple[str, str]]:
    """(image, label) pairs: each image below ``images_dir`` with ``labels_dir/<stem><label_suffix>``."""
    return [pair_label(image, labels_dir / f"{stem}{label_suffix}") for image, stem in stems(images_dir, suffixes)]


def pair_label(image: Path, label: Path) -> tuple[str, str]:
    """(image, label) as strings after checking the label exists, naming both paths if not."""
    if not label.is_file():
        raise FileNotFoundError(f"image {image} has no label: expected {label}")
    return str(image), str(label)

"""Object cut-outs pasted into training images as outlier proxies: the real-road recipe's outlier exposure.

Why: a student distilled only on Cityscapes learns to agree with the teacher everywhere, also on objects it never
saw. Pasting real objects of classes outside Cityscapes (COCO's animals, furniture, sports gear, ...) into the
training images and labelling them as outlier proxies gives the student's outlier exposure and the outlier head
something to disagree on, the way Meta-OOD, PEBAL, RbA and Mask2Anomaly train on Cityscapes + COCO.

Layout read (robin-chan/meta-ood@8657a5e7 ``preparation/prepare_coco_segmentation.py``; PEBAL, RbA and Mask2Anomaly
point to the same script)::

    <root>/train2017/<image id:012d>.jpg
    <root>/annotations/ood_seg_train2017/<image id:012d>.png    # uint8: 254 on every object, 0 elsewhere

The script keeps COCO 2017 train images without any person, bicycle, car, motorcycle, bus, truck, traffic light or
stop sign, at least 480 pixels high and wide, and marks every annotated instance of the remaining classes with 254.
Any folder pair in this layout works (own cut-outs too); ``mask_value`` names the object value.

Pasting (PEBAL's ``CityscapesCocoMix``, as RbA applies it): the bounding box around an image's object pixels is
cut out and only the object pixels are copied, unscaled by default, to a uniformly random position in the training
image (before augmentation); their label becomes the proxy id. An object larger than the image is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from dicnet_ros.data.base import DatasetSpec, Sample, list_images, read_image, read_mask

log = logging.getLogger(__name__)

IMAGES_DIR = "train2017"
MASKS_DIR = Path("annotations") / "ood_seg_train2017"
COCO_OBJECT_VALUE = 254


class OutlierObjects:
    """The cut-out sources in the Meta-OOD layout; ``cutout(i)`` gives (RGB crop, object mask crop)."""

    def __init__(self, root: str | Path, mask_value: int = COCO_OBJECT_VALUE, max_images: int | None = None) -> None:
        self.root = Path(root).expanduser()
        images_dir, masks_dir = self.root / IMAGES_DIR, self.root / MASKS_DIR
        if not masks_dir.is_dir() or not images_dir.is_dir():
            raise FileNotFoundError(f"outlier objects: {self.root} needs {IMAGES_DIR}/<id>.jpg and "
                                    f"{MASKS_DIR.as_posix()}/<id>.png (Meta-OOD's prepare_coco_segmentation.py layout)")
        self.mask_value = int(mask_value)
        self.items: list[tuple[Path, Path]] = []
        empty = 0
        for mask in list_images(masks_dir, (".png",)):
            image = images_dir / f"{mask.stem}.jpg"
            if not image.is_file():
                raise FileNotFoundError(f"outlier objects: mask {mask} has no image {image}")
            if not (read_mask(mask) == self.mask_value).any():
                empty += 1  # nothing to cut out: not drawn from
                continue
            self.items.append((image, mask))
            if max_images is not None and len(self.items) >= max_images:
                break
        if not self.items:
            raise ValueError(f"outlier objects: no mask in {masks_dir} has pixels of value {self.mask_value}")
        log.info("outlier objects: %d cut-out images from %s (object value %d; %d masks without objects skipped)",
                 len(self.items), self.root, self.mask_value, empty)

    def __len__(self) -> int:
        return len(self.items)

    def cutout(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(H, W, 3) uint8 crop and (H, W) bool object mask around the image's object pixels; None without any
        (a mask emptied since the listing)."""
        image_path, mask_path = self.items[index]
        mask = read_mask(mask_path) == self.mask_value
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return None
        image = read_image(image_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"outlier objects: {image_path} is {image.shape[1]}x{image.shape[0]}, its mask "
                             f"{mask.shape[1]}x{mask.shape[0]}")
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return image[box], mask[box]


def paste_object(image: np.ndarray, label: np.ndarray, crop: np.ndarray, mask: np.ndarray, proxy_id: int,
                 rng: np.random.Generator) -> bool:
    """Copy the object pixels of ``crop`` to a uniformly random position of ``image`` in place, label them
    ``proxy_id``; False (nothing pasted) when the object's box does not fit into the image."""
    h, w = mask.shape
    if h > image.shape[0] or w > image.shape[1]:
        return False
    y = int(rng.integers(0, image.shape[0] - h + 1))
    x = int(rng.integers(0, image.shape[1] - w + 1))
    image[y:y + h, x:x + w][mask] = crop[mask]
    label[y:y + h, x:x + w][mask] = proxy_id
    return True


def free_proxy_id(spec: DatasetSpec, preferred: int = COCO_OBJECT_VALUE) -> int:
    """A label id for pasted objects that is no class, anomaly, proxy or ignore id of ``spec``."""
    taken = {*range(spec.num_classes), *spec.anomaly_ids, *spec.outlier_proxy_ids, spec.ignore_id}
    for candidate in (preferred, *range(254, spec.num_classes - 1, -1)):
        if candidate not in taken and 0 <= candidate <= 254:
            return candidate
    raise ValueError(f"dataset spec {spec.name!r}: no free label id for pasted outlier objects")


class PastedObjects:
    """A training data set whose images get an outlier object pasted with ``probability``: the same sample for the
    same (seed, epoch, index) in any worker, so resumed runs see the same pastes."""

    def __init__(self, base: object, objects: OutlierObjects, probability: float, seed: int = 0,
                 scale_range: tuple[float, float] = (1.0, 1.0)) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"outlier objects: probability must be in [0, 1], got {probability}")
        if not 0.0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"outlier objects: scale_range must be 0 < low <= high, got {scale_range}")
        self.base = base
        self.objects = objects
        self.probability = float(probability)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.seed = int(seed)
        self.epoch = 0
        base_spec: DatasetSpec = base.spec  # type: ignore[attr-defined]
        self.proxy_id = free_proxy_id(base_spec)
        self.spec = dataclasses.replace(base_spec, outlier_proxy_ids=(*base_spec.outlier_proxy_ids, self.proxy_id))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        sample: Sample = self.base[index]  # type: ignore[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 7])
        if rng.random() >= self.probability:
            return sample
        cut = self.objects.cutout(int(rng.integers(len(self.objects))))
        if cut is None:
            return sample
        crop, mask = cut
        scale = float(rng.uniform(*self.scale_range))
        if scale != 1.0:
            import cv2

            size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        image, label = sample.image.copy(), sample.label.copy()
        if not paste_object(image, label, crop, mask, self.proxy_id, rng):
            return sample
        return Sample(image=image, label=label, path=sample.path)

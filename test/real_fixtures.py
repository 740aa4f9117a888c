"""Fixture trees in the exact published layouts of the real road benchmarks, Cityscapes and the COCO outlier
cut-outs (file names, folder nesting, image formats, mask values), for the reader, evaluation, bag and training
tests. Images are small except where a test asks for the real sizes (LostAndFound 2048x1024 PNG, ObstacleTrack
1920x1080 WebP). Each builder returns the evaluation labels (0 normal, 1 anomaly, 255 void) it encoded, keyed by
the image file name, so a test can check what a reader decodes.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np

REAL_LAF = (1024, 2048)  # height, width of LostAndFound / Cityscapes / Fishyscapes frames
REAL_OBSTACLE = (1080, 1920)  # RoadObstacle21 WebP frames


def street_image(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth RGB street-like picture (sky, buildings, road) that compresses fast at any size."""
    h, w = size
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    horizon = h // 2
    image[:horizon] = (120 + rng.integers(0, 40), 160, 210)  # sky
    image[horizon // 2: horizon, : w // 2] = (140, 120, 100)  # building
    image[horizon:] = (90, 90, 95)  # road
    ramp = np.linspace(0, 30, w, dtype=np.float32)[None, :, None]
    return np.clip(image + ramp, 0, 255).astype(np.uint8)


def _write(path: Path, array: np.ndarray, params: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    assert cv2.imwrite(str(path), data, params or []), path


def anomaly_masks(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(is_anomaly, is_void) of a frame: one object on the road, a void band at the top (ego-vehicle-like)."""
    h, w = size
    rng = np.random.default_rng(seed)
    anomaly = np.zeros(size, bool)
    y0 = h // 2 + int(rng.integers(1, max(2, h // 8)))
    x0 = int(rng.integers(1, max(2, w // 2)))
    anomaly[y0: y0 + max(2, h // 5), x0: x0 + max(2, w // 6)] = True
    void = np.zeros(size, bool)
    void[: max(1, h // 10)] = True
    return anomaly, void


def paint_anomaly(image: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[anomaly] = (230, 40, 200)
    return out


def encoded(anomaly: np.ndarray, void: np.ndarray) -> np.ndarray:
    label = np.zeros(anomaly.shape, np.uint8)
    label[void] = 255
    label[anomaly] = 1
    return label


# ------------------------------------------------------------------------------------------------- SMIYC
def make_smiyc(root: Path, track: str = "anomaly", frames: tuple[str, ...] = ("validation0000", "validation0001"),
               unlabelled: tuple[str, ...] = ("cow0003",), size: tuple[int, int] = (48, 64),
               real_size_frame: bool = False) -> dict[str, np.ndarray]:
    """``dataset_AnomalyTrack`` (JPG) or ``dataset_ObstacleTrack`` (WebP) with labels_masks/ for ``frames`` only.

    Masks: 0 normal, 1 anomaly, 255 void, plus a few pixels of another value (2), which the benchmark also voids.
    With ``real_size_frame`` the first frame is 1920x1080 (the ObstacleTrack's size)."""
    folder = root / ("dataset_AnomalyTrack" if track == "anomaly" else "dataset_ObstacleTrack")
    ext = ".jpg" if track == "anomaly" else ".webp"
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else [cv2.IMWRITE_WEBP_QUALITY, 90]
    labels: dict[str, np.ndarray] = {}
    for i, fid in enumerate((*frames, *unlabelled)):
        frame_size = REAL_OBSTACLE if real_size_frame and i == 0 else size
        anomaly, void = anomaly_masks(frame_size, i)
        _write(folder / "images" / f"{fid}{ext}", paint_anomaly(street_image(frame_size, i), anomaly), params)
        if fid in unlabelled:
            continue
        raw = encoded(anomaly, void)
        raw[-1, :3] = 2  # any value other than 0 / 1 is void for SMIYC
        _write(folder / "labels_masks" / f"{fid}_labels_semantic.png", raw)
        label = raw.copy()
        label[raw == 2] = 255
        labels[f"{fid}{ext}"] = label
    return labels


# ------------------------------------------------------------------------------------------- LostAndFound
LAF_FRAMES = {
    "test": ("02_Hanns_Klemm_Str_44_000001_000120", "15_Rechbergstr_Deckenpfronn_000000_000100"),
    "train": ("01_Hanns_Klemm_Str_45_000000_000080",),
}


def make_lost_and_found(root: Path, size: tuple[int, int] = (32, 64), real_size_frame: bool = True,
                        frames: dict[str, tuple[str, ...]] = LAF_FRAMES) -> dict[str, np.ndarray]:
    """leftImg8bit/ + gtCoarse/ with labelIds: 0 off-road (void), 1 free space, object ids 2..43 (obstacles).
    The first test frame is 2048x1024 PNG when ``real_size_frame``."""
    labels: dict[str, np.ndarray] = {}
    first = True
    for split, fids in frames.items():
        for i, fid in enumerate(fids):
            frame_size = REAL_LAF if real_size_frame and first else size
            first = False
            scene = "_".join(fid.split("_")[:-2])
            anomaly, void = anomaly_masks(frame_size, 10 + i)
            raw = np.ones(frame_size, np.uint8)  # free space
            raw[void] = 0
            raw[: frame_size[0] // 3] = 0  # off the road: void
            raw[anomaly] = 9 + i  # e.g. 'Cardboard box 1'
            _write(root / "leftImg8bit" / split / scene / f"{fid}_leftImg8bit.png",
                   paint_anomaly(street_image(frame_size, 10 + i), anomaly))
            _write(root / "gtCoarse" / split / scene / f"{fid}_gtCoarse_labelIds.png", raw)
            label = np.full(frame_size, 255, np.uint8)
            label[raw == 1] = 0
            label[(raw >= 2) & (raw <= 200)] = 1
            labels[f"{fid}_leftImg8bit.png"] = label
    return labels


# ---------------------------------------------------------------------------------------- Fishyscapes L&F
def make_fishyscapes_smiyc(root: Path, laf_root: Path) -> dict[str, np.ndarray]:
    """``labels/val/<fid>_fishy-labels.png`` (0 / 1 / 255) for every LostAndFound frame under ``laf_root``."""
    labels: dict[str, np.ndarray] = {}
    for image in sorted((laf_root / "leftImg8bit").glob("*/*/*_leftImg8bit.png")):
        fid = image.name[: -len("_leftImg8bit.png")]
        h, w = cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]
        anomaly, void = anomaly_masks((h, w), 20)
        label = encoded(anomaly, void)
        _write(root / "labels" / "val" / f"{fid}_fishy-labels.png", label)
        labels[image.name] = label
    return labels


def make_fishyscapes_pebal(root: Path, count: int = 2, size: tuple[int, int] = (32, 64)) -> dict[str, np.ndarray]:
    """``LostAndFound/original/<n>.png`` + ``LostAndFound/labels/<n>.png`` (PEBAL's layout)."""
    labels: dict[str, np.ndarray] = {}
    for i in range(count):
        anomaly, void = anomaly_masks(size, 30 + i)
        _write(root / "LostAndFound" / "original" / f"{i}.png", paint_anomaly(street_image(size, 30 + i), anomaly))
        label = encoded(anomaly, void)
        _write(root / "LostAndFound" / "labels" / f"{i}.png", label)
        labels[f"{i}.png"] = label
    return labels


# ------------------------------------------------------------------------------------------- Road Anomaly
def make_road_anomaly(root: Path, names: tuple[str, ...] = ("animals01_cow.jpg", "vehicles02_tractor.jpg"),
                      size: tuple[int, int] = (36, 64)) -> dict[str, np.ndarray]:
    """frame_list.json + frames/<name>.jpg + frames/<name>.labels/labels_semantic.png (0 background, 2 anomaly)."""
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "frame_list.json").write_text(json.dumps(list(names)))
    labels: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        anomaly, _ = anomaly_masks(size, 40 + i)
        _write(root / "frames" / name, paint_anomaly(street_image(size, 40 + i), anomaly))
        raw = np.where(anomaly, 2, 0).astype(np.uint8)
        _write(root / "frames" / f"{Path(name).stem}.labels" / "labels_semantic.png", raw)
        labels[name] = anomaly.astype(np.uint8)  # no void
    return labels


# ---------------------------------------------------------------------------------------- anomaly folder
def make_anomaly_folder(root: Path, anomaly_value: int = 2, void_value: int = 255,
                        size: tuple[int, int] = (24, 40)) -> dict[str, np.ndarray]:
    """images/<stem>.<jpg|png|webp> + masks/<stem>.png; anomaly and void values as given, other values 0 / 7."""
    labels: dict[str, np.ndarray] = {}
    for i, ext in enumerate((".jpg", ".png", ".webp")):
        anomaly, void = anomaly_masks(size, 50 + i)
        _write(root / "images" / f"frame{i}{ext}", paint_anomaly(street_image(size, 50 + i), anomaly))
        raw = np.zeros(size, np.uint8)
        raw[:, : size[1] // 4] = 7  # another 'normal' value
        raw[void] = void_value
        raw[anomaly] = anomaly_value
        _write(root / "masks" / f"frame{i}.png", raw)
        labels[f"frame{i}{ext}"] = encoded(anomaly, void)
    return labels


# ------------------------------------------------------------------------------------------- Cityscapes
#: (labelId, lower edge as a share of the height): sky, building, road
CITYSCAPES_BANDS = ((23, 0.3), (11, 0.55), (7, 1.0))


def make_cityscapes(root: Path, splits: dict[str, dict[str, int]] | None = None,
                    size: tuple[int, int] = (64, 128)) -> dict[str, np.ndarray]:
    """leftImg8bit/ + gtFine/ (labelIds) with sky / building / road bands, a car (26), a pole (17) and an
    ego-vehicle strip (1); returns the expected trainIds per image file name."""
    splits = splits or {"train": {"aachen": 4, "bochum": 2}, "val": {"frankfurt": 2}}
    from dicnet_ros.data.cityscapes import label_to_train_lut

    lut = label_to_train_lut()
    train_ids: dict[str, np.ndarray] = {}
    h, w = size
    for split, cities in splits.items():
        for city, count in cities.items():
            for i in range(count):
                seed = zlib.crc32(f"{split}/{city}/{i}".encode()) % 1000  # str hash() changes per process
                rng = np.random.default_rng(seed)
                ids = np.zeros(size, np.uint8)
                top = 0
                for label_id, edge in CITYSCAPES_BANDS:
                    bottom = int(edge * h)
                    ids[top:bottom] = label_id
                    top = bottom
                x = int(rng.integers(0, w // 2))
                ids[int(0.6 * h): int(0.8 * h), x: x + w // 4] = 26  # car
                ids[int(0.2 * h): int(0.6 * h), w - 6: w - 3] = 17  # pole
                ids[-2:] = 1  # ego vehicle: ignored
                palette = {23: (130, 180, 235), 11: (120, 100, 90), 7: (80, 80, 85), 26: (20, 30, 150),
                           17: (200, 200, 60), 1: (0, 0, 0)}
                image = np.zeros((h, w, 3), np.uint8)
                for label_id, colour in palette.items():
                    image[ids == label_id] = colour
                image = np.clip(image.astype(np.int16) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
                name = f"{city}_{i:06d}_000019"
                _write(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", image)
                _write(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", ids)
                train_ids[f"{name}_leftImg8bit.png"] = lut[ids]
    return train_ids


# ----------------------------------------------------------------------------------- COCO outlier cut-outs
def make_coco_outliers(root: Path, count: int = 3, size: tuple[int, int] = (40, 48)) -> list[str]:
    """Meta-OOD's layout: ``train2017/<id:012d>.jpg`` + ``annotations/ood_seg_train2017/<id:012d>.png`` with 254 on
    the objects and 0 elsewhere; the last one has no object (it must be skipped)."""
    ids = []
    for i in range(count):
        image_id = 9 + 1000 * i
        rng = np.random.default_rng(image_id)
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        if i < count - 1:
            cv2.circle(mask, (size[1] // 2, size[0] // 2), min(size) // 3, 254, -1)
            mask[2:6, 2:10] = 254  # a second object
        _write(root / "train2017" / f"{image_id:012d}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        _write(root / "annotations" / "ood_seg_train2017" / f"{image_id:012d}.png", mask)
        ids.append(f"{image_id:012d}")
    return ids

"""Dataset readers on tiny fixture trees in the real layouts: label encodings, splits, detection, errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dicnet_ros.data import DatasetSpec, Sample, SegmentationDataset, open_dataset
from dicnet_ros.data import bdd_anomaly as bdd_module
from dicnet_ros.data.bdd_anomaly import CACHE_NAME, BDDAnomaly
from dicnet_ros.data.folder import FolderDataset
from dicnet_ros.data.streethazards import StreetHazards

H, W = 16, 32
RED_BGR = (0, 0, 255)


def write_image(path: Path, bgr: tuple[int, int, int] = RED_BGR, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((*size, 3), np.uint8)
    image[:] = bgr
    assert cv2.imwrite(str(path), image)


def write_label(path: Path, values: list[int], size: tuple[int, int] = (H, W)) -> np.ndarray:
    """Label PNG whose columns cycle through ``values`` (so every value is present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.zeros(size, np.uint8)
    for col in range(size[1]):
        raw[:, col] = values[col % len(values)]
    assert cv2.imwrite(str(path), raw)
    return raw


# ----------------------------------------------------------------------------------------- StreetHazards
SH_TOWNS = {
    "train": ("train", "training", {"t1": ["1", "2", "10"], "t2": ["1"]}),
    "val": ("train", "validation", {"t4": ["1", "2"]}),
    "test": ("test", "test", {"t5": ["1", "2"], "t6": ["1"]}),
}


def make_streethazards(root: Path, towns: dict[str, tuple[str, str, dict[str, list[str]]]] = SH_TOWNS) -> Path:
    for split, (top, sub, by_town) in towns.items():
        for town, names in by_town.items():
            for name in names:
                write_image(root / top / "images" / sub / town / f"{name}.png")
                values = [1, 2, 4, 8, 13] + ([14] if split == "test" else [])
                write_label(root / top / "annotations" / sub / town / f"{name}.png", values)
    return root


@pytest.fixture
def sh_root(tmp_path: Path) -> Path:
    return make_streethazards(tmp_path / "streethazards")


def rel(ds: SegmentationDataset, root: Path) -> list[str]:
    return [Path(image).relative_to(root).as_posix() for image, _ in ds.items]


def test_streethazards_splits_from_folders(sh_root: Path) -> None:
    train = open_dataset(sh_root, "train")
    assert isinstance(train, StreetHazards)
    assert rel(train, sh_root) == [
        "train/images/training/t1/1.png",
        "train/images/training/t1/2.png",
        "train/images/training/t1/10.png",
        "train/images/training/t2/1.png",
    ]
    assert Path(train.items[0][1] or "").relative_to(sh_root).as_posix() == ("train/annotations/training/t1/1.png")
    val = open_dataset(sh_root, "val")
    assert rel(val, sh_root) == ["train/images/validation/t4/1.png", "train/images/validation/t4/2.png"]
    test = open_dataset(sh_root, "test", kind="streethazards")
    assert len(test) == 3 and rel(test, sh_root)[-1] == "test/images/test/t6/1.png"
    assert test.has_anomalies() and not train.has_anomalies() and not val.has_anomalies()


def test_streethazards_decoding(sh_root: Path) -> None:
    spec = open_dataset(sh_root, "test").spec
    assert spec.num_classes == 13 and spec.anomaly_ids == (13,) and spec.ignore_id == 255
    assert spec.class_names[0] == "unlabeled" and spec.class_names[3] == "other"
    assert spec.class_names[12] == "traffic sign"
    sample = open_dataset(sh_root, "test")[0]
    assert isinstance(sample, Sample)
    assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
    assert sample.image.flags.c_contiguous and sample.label.flags.c_contiguous
    assert tuple(sample.image[0, 0]) == (255, 0, 0)  # RGB, although cv2 wrote BGR
    assert sample.label.shape == (H, W) and sample.label.dtype == np.uint8
    assert list(sample.label[0, :6]) == [0, 1, 3, 7, 12, 13]  # raw 1->0, 4->3 (other), 14->13 (anomaly)
    assert sample.path.endswith("t5/1.png")


def test_streethazards_raw_zero_is_ignored(sh_root: Path) -> None:
    label_path = sh_root / "train/annotations/training/t1/1.png"
    write_label(label_path, [0, 1, 14, 15])
    label = open_dataset(sh_root, "train")[0].label
    assert list(label[0, :4]) == [255, 0, 13, 255]  # 0 and unknown 15 -> ignore


def test_streethazards_odgt_single_line_list(sh_root: Path) -> None:
    entries = [
        {
            "fpath_segm": f"train/annotations/validation/t4/{n}.png",
            "width": W,
            "fpath_img": f"train/images/validation/t4/{n}.png",
            "dbName": "StreetHazards",
            "height": H,
        }
        for n in ("2", "1")
    ]
    odgt = sh_root / "validation.odgt"
    odgt.write_text(json.dumps(entries))
    assert "\n" not in odgt.read_text()
    ds = open_dataset(sh_root, "val", odgt=odgt)
    assert isinstance(ds, StreetHazards)
    assert rel(ds, sh_root) == ["train/images/validation/t4/2.png", "train/images/validation/t4/1.png"]
    # a relative odgt path is also looked up under the root
    assert len(open_dataset(sh_root, "val", kind="streethazards", odgt="validation.odgt")) == 2


def test_streethazards_odgt_object_per_line(sh_root: Path, tmp_path: Path) -> None:
    odgt = tmp_path / "lists" / "test.odgt"
    odgt.parent.mkdir()
    lines = [
        json.dumps(
            {
                "fpath_img": f"test/images/test/{t}.png",
                "fpath_segm": f"test/annotations/test/{t}.png",
                "width": W,
                "height": H,
            }
        )
        for t in ("t5/1", "t6/1")
    ]
    odgt.write_text("\n".join(lines) + "\n")
    ds = open_dataset(sh_root, "test", odgt=odgt)
    assert rel(ds, sh_root) == ["test/images/test/t5/1.png", "test/images/test/t6/1.png"]
    assert ds[1].label.max() == 13


def test_streethazards_odgt_missing_label(sh_root: Path) -> None:
    odgt = sh_root / "bad.odgt"
    odgt.write_text(
        json.dumps(
            [{"fpath_img": "train/images/validation/t4/1.png", "fpath_segm": "train/annotations/validation/t4/99.png"}]
        )
    )
    with pytest.raises(FileNotFoundError, match=r"99.png"):
        open_dataset(sh_root, "val", odgt=odgt)


SIM_YAML = {
    "name": "dicnet-sim-streets",
    "classes": [
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
    ],
    "anomaly_ids": [12],
    "anomaly_names": ["anomaly"],
    "ignore_id": 255,
    "label_offset": 1,
    "generator": {"tool": "dicnet sim", "seed": 0},
}


def test_sim_dataset_yaml_overrides_spec(tmp_path: Path) -> None:
    root = tmp_path / "sim"
    towns = {
        "train": ("train", "training", {"t1": ["0", "1"]}),
        "val": ("train", "validation", {"t4": ["0"]}),
        "test": ("test", "test", {"t5": ["0"]}),
    }
    make_streethazards(root, towns)
    write_label(root / "test/annotations/test/t5/0.png", [0, 1, 2, 12, 13])
    (root / "dataset.yaml").write_text(yaml.safe_dump(SIM_YAML))
    ds = open_dataset(root, "test")
    assert isinstance(ds, StreetHazards)
    assert ds.spec.name == "dicnet-sim-streets" and ds.spec.num_classes == 12
    assert ds.spec.anomaly_ids == (12,) and ds.spec.class_names[0] == "sky"
    assert list(ds[0].label[0, :5]) == [255, 0, 1, 11, 12]  # raw 0 = unlabeled -> ignore, raw 13 -> anomaly 12
    assert [len(open_dataset(root, s)) for s in ("train", "val", "test")] == [2, 1, 1]


# ----------------------------------------------------------------------------------------- BDD-Anomaly
# raw values: 1 void, 2..17 in-distribution, 18 train, 19 motorcycle, 20 bicycle
BDD_FILES = {
    "train": {"a": [1, 2, 17], "b": [1, 3, 20], "c": [2, 18], "d": [5, 6]},
    "val": {"e": [2, 3], "f": [4, 19], "g": [1, 2]},
}


@pytest.fixture
def bdd_root(tmp_path: Path) -> Path:
    root = tmp_path / "bdd"
    for folder, files in BDD_FILES.items():
        for name, values in files.items():
            write_image(root / "seg/images" / folder / f"{name}.jpg")
            write_label(root / "seg/train_labels" / folder / f"{name}_train_id.png", values)
    return root


def names(ds: SegmentationDataset) -> list[str]:
    return [Path(image).stem for image, _ in ds.items]


def test_bdd_default_splits(bdd_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dicnet_ros.data.bdd_anomaly"):
        train = open_dataset(bdd_root, "train")
    assert isinstance(train, BDDAnomaly)
    assert "anomaly set: 17 (train), 18 (motorcycle), 19 (bicycle)" in caplog.text
    assert names(train) == ["a", "d"]
    assert names(open_dataset(bdd_root, "val")) == ["e", "g"]
    test = open_dataset(bdd_root, "test", kind="bdd_anomaly")
    assert names(test) == ["b", "c", "f"] and test.has_anomalies()
    spec = train.spec
    assert spec.num_classes == 17 and spec.anomaly_ids == (17, 18, 19)
    assert spec.class_names[0] == "other" and spec.class_names[16] == "bus"
    assert spec.anomaly_names == ("train", "motorcycle", "bicycle")


def test_bdd_decoding(bdd_root: Path) -> None:
    test = open_dataset(bdd_root, "test")
    sample = test[0]  # b: raw [1, 3, 20]
    assert list(sample.label[0, :3]) == [0, 2, 19]  # void 1 -> 0, bicycle 20 -> 19
    assert np.abs(sample.image[H // 2, W // 2].astype(int) - (255, 0, 0)).max() <= 3  # JPEG, RGB order
    assert list(test[1].label[0, :2]) == [1, 17]  # c: road 2 -> 1, train 18 -> 17
    assert list(open_dataset(bdd_root, "train")[0].label[0, :3]) == [0, 1, 16]  # a: bus 17 -> 16


def test_bdd_configurable_anomaly_ids(bdd_root: Path) -> None:
    train = open_dataset(bdd_root, "train", anomaly_ids=[18, 19])
    assert train.spec.anomaly_ids == (18, 19) and train.spec.anomaly_names == ("motorcycle", "bicycle")
    assert names(train) == ["a", "c", "d"]
    assert list(train[1].label[0, :2]) == [1, 255]  # 'train' is neither trained on nor an anomaly now
    assert names(open_dataset(bdd_root, "test", anomaly_ids=(18, 19))) == ["b", "f"]
    assert names(open_dataset(bdd_root, "test", anomaly_ids=[19])) == ["b"]
    assert names(open_dataset(bdd_root, "val", anomaly_ids=[19])) == ["e", "f", "g"]
    with pytest.raises(ValueError, match="subset"):
        open_dataset(bdd_root, "train", anomaly_ids=[16])


def test_bdd_scan_cache(bdd_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = bdd_root / "seg/train_labels"
    assert names(open_dataset(bdd_root, "test")) == ["b", "c", "f"]
    cache = json.loads((labels / CACHE_NAME).read_text())
    assert cache["files"]["train/b_train_id.png"] == [19] and cache["files"]["train/a_train_id.png"] == []

    def no_scan(path: str) -> list[int]:
        raise AssertionError(f"rescanned {path}")

    monkeypatch.setattr(bdd_module, "_MEMORY_CACHE", {})
    monkeypatch.setattr(bdd_module, "_scan_one", no_scan)
    assert names(open_dataset(bdd_root, "test", anomaly_ids=[17])) == ["c"]  # served from the JSON
    monkeypatch.undo()
    # changing a label changes the key: the scan runs again
    write_label(labels / "val/g_train_id.png", [1, 2, 20, 20, 20])
    assert names(open_dataset(bdd_root, "test")) == ["b", "c", "f", "g"]


def test_bdd_without_file_cache(bdd_root: Path) -> None:
    assert names(open_dataset(bdd_root, "val", cache=False)) == ["e", "g"]
    assert not (bdd_root / "seg/train_labels" / CACHE_NAME).exists()


def test_bdd_missing_label(bdd_root: Path) -> None:
    write_image(bdd_root / "seg/images/val/h.jpg")
    with pytest.raises(FileNotFoundError, match=r"h_train_id.png"):
        open_dataset(bdd_root, "val")


# ----------------------------------------------------------------------------------------- folder dataset
def make_folder(root: Path, **extra: object) -> Path:
    config = {
        "name": "my-data",
        "classes": ["road", "car", "person"],
        "anomaly_ids": [3],
        "label_offset": 0,
        "label_suffix": "_gt.png",
        "splits": {
            "train": {"images": "img/train", "labels": "gt/train"},
            "val": {"images": "img/val", "labels": "gt/val"},
            "test": {"images": "img/test"},
        },
        **extra,
    }
    (root / "dataset.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(config))
    for name in ("b", "a", "sub/c"):
        write_image(root / "img/train" / f"{name}.png")
        write_label(root / "gt/train" / f"{name}_gt.png", [0, 1, 2, 3, 7])
    write_image(root / "img/val/x.jpg")
    write_label(root / "gt/val/x_gt.png", [2])
    write_image(root / "img/test/y.png")
    return root


def test_folder_dataset(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine")
    train = open_dataset(root, "train")
    assert isinstance(train, FolderDataset)
    assert rel(train, root) == ["img/train/a.png", "img/train/b.png", "img/train/sub/c.png"]
    assert train.spec == DatasetSpec("my-data", ("road", "car", "person"), (3,), 255, 0, ("anomaly",))
    sample = train[0]
    assert tuple(sample.image[0, 0]) == (255, 0, 0)
    assert list(sample.label[0, :5]) == [0, 1, 2, 3, 255]  # offset 0; unknown 7 -> ignore
    assert len(open_dataset(root, "val")) == 1
    test = open_dataset(root / "dataset.yaml", "test")  # the yaml itself as root
    assert test.has_anomalies() and test.items[0][1] is None
    assert (test[0].label == 255).all() and test[0].label.shape == (H, W)


def test_folder_dataset_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", splits={"train": {"images": "img/train", "labels": "gt/train"}})
    with pytest.raises(ValueError, match="no split 'val'"):
        open_dataset(root, "val")
    (root / "gt/train/b_gt.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b_gt.png"):
        open_dataset(root, "train")
    with pytest.raises(FileNotFoundError, match=r"dataset.yaml"):
        open_dataset(tmp_path, "train", kind="folder")


# ----------------------------------------------------------------------------------------- common
def test_auto_detection(sh_root: Path, bdd_root: Path, tmp_path: Path) -> None:
    folder_root = make_folder(tmp_path / "mine")
    assert type(open_dataset(sh_root, "val")) is StreetHazards
    assert type(open_dataset(bdd_root, "val")) is BDDAnomaly
    assert type(open_dataset(bdd_root / "seg", "val")) is BDDAnomaly  # root = seg/ also works
    assert type(open_dataset(folder_root, "val")) is FolderDataset
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="cannot tell the dataset layout"):
        open_dataset(empty, "train")


def test_clear_errors(sh_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="unknown split"):
        open_dataset(sh_root, "training")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        open_dataset(sh_root, "train", kind="mapillary")
    with pytest.raises(ValueError, match="does not take option"):
        open_dataset(sh_root, "train", anomaly_ids=[1])
    with pytest.raises(FileNotFoundError, match="test/images/test"):
        open_dataset(sh_root / "train", "test", kind="streethazards")
    # empty split
    (sh_root / "train/images/validation/t4/1.png").unlink()
    (sh_root / "train/images/validation/t4/2.png").unlink()
    with pytest.raises(ValueError, match=r"'val'.*empty"):
        open_dataset(sh_root, "val")
    # image without its label
    (sh_root / "train/annotations/training/t1/2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"t1/2\.png has no label"):
        open_dataset(sh_root, "train")


def test_label_checks_on_read(sh_root: Path) -> None:
    ds = open_dataset(sh_root, "test")
    write_label(Path(ds.items[0][1]), [1], size=(H, W + 2))
    with pytest.raises(ValueError, match=r"34x16 but image .* is 32x16"):
        ds[0]
    colour = np.zeros((H, W, 3), np.uint8)
    assert cv2.imwrite(ds.items[1][1], colour)
    with pytest.raises(ValueError, match=r"3 channels.*single-channel"):
        ds[1]
    assert ds[-1].path == ds.items[2][0]
    with pytest.raises(IndexError):
        ds[3]


def test_spec_round_trip_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(SIM_YAML))
    spec = DatasetSpec.from_yaml(path)
    assert spec.num_classes == 12 and spec.anomaly_ids == (12,) and spec.anomaly_names == ("anomaly",)
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    assert DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="also a training class"):
        DatasetSpec("x", ("a", "b"), (1,))
    with pytest.raises(ValueError, match="anomaly_ids"):
        DatasetSpec.from_dict({"classes": ["a"]})
    with pytest.raises(FileNotFoundError):
        DatasetSpec.from_yaml(tmp_path / "missing.yaml")
    lut = DatasetSpec("x", ("a", "b"), (2,), label_offset=1).decode_lut()
    assert list(lut[:5]) == [255, 0, 1, 2, 255]


def test_sample_collate(sh_root: Path) -> None:
    ds = open_dataset(sh_root, "train")
    batch = Sample.collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, H, W, 3) and batch["label"].shape == (2, H, W)
    assert batch["path"] == [ds.items[0][0], ds.items[1][0]]
    assert set(ds[0].as_dict()) == {"image", "label", "path"}


def test_reading_needs_no_torch(sh_root: Path) -> None:
    code = (
        "import sys; from dicnet_ros.data import open_dataset; "
        f"s = open_dataset({str(sh_root)!r}, 'test')[0]; "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(s.label.max())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "13"


def test_outlier_proxy_ids_in_the_spec() -> None:
    spec = DatasetSpec.from_dict({"classes": ["a", "b"], "anomaly_ids": [2], "outlier_proxy_ids": [3]})
    assert spec.valid_ids() == (0, 1, 2, 3) and spec.decode_lut()[4] == 3  # raw 4 = id 3 (offset 1)
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="outlier proxy id 2"):
        DatasetSpec.from_dict({"classes": ["a", "b"], "anomaly_ids": [2], "outlier_proxy_ids": [2]})

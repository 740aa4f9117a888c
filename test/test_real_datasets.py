"""Readers of the real road benchmarks and Cityscapes on fixture trees in their published layouts: detection, the
decoded evaluation labels (0 normal, 1 anomaly, 255 void), splits, real image sizes and formats, and errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image
from real_fixtures import (
    REAL_LAF,
    REAL_OBSTACLE,
    make_anomaly_folder,
    make_cityscapes,
    make_fishyscapes_pebal,
    make_fishyscapes_smiyc,
    make_lost_and_found,
    make_road_anomaly,
    make_smiyc,
)

from dicnet_ros.data import open_dataset
from dicnet_ros.data.base import read_mask
from dicnet_ros.data.detect import detect_kind
from dicnet_ros.data.label_encoding import PRESETS, encoding_from_values, resolve_encoding


def labels_by_name(ds) -> dict[str, np.ndarray]:
    return {Path(ds.items[i][0]).name: ds[i].label for i in range(len(ds))}


def assert_labels(ds, expected: dict[str, np.ndarray]) -> None:
    got = labels_by_name(ds)
    assert sorted(got) == sorted(expected)
    for name, label in expected.items():
        np.testing.assert_array_equal(got[name], label, err_msg=name)


def test_smiyc_anomaly_track_jpg(tmp_path: Path) -> None:
    expected = make_smiyc(tmp_path, "anomaly")
    for root in (tmp_path, tmp_path / "dataset_AnomalyTrack"):  # $DIR_DATASETS or the track folder
        assert detect_kind(root) == "smiyc"
        ds = open_dataset(root, "test")
        assert ds.kind == "smiyc" and ds.track == "anomaly" and ds.spec.anomaly_ids == (1,)
        assert_labels(ds, expected)  # the unlabelled test frame cow0003 is left out
        assert ds[0].image.dtype == np.uint8 and ds[0].image.shape == (48, 64, 3)


def test_smiyc_obstacle_track_webp_at_real_size(tmp_path: Path) -> None:
    frames = ("validation_1", "validation_20", "validation_23", "curvy-street_000")
    expected = make_smiyc(tmp_path, "obstacle", frames=frames, unlabelled=(), real_size_frame=True)
    ds = open_dataset(tmp_path / "dataset_ObstacleTrack", "test")
    assert ds.track == "obstacle" and Path(ds.items[0][0]).suffix == ".webp"
    assert_labels(ds, expected)
    big = ds[[Path(p).stem for p, _ in ds.items].index("validation_1")]
    assert big.image.shape == (*REAL_OBSTACLE, 3) and big.label.shape == REAL_OBSTACLE
    # the benchmark's -validation split: ids starting with 'validation', without validation_19 / _21 .. _29
    val = open_dataset(tmp_path / "dataset_ObstacleTrack", "val")
    assert sorted(Path(p).stem for p, _ in val.items) == ["validation_1", "validation_20"]


def test_smiyc_refuses_training_and_ambiguous_roots(tmp_path: Path) -> None:
    make_smiyc(tmp_path, "anomaly")
    with pytest.raises(ValueError, match="evaluation benchmark"):
        open_dataset(tmp_path, "train")
    make_smiyc(tmp_path, "obstacle", frames=("validation_1",), unlabelled=())
    with pytest.raises(ValueError, match="pass one of them"):
        open_dataset(tmp_path, "test")


def test_lost_and_found_free_space_roi_at_real_size(tmp_path: Path) -> None:
    expected = make_lost_and_found(tmp_path)
    assert detect_kind(tmp_path) == "lost_and_found"
    test = open_dataset(tmp_path, "test")
    assert test.track == "obstacle"
    assert_labels(test, {k: v for k, v in expected.items() if not k.startswith("01_")})
    first = test[0]
    assert first.image.shape == (*REAL_LAF, 3) and set(np.unique(first.label)) == {0, 1, 255}
    no_known = open_dataset(tmp_path, "test", no_known=True)  # drops 15_Rechbergstr_Deckenpfronn (children)
    assert [Path(p).name[:2] for p, _ in no_known.items] == ["02"]
    assert len(open_dataset(tmp_path, "train")) == 1


def test_fishyscapes_smiyc_layout_takes_images_from_lost_and_found(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    laf = tmp_path / "dataset_LostAndFound"
    make_lost_and_found(laf, real_size_frame=False)
    make_cityscapes(tmp_path / "cityscapes")  # the training set beside it, sorted first: never taken for LostAndFound
    expected = make_fishyscapes_smiyc(tmp_path / "dataset_FishyLAF", laf)
    monkeypatch.delenv("DIR_LAF", raising=False)
    assert detect_kind(tmp_path / "dataset_FishyLAF") == "fishyscapes_laf"
    ds = open_dataset(tmp_path / "dataset_FishyLAF", "test")  # LostAndFound found beside it
    assert ds.track == "anomaly"
    assert_labels(ds, expected)
    alone = tmp_path / "alone"
    make_fishyscapes_smiyc(alone / "fishy", laf)
    with pytest.raises(FileNotFoundError, match="DIR_LAF"):
        open_dataset(alone / "fishy", "test")
    monkeypatch.setenv("DIR_LAF", str(laf))
    assert len(open_dataset(alone / "fishy", "test")) == 3


def test_fishyscapes_pebal_layout(tmp_path: Path) -> None:
    expected = make_fishyscapes_pebal(tmp_path)
    ds = open_dataset(tmp_path, "test")
    assert ds.kind == "fishyscapes_laf"
    assert_labels(ds, expected)


def test_road_anomaly_release_layout(tmp_path: Path) -> None:
    expected = make_road_anomaly(tmp_path)
    ds = open_dataset(tmp_path, "test")
    assert ds.kind == "road_anomaly" and ds.track == "anomaly"
    assert_labels(ds, expected)  # >= 2 anomaly, no void
    assert [Path(p).name for p, _ in ds.items] == ["animals01_cow.jpg", "vehicles02_tractor.jpg"]


def test_anomaly_folder_with_user_values_and_presets(tmp_path: Path) -> None:
    expected = make_anomaly_folder(tmp_path, anomaly_value=2, void_value=255)
    encoding, _ = resolve_encoding(None, "2", "255")
    ds = open_dataset(tmp_path, "test", encoding=encoding, track="obstacle")
    assert ds.kind == "anomaly_folder" and ds.track == "obstacle"
    assert sorted(Path(p).suffix for p, _ in ds.items) == [".jpg", ".png", ".webp"]
    assert_labels(ds, expected)
    default = open_dataset(tmp_path, "test")  # 'binary': 1 anomaly -> none here, 255 void, the rest normal
    assert all(not (default[i].label == 1).any() for i in range(len(default)))
    with pytest.raises(ValueError, match="unknown label preset"):
        open_dataset(tmp_path, "test", preset="nope")
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "images" / "frame1.png").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"extra\.png has no label"):
        open_dataset(tmp_path, "test")


def test_presets_decode_the_published_values() -> None:
    values = np.array([[0, 1, 2, 100, 200, 201, 255]], np.uint8)
    expect = {
        "smiyc-anomaly": [0, 1, 255, 255, 255, 255, 255],
        "fishyscapes": [0, 1, 255, 255, 255, 255, 255],
        "lost-and-found": [255, 0, 1, 1, 1, 255, 255],
        "road-anomaly": [0, 0, 1, 1, 1, 1, 1],
        "binary": [0, 1, 0, 0, 0, 0, 255],
        "dicnet-bag": [0, 255, 255, 255, 255, 255, 1],
    }
    for name, row in expect.items():
        np.testing.assert_array_equal(PRESETS[name].encoding.apply(values)[0], row, err_msg=name)
    assert PRESETS["smiyc-obstacle"].track == "obstacle" and PRESETS["lost-and-found"].track == "obstacle"
    assert resolve_encoding("lost-and-found", "3")[1] == "obstacle"  # own values, the preset's track
    with pytest.raises(ValueError, match="needs --anomaly-values"):
        resolve_encoding(None, None, "255")


def test_masks_palette_and_colour(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    palette = Image.fromarray(values, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9, 9, 9] * 253)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), values)  # indices, not colours
    cv2.imwrite(str(tmp_path / "grey3.png"), np.dstack([values] * 3))
    np.testing.assert_array_equal(read_mask(tmp_path / "grey3.png"), values)
    cv2.imwrite(str(tmp_path / "colour.png"), np.dstack([values, values, values + 1]))
    with pytest.raises(ValueError, match="colour image"):
        read_mask(tmp_path / "colour.png")
    cv2.imwrite(str(tmp_path / "wide.png"), (values.astype(np.uint16) * 300))
    wide = read_mask(tmp_path / "wide.png")
    assert wide.dtype == np.uint16
    np.testing.assert_array_equal(encoding_from_values("300").apply(wide), [[0, 1, 0], [0, 1, 0]])


def test_cityscapes_label_ids_to_train_ids(tmp_path: Path) -> None:
    expected = make_cityscapes(tmp_path)
    assert detect_kind(tmp_path) == "cityscapes"
    train = open_dataset(tmp_path, "train")
    assert train.spec.num_classes == 19 and train.spec.class_names[13] == "car" and len(train) == 6
    sample = train[0]
    np.testing.assert_array_equal(sample.label, expected[Path(sample.path).name])
    assert set(np.unique(sample.label)) == {0, 2, 5, 10, 13, 255}  # road, building, pole, sky, car, ego vehicle
    assert len(open_dataset(tmp_path, "val")) == 2
    with pytest.raises(ValueError, match="no anomaly test split"):
        open_dataset(tmp_path, "test")

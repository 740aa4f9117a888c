"""Tests of the simulated benchmark generator (`dicnet sim`): layout, labels, determinism, CLI parsing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("pybullet")
pytest.importorskip("PIL")  # bag extra

from PIL import Image

from dicnet_ros.data.sim.classes import SIM_ANOMALY_ID, SIM_CLASSES, SPLIT_DIRS
from dicnet_ros.data.sim.generator import generate_split, image_seed
from dicnet_ros.data.sim.objects import parse_anomaly_set

SIZE = (128, 72)


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 train + 2 test images at 128x72, rendered once for the module (in-process: cheap on 2 cores)."""
    root = tmp_path_factory.mktemp("sim")
    generate_split(root, "train", 3, seed=7, size=SIZE, workers=1, progress=False)
    generate_split(root, "test", 2, seed=7, size=SIZE, anomaly_set="toys,urdf:0-9", workers=1, progress=False)
    return root


def _pngs(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    img_dir, ann_dir = (root / d for d in SPLIT_DIRS[split])
    return sorted(img_dir.glob("*.png")), sorted(ann_dir.glob("*.png"))


def test_streethazards_layout_and_yaml(sim_root: Path) -> None:
    assert (sim_root / "train/images/training/t1/000000.png").is_file()
    assert (sim_root / "train/annotations/training/t1/000002.png").is_file()
    assert (sim_root / "test/images/test/t5/000001.png").is_file()
    assert (sim_root / "test/annotations/test/t5/000001.png").is_file()
    assert SPLIT_DIRS["val"] == ("train/images/validation/t4", "train/annotations/validation/t4")
    meta = yaml.safe_load((sim_root / "dataset.yaml").read_text())
    assert meta["name"] == "dicnet-sim-streets"
    assert meta["classes"] == list(SIM_CLASSES) and len(meta["classes"]) == 12
    assert meta["anomaly_ids"] == [12] and meta["anomaly_names"] == ["anomaly"]
    assert meta["ignore_id"] == 255 and meta["label_offset"] == 1
    assert meta["generator"]["tool"] == "dicnet sim" and meta["generator"]["size"] == list(SIZE)
    manifest = json.loads((sim_root / "sim_manifest_test.json").read_text())
    assert manifest["count"] == 2 and manifest["anomaly_set"] == "toys,urdf:0-9"
    assert [e["file"] for e in manifest["images"]] == ["000000.png", "000001.png"]
    assert all(e["anomalies"] and e["anomaly_pixels"] > 0 for e in manifest["images"])
    for entry in manifest["images"]:
        assert {a["family"] for a in entry["anomalies"]} <= {"toys", "urdf"}


def test_label_values(sim_root: Path) -> None:
    for split, want_anomaly in (("train", False), ("test", True)):
        images, anns = _pngs(sim_root, split)
        assert len(images) == len(anns) == (3 if split == "train" else 2)
        for img_path, ann_path in zip(images, anns, strict=True):
            img, ann = Image.open(img_path), Image.open(ann_path)
            assert img.mode == "RGB" and ann.mode == "L" and img.size == ann.size == SIZE
            raw = np.asarray(ann)
            assert raw.min() >= 1 and raw.max() <= SIM_ANOMALY_ID + 1
            assert bool((raw == SIM_ANOMALY_ID + 1).any()) is want_anomaly, (split, ann_path.name)
            assert len(np.unique(raw)) >= 4  # a street, not a blank frame


def test_deterministic_across_worker_counts(tmp_path: Path) -> None:
    """Same bytes with 1 or 2 workers, and with a warm or cold per-process model-size cache."""
    from dicnet_ros.data.sim import render

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_split(a, "test", 2, seed=3, size=SIZE, anomaly_set="animals", workers=1, progress=False)
    generate_split(b, "test", 2, seed=3, size=SIZE, anomaly_set="animals", workers=2, progress=False)
    render._EXTENT_CACHE.clear()
    generate_split(c, "test", 2, seed=3, size=SIZE, anomaly_set="animals", workers=1, progress=False)
    for sub in SPLIT_DIRS["test"]:
        files = sorted((a / sub).glob("*.png"))
        assert len(files) == 2
        for f in files:
            assert f.read_bytes() == (b / sub / f.name).read_bytes(), f
            assert f.read_bytes() == (c / sub / f.name).read_bytes(), f
    assert image_seed(3, "test", 0) != image_seed(3, "train", 0) != image_seed(3, "train", 1)


def test_anomaly_set_parsing() -> None:
    fams = {m.family for m in parse_anomaly_set("all")}
    assert fams == {"urdf", "toys", "animals", "robots"}
    half = parse_anomaly_set("urdf:500-999,animals")
    assert {m.family for m in half} == {"urdf", "animals"}
    assert sum(m.family == "urdf" for m in half) == 500
    assert min(m.name for m in half if m.family == "urdf") == "urdf500"
    assert [m.name for m in parse_anomaly_set("urdf:7")] == ["urdf007"]
    assert len(parse_anomaly_set("urdf")) == 1000
    assert len(parse_anomaly_set("toys, TOYS")) == len(parse_anomaly_set("toys"))
    for bad in ("", "cats", "urdf:5-2", "urdf:0-1000", "urdf:a-b"):
        with pytest.raises(ValueError, match=r"anomaly set|range|valid tokens"):
            parse_anomaly_set(bad)


def test_cli_errors_and_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicnet_ros.cli import main

    assert (
        main(["sim", "--out", str(tmp_path), "--split", "test", "--count", "1", "--anomaly-set", "cats"]) == 2
    )
    assert "unknown anomaly set token 'cats'" in capsys.readouterr().err
    assert main(["sim", "--out", str(tmp_path), "--splits", "train,val", "--counts", "1"]) == 2
    assert (
        main(
            [
                "sim",
                "--out",
                str(tmp_path),
                "--split",
                "val",
                "--count",
                "1",
                "--size",
                "96x54",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "rendered 1 images" in capsys.readouterr().out
    assert (tmp_path / "train/annotations/validation/t4/000000.png").is_file()


def test_grid(sim_root: Path, tmp_path: Path) -> None:
    from dicnet_ros.data.sim.grid import make_grid

    out = make_grid(sim_root, tmp_path / "grid.png", n_train=2, n_test=2, width=128)
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[1] >= 3 * 128


@pytest.mark.skipif(
    importlib.util.find_spec("dicnet_ros.data.streethazards") is None,
    reason="StreetHazards loader not present",
)
def test_streethazards_loader_reads_sim_output(sim_root: Path) -> None:
    from dicnet_ros.data.streethazards import StreetHazards

    train = StreetHazards(sim_root, "train")
    test = StreetHazards(sim_root, "test")
    assert len(train) == 3 and len(test) == 2
    assert train.spec.num_classes == 12
    s = test[0]
    assert s.image.shape == (SIZE[1], SIZE[0], 3) and s.label.shape == (SIZE[1], SIZE[0])
    assert (s.label == SIM_ANOMALY_ID).any()
    assert train[0].label.max() < SIM_ANOMALY_ID


def test_outlier_proxies_only_in_chosen_training_images(sim_root: Path, tmp_path: Path) -> None:
    """--outlier-proxies: some train images get proxies (own label id, in dataset.yaml); the others, and every
    image of other splits, are byte for byte what the generator writes without them."""
    from dicnet_ros.data import open_dataset
    from dicnet_ros.data.sim.classes import LABEL_OFFSET, SIM_PROXY_ID
    from dicnet_ros.data.sim.objects import ANOMALY_FAMILIES, OUTLIER_PROXIES

    assert {m.family for m in OUTLIER_PROXIES} == {"proxy"}
    assert not {m.urdf for m in OUTLIER_PROXIES} & {m.urdf for m in parse_anomaly_set("all")}
    assert "proxy" not in ANOMALY_FAMILIES
    out = tmp_path / "proxies"
    rep = generate_split(out, "train", 6, seed=7, size=SIZE, workers=1, progress=False, outlier_proxies=0.5)
    with_proxies = [r for r in rep.images if "outlier_proxy_pixels" in r]
    assert 0 < len(with_proxies) < 6 and any(r["outlier_proxy_pixels"] > 0 for r in with_proxies)
    img_dir, ann_dir = (out / d for d in SPLIT_DIRS["train"])
    ref_img, _ = _pngs(sim_root, "train")
    for r in rep.images:
        label = np.asarray(Image.open(ann_dir / r["file"])) - LABEL_OFFSET
        assert int((label == SIM_PROXY_ID).sum()) == r.get("outlier_proxy_pixels", 0)
        if "outlier_proxy_pixels" not in r and r["index"] < len(ref_img):
            assert (img_dir / r["file"]).read_bytes() == ref_img[r["index"]].read_bytes()
    spec = open_dataset(out, "train").spec
    assert spec.outlier_proxy_ids == (SIM_PROXY_ID,) and SIM_PROXY_ID not in spec.anomaly_ids
    with pytest.raises(ValueError, match="fraction"):
        generate_split(out, "train", 1, seed=7, size=SIZE, workers=1, progress=False, outlier_proxies=1.5)

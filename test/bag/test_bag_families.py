"""Anomaly families per frame (bag/families.py, bag/accumulate.py): make-bag records them from the simulator's
manifest, bag-eval reports per family (and lends them to a recording with --families-from), frames without
families count only overall, malformed metadata is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from bag_helpers import (
    PROTOCOL_KEYS,
    RATE,
    T0,
    H,
    W,
    _direct,
    _eval,
    _make,
    _read_topic,
    _same_numbers,
    _stamp,
    _write_bag,
)

from dicnet_ros import bag as bagmod
from dicnet_ros.cli import main as dicnet

SIM_FAMILIES = {"animals": 3, "toys": 3, "mixed": 2}  # frames per group of the split below (visible anomalies)


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 simulator test images at 96x64 with toys and animals (seed 2: 3 of each alone, 2 with both)."""
    pytest.importorskip("pybullet")
    from dicnet_ros.data.sim.generator import generate_split

    root = tmp_path_factory.mktemp("sim")
    generate_split(root, "test", 8, seed=2, size=(W, H), anomaly_set="toys,animals", workers=1, progress=False)
    return root


def _finite(results: dict) -> bool:
    return all(results[proto][k] is not None and np.isfinite(results[proto][k])
               for proto in ("per_image", "pooled") for k in PROTOCOL_KEYS)


def test_make_bag_records_frame_families_from_the_manifest(sim_dataset: Path, tmp_path: Path) -> None:
    from dicnet_ros.data.sim.manifest import visible_families

    result = bagmod.make_bag(sim_dataset, tmp_path / "drive", rate=RATE, start_ns=T0, progress=False)
    manifest = json.loads((sim_dataset / "sim_manifest_test.json").read_text())
    expected = {_stamp(i): visible_families(entry) for i, entry in enumerate(manifest["images"])}
    assert result.frame_families == expected
    info = bagmod.bag_dataset_info(result.path)
    assert info[bagmod.FRAME_FAMILIES_KEY] == {str(k): list(v) for k, v in expected.items()}
    groups = bagmod.frame_groups(info)
    assert {g: list(groups.values()).count(g) for g in set(groups.values())} == SIM_FAMILIES
    limited = bagmod.make_bag(sim_dataset, tmp_path / "two", rate=RATE, start_ns=T0, limit=2, progress=False)
    assert list(limited.frame_families) == [_stamp(0), _stamp(1)]


def test_bag_eval_reports_per_family(sim_dataset: Path, tmp_path: Path, tiny_onnx: Path, model) -> None:
    """by_family: every family and mixed, finite numbers for DiCNet, MSP and MaxLogit, frame counts adding up to
    the total, each group's numbers those of direct evaluation of its frames; the output bag carries the
    families on, and --families-from lends them to a recording without them."""
    bag = _make(sim_dataset, tmp_path / "drive", "--storage", "mcap")
    assert _eval(bag, tmp_path / "eval", tiny_onnx) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    by_family = report["metrics"]["by_family"]
    assert list(by_family) == ["animals", "toys", "mixed"]
    assert {g: r["num_frames"] for g, r in by_family.items()} == SIM_FAMILIES
    assert sum(r["num_frames"] for r in by_family.values()) == report["num_frames"] == 8
    for results in by_family.values():
        assert all(_finite(results[method]) for method in ("dicnet", "msp", "maxlogit"))
    groups = bagmod.frame_groups(bagmod.bag_dataset_info(bag))
    animals = [i for i in range(8) if groups[_stamp(i)] == "animals"]
    for method in ("dicnet", "maxlogit"):
        _same_numbers(by_family["animals"][method], _direct(sim_dataset, model, method, animals))
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "## Per anomaly family" in text
    for group, count in SIM_FAMILIES.items():
        for label in ("DiCNet", "MSP", "MaxLogit"):
            assert f"| {group} | {count} | {label} | per-image |" in text
    # --score-topic on the output bag: the families travelled with it
    out_bag = tmp_path / "eval" / "drive_dicnet"
    assert dicnet(["bag-eval", "--bag", str(out_bag), "--score-topic", "/dicnet/anomaly_score", "--gt-topic",
                   "/camera/anomaly_gt", "--out", str(tmp_path / "scores"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "scores" / "metrics.json").read_text())["metrics"]["by_family"]
    assert {g: r["dicnet"]["pooled"]["aupr"] for g, r in again.items()} == {
        g: r["dicnet"]["pooled"]["aupr"] for g, r in by_family.items()}
    # a recording without metadata (as `ros2 bag record` writes) gets the families of the drive it replayed
    recorded_from = {"/anomaly_node/anomaly_score": "/dicnet/anomaly_score", "/camera/anomaly_gt": "/camera/anomaly_gt"}
    recording = _write_bag(tmp_path / "node_out", [(topic, bagmod.IMAGE_TYPE, msg)
                                                   for topic, source in recorded_from.items()
                                                   for _, msg in _read_topic(out_bag, source)])
    plain = bagmod.evaluate_bag(recording, tmp_path / "plain", score_topic="/anomaly_node/anomaly_score",
                                gt_topic="/camera/anomaly_gt", progress=False)
    assert plain.metrics["by_family"] == {}
    lent = bagmod.evaluate_bag(recording, tmp_path / "lent", score_topic="/anomaly_node/anomaly_score",
                               gt_topic="/camera/anomaly_gt", progress=False, families_from=bag)
    assert {g: r["num_frames"] for g, r in lent.metrics["by_family"].items()} == SIM_FAMILIES


def test_frames_without_families_count_only_overall() -> None:
    gt = np.zeros((4, 6), np.uint8)
    gt[1:3, 2:4] = 1  # the evaluation label: 1 anomaly
    score = np.where(gt == 1, 0.9, 0.1).astype(np.float32)
    acc = bagmod.MetricsAccumulator((0.0, 1.0), {1: "toys", 2: "toys", 3: bagmod.MIXED})
    for stamp in (1, 2, 3, 4, 5):  # 4 and 5: no family information
        acc.update({"dicnet": score, "maxlogit": -score}, gt, stamp=stamp)
    metrics = acc.compute()
    assert metrics["dicnet"]["num_images"] == 5 and metrics["msp"] is None
    assert {g: r["num_frames"] for g, r in metrics["by_family"].items()} == {"toys": 2, "mixed": 1}
    assert metrics["by_family"]["toys"]["msp"] is None and metrics["by_family"]["toys"]["maxlogit"]["num_images"] == 2


@pytest.mark.parametrize("value", ['["toys"]', '{"12": "toys"}', '{"twelve": ["toys"]}', '{"12": [""]}'])
def test_malformed_frame_families_are_one_clear_error(value: str) -> None:
    info = {bagmod.FRAME_FAMILIES_KEY: json.loads(value)}
    with pytest.raises(bagmod.BagError, match=r"dicnet\.frame_families"):
        bagmod.frame_groups(info)

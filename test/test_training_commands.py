"""What a training command does with a user's mistake: config keys checked against the schema."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from dicnet_training.config import ConfigError, check_keys, load_config, valid_keys

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- config keys
@pytest.mark.parametrize(("override", "close"), [
    ("teacher.epoch=1", "teacher.epochs"), ("tacher.epochs=1", "teacher.epochs"),
    ("model.feature_channel=8", "model.feature_channels"),
    ("student.outlier_exposure.wieght=2", "student.outlier_exposure.weight")])
def test_a_misspelled_override_names_the_close_valid_keys(override: str, close: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as error:
        load_config("ci", [override])
    message = str(error.value)
    assert message.startswith(f"unknown config key '{key}' (--override {override}); close valid keys: ")
    assert close in message.split("close valid keys: ")[1].split(", ")


def test_config_keys_come_from_the_schema() -> None:
    """Keys of the typed sections are the fields of the classes that read them (a new field needs no second list);
    the others are DEFAULTS; every packaged config and the config stored in the shipped model pass the check."""
    from dicnet_training.losses import OutlierExposure, OutlierHeadConfig

    from dicnet_ros.model.checkpoint import load_checkpoint
    from dicnet_ros.model.dicnet import ModelConfig

    keys = set(valid_keys())
    assert {f"model.{f.name}" for f in fields(ModelConfig)} - keys == {"model.num_classes"}  # from the dataset
    assert {f"outlier_head.{f.name}" for f in fields(OutlierHeadConfig)} <= keys
    assert {f"student.outlier_exposure.{f.name}" for f in fields(OutlierExposure)} <= keys
    assert {"teacher.epochs", "student.schedule", "calibration.mu_max_images", "eval.curve_pixels"} <= keys
    for name in ("ci", "sim", "streethazards", "bdd_anomaly"):
        load_config(name)
    stored = load_checkpoint(REPO / "models/dicnet_sim_default.pt")["metadata"]["training"]["config"]
    check_keys({k: v for k, v in stored.items() if k != "config_path"}, "the shipped model's training config")
    # open sections take the user's own keys: dataset options, per-split limits
    cfg = load_config("ci", ["data.options.config=other.yaml", "data.max_images.train=3", "student.augment.hflip=no"])
    assert cfg["data"]["options"] == {"config": "other.yaml"} and cfg["data"]["max_images"] == {"train": 3}
    assert cfg["student"]["augment"] == {"hflip": False}  # a null section becomes a mapping
    with pytest.raises(ConfigError, match=r"'teacher\.epochs' is a setting, not a section"):
        load_config("ci", ["teacher.epochs.max=3"])
    with pytest.raises(ConfigError, match=r"'teacher' .* is a section"):
        load_config("ci", ["teacher=3"])


def test_an_unknown_key_in_a_config_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x"}, "teacher": {"epoch": 3}}))
    with pytest.raises(ConfigError, match=rf"'teacher.epoch' \(in {path}\); close valid keys: teacher.epochs"):
        load_config(path)
    path.write_text(yaml.safe_dump({"modle": {"feature_channels": 8}}))
    with pytest.raises(ConfigError, match=r"'modle'.*close valid keys: model"):
        load_config(path)

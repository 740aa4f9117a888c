"""What a training command does with a user's mistake: config keys checked against the schema, one-line errors,
no empty outputs, install advice that fits the installation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

import yaml
from dicnet_training.command import Outputs, run_command
from dicnet_training.config import ConfigError, check_keys, load_config, valid_keys

from dicnet_ros.cli import main as dicnet
from dicnet_ros.installation import installation

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
    assert {"teacher.epochs", "student.schedule", "calibration.mu_max_images", "eval.curve_pixels",
            "calibration.domain_threshold", "calibration.domain_rank", "data.outlier_objects.root"} <= keys
    for name in ("ci", "sim", "streethazards", "bdd_anomaly", "cityscapes"):
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


# ----------------------------------------------------------------------------------------------- one-line errors
def _own_folder(root: Path, with_splits: bool = True, label: np.ndarray | None = None) -> Path:
    """A folder data set of 2 tiny images per split (README layout), labels all ``road`` unless given."""
    description = {"name": "mine", "classes": ["road", "car"], "anomaly_ids": [2], "label_offset": 1}
    if with_splits:
        description["splits"] = {s: {"images": f"images/{s}", "labels": f"labels/{s}"} for s in ("train", "val")}
    root.mkdir(parents=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(description))
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / split / f"{name}.png"), np.zeros((16, 24, 3), np.uint8))
            cv2.imwrite(str(root / "labels" / split / f"{name}.png"),
                        np.ones((16, 24), np.uint8) if label is None else label)
    return root


def _cases(tmp_path: Path, tiny_checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (command line with OUT for the output, text the error line must hold)."""
    own = _own_folder(tmp_path / "own")
    no_splits = _own_folder(tmp_path / "no_splits", with_splits=False)
    missing = str(tmp_path / "missing")
    teacher_only = tmp_path / "teacher_only.pt"
    from dicnet_ros.model.checkpoint import load_checkpoint, save_checkpoint

    data = {k: v for k, v in load_checkpoint(tiny_checkpoint).items() if k != "format"}
    save_checkpoint(teacher_only, {**data, "stage": "teacher", "student": None})
    ci = ["--config", "ci", "--no-progress", "--device", "cpu"]
    return {
        "no data": (["train-teacher", *ci, "--override", f"data.root={missing}", "--out", "OUT"],
                    f"dataset root not found: {missing}"),
        "misspelled key": (["train-teacher", *ci, "--override", "teacher.epoch=1", "--out", "OUT"],
                           "close valid keys: teacher.epochs"),
        "kind of another layout": (["train-teacher", "--config", "streethazards", "--override", f"data.root={own}",
                                    "--out", "OUT"], "is a folder dataset, not streethazards: --override "
                                                     "data.kind=folder"),
        "folder without splits": (["train-teacher", *ci, "--override", f"data.root={no_splits}",
                                   "data.kind=folder", "--out", "OUT"],
                                  "needs a 'splits' mapping, e.g. splits: {train: {images: DIR, labels: DIR}}"),
        "too few images": (["train-teacher", *ci, "--override", f"data.root={own}", "teacher.batch_size=4",
                            "--out", "OUT"], "training split has 2 images: fewer than one batch of 4"),
        "no teacher": (["distill", *ci, "--override", f"data.root={own}", "--teacher", missing, "--out", "OUT"],
                       f"{missing}: checkpoint not found"),
        "outlier head of a teacher": (["fit-outlier-head", "--checkpoint", str(teacher_only), "--out", "OUT"],
                                      "holds only a teacher"),
        "calibrate a teacher": (["calibrate", "--checkpoint", str(teacher_only), "--out", "OUT"],
                                "holds only a teacher; run `dicnet distill` first"),
        "evaluate without data": (["evaluate", "--checkpoint", str(tiny_checkpoint), "--override",
                                   f"data.root={missing}", "--out", "OUT"], f"dataset root not found: {missing}"),
        "export a teacher": (["export", "--checkpoint", str(teacher_only), "--out", "OUT"], "holds only a teacher"),
    }


def test_every_training_command_reports_a_mistake_in_one_line_and_leaves_no_output(
        tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    for name, (argv, expected) in _cases(tmp_path, tiny_checkpoint).items():
        out = tmp_path / "runs" / name.replace(" ", "_") / ("model.pt" if argv[0] in (
            "fit-outlier-head", "calibrate") else "model.onnx" if argv[0] == "export" else "run")
        capsys.readouterr()
        assert dicnet([str(out) if a == "OUT" else a for a in argv]) == 2, name
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith(f"dicnet {argv[0]}: ")]
        assert len(lines) == 1 and lines[0].startswith(f"dicnet {argv[0]}: error: "), (name, err)
        assert expected in lines[0], (name, lines[0])
        assert "Traceback" not in err and "}}" not in lines[0].replace("}}", "}", 1), (name, err)
        assert not (tmp_path / "runs").exists(), (name, sorted((tmp_path / "runs").rglob("*")))


def test_labelled_anomalies_in_the_training_split_are_left_out(tmp_path: Path) -> None:
    """The README's label table: anomaly pixels in train / val take no part in training (they crashed the
    teacher's cross-entropy as a class id beyond its classes)."""
    label = np.ones((16, 24), np.uint8)  # road
    label[4:10, 6:14] = 3  # anomaly id 2 + label_offset 1
    own = _own_folder(tmp_path / "own", label=label)
    assert dicnet(["train-teacher", "--config", "ci", "--no-progress", "--device", "cpu", "--override",
                   f"data.root={own}", "teacher.epochs=1", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run/best.pt").is_file()


def test_a_run_folder_that_can_be_resumed_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """After a failure the outputs this command created go, folders it made on the way too; one holding last.pt
    stays (--resume), and what was there before stays whatever happens."""
    before = tmp_path / "before"
    before.mkdir()

    def fails_after_a_checkpoint(outputs: Outputs) -> int:
        run = outputs.watch(tmp_path / "runs/a/teacher")
        outputs.watch(before)
        run.mkdir(parents=True)
        (run / "last.pt").write_bytes(b"state")
        (tmp_path / "runs/a/other.txt").write_text("made by this command too")
        raise ValueError("image 7 cannot be read\n(second line)")

    assert run_command("train-teacher", fails_after_a_checkpoint) == 2
    assert capsys.readouterr().err == (f"dicnet train-teacher: error: image 7 cannot be read (second line); "
                                       f"{tmp_path / 'runs/a/teacher/last.pt'} kept (--resume continues from it)\n")
    assert (tmp_path / "runs/a/teacher/last.pt").is_file() and before.is_dir()

    def interrupted(outputs: Outputs) -> int:
        (outputs.watch(tmp_path / "runs2/teacher")).mkdir(parents=True)
        raise KeyboardInterrupt

    assert run_command("distill", interrupted) == 130
    assert capsys.readouterr().err == "dicnet distill: interrupted; nothing was kept\n"
    assert not (tmp_path / "runs2").exists()

    def bug(outputs: Outputs) -> int:
        (outputs.watch(tmp_path / "runs3")).mkdir()
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_command("calibrate", bug)
    assert not (tmp_path / "runs3").exists()


# ----------------------------------------------------------------------------------------------- install advice
def test_install_advice_fits_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = installation()
    assert here.kind == "checkout" and here.root == REPO  # the tests run from the source tree
    monkeypatch.chdir(REPO)
    assert here.install_hint("train") == "pip install -e '.[train]'"
    monkeypatch.chdir(tmp_path)
    assert here.install_hint("train") == f"pip install -e '{REPO}[train]'"


@pytest.mark.slow
def test_install_advice_fits_a_colcon_and_a_pip_install(tmp_path: Path) -> None:
    """A real `colcon build` of the package: inside it, a missing PyTorch is advised with the packages of the
    train extra for the Python that runs ROS (no `pip install -e`, which cannot add an extra to a colcon install);
    the same package folder in a plain site-packages (a pip install) gets `pip install` of the same packages."""
    pytest.importorskip("colcon_core", reason="colcon comes with the dev extra: pip install -e '.[dev]'")
    workspace = tmp_path / "ws"
    (workspace / "src").mkdir(parents=True)
    (workspace / "src" / "dicnet_ros").symlink_to(REPO, target_is_directory=True)
    env = {**os.environ, "COLCON_HOME": str(workspace / "colcon_home")}
    build = subprocess.run([sys.executable, "-m", "colcon", "--log-base", str(workspace / "log"), "build",
                            "--base-paths", str(workspace / "src"), "--build-base", str(workspace / "build"),
                            "--install-base", str(workspace / "install"), "--event-handlers", "console_direct+",
                            "desktop_notification-", "status-"], cwd=workspace, env=env, capture_output=True,
                           text=True, timeout=600, check=False)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    site = next((workspace / "install/dicnet_ros/lib").glob("python3*/site-packages"))
    colcon = installation(site / "dicnet_ros")
    assert colcon.kind == "colcon"
    missing_torch = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None\n"
         "from dicnet_ros.cli import main; main(['train-teacher', '--config', 'ci'])"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=120)
    assert missing_torch.returncode == 1
    assert missing_torch.stderr.strip() == (
        "dicnet train-teacher: missing dependency 'torch' (the 'train' extra). Install it with: python3 -m pip "
        "install 'torch==2.14.1' 'torchvision==0.29.1' 'tqdm>=4.60' 'tensorboard>=2.14' 'onnx>=1.16' "
        "'onnxscript>=0.2' 'matplotlib>=3.7' (a colcon install: into the Python that runs ROS 2)")

    plain = tmp_path / "site-packages"  # what `pip install` leaves: the packages and their metadata, no ament prefix
    shutil.copytree(site, plain, symlinks=True)
    pip = installation(plain / "dicnet_ros")
    assert pip.kind == "pip" and pip.install_hint("sim") == "pip install 'pybullet>=3.2'"
    assert pip.install_hint("train").startswith("pip install 'torch==2.14.1' 'torchvision==0.29.1'")

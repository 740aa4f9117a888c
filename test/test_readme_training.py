"""The README's training recipes run as written: the commands are read from README.md, so they cannot drift.

Both recipes of "Training your own model" (the simulator recipe and "Your own data set") run in a temporary
working directory at the ci sizes: the `dicnet sim` image counts and size made tiny, and the ci config's network
and epoch settings appended as ``--override`` to the commands that take ``--config``. Every other word is the
README's, including the relative paths that connect one command to the next and the dataset.yaml of the own
data set, from which the test draws its images and labels.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

import yaml
from dicnet_training.config import load_config

from dicnet_ros.cli import main as dicnet
from dicnet_ros.inference import load_model
from dicnet_ros.model.checkpoint import checkpoint_metadata, load_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "test/test_readme_training.py"  # the HTML comment in front of each block this test runs
#: what makes the ci config small (training/configs/ci.yaml), laid over the README's --config
CI_SIZE_KEYS = ("model.teacher_widths", "model.student_widths", "model.feature_channels",
                "model.teacher_ppm_channels", "model.student_ppm_channels", "input.height", "input.width",
                "teacher.batch_size", "teacher.val_batch_size", "teacher.workers",
                "student.batch_size", "student.val_batch_size", "student.workers")
EPOCHS = ("teacher.epochs=1", "student.epochs=1", "outlier_head.epochs=2")  # the chain, not the learning, is tested
SIM_SIZES = {"--counts": "8,4", "--count": "4", "--size": "128x72"}  # values of `dicnet sim` options
OWN_COUNTS = {"train": 8, "val": 4, "test": 4}
OWN_SIZE = (72, 128)  # height, width of the drawn images


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block right after a comment naming this test, in README order."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.startswith("<!--") and MARKER in line:
            assert lines[i + 1].startswith("```"), f"README line {i + 2}: a code block must follow the marker"
            end = lines.index("```", i + 2)
            blocks.append((lines[i + 1][3:].strip(), "\n".join(lines[i + 2:end])))
    return blocks


def recipe_blocks() -> dict[str, str]:
    """The simulator recipe, the own data set's dataset.yaml and its recipe."""
    blocks = readme_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "yaml", "bash"], blocks
    return {"sim": blocks[0][1], "dataset_yaml": blocks[1][1], "own": blocks[2][1]}


def commands(block: str) -> list[list[str]]:
    """The `dicnet` command lines of a bash block as argument lists (comments dropped)."""
    out = [shlex.split(line, comments=True) for line in block.splitlines()]
    out = [argv for argv in out if argv]
    assert out and all(argv[0] == "dicnet" for argv in out), out
    return [argv[1:] for argv in out]


def ci_overrides() -> list[str]:
    ci = load_config("ci")
    values = []
    for key in CI_SIZE_KEYS:
        node = ci
        for part in key.split("."):
            node = node[part]
        values.append(f"{key}={json.dumps(node)}")
    return [*values, *EPOCHS]


def ci_sized(argv: list[str]) -> list[str]:
    """A README command at the ci sizes: tiny `dicnet sim` output, the ci network and epochs on top of --config."""
    argv = list(argv)
    if argv[0] == "sim":
        assert "--size" in argv, argv
        for option, value in SIM_SIZES.items():
            if option in argv:
                argv[argv.index(option) + 1] = value
        return [*argv, "--workers", "1", "--no-progress"]
    if "--config" in argv:
        argv += ["--override", *ci_overrides()]
    return argv


def run_readme_commands(block: str) -> None:
    for argv in commands(block):
        assert dicnet(ci_sized(argv)) == 0, f"dicnet {shlex.join(argv)}"


def draw_own_data(root: Path, description: dict) -> None:
    """Images and labels for the README's dataset.yaml: bands and boxes of its classes in class colours with
    noise, anomalies (boxes of a colour no class has) in the test split only; labels as the README's table says
    (PNG value = label id + label_offset)."""
    rng = np.random.default_rng(0)
    classes, anomaly = description["classes"], description["anomaly_ids"][0]
    offset = int(description.get("label_offset", 1))
    colours = rng.integers(0, 256, (anomaly + 1, 3))
    height, width = OWN_SIZE
    for split, count in OWN_COUNTS.items():
        folders = description["splits"][split]
        for index in range(count):
            label = np.zeros((height, width), np.uint8)
            rows = np.sort(rng.choice(np.arange(8, height - 8), len(classes) - 1, replace=False))
            for class_id, (top, bottom) in enumerate(zip([0, *rows], [*rows, height], strict=True)):
                label[top:bottom] = class_id
            for class_id in rng.choice(len(classes), 3, replace=False):
                y, x = rng.integers(0, height - 16), rng.integers(0, width - 16)
                label[y:y + 14, x:x + 14] = class_id
            if split == "test":
                y, x = rng.integers(20, height - 24), rng.integers(0, width - 24)
                label[y:y + 20, x:x + 20] = anomaly
            image = np.clip(colours[label] + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
            name = f"{index + 1:04d}"
            (root / folders["images"]).mkdir(parents=True, exist_ok=True)
            (root / folders["labels"]).mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / folders["images"] / f"{name}.jpg"), image[..., ::-1])
            assert cv2.imwrite(str(root / folders["labels"] / f"{name}.png"), (label + offset).astype(np.uint8))


def check_report(path: Path, images: int) -> dict:
    report = json.loads(path.read_text())
    assert report["info"]["num_images"] == images
    for protocol in ("per_image", "pooled"):
        for metric in ("auroc", "aupr", "fpr95"):
            assert math.isfinite(report["methods"]["dicnet_paper"][protocol][metric]), (protocol, metric)
    # the speed of a split of one batch (the warm-up batch) is measured too, not nan
    assert math.isfinite(report["speed"]["images_per_second"]) and report["speed"]["images_per_second"] > 0
    return report


def check_onnx(path: Path, image: np.ndarray, class_names: list[str]) -> None:
    model = load_model(path, "onnxruntime", "cpu")
    assert list(model.metadata.class_names) == class_names
    result = model.infer(image)
    assert result.anomaly_score.shape == image.shape[:2] and np.isfinite(result.anomaly_score).all()


@pytest.mark.slow
def test_readme_simulator_recipe_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_readme_commands(recipe_blocks()["sim"])
    report = check_report(tmp_path / "runs/sim/eval/report.json", int(SIM_SIZES["--count"]))
    assert report["info"]["score_fusion"] == "outlier_maxlogit"  # fit-outlier-head's fusion, calibrated
    model_meta = checkpoint_metadata(load_checkpoint(tmp_path / "runs/sim/model.pt"), "model.pt")
    assert model_meta.threshold is not None and math.isfinite(model_meta.threshold)
    image = cv2.imread(str(next((tmp_path / "data/sim_test").rglob("*.png"))))[..., ::-1].copy()
    check_onnx(tmp_path / "runs/sim/model.onnx", image, list(model_meta.class_names))


@pytest.mark.slow
def test_readme_own_data_set_recipe_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = recipe_blocks()
    description = yaml.safe_load(blocks["dataset_yaml"])
    roots = {arg.split("=", 1)[1] for argv in commands(blocks["own"]) for arg in argv if arg.startswith("data.root=")}
    assert len(roots) == 1, roots  # every command of the recipe reads the one folder the layout describes
    root = tmp_path / roots.pop()
    root.mkdir()
    (root / "dataset.yaml").write_text(blocks["dataset_yaml"] + "\n")
    draw_own_data(root, description)
    run_readme_commands(blocks["own"])
    check_report(tmp_path / "runs/my_data/eval/report.json", OWN_COUNTS["test"])
    model_meta = checkpoint_metadata(load_checkpoint(tmp_path / "runs/my_data/model.pt"), "model.pt")
    assert list(model_meta.class_names) == description["classes"]
    assert list(model_meta.anomaly_ids) == description["anomaly_ids"]
    image = cv2.imread(str(next((root / description["splits"]["test"]["images"]).iterdir())))[..., ::-1].copy()
    check_onnx(tmp_path / "runs/my_data/model.onnx", image, description["classes"])

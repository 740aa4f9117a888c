"""Shared fixtures: a tiny random-weight DiCNet checkpoint and its fused ONNX export (built once per session), and
the check that a MaxLogit map is the teacher's -max logit.

Also the guard that keeps CI complete: tests that need an optional extra (torch, scikit-learn, rosbags, Pillow,
PyBullet, ...) skip with the missing module's name where it is not installed (``colcon test`` on a ROS machine
after rosdep), but with ``DICNET_REQUIRE_ALL_TESTS=1`` (``make test``, i.e. CI, which installs every extra) any
such skip fails the run, so CI always runs the whole suite.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

#: A skip for a module that is not installed: pytest.importorskip's message, or a reason saying so.
MISSING_MODULE = re.compile(r"could not import '|No module named|missing module")
REQUIRE_ALL = "DICNET_REQUIRE_ALL_TESTS"


def _missing_module_skips(config: pytest.Config) -> list[str]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reports = reporter.stats.get("skipped", []) if reporter is not None else []
    found = []
    for report in reports:
        text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if MISSING_MODULE.search(text):
            found.append(f"{report.nodeid or report.fspath}: {text}")
    return found


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if os.environ.get(REQUIRE_ALL) == "1":
        for line in _missing_module_skips(config):
            terminalreporter.write_line(f"{REQUIRE_ALL}: skipped for a missing module: {line}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when ``DICNET_REQUIRE_ALL_TESTS=1`` and anything skipped for a missing module."""
    if os.environ.get(REQUIRE_ALL) == "1" and _missing_module_skips(session.config) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def write_calibration_folder(folder: Path, count: int = 10) -> Path:
    """Smooth random 'scenes' (blurred noise, 96x64 PNG): in-distribution enough for a random-weight model's INT8
    calibration."""
    import cv2

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = cv2.GaussianBlur(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), (0, 0), 2.0)
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return folder


@pytest.fixture
def calibration_folder() -> Callable[..., Path]:
    """``calibration_folder(folder, count=10)``: writes ``write_calibration_folder`` there."""
    return write_calibration_folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Student-stage checkpoint: lite teacher/student (widths 8-24, 32 ch), 5 classes, network 96x64,
    non-trivial BN statistics and mu_c, threshold = median score of a random image."""
    pytest.importorskip("torch")  # train extra
    from dicnet_ros.inference.random_models import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("tiny_model") / "tiny.pt", "tiny", (96, 64), num_classes=5)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    """The fused ONNX of ``tiny_checkpoint`` with dynamic batch and input size (any image size works)."""
    pytest.importorskip("onnx")  # train extra
    from dicnet_training.export import ExportOptions, export_onnx

    out = tiny_checkpoint.parent / "tiny.onnx"
    return export_onnx(tiny_checkpoint, out, ExportOptions(dynamic=True)).onnx_path


def maxlogit_reference(checkpoint: Path, image: np.ndarray, labels: str = "network") -> np.ndarray:
    """-max logit of the teacher, computed here from its logits and taken where ``labels`` says (DiCNet.outputs)."""
    import torch
    import torch.nn.functional as F

    from dicnet_ros.model.checkpoint import model_from_checkpoint
    from dicnet_ros.preprocessing import restore_size

    model, _, _ = model_from_checkpoint(checkpoint)
    pre, size = model.preprocess_config, tuple(image.shape[:2])
    with torch.no_grad():
        logits = model.features(torch.from_numpy(image)[None])[0].logits.float()
        if labels == "bilinear":
            return -restore_size(logits, pre, size).amax(dim=1)[0].numpy()
        if labels == "nearest":
            return -restore_size(logits.amax(dim=1, keepdim=True), pre, size, mode="bilinear")[0, 0].numpy()
        neg_max = -restore_size(logits, pre, None).amax(dim=1, keepdim=True)
        if tuple(neg_max.shape[-2:]) != size:
            neg_max = F.interpolate(neg_max, size=size, mode="bilinear", align_corners=False)
        return neg_max[0, 0].numpy()


@pytest.fixture(scope="session")
def check_maxlogit() -> Callable[..., None]:
    """``check(got, checkpoint, image, labels="network")``: ``got`` is the teacher's -max logit, within the MSP
    checks' tolerance relative to the logits' magnitude (they are not bounded like MSP)."""

    def check(got: np.ndarray, checkpoint: Path, image: np.ndarray, labels: str = "network") -> None:
        reference = maxlogit_reference(checkpoint, image, labels)
        assert got.shape == reference.shape and got.dtype == np.float32
        assert np.abs(got - reference).max() < 1e-4 * max(1.0, float(np.abs(reference).max()))

    return check

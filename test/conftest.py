"""Shared fixtures: a tiny random-weight DiCNet checkpoint and its fused ONNX export (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Student-stage checkpoint: lite teacher/student (widths 8-24, 32 ch), 5 classes, network 96x64,
    non-trivial BN statistics and mu_c, threshold = median score of a random image."""
    from dicnet_ros.inference.random_models import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("tiny_model") / "tiny.pt", "tiny", (96, 64), num_classes=5)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    """The fused ONNX of ``tiny_checkpoint`` with dynamic batch and input size (any image size works)."""
    from dicnet_training.export import ExportOptions, export_onnx

    out = tiny_checkpoint.parent / "tiny.onnx"
    return export_onnx(tiny_checkpoint, out, ExportOptions(dynamic=True)).onnx_path

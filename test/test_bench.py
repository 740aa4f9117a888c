"""`dicnet bench` and `dicnet infer` run end to end on the tiny model (no timing assertions)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")


def test_bench_writes_json(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dicnet_ros.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(tiny_checkpoint), "--resolutions", "96x64,120x80", "--warmup", "1",
                 "--iterations", "2", "--threads", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"hardware", "versions", "settings", "model", "results", "skipped"} <= set(report)
    assert report["hardware"]["cpu_cores"] >= 1 and "cpu" in report["hardware"]
    assert report["versions"]["torch"] and report["versions"]["onnxruntime"]
    assert report["settings"]["threads"] == 1
    rows = {(r["backend"], r["resolution"]): r for r in report["results"]}
    for res in ("96x64", "120x80"):
        for backend in ("reference", "torch", "onnxruntime"):
            row = rows[(backend, res)]
            assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"] and row["fps"] > 0
            assert row["speedup_vs_reference"] > 0
    if "tensorrt" not in {r["backend"] for r in report["results"]}:
        assert "tensorrt" in report["skipped"]
    assert ("onnxruntime-fp16", "96x64") in rows  # FP16 is measured next to the reference in the same run
    assert "--calibration-data" in report["skipped"]["onnxruntime-int8"]
    assert "reference" in capsys.readouterr().out


def test_bench_int8_row(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                        calibration_folder: Callable[..., Path]) -> None:
    """The INT8 row, the CPU's INT8 path in the report, and the warning for a model whose export measured no parity
    (this one had no labelled data); `dicnet infer` names the path and warns the same way."""
    from dicnet_ros.cli import main
    from dicnet_ros.inference.cpu_features import detect_int8_path

    calib = calibration_folder(tmp_path / "calib", count=6)
    out = tmp_path / "bench.json"
    assert main(["bench", "--checkpoint", str(tiny_checkpoint), "--resolutions", "96x64", "--dynamic",
                 "--backends", "reference,onnxruntime-nearest,onnxruntime-int8", "--calibration-data", str(calib),
                 "--calibration-images", "6", "--warmup", "1", "--iterations", "2", "--threads", "1",
                 "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert set(rows) == {"reference", "onnxruntime-nearest", "onnxruntime-int8"}
    assert "int8" in rows["onnxruntime-int8"]["label"] and rows["onnxruntime-int8"]["speedup_vs_reference"] > 0
    here = detect_int8_path()
    assert report["hardware"]["int8_path"] == here.kind
    assert [w.split(":")[0] for w in report["warnings"]] == ["onnxruntime-int8"]
    assert "records no parity measurement" in report["warnings"][0]
    printed = capsys.readouterr().out
    assert f"CPU INT8 path: {here.describe()}" in printed and "WARNING onnxruntime-int8: this INT8 model" in printed
    # an INT8 model that already exists (what make bench does with the shipped one): no calibration data needed
    int8_model = next((tmp_path / "work").glob("*int8*.onnx"))
    assert main(["bench", "--checkpoint", str(tiny_checkpoint), "--resolutions", "96x64", "--dynamic",
                 "--backends", "reference,onnxruntime-int8", "--int8-model", str(int8_model), "--warmup", "1",
                 "--iterations", "2", "--threads", "1", "--json", str(out)]) == 0
    rows = {r["backend"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"reference", "onnxruntime-int8"} and "int8" in rows["onnxruntime-int8"]["label"]
    capsys.readouterr()
    assert main(["infer", "--model", str(int8_model), "--images", str(calib / "000.png"), "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert f"INT8 on {here.cpu}: {here.describe()}" in printed.out
    assert printed.err.startswith("dicnet infer: warning: this INT8 model records no parity measurement")


def test_infer_cli(tiny_onnx: Path, tmp_path: Path) -> None:
    import cv2

    from dicnet_ros.cli import main

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    assert main(["infer", "--model", str(tiny_onnx), "--images", str(images), "--out", str(tmp_path / "o"),
                 "--backend", "onnxruntime", "--device", "cpu"]) == 0
    score = np.load(tmp_path / "o" / "a_score.npy")
    assert score.shape == (40, 60) and score.dtype == np.float32
    mask = cv2.imread(str(tmp_path / "o" / "a_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(mask)) <= {0, 255}

"""`dicnet bench` and `dicnet infer` run end to end on the tiny model (no timing assertions)."""

from __future__ import annotations

import json
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
    assert "reference" in capsys.readouterr().out


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

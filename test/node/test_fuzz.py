"""The outside fuzz client (benchmarks/fuzz_node.py) against the node in its own process, the loader and the bag tools.

The full run (`python benchmarks/fuzz_node.py --seconds 120`) is documented in the README; the suite runs a short
stream with every attack kind: 0 crashes, 0 hangs over 2 s, 0 wrong-sized or mis-stamped outputs, bounded memory,
one line for every bad start and bad bag.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("rosbags")

FUZZ = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_node.py"


@pytest.mark.slow
def test_fuzz_client_finds_nothing(tiny_onnx: Path, tmp_path: Path) -> None:
    report = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(FUZZ), "--seconds", "10", "--model", str(tiny_onnx), "--json",
                           str(report)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(report.read_text())
    assert result["ok"] and result["good_frames"] > 50 and result["hostile_frames"] > 500
    assert result["good_answered"] == result["good_frames"]
    assert result["start_failures_checked"] >= 15 and result["bad_bags_checked"] >= 5

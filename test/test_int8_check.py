"""INT8 checks: the static 16-bit saturation check, the parity bar, the export that measures its parity (and refuses
without losing the existing model), and the emulated child process that must run on the CPU it was asked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")
pytest.importorskip("pybullet")

from dicnet_training.export import ExportError, ExportOptions, export_onnx  # noqa: E402
from dicnet_training.int8_check import (  # noqa: E402
    Int8CheckError,
    ParityBar,
    emulated_scores,
    judge,
    load_parity_data,
    saturation_check,
    score_maps,
)
from dicnet_training.quantize import Int8Options  # noqa: E402

from dicnet_ros.data.sim.generator import generate_split  # noqa: E402
from dicnet_ros.inference import load_model  # noqa: E402
from dicnet_ros.inference.cpu_features import INT8_PATHS, detect_int8_path, int8_notice  # noqa: E402

LOOSE = ParityBar(score_error_points=100.0, auroc_points=100.0, ap_relative=100.0, fpr95_points=100.0)


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train images (calibration) and 3 labelled test images with anomalies at 128x72, rendered once."""
    root = tmp_path_factory.mktemp("int8_sim")
    generate_split(root, "train", 4, seed=5, size=(128, 72), workers=1, progress=False)
    generate_split(root, "test", 3, seed=5, size=(128, 72), anomaly_set="toys", workers=1, progress=False)
    return root


def _int8(sim_data: Path, **options) -> Int8Options:
    """A quick INT8 export of the tiny model (no per-layer sensitivity scan)."""
    return Int8Options(sim_data, calibration_images=4, sensitivity_images=0, **options)


@pytest.fixture(scope="module")
def checked_int8(tiny_checkpoint: Path, sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8_checked") / "tiny_int8.onnx"
    export_onnx(tiny_checkpoint, out, ExportOptions(dynamic=True, int8=_int8(
        sim_data, parity_data=sim_data, parity_images=3, parity_bar=LOOSE)))
    return out


def test_the_export_measures_its_parity_on_this_cpu_and_records_it(checked_int8: Path) -> None:
    model = load_model(checked_int8, "onnxruntime", "cpu")
    q = model.metadata.export["quantization"]
    here = detect_int8_path()
    measured = q["parity"]["paths"][here.kind]
    assert measured["images"] == 3 and measured["how"] == f"native on {here.cpu}" and not measured["failures"]
    assert set(measured["metrics"]) == {"int8", "float_qdq", "fp32"}
    assert 0 < measured["metrics"]["int8"]["auroc"] <= 100 and measured["score_error_points"]["float_qdq"] >= 0
    assert q["parity"]["bar"]["fpr95_points"] == 100.0
    # 7-bit weights by default: no pair sum can saturate, and the checker agrees with the recorded result
    assert q["weight_bits"] == 7 and q["saturation"]["can_saturate"] == 0
    assert saturation_check(checked_int8).can_saturate == []
    assert int8_notice(model, here)[1] is None  # measured here: no warning
    report = checked_int8.with_name("tiny_int8.int8_report.md").read_text()
    assert "| CPU path |" in report and here.kind in report


def test_eight_bit_weights_can_saturate_and_are_recorded_so(tiny_checkpoint: Path, sim_data: Path,
                                                            tmp_path: Path) -> None:
    """The 8-bit export is written (it is exact on VNNI / ARM CPUs) with a warning, and says so in its metadata, so a
    model loaded on an AVX2 CPU warns."""
    out = tmp_path / "eight.onnx"
    export_onnx(tiny_checkpoint, out, ExportOptions(dynamic=True, int8=_int8(sim_data, weight_bits=8)))
    report = saturation_check(out)
    assert report.can_saturate and report.largest_pair_sum > 128 and "QLinearConv" in report.metadata()["by_op"]
    q = load_model(out, "onnxruntime", "cpu").metadata.export["quantization"]
    assert q["weight_bits"] == 8 and q["saturation"]["can_saturate"] == len(report.can_saturate)
    assert "7-bit" not in q["weights"] and q["parity"] == {}


def test_a_refused_export_leaves_the_existing_model(tiny_checkpoint: Path, sim_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model_int8.onnx"
    out.write_bytes(b"the model that was there")
    strict = ParityBar(score_error_points=0.0, auroc_points=0.0, ap_relative=0.0, fpr95_points=0.0)
    with pytest.raises(ExportError, match="INT8 export refused, parity outside the bar") as caught:
        export_onnx(tiny_checkpoint, out, ExportOptions(dynamic=True, int8=_int8(
            sim_data, parity_data=sim_data, parity_images=3, parity_bar=strict)))
    assert "\n" not in str(caught.value) and "score error" in str(caught.value)
    assert out.read_bytes() == b"the model that was there"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.onnx"]  # no temporary file, no report


def test_the_bar_judges_each_metric(sim_data: Path) -> None:
    """Real pooled metrics of made-up score maps: a constant shift moves no metric but the score error; noise on the
    anomaly pixels moves AUROC / AP / FPR95."""
    _, labels, spec = load_parity_data(sim_data, 3)
    anomalous = [np.isin(label, spec.anomaly_ids) for label in labels]
    rng = np.random.default_rng(0)
    truth = np.stack([a * 4.0 + rng.normal(0, 1, a.shape) for a in anomalous]).astype(np.float32)
    same = judge("x86-avx2", "test", "sim", truth, truth, truth, labels, spec, (0.0, 10.0))
    assert same.passed and same.score_error_points == {"float_qdq": 0.0, "fp32": 0.0}
    shifted = judge("x86-avx2", "test", "sim", truth + 0.2, truth, truth, labels, spec, (0.0, 10.0))
    assert shifted.failures == ["score error 2.00 points vs float QDQ > 1"]
    worse = truth - np.stack(anomalous) * 3.0
    broken = judge("x86-avx2", "test", "sim", worse, truth, truth, labels, spec, (0.0, 10.0))
    assert any(f.startswith("AUROC") for f in broken.failures) and any(f.startswith("FPR95") for f in
                                                                        broken.failures)
    assert "FAILED" in broken.summary() and json.dumps(broken.metadata())


def test_the_emulated_child_runs_only_on_the_cpu_asked_for(checked_int8: Path, sim_data: Path) -> None:
    """The child checks what CPUID says before scoring: `env` (no emulator) passes for this CPU's own path and gives
    the in-process scores, and is refused for any other path (an emulator that did not emulate)."""
    images = load_parity_data(sim_data, 2)[0]
    here = detect_int8_path(use_cpuid=True).kind
    scores = emulated_scores(checked_int8, images, here, threads=1, emulator=("env",))
    np.testing.assert_array_equal(scores, score_maps(checked_int8, images, threads=1))
    other = next(kind for kind in INT8_PATHS if kind not in (here, "unknown"))
    with pytest.raises(Int8CheckError, match="not emulated"):
        emulated_scores(checked_int8, images, other, threads=1, emulator=("env",))
    with pytest.raises(Int8CheckError, match="not found: install it"):
        emulated_scores(checked_int8, images, "x86-avx2", emulator=("no-such-emulator-here",))


def test_a_layer_kept_in_float_runs_in_float(tiny_onnx: Path, sim_data: Path, tmp_path: Path) -> None:
    """ONNX Runtime quantizes, at load time, the weights of a float convolution whose input is dequantized (8 bits,
    per tensor: it can saturate on AVX2). The student's first convolution shares its input with the teacher's; kept
    in float, it must read the float tensor, so the graph ONNX Runtime runs has it in float."""
    from dicnet_training.int8_check import optimized_graph
    from dicnet_training.quantize import _ImageFeed, _quantize, calibration_files, quantizable_nodes, read_rgb

    layers, others = quantizable_nodes(tiny_onnx)
    student_first = next(node for node, layer in layers.items() if layer.startswith("student."))
    feed = _ImageFeed([read_rgb(f) for f in calibration_files(sim_data, 4)[0]])
    nodes = [n for n in [*layers, *others] if n != student_first]
    out = _quantize(tiny_onnx, tmp_path / "q.onnx", feed, "minmax", tmp_path / "ranges.json", nodes, 99.999, "cpu", 7)
    ops = [node.op_type for node in optimized_graph(out).node]
    assert ops.count("QLinearConv") == len(layers) - 1
    assert any(op.endswith("Conv") and not op.startswith("QLinear") for op in ops)  # Conv / FusedConv in float
    assert saturation_check(out).can_saturate == []

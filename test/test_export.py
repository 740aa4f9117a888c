"""Export: one fused graph (uint8 in, score + ids out), separate graphs, metadata, parity with PyTorch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from dicnet_training.export import ExportOptions, check_parity, export_onnx, random_images  # noqa: E402

from dicnet_ros.inference.ort_backend import OrtModel  # noqa: E402
from dicnet_ros.metadata import METADATA_KEY, ModelMetadata  # noqa: E402
from dicnet_ros.model.checkpoint import model_from_checkpoint  # noqa: E402


def _metadata(path: Path) -> ModelMetadata:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    return ModelMetadata.from_json(props[METADATA_KEY])


def _torch_out(checkpoint: Path, image: np.ndarray, network_resolution: bool = False, labels: str = "network"):
    model, _, _ = model_from_checkpoint(checkpoint)
    with torch.no_grad():
        out = model(torch.from_numpy(image)[None], network_resolution=network_resolution, labels=labels)
    return out.anomaly_score[0].numpy(), out.semantic_labels[0].numpy(), out.msp_score[0].numpy()


def test_fused_graph_io_checker_and_metadata(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outs == {"anomaly_score": onnx.TensorProto.FLOAT, "semantic_labels": onnx.TensorProto.UINT8,
                    "msp_score": onnx.TensorProto.FLOAT, "maxlogit_score": onnx.TensorProto.FLOAT,
                    "domain_score": onnx.TensorProto.FLOAT}
    assert [o.name for o in model.graph.output] == ["anomaly_score", "semantic_labels", "msp_score", "maxlogit_score",
                                                    "domain_score"]
    meta = _metadata(tiny_onnx)
    _, ckpt_meta, raw = model_from_checkpoint(tiny_checkpoint)
    assert meta.class_names == ckpt_meta.class_names
    assert meta.threshold == pytest.approx(ckpt_meta.threshold) and meta.domain_threshold == ckpt_meta.domain_threshold
    assert meta.calibration["mu_c"] == pytest.approx(raw["mu_c"])
    assert meta.preprocess == ckpt_meta.preprocess and meta.model_config == ckpt_meta.model_config
    assert meta.export["form"] == "fused" and meta.export["dynamic"] is True
    assert meta.export["dtype"] == "float32" and meta.export["output_resolution"] == "input"
    assert set(meta.export["outputs"]) == set(outs)
    assert meta.export["opset"] >= 17 and len(meta.export["checkpoint_sha256"]) == 64
    assert Path(meta.source_checkpoint) == tiny_checkpoint.resolve()


@pytest.mark.parametrize("size", [(96, 64), (200, 120), (57, 64)])
def test_parity_fp32_at_several_input_sizes(tiny_onnx: Path, tiny_checkpoint: Path, size: tuple[int, int],
                                            check_maxlogit) -> None:
    image = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    ref_score, ref_labels, ref_msp = _torch_out(tiny_checkpoint, image)
    score, labels, extras = OrtModel(tiny_onnx, device="cpu")._run(image)
    assert score.shape == (size[1], size[0]) and score.dtype == np.float32
    assert labels.dtype == np.uint8
    assert np.abs(score - ref_score).max() <= 1e-4 * np.abs(ref_score).max()
    assert (labels == ref_labels).mean() > 0.999
    assert extras["msp"].shape == score.shape and np.abs(extras["msp"] - ref_msp).max() < 1e-4
    check_maxlogit(extras["maxlogit"], tiny_checkpoint, image)


def test_fixed_size_network_resolution_export(tiny_checkpoint: Path, tmp_path: Path) -> None:
    opts = ExportOptions(network_resolution=True, input_size=(160, 90), check_parity=2)
    result = export_onnx(tiny_checkpoint, tmp_path / "net.onnx", opts)
    assert result.parity["max_rel_error"] <= 1e-4
    meta = _metadata(result.onnx_path)
    assert meta.export["input_size"] == [160, 90] and meta.export["output_resolution"] == "network"
    model = OrtModel(result.onnx_path, device="cpu")
    score, labels, _ = model._run(np.zeros((90, 160, 3), np.uint8))
    assert score.shape == labels.shape == (64, 96)
    with pytest.raises(ValueError, match="160x90"):
        model._run(np.zeros((64, 96, 3), np.uint8))


def test_separate_graphs_match_fused(tiny_checkpoint: Path, tmp_path: Path, check_maxlogit) -> None:
    result = export_onnx(tiny_checkpoint, tmp_path / "m.onnx", ExportOptions(dynamic=True, separate=True))
    manifest = result.separate_manifest
    assert manifest is not None and manifest.name.endswith(".separate.json")
    data = json.loads(manifest.read_text())
    assert set(data["graphs"]) == {"teacher", "student", "score"}
    for name in data["graphs"].values():
        onnx.checker.check_model(str(manifest.parent / name), full_check=True)
    images = random_images(2, model_from_checkpoint(tiny_checkpoint)[0], ExportOptions(dynamic=True))
    fused, separate = OrtModel(result.onnx_path, "cpu"), OrtModel(manifest.parent, "cpu")
    assert separate.form == "separate" and separate.metadata.threshold == fused.metadata.threshold
    for image in images:
        (a, la, ea), (b, lb, eb) = fused._run(image), separate._run(image)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ea["domain"], eb["domain"], rtol=1e-5, atol=1e-5)  # the out-of-domain score
        np.testing.assert_allclose(ea["msp"], eb["msp"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ea["maxlogit"], eb["maxlogit"], rtol=1e-5, atol=1e-5)
        check_maxlogit(eb["maxlogit"], tiny_checkpoint, image)
        assert (la == lb).all()


def test_fp16_variant_runs_and_is_close(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = export_onnx(tiny_checkpoint, tmp_path / "h.onnx", ExportOptions(fp16=True))
    model = onnx.load(str(result.onnx_path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.type.tensor_type.elem_type for o in model.graph.output if o.name == "anomaly_score"} == {
        onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert _metadata(result.onnx_path).export["dtype"] == "float16"
    torch_model = model_from_checkpoint(tiny_checkpoint)[0]
    images = random_images(2, torch_model, ExportOptions(fp16=True))
    report = check_parity(torch_model, result.onnx_path, images, ExportOptions(fp16=True))
    assert report["max_rel_error"] < 5e-2


def test_cli_export_with_parity(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dicnet_ros.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--check-parity", "1",
                 "--opset", "18"]) == 0
    assert out.is_file() and "parity" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--opset", "13"]) == 2
    assert capsys.readouterr().err == "dicnet export: error: opset 13 is too old; use 17 or newer\n"
    assert out.is_file()  # the model that was there before a failed export stays


@pytest.mark.parametrize("labels", ["nearest", "bilinear"])
def test_label_modes_export_matches_torch_backend(tiny_checkpoint: Path, tmp_path: Path, labels: str,
                                                  check_maxlogit) -> None:
    from dicnet_ros.inference import load_model

    result = export_onnx(tiny_checkpoint, tmp_path / "n.onnx", ExportOptions(labels=labels, input_size=(150, 100),
                                                                            check_parity=1))
    assert _metadata(result.onnx_path).export["labels"] == labels and result.parity["min_label_agreement"] == 1.0
    image = np.random.default_rng(5).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    a = load_model(result.onnx_path, "onnxruntime", "cpu").infer(image)
    b = load_model(result.onnx_path, "torch", "cpu").infer(image)  # mimics the export's label mode
    assert (a.semantic_labels == b.semantic_labels).all()
    assert np.abs(a.anomaly_score - b.anomaly_score).max() <= 1e-4 * np.abs(b.anomaly_score).max()
    for result in (a, b):
        check_maxlogit(result.extras["maxlogit"], tiny_checkpoint, image, labels)


def test_score_smoothing_exports_with_parity(tmp_path: Path) -> None:
    from dicnet_ros.inference.random_models import preset_config, random_checkpoint

    ckpt = random_checkpoint(tmp_path / "s.pt", {**preset_config("tiny", 5), "score_smoothing": 3}, (96, 64))
    result = export_onnx(ckpt, tmp_path / "s.onnx", ExportOptions(dynamic=True, check_parity=3))
    assert result.parity["max_rel_error"] <= 1e-4
    assert _metadata(result.onnx_path).model_config["score_smoothing"] == 3


def test_score_class_window_and_fusion_weights_export_with_parity(tmp_path: Path) -> None:
    from dicnet_ros.inference.random_models import preset_config, random_checkpoint

    settings = {"score_class_window": 5, "score_class_weight": 0.3, "score_fusion": "maxlogit",
                "score_fusion_weight": 2.0}
    ckpt = random_checkpoint(tmp_path / "c.pt", {**preset_config("tiny", 5), **settings}, (96, 64))
    result = export_onnx(ckpt, tmp_path / "c.onnx", ExportOptions(dynamic=True, check_parity=3))
    assert result.parity["max_rel_error"] <= 1e-4
    stored = _metadata(result.onnx_path).model_config
    assert {k: stored[k] for k in settings} == settings


def test_int8_export_is_a_qdq_graph_with_its_calibration_in_the_metadata(
        tiny_checkpoint: Path, tmp_path: Path, calibration_folder: Callable[..., Path]) -> None:
    from dicnet_training.quantize import Int8Options

    calib = calibration_folder(tmp_path / "calib")
    out = tmp_path / "tiny_int8.onnx"
    result = export_onnx(tiny_checkpoint, out, ExportOptions(dynamic=True, check_parity=2, int8=Int8Options(
        calib, calibration_images=10, sensitivity_images=3, max_score_error=1e-6, max_float_layers=2)))
    graph = onnx.load(str(out)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.name: o.type.tensor_type.elem_type for o in graph.output}["anomaly_score"] == onnx.TensorProto.FLOAT
    meta = _metadata(out)
    q = meta.export["quantization"]
    assert meta.export["dtype"] == "int8" and q["format"] == "QDQ" and q["method"] == "minmax"
    assert q["target"] == "cpu" and q["activations"] == "uint8 asymmetric"
    assert q["calibration_images"] + q["sensitivity_images"] == 10 and len(q["dataset_sha256"]) == 64
    # the error budget is unreachable here, so the two most sensitive layers were kept in float, by measurement
    assert len(q["float_layers"]) == 2 and q["score_error"] <= q["score_error_all_int8"]
    report = json.loads(out.with_name("tiny_int8.int8_report.json").read_text())
    errors = [row["score_error"] for row in report["layers"]]
    assert len(errors) == q["quantized_layers"] + 2 and errors == sorted(errors, reverse=True)
    assert [r["layer"] for r in report["layers"] if r["kept_float"]] == q["float_layers"]
    assert out.with_name("tiny_int8.int8_report.md").is_file()
    model = OrtModel(out, device="cpu")
    assert model.describe()["precision"] == "int8"
    image = random_images(1, model_from_checkpoint(tiny_checkpoint)[0], ExportOptions())[0]
    fp32 = _torch_out(tiny_checkpoint, image)[0]
    assert np.corrcoef(model.infer(image).anomaly_score.ravel(), fp32.ravel())[0, 1] > 0.9
    assert result.parity["max_rel_error"] <= result.parity["rtol"]


def test_int8_calibration_never_uses_test_images(tmp_path: Path) -> None:
    from dicnet_training.quantize import QuantizationError, calibration_files

    with pytest.raises(QuantizationError, match="never on the test split"):
        calibration_files(tmp_path, 4, split="test")
    with pytest.raises(QuantizationError, match="no images"):
        calibration_files(tmp_path, 4)


def test_int8_cli_needs_calibration_data(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from dicnet_ros.cli import main as dicnet

    assert dicnet(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--int8"]) == 2
    assert "--calibration-data" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_int8_export_of_a_fixed_input_size(tiny_checkpoint: Path, tmp_path: Path,
                                           calibration_folder: Callable[..., Path]) -> None:
    """Calibration images of another size are resized to the size the graph was exported for."""
    from dicnet_training.quantize import Int8Options

    calib = calibration_folder(tmp_path / "calib", count=4)  # 96x64 images
    out = tmp_path / "fixed_int8.onnx"
    export_onnx(tiny_checkpoint, out, ExportOptions(input_size=(160, 90), int8=Int8Options(
        calib, calibration_images=4, sensitivity_images=1)))
    score = OrtModel(out, device="cpu").infer(np.zeros((90, 160, 3), np.uint8)).anomaly_score
    assert score.shape == (90, 160) and np.isfinite(score).all()

"""`dicnet evaluate --data` on benchmark fixture trees: the exported model through load_model (--model) and the
PyTorch pair (--checkpoint), checked against an independent computation (scikit-learn on the pooled ROI pixels of
maps computed here, the component metrics of each frame computed directly), and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torch")

from real_fixtures import make_anomaly_folder, make_lost_and_found, make_road_anomaly, make_smiyc
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from dicnet_ros.cli import main as dicnet
from dicnet_ros.data import open_dataset
from dicnet_ros.inference import load_model
from dicnet_ros.metrics import TRACK_RULES, ComponentCounts, frame_components


def independent_metrics(onnx: Path, dataset) -> dict[str, dict[str, float]]:
    """Per method: sklearn AUROC / AP over every non-void pixel of the set, FPR at the first 95 % TPR and the best
    F1 threshold from scikit-learn's curves, and the component metrics there: nothing from the evaluation code
    path but the per-frame component function (checked on its own in test_components)."""
    model = load_model(onnx, backend="onnxruntime")
    maps: dict[str, list[np.ndarray]] = {}
    labels = []
    for i in range(len(dataset)):
        sample = dataset[i]
        res = model.infer(sample.image)
        for name, score in {"dicnet": res.anomaly_score, **res.extras}.items():
            maps.setdefault(name, []).append(np.asarray(score, np.float32))
        labels.append(sample.label)
    out = {}
    for name, scores in maps.items():
        roi = np.concatenate([(lab != 255).ravel() for lab in labels])
        y = np.concatenate([(lab == 1).ravel() for lab in labels])[roi]
        s = np.concatenate([m.ravel() for m in scores])[roi]
        precision, recall, pr_thresholds = precision_recall_curve(y, s)  # thresholds ascending, score >= t
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
        best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equal F1s
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # thresholds descending
        counts = ComponentCounts()
        for score, lab in zip(scores, labels, strict=True):
            counts.add(frame_components(score, lab, float(pr_thresholds[best]), TRACK_RULES[dataset.track]))
        out[name] = {"auroc": roc_auc_score(y, s), "aupr": average_precision_score(y, s),
                     "fpr95": fpr[int(np.argmax(tpr >= 0.95))], "best_f1": f1[best],
                     "best_f1_threshold": float(pr_thresholds[best]), "mean_f1": counts.compute()["mean_f1"]}
    return out


def test_evaluate_exported_model_on_smiyc(tiny_onnx: Path, tmp_path: Path) -> None:
    make_smiyc(tmp_path / "data", "anomaly", frames=("validation0000", "validation0001", "validation0002"),
               size=(96, 128))
    out = tmp_path / "eval"
    assert dicnet(["evaluate", "--model", str(tiny_onnx), "--data", str(tmp_path / "data"), "--out", str(out),
                   "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["info"]["kind"] == "smiyc" and report["info"]["track"] == "anomaly"
    assert report["info"]["num_images"] == 3 and "smiyc-anomaly" in report["info"]["ground_truth"]["encoding"]
    expected = independent_metrics(tiny_onnx, open_dataset(tmp_path / "data", "test"))
    assert set(report["benchmark"]) == {"dicnet", "msp", "maxlogit"}
    for name, want in expected.items():
        px = report["benchmark"][name]["pixel"]
        for key in ("auroc", "aupr", "fpr95", "best_f1", "best_f1_threshold"):
            assert px[key] == pytest.approx(want[key], abs=1e-9), (name, key)
        assert report["benchmark"][name]["components"]["mean_f1"] == want["mean_f1"]
    assert "| DiCNet (published score) |" in (out / "report.md").read_text()


def test_evaluate_checkpoint_on_lost_and_found_matches_its_export(tiny_checkpoint: Path, tiny_onnx: Path,
                                                                 tmp_path: Path) -> None:
    """The PyTorch pair and its ONNX export give the same benchmark numbers on the same frames (obstacle track)."""
    make_lost_and_found(tmp_path / "laf", size=(64, 128), real_size_frame=False)
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    assert dicnet(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "laf"),
                   "--out", str(torch_out), "--no-progress", "--device", "cpu"]) == 0
    assert dicnet(["evaluate", "--model", str(tiny_onnx), "--data", str(tmp_path / "laf"), "--out", str(onnx_out),
                   "--no-progress"]) == 0
    torch_report = json.loads((torch_out / "report.json").read_text())
    onnx_report = json.loads((onnx_out / "report.json").read_text())
    assert torch_report["info"]["track"] == "obstacle" and torch_report["segmentation"] is None
    assert set(torch_report["benchmark"]) == {"dicnet_paper", "msp", "maxlogit"}
    for torch_name, onnx_name in (("dicnet_paper", "dicnet"), ("msp", "msp"), ("maxlogit", "maxlogit")):
        a, b = torch_report["benchmark"][torch_name]["pixel"], onnx_report["benchmark"][onnx_name]["pixel"]
        for key in ("auroc", "aupr", "fpr95"):
            assert a[key] == pytest.approx(b[key], abs=1e-3), (torch_name, key)
    md = (torch_out / "report.md").read_text()
    assert "## Benchmark protocol (lost_and_found, component track obstacle" in md and "Not measured" in md
    # the out-of-domain alarm: the same frames counted by both, whichever file is evaluated
    torch_domain, onnx_domain = torch_report["domain"], onnx_report["domain"]
    assert onnx_domain["available"] and onnx_domain["frames"] == torch_domain["frames"] == len(open_dataset(
        tmp_path / "laf", "test"))
    assert onnx_domain["out_of_domain"] == torch_domain["out_of_domain"]
    assert "Out-of-domain alarm:" in (onnx_out / "report.md").read_text()


def test_evaluate_folder_with_user_values(tiny_onnx: Path, tmp_path: Path) -> None:
    make_anomaly_folder(tmp_path / "mine", anomaly_value=2, void_value=255)
    make_road_anomaly(tmp_path / "ra")
    for data, extra in ((tmp_path / "mine", ["--anomaly-values", "2", "--void-values", "255", "--track", "obstacle"]),
                        (tmp_path / "ra", [])):
        out = tmp_path / f"eval_{data.name}"
        assert dicnet(["evaluate", "--model", str(tiny_onnx), "--data", str(data), "--out", str(out),
                       "--no-progress", *extra]) == 0
        report = json.loads((out / "report.json").read_text())
        assert report["benchmark"]["dicnet"]["pixel"]["num_positive"] > 0
    assert report["info"]["ground_truth"]["encoding"].startswith("road-anomaly: anomaly 2-255")


def test_evaluate_errors_are_one_line(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    make_smiyc(tmp_path / "data", "anomaly")
    data = str(tmp_path / "data")
    cases = [
        (["--model", str(tiny_onnx), "--checkpoint", str(tiny_checkpoint), "--data", data], "exactly one of"),
        (["--data", data], "exactly one of"),
        (["--checkpoint", str(tiny_checkpoint)], "data.root is not set"),
        (["--model", str(tiny_onnx)], "--model needs --data"),
        (["--model", str(tiny_onnx), "--data", str(tmp_path / "nowhere")], "dataset root not found"),
        (["--model", str(tiny_onnx), "--data", str(tmp_path / "data"), "--split", "train"], "evaluation benchmark"),
        (["--model", str(tmp_path / "missing.onnx"), "--data", str(tmp_path / "data")], "missing.onnx"),
        (["--model", str(tiny_onnx), "--data", str(tmp_path / "data"), "--void-values", "255"],
         "needs --anomaly-values"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert dicnet(["evaluate", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error:" in line]  # INFO log lines may precede it
        assert "Traceback" not in err and len(lines) == 1, err
        assert lines[0].startswith("dicnet evaluate: error:") and message in lines[0], lines
    assert not (tmp_path / "out").exists()

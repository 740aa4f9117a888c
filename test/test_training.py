"""The training chain on CPU with the ci config: teacher -> distill -> calibrate -> evaluate, resume, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # train extra

import torch
from dicnet_training.config import ConfigError, load_config

from dicnet_ros.cli import main as dicnet
from dicnet_ros.model.checkpoint import load_checkpoint, model_from_checkpoint


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A handful of simulated 128x72 images (train/val without anomalies, test with)."""
    root = tmp_path_factory.mktemp("ci_sim")
    assert dicnet(["sim", "--out", str(root), "--splits", "train,val,test", "--counts", "8,4,4", "--size", "128x72",
                   "--seed", "3", "--workers", "1", "--outlier-proxies", "0.5", "--no-progress"]) == 0
    return root


def _ci(root: Path, *extra: str) -> list[str]:
    return ["--config", "ci", "--no-progress", "--device", "cpu", "--override", f"data.root={root}", *extra]


def test_config_overrides_parse_yaml_values() -> None:
    cfg = load_config("ci", ["teacher.epochs=3", "model.feature_channels=64", "augment.scale_range=[1, 2]",
                             "calibration.mu_max_images=null"])
    assert cfg["teacher"]["epochs"] == 3 and cfg["model"]["feature_channels"] == 64
    assert cfg["augment"]["scale_range"] == [1, 2] and cfg["calibration"]["mu_max_images"] is None
    assert cfg["student"]["lr"] == pytest.approx(1e-3)  # from the file, defaults below it
    with pytest.raises(ConfigError):
        load_config("ci", ["no_equals_sign"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("does-not-exist")


def test_full_chain(sim_root: Path, tmp_path: Path) -> None:
    teacher_dir, student_dir, report_dir = tmp_path / "teacher", tmp_path / "student", tmp_path / "report"
    assert dicnet(["train-teacher", *_ci(sim_root), "--out", str(teacher_dir)]) == 0
    teacher = load_checkpoint(teacher_dir / "best.pt")
    assert teacher["stage"] == "teacher" and teacher["student"] is None
    meta = teacher["metadata"]
    assert meta["class_names"][:2] == ["sky", "road"] and meta["training"]["dataset"]["anomaly_ids"] == [12]
    assert meta["training"]["config"]["teacher"]["epochs"] == 2
    assert (teacher_dir / "last.pt").is_file() and list((teacher_dir / "tensorboard").iterdir())

    assert dicnet(["distill", *_ci(sim_root), "--teacher", str(teacher_dir / "best.pt"),
                   "--out", str(student_dir)]) == 0
    pair = load_checkpoint(student_dir / "best.pt")
    assert pair["stage"] == "student" and pair["student"] is not None
    # the frozen teacher is carried over bit for bit
    for key, value in teacher["teacher"].items():
        assert torch.equal(value, pair["teacher"][key]), key

    calibrated = tmp_path / "calibrated.pt"
    assert dicnet(["calibrate", "--checkpoint", str(student_dir / "best.pt"), "--out", str(calibrated),
                   "--target-fpr", "0.05", "--domain-threshold", "4.5", "--no-progress", "--device", "cpu"]) == 0
    model, cal_meta, data = model_from_checkpoint(calibrated)
    # the out-of-domain head: fitted on the mu_c images, standardised on the validation images, threshold written
    domain = cal_meta.calibration["domain"]
    assert cal_meta.domain_threshold == 4.5 and model.domain_head is not None and "domain_head" in data
    assert (domain["fit_split"], domain["fit_images"], domain["scale_split"], domain["scale_images"]) == (
        "train", 8, "val", 4)
    assert domain["rank"] == 6 and domain["score_on_calibration"]["max"] < 4.5  # rank capped by the 8 images
    with torch.no_grad():
        x = model.network_input(torch.zeros(2, 72, 128, 3, dtype=torch.uint8))
        assert (model.domain_head(model.domain_statistics(x, model.teacher(x))) > 4.5).all()  # black frames
    stats = cal_meta.calibration["score_stats"]
    assert cal_meta.threshold is not None and math.isfinite(cal_meta.threshold)
    assert stats["p50"] <= stats["p90"] <= cal_meta.threshold <= stats["p99"] <= stats["max"]
    assert cal_meta.calibration["target_fpr"] == 0.05 and len(data["mu_c"]) == model.config.feature_channels
    assert torch.allclose(model.mu_c, torch.tensor(data["mu_c"]))

    assert dicnet(["evaluate", "--checkpoint", str(calibrated), "--out", str(report_dir), "--minmax",
                   "--no-progress", "--device", "cpu", "--override", f"data.root={sim_root}"]) == 0
    for name in ("report.md", "report.json", "roc.png", "pr.png", "qualitative.png"):
        assert (report_dir / name).is_file(), name
    report = json.loads((report_dir / "report.json").read_text())
    methods = report["methods"]
    assert set(methods) >= {"dicnet_paper", "dicnet_code", "msp", "maxlogit", "entropy", "dicnet_code_minmax"}
    for name, res in methods.items():
        for protocol in ("per_image", "pooled"):
            for metric in ("auroc", "aupr", "fpr95"):
                assert math.isfinite(res[protocol][metric]), (name, protocol, metric)
    # per-image min-max is monotone per image: per-image metrics unchanged
    assert methods["dicnet_code_minmax"]["per_image"]["auroc"] == pytest.approx(
        methods["dicnet_code"]["per_image"]["auroc"])
    assert math.isfinite(report["segmentation"]["miou"]) and report["speed"]["images_per_second"] > 0
    assert report["domain"]["available"] and report["domain"]["frames"] == 4 and report["domain"]["threshold"] == 4.5
    assert set(report["methods_in_domain"]) == set(methods)  # every method, over the in-domain frames only
    assert "Out-of-domain alarm" in (report_dir / "report.md").read_text()
    assert "per-image" in (report_dir / "report.md").read_text()
    _check_maxlogit_fusion(student_dir / "best.pt", tmp_path)
    _check_outlier_head(sim_root, student_dir / "best.pt", tmp_path)


def _check_maxlogit_fusion(pair: Path, tmp_path: Path) -> None:
    """--score-fusion maxlogit (weighted, then class-guided): norms from in-distribution pixels, the published score
    is the standardised weighted sum, class-averaged, everywhere (torch forward, ONNX), and the threshold is
    calibrated on that score."""
    from dicnet_training.export import ExportOptions, export_onnx

    from dicnet_ros.inference.ort_backend import OrtModel
    from dicnet_ros.model.scoring import baseline_score, class_guided_average

    fused = tmp_path / "fused.pt"
    assert dicnet(["calibrate", "--checkpoint", str(pair), "--out", str(fused), "--score-fusion", "maxlogit",
                   "--score-fusion-weight", "2", "--score-class-window", "3", "--score-class-weight", "0.25",
                   "--no-progress", "--device", "cpu"]) == 0
    model, meta, _ = model_from_checkpoint(fused)
    m_d, s_d, m_l, s_l = meta.calibration["fusion_norm"]
    assert model.config.score_fusion == "maxlogit" and s_d > 0 and s_l > 0
    assert (model.config.score_fusion_weight, model.config.score_class_window, model.config.score_class_weight) == (
        2.0, 3, 0.25)
    assert torch.allclose(model.fusion_norm, torch.tensor([m_d, s_d, m_l, s_l]))
    image = torch.randint(0, 256, (1, 72, 128, 3), dtype=torch.uint8)
    with torch.no_grad():
        t, s = model.features(image)
        raw = model.score_features(t.feature, s, fusion="none")
        expected = class_guided_average(
            (raw - m_d) / s_d + 2.0 * (baseline_score(t.logits, "maxlogit") - m_l) / s_l, t.logits, 3, 0.25)
        assert torch.allclose(model.score_features(t.feature, s, logits=t.logits), expected, atol=1e-5)
        published = model(image, network_resolution=True).anomaly_score
    onnx_path = export_onnx(fused, tmp_path / "fused.onnx", ExportOptions(network_resolution=True)).onnx_path
    ort_score = OrtModel(onnx_path, device="cpu").infer(image[0].numpy()).anomaly_score
    assert np.allclose(ort_score, published[0].numpy(), atol=1e-4)
    stats = meta.calibration["score_stats"]  # of the fused score: standardised, so it is centred near 0
    assert stats["p50"] <= meta.threshold <= stats["max"] and abs(stats["mean"]) < 0.5


def _check_outlier_head(root: Path, pair: Path, tmp_path: Path) -> None:
    """fit-outlier-head -> calibrate: the fusion uses the refitted head's MaxLogit (torch and ONNX alike), the
    teacher, its class ids and its MSP / MaxLogit baselines stay as they were, and a checkpoint that names the
    fusion without a head is refused."""
    from dicnet_training.export import ExportOptions, export_onnx

    from dicnet_ros.inference.ort_backend import OrtModel
    from dicnet_ros.model.checkpoint import CheckpointError, save_checkpoint
    from dicnet_ros.model.scoring import baseline_score

    headed, calibrated = tmp_path / "headed.pt", tmp_path / "headed_cal.pt"
    assert dicnet(["fit-outlier-head", "--checkpoint", str(pair), "--out", str(headed),
                   *_ci(root, "outlier_head.epochs=4")]) == 0
    data = load_checkpoint(headed)
    fit = data["metadata"]["training"]["outlier_head"]
    assert data["model_config"]["score_fusion"] == "outlier_maxlogit" and data["metadata"]["threshold"] is None
    assert fit["cells"]["outlier"] > 0 and fit["history"][-1]["loss"] < fit["history"][0]["loss"]
    assert not torch.equal(data["outlier_head"]["weight"], data["teacher"]["head.2.weight"])
    assert dicnet(["calibrate", "--checkpoint", str(headed), "--out", str(calibrated), "--no-progress",
                   "--device", "cpu"]) == 0
    model, meta, _ = model_from_checkpoint(calibrated)
    plain, _, _ = model_from_checkpoint(pair)
    m_d, s_d, m_l, s_l = meta.calibration["fusion_norm"]
    image = torch.randint(0, 256, (1, 72, 128, 3), dtype=torch.uint8)
    with torch.no_grad():
        t, s = model.features(image)
        head_maxlogit = baseline_score(model.outlier_head(torch.relu(t.feature)), "maxlogit")
        expected = (model.score_features(t.feature, s, fusion="none") - m_d) / s_d + (head_maxlogit - m_l) / s_l
        assert torch.allclose(model.score_features(t.feature, s, logits=t.logits, fusion="outlier_maxlogit"),
                              expected, atol=1e-5)
        out, before = model(image), plain(image)
    assert torch.equal(out.semantic_labels, before.semantic_labels)
    assert torch.allclose(out.maxlogit_score, before.maxlogit_score) and torch.allclose(out.msp_score, before.msp_score)
    onnx_path = export_onnx(calibrated, tmp_path / "headed.onnx", ExportOptions()).onnx_path
    assert np.allclose(OrtModel(onnx_path, device="cpu").infer(image[0].numpy()).anomaly_score,
                       out.anomaly_score[0].numpy(), atol=1e-4)
    broken = {k: v for k, v in load_checkpoint(calibrated).items() if k not in ("format", "outlier_head")}
    save_checkpoint(tmp_path / "no_head.pt", broken)
    with pytest.raises(CheckpointError, match="fit-outlier-head"):
        model_from_checkpoint(tmp_path / "no_head.pt")


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_resume_is_bit_exact(sim_root: Path, tmp_path: Path, stage: str) -> None:
    """2 epochs straight == 1 epoch, interruption, --resume, 1 more epoch (weights and optimizer)."""
    extra: list[str] = []
    if stage == "student":
        teacher = tmp_path / "t"
        assert dicnet(["train-teacher", *_ci(sim_root, "teacher.epochs=1"), "--out", str(teacher)]) == 0
        extra = ["--teacher", str(teacher / "best.pt")]
    command = "train-teacher" if stage == "teacher" else "distill"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert dicnet([command, *_ci(sim_root), *extra, "--out", str(straight)]) == 0
    assert dicnet([command, *_ci(sim_root), *extra, "--out", str(resumed), "--stop-after-epochs", "1"]) == 0
    assert load_checkpoint(resumed / "last.pt")["train_state"]["epoch"] == 1
    assert dicnet([command, *_ci(sim_root), *extra, "--out", str(resumed), "--resume"]) == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert b["train_state"]["epoch"] == 2 and a["train_state"]["step"] == b["train_state"]["step"]
    for key, value in a[stage].items():
        assert torch.equal(value, b[stage][key]), key
    for sa, sb in zip(a["train_state"]["optimizer"]["state"].values(), b["train_state"]["optimizer"]["state"].values(),
                      strict=True):
        for k, v in sa.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[k])), k
    assert a["train_state"]["history"][-1]["val_" + ("miou" if stage == "teacher" else "loss")] == b["train_state"][
        "history"][-1]["val_" + ("miou" if stage == "teacher" else "loss")]


def test_ddp_two_ranks_gloo(sim_root: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU ranks (gloo): DistributedSampler, DDP, reduced metrics, rank-0-only checkpoints."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "dicnet_ros.cli", "train-teacher", *_ci(sim_root, "teacher.epochs=1", "distributed.sync_bn=true"),
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the workers leave with os._exit after the last barrier: rank 0's result line was still flushed, once
    assert proc.stdout.splitlines().count(str(out / "best.pt")) == 1, proc.stdout
    data = load_checkpoint(out / "last.pt")
    state = data["train_state"]
    # 8 images, batch 2 per rank, 2 ranks -> 2 optimizer steps per epoch
    assert state["epoch"] == 1 and state["step"] == 2
    assert math.isfinite(state["history"][0]["val_miou"])
    assert not any(k.startswith("module.") for k in data["teacher"])
    log = (out / "train.log").read_text()
    assert "rank 0/2" in log and "rank 1/2" not in log  # only rank 0 writes the log


def test_init_from_starts_from_another_checkpoint(sim_root: Path, tmp_path: Path) -> None:
    """--init-from loads the weights (fine-tuning): with lr 0 the student's parameters stay those of the source;
    a checkpoint without the part, or of another architecture, is a clear error."""
    from dicnet_training.engine import load_init_weights

    from dicnet_ros.model.checkpoint import CheckpointError
    from dicnet_ros.model.dicnet import build_dicnet

    teacher, source, tuned = tmp_path / "t", tmp_path / "s", tmp_path / "tuned"
    assert dicnet(["train-teacher", *_ci(sim_root, "teacher.epochs=1"), "--out", str(teacher)]) == 0
    assert dicnet(["distill", *_ci(sim_root, "student.epochs=1"), "--teacher", str(teacher / "best.pt"),
                   "--out", str(source)]) == 0
    assert dicnet(["distill", *_ci(sim_root, "student.epochs=1", "student.lr=0", "student.weight_decay=0"),
                   "--teacher", str(teacher / "best.pt"), "--out", str(tuned),
                   "--init-from", str(source / "best.pt")]) == 0
    src_model, _, _ = model_from_checkpoint(source / "best.pt")
    tuned_model, _, _ = model_from_checkpoint(tuned / "last.pt")
    for (name, a), (_, b) in zip(src_model.student.named_parameters(), tuned_model.student.named_parameters(),
                                 strict=True):
        assert torch.equal(a, b), name

    with pytest.raises(CheckpointError, match="no student"):
        load_init_weights(tuned_model.student, teacher / "best.pt", "student")
    other = build_dicnet({**src_model.config.to_dict(), "student_widths": [8, 8, 8, 8]}, src_model.preprocess_config)
    with pytest.raises(CheckpointError, match="does not match"):
        load_init_weights(other.student, source / "best.pt", "student")

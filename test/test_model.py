"""Model contracts: output stride, teacher normalisations, Eq. 7, baselines, min-max, checkpoint round trip."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest

pytest.importorskip("torch")  # train extra

import torch

from dicnet_ros.metadata import ModelMetadata
from dicnet_ros.model import ModelConfig, Teacher, anomaly_score, baseline_score, build_dicnet
from dicnet_ros.model.backbones import BACKBONES, build_backbone
from dicnet_ros.model.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from dicnet_ros.model.scoring import class_guided_average, fuse_with_maxlogit, minmax_per_image
from dicnet_ros.preprocessing import PreprocessConfig

TINY = {"teacher_backbone": "resnet_lite", "student_backbone": "resnet_lite", "teacher_widths": [8, 8, 16, 16],
        "student_widths": [8, 8, 8, 16], "feature_channels": 8, "teacher_ppm_channels": 4,
        "student_ppm_channels": 4, "teacher_pretrained": "none", "student_pretrained": "none"}


@pytest.mark.parametrize("name", BACKBONES)
def test_backbones_have_output_stride_8(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, "none").eval()
    with torch.no_grad():
        feat, aux = net(torch.randn(1, 3, 48, 64))
    assert feat.shape[-2:] == (6, 8)
    assert aux.shape[-2:] == (6, 8)
    assert feat.shape[1] == net.out_channels and aux.shape[1] == net.aux_channels


def _teacher_with_hand_bn(norm: str) -> tuple[Teacher, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    teacher = Teacher(ModelConfig(num_classes=3, teacher_norm=norm, **TINY)).eval()
    c = teacher.bn.num_features
    mean = torch.linspace(-1.0, 1.0, c)
    var = torch.linspace(0.5, 2.0, c)
    with torch.no_grad():
        teacher.bn.running_mean.copy_(mean)
        teacher.bn.running_var.copy_(var)
        teacher.bn.weight.copy_(torch.linspace(0.5, 1.5, c))
        teacher.bn.bias.copy_(torch.linspace(-0.2, 0.3, c))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        pre = teacher.bottleneck(teacher.ppm(teacher.backbone(x)[0]))
    return teacher, x, pre


def test_teacher_feature_bn_affine_matches_hand_computation() -> None:
    teacher, x, pre = _teacher_with_hand_bn("bn_affine")
    bn = teacher.bn
    std = torch.sqrt(bn.running_var + bn.eps).view(1, -1, 1, 1)
    expected = (pre - bn.running_mean.view(1, -1, 1, 1)) / std * bn.weight.view(1, -1, 1, 1) + bn.bias.view(
        1, -1, 1, 1)
    with torch.no_grad():
        out = teacher(x)
    torch.testing.assert_close(out.feature, expected, rtol=1e-5, atol=1e-5)
    assert out.aux_logits is None  # aux head only runs in training


def test_teacher_feature_standardized_is_pure_standardisation() -> None:
    teacher, x, pre = _teacher_with_hand_bn("standardized")
    bn = teacher.bn
    expected = (pre - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var + bn.eps).view(1, -1, 1, 1)
    with torch.no_grad():
        out = teacher(x)
    torch.testing.assert_close(out.feature, expected, rtol=1e-5, atol=1e-5)
    # the classifier still sees the affine BN output, so segmentation does not depend on the mode
    affine = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out.logits, teacher.head(affine), rtol=1e-5, atol=1e-5)


def test_eq7_paper_and_code_modes_by_hand() -> None:
    t = torch.tensor([3.0, 1.0, 0.0]).view(1, 3, 1, 1)
    s = torch.tensor([1.0, 2.0, 0.0]).view(1, 3, 1, 1)  # D = (2, -1, 0)
    mu = torch.tensor([1.0, -1.0, 0.5])  # D - mu = (1, 0, -0.5)
    assert anomaly_score(t, s, "code").item() == pytest.approx((4 + 1 + 0) / 3)
    assert anomaly_score(t, s, "code", mu).item() == pytest.approx(5 / 3)  # code mode ignores mu_c
    assert anomaly_score(t, s, "paper", mu).item() == pytest.approx((1 + 0 + 0.25) / 3)
    assert anomaly_score(t, s, "paper", None).item() == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="scoring mode"):
        anomaly_score(t, s, "variance")


def test_score_smoothing_is_a_window_mean_without_padding() -> None:
    t = torch.zeros(1, 2, 3, 3)
    t[0, :, 1, 1] = 3.0  # one hot cell: score 9 there, 0 elsewhere (code mode, s = 0)
    s = torch.zeros_like(t)
    smooth = anomaly_score(t, s, "code", smoothing=3)[0, 0]
    assert smooth[1, 1].item() == pytest.approx(9 / 9)  # full 3x3 window
    assert smooth[0, 0].item() == pytest.approx(9 / 4)  # corner: 2x2 window, padding not counted
    assert smooth[0, 1].item() == pytest.approx(9 / 6)  # edge: 2x3 window
    assert torch.equal(anomaly_score(t, s, "code", smoothing=1), anomaly_score(t, s, "code"))
    with pytest.raises(ValueError, match="odd"):
        anomaly_score(t, s, "code", smoothing=2)
    with pytest.raises(ValueError, match="score_smoothing"):
        ModelConfig(num_classes=3, score_smoothing=4)


def test_class_guided_average_fills_within_a_class_not_across() -> None:
    """A ring of high score around a low interior, all of one class, next to a second class: the interior rises
    towards the ring's mean; pixels of the other class beside it keep their score."""
    score = torch.zeros(1, 1, 5, 8)
    score[0, 0, 1:4, 0:3] = 1.0
    score[0, 0, 2, 1] = 0.0  # the low interior of the ring
    logits = torch.full((1, 2, 5, 8), -20.0)
    logits[0, 0, :, :4] = 20.0  # class 0 on the left half (the ring and its interior), class 1 on the right
    logits[0, 1, :, 4:] = 20.0
    out = class_guided_average(score, logits, 3)[0, 0]
    assert out[2, 1].item() == pytest.approx(0.5 * (0.0 + 8 / 9), abs=1e-5)  # 8 of its 9 class-0 neighbours are 1
    assert out[2, 4].item() == pytest.approx(0.0, abs=1e-5)  # class 1, next to the ring: nothing leaks across
    assert out[2, 3].item() == pytest.approx(0.5 * 3 / 6, abs=1e-5)  # class 0 at the boundary: its 6 class-0 cells
    assert torch.equal(class_guided_average(score, logits, 1), score)
    with pytest.raises(ValueError, match="odd"):
        class_guided_average(score, logits, 4)
    with pytest.raises(ValueError, match="score_class_window"):
        ModelConfig(num_classes=3, score_class_window=2)
    # the share of the class mean: 0.25 moves the interior a quarter of the way, 0 leaves the score alone
    quarter = class_guided_average(score, logits, 3, 0.25)[0, 0]
    assert quarter[2, 1].item() == pytest.approx(0.25 * 8 / 9, abs=1e-5)
    assert torch.equal(class_guided_average(score, logits, 3, 0.0), score)
    with pytest.raises(ValueError, match="class weight"):
        class_guided_average(score, logits, 3, 1.5)
    with pytest.raises(ValueError, match="score_class_weight"):
        ModelConfig(num_classes=3, score_class_weight=-0.1)


def test_fusion_weight_scales_the_maxlogit_term_only() -> None:
    discrepancy = torch.rand(1, 1, 4, 5)
    logits = torch.randn(1, 3, 4, 5)
    norm = torch.tensor([0.2, 0.5, -3.0, 2.0])
    one, two = fuse_with_maxlogit(discrepancy, logits, norm), fuse_with_maxlogit(discrepancy, logits, norm, 2.0)
    maxlogit_z = (-logits.max(dim=1, keepdim=True).values + 3.0) / 2.0
    assert torch.allclose(one, (discrepancy - 0.2) / 0.5 + maxlogit_z, atol=1e-6)
    assert torch.allclose(two - one, maxlogit_z, atol=1e-6)
    with pytest.raises(ValueError, match="score_fusion_weight"):
        ModelConfig(num_classes=3, score_fusion_weight=0.0)


def test_published_score_applies_the_class_window_and_needs_logits() -> None:
    model = build_dicnet(ModelConfig(num_classes=3, teacher_backbone="resnet_lite", student_backbone="resnet_lite",
                                     teacher_widths=[8, 8, 8, 8], student_widths=[8, 8, 8, 8], feature_channels=8,
                                     score_class_window=3, score_class_weight=0.3, teacher_pretrained="none",
                                     student_pretrained="none"),
                         PreprocessConfig(height=32, width=48)).eval()
    with torch.no_grad():
        t, s = model.features(torch.randint(0, 256, (1, 32, 48, 3), dtype=torch.uint8))
        raw = model.score_features(t.feature, s, fusion="none")
        assert torch.allclose(model.score_features(t.feature, s, logits=t.logits),
                              class_guided_average(raw, t.logits, 3, 0.3))
        with pytest.raises(ValueError, match="logits"):
            model.score_features(t.feature, s)


def test_baselines_by_hand() -> None:
    logits = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1)
    e = [math.exp(v) for v in (2.0, 0.0, -1.0)]
    p = [v / sum(e) for v in e]
    assert baseline_score(logits, "msp").item() == pytest.approx(1 - p[0], rel=1e-5)
    assert baseline_score(logits, "maxlogit").item() == pytest.approx(-2.0)
    assert baseline_score(logits, "entropy").item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)
    with pytest.raises(ValueError):
        baseline_score(logits, "odin")


def test_minmax_per_image() -> None:
    score = torch.tensor([[[1.0, 3.0], [5.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = minmax_per_image(score)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [1.0, 1.0]]))
    assert torch.all(out[1] == 0)  # constant map: no division by zero


def _tiny_pair() -> tuple:
    torch.manual_seed(1)
    cfg = ModelConfig(num_classes=3, **TINY)
    pp = PreprocessConfig(height=40, width=64)
    model = build_dicnet(cfg, pp).eval()
    with torch.no_grad():
        model.mu_c.copy_(torch.linspace(-0.1, 0.1, cfg.feature_channels))
    meta = ModelMetadata(class_names=["a", "b", "c"], preprocess=pp.to_dict(), model_config=cfg.to_dict())
    return model, meta


def test_dicnet_forward_shapes_and_features() -> None:
    model, _ = _tiny_pair()
    images = torch.randint(0, 256, (2, 50, 70, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images)
        t, s = model.features(images)
    assert out.anomaly_score.shape == (2, 50, 70) and out.semantic_labels.shape == (2, 50, 70)
    assert out.logits.shape == (2, 3, 5, 8) and t.feature.shape == s.shape == (2, 8, 5, 8)
    assert model(images, network_resolution=True).anomaly_score.shape == (2, 40, 64)


def test_checkpoint_round_trip(tmp_path) -> None:
    model, meta = _tiny_pair()
    path = save_checkpoint(tmp_path / "pair.pt", {
        "stage": "student", "model_config": model.config.to_dict(), "metadata": asdict(meta),
        "teacher": model.teacher.state_dict(), "student": model.student.state_dict(),
        "mu_c": model.mu_c.tolist()})
    loaded, meta2, data = model_from_checkpoint(path)
    assert data["stage"] == "student" and meta2.class_names == ["a", "b", "c"]
    images = torch.randint(0, 256, (1, 40, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    torch.testing.assert_close(a.anomaly_score, b.anomaly_score)
    torch.testing.assert_close(loaded.mu_c, model.mu_c)
    teacher_only = save_checkpoint(tmp_path / "teacher.pt", {
        "stage": "teacher", "model_config": model.config.to_dict(), "metadata": asdict(meta),
        "teacher": model.teacher.state_dict(), "student": None})
    with pytest.raises(CheckpointError, match="only a teacher"):
        model_from_checkpoint(teacher_only)
    assert model_from_checkpoint(teacher_only, require_student=False)[0] is not None


def test_checkpoint_errors_name_the_file(tmp_path) -> None:
    model, meta = _tiny_pair()
    good = save_checkpoint(tmp_path / "good.pt", {
        "stage": "student", "model_config": model.config.to_dict(), "metadata": asdict(meta),
        "teacher": model.teacher.state_dict(), "student": model.student.state_dict()})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a DiCNet checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pt"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    other = dict(model.config.to_dict(), feature_channels=16)
    wrong = save_checkpoint(tmp_path / "wrong.pt", {
        "stage": "student", "model_config": other, "metadata": asdict(meta),
        "teacher": model.teacher.state_dict(), "student": model.student.state_dict()})
    with pytest.raises(CheckpointError, match="do not match"):
        model_from_checkpoint(wrong)

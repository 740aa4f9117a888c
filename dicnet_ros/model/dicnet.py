"""Teacher, student and DiCNet (both + score), configured by one serialisable ``ModelConfig``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dicnet_ros.model.backbones import build_backbone
from dicnet_ros.model.domain import DomainHead, domain_statistics
from dicnet_ros.model.pyramid_pooling import PyramidPooling
from dicnet_ros.model.scoring import (
    SCORE_FUSIONS,
    SCORING_MODES,
    TEACHER_NORMS,
    anomaly_score,
    baseline_score,
    class_guided_average,
    fuse_with_maxlogit,
)
from dicnet_ros.preprocessing import PreprocessConfig, preprocess, restore_size

#: ModelConfig fields that shape the published score after training (``dicnet calibrate`` can set them)
SCORE_SETTINGS = ("score_smoothing", "score_fusion_weight", "score_class_window", "score_class_weight")


@dataclass
class ModelConfig:
    """Architecture of a DiCNet pair; stored in checkpoints and in the exported model's metadata."""

    num_classes: int
    teacher_backbone: str = "resnet50"
    student_backbone: str = "resnet34"
    feature_channels: int = 512
    teacher_ppm_channels: int | None = None  # per pyramid branch; None = backbone channels / 4 (PSPNet)
    student_ppm_channels: int | None = None
    teacher_widths: list[int] | None = None  # only for resnet_lite
    student_widths: list[int] | None = None
    teacher_norm: str = "bn_affine"
    scoring_mode: str = "paper"
    score_smoothing: int = 1  # k x k mean of the score at feature resolution (1 = off, as in the paper)
    score_fusion: str = "none"  # "maxlogit": + the teacher's standardised MaxLogit, "outlier_maxlogit": + the outlier
    # head's (scoring.py); "none" = the paper
    score_fusion_weight: float = 1.0  # weight of the standardised MaxLogit term in the fusion (the discrepancy's is 1)
    score_class_window: int = 1  # k x k class-guided average of the published score (scoring.py; 1 = off)
    score_class_weight: float = 0.5  # share of the same-class mean in the class-guided average (0 = the score alone)
    aux_head: bool = False
    dropout: float = 0.1
    teacher_pretrained: str | None = None  # None = torchvision cache if present, 'none', or a path
    student_pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.teacher_norm not in TEACHER_NORMS:
            raise ValueError(f"teacher_norm must be one of {TEACHER_NORMS}, got {self.teacher_norm!r}")
        if self.scoring_mode not in SCORING_MODES:
            raise ValueError(f"scoring_mode must be one of {SCORING_MODES}, got {self.scoring_mode!r}")
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        if self.score_fusion not in SCORE_FUSIONS:
            raise ValueError(f"score_fusion must be one of {SCORE_FUSIONS}, got {self.score_fusion!r}")
        if self.score_smoothing < 1 or self.score_smoothing % 2 == 0:
            raise ValueError(f"score_smoothing must be an odd window size >= 1, got {self.score_smoothing}")
        if self.score_class_window < 1 or self.score_class_window % 2 == 0:
            raise ValueError(f"score_class_window must be an odd window size >= 1, got {self.score_class_window}")
        if not self.score_fusion_weight > 0:
            raise ValueError(f"score_fusion_weight must be > 0, got {self.score_fusion_weight}")
        if not 0.0 <= self.score_class_weight <= 1.0:
            raise ValueError(f"score_class_weight must be in [0, 1], got {self.score_class_weight}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


class TeacherOutput(NamedTuple):
    feature: torch.Tensor  # (N, C, h, w): the distillation target (normalised, pre-ReLU)
    logits: torch.Tensor  # (N, K, h, w) at feature resolution
    aux_logits: torch.Tensor | None
    levels: tuple[torch.Tensor, ...] = ()  # the backbone's last two stages (layer3, layer4): domain statistics


class Teacher(nn.Module):
    """PSPNet: backbone -> pyramid pooling -> 3x3 conv to C -> BN -> ReLU -> classifier.

    The distillation feature is the BN output before the ReLU (``bn_affine``) or the pure standardisation
    with the running statistics (``standardized``, paper Eq. 2).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = cfg.teacher_norm
        self.backbone = build_backbone(cfg.teacher_backbone, cfg.teacher_pretrained, cfg.teacher_widths)
        branch = cfg.teacher_ppm_channels or max(8, self.backbone.out_channels // 4)
        self.ppm = PyramidPooling(self.backbone.out_channels, branch)
        self.bottleneck = nn.Conv2d(self.ppm.out_channels, cfg.feature_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cfg.feature_channels)
        self.head = nn.Sequential(
            nn.ReLU(inplace=False), nn.Dropout2d(cfg.dropout), nn.Conv2d(cfg.feature_channels, cfg.num_classes, 1)
        )
        self.aux = None
        if cfg.aux_head:
            mid = max(16, self.backbone.aux_channels // 4)
            self.aux = nn.Sequential(
                nn.Conv2d(self.backbone.aux_channels, mid, 3, padding=1, bias=False),
                nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Dropout2d(cfg.dropout),
                nn.Conv2d(mid, cfg.num_classes, 1),
            )

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        feat, aux_feat = self.backbone(x)
        pre = self.bottleneck(self.ppm(feat))
        bn_out = self.bn(pre)
        logits = self.head(bn_out)
        if self.norm == "standardized":
            feature = F.batch_norm(pre, self.bn.running_mean, self.bn.running_var, None, None, False, 0.0,
                                   self.bn.eps)
        else:
            feature = bn_out
        aux = self.aux(aux_feat) if (self.aux is not None and self.training) else None
        return TeacherOutput(feature, logits, aux, (aux_feat, feat))


class Student(nn.Module):
    """Backbone -> pyramid pooling -> 3x3 conv to C; no BN/ReLU: compared with the teacher feature directly."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone = build_backbone(cfg.student_backbone, cfg.student_pretrained, cfg.student_widths)
        branch = cfg.student_ppm_channels or max(8, self.backbone.out_channels // 4)
        self.ppm = PyramidPooling(self.backbone.out_channels, branch)
        self.head = nn.Conv2d(self.ppm.out_channels, cfg.feature_channels, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, _ = self.backbone(x)
        return self.head(self.ppm(feat))


LABEL_MODES = ("network", "bilinear", "nearest")


class DiCNetOutput(NamedTuple):
    anomaly_score: torch.Tensor  # (N, H, W) float32
    semantic_labels: torch.Tensor  # (N, H, W) int64 class ids of the teacher
    logits: torch.Tensor  # (N, K, h, w) teacher logits at feature resolution (for baselines)
    msp_score: torch.Tensor  # (N, H, W) float32, 1 - max softmax of the teacher (the classic baseline)
    maxlogit_score: torch.Tensor  # (N, H, W) float32, -max logit of the teacher (MaxLogit baseline)
    domain_score: torch.Tensor | None = None  # (N,) float32 out-of-domain score (model/domain.py); None: no head


class DiCNet(nn.Module):
    """Teacher + student + score, taking camera images (uint8, N x H x W x 3, RGB) straight in.

    ``mu_c`` (paper Eq. 7) and ``fusion_norm`` (the in-distribution mean / std of the discrepancy and of MaxLogit)
    are buffers filled by calibration, so they travel with the weights into ONNX. So does the out-of-domain head
    (``domain_head``, model/domain.py), which exists once ``dicnet calibrate`` has fitted it.
    """

    def __init__(self, cfg: ModelConfig, preprocess_config: PreprocessConfig):
        super().__init__()
        self.config = cfg
        self.preprocess_config = preprocess_config
        self.teacher = Teacher(cfg)
        self.student = Student(cfg)
        self.register_buffer("mu_c", torch.zeros(cfg.feature_channels))
        self.register_buffer("fusion_norm", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        # the outlier-exposed copy of the teacher's classifier whose MaxLogit the "outlier_maxlogit" fusion uses
        self.outlier_head = (nn.Conv2d(cfg.feature_channels, cfg.num_classes, 1)
                             if cfg.score_fusion == "outlier_maxlogit" else None)
        self.domain_head: DomainHead | None = None

    @property
    def scoring_mode(self) -> str:
        return self.config.scoring_mode

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        return preprocess(images, self.preprocess_config)

    def score_features(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor,
                       mode: str | None = None, logits: torch.Tensor | None = None,
                       fusion: str | None = None) -> torch.Tensor:
        """(N, 1, h, w) score at feature resolution, with this model's mu_c, smoothing, fusion and class-guided
        averaging: the one place every path (training validation, calibration, evaluation, export, backends)
        scores through.

        ``fusion`` None = the published score (the model's ``score_fusion``, then its ``score_class_window``);
        "none" = the discrepancy alone. A MaxLogit fusion and the class-guided averaging need the teacher's
        ``logits`` (at feature resolution).
        """
        score = anomaly_score(teacher_feature, student_feature, mode or self.scoring_mode, self.mu_c,
                              self.config.score_smoothing)
        if fusion == "none":
            return score
        published = fusion is None
        fusion = fusion or self.config.score_fusion
        window = self.config.score_class_window if published else 1
        if logits is None and (fusion != "none" or window > 1):
            raise ValueError(f"score_fusion {fusion!r} / score_class_window {window} need the teacher's logits")
        if fusion != "none":
            score = fuse_with_maxlogit(score, self.fusion_logits(teacher_feature, logits, fusion), self.fusion_norm,
                                       self.config.score_fusion_weight)
        return (class_guided_average(score, logits, window, self.config.score_class_weight) if window > 1
                else score)

    def fusion_logits(self, teacher_feature: torch.Tensor, logits: torch.Tensor,
                      fusion: str | None = None) -> torch.Tensor:
        """The logits whose MaxLogit the fusion adds: the outlier head's for ``outlier_maxlogit``, else the
        teacher's own."""
        if (fusion or self.config.score_fusion) != "outlier_maxlogit":
            return logits
        if self.outlier_head is None:
            raise ValueError("score_fusion 'outlier_maxlogit' needs an outlier head: run `dicnet fit-outlier-head`")
        return self.outlier_head(F.relu(teacher_feature.to(self.outlier_head.weight.dtype)))

    def features(self, images: torch.Tensor) -> tuple[TeacherOutput, torch.Tensor]:
        """Teacher output and student feature for uint8 images: the one pass evaluation derives every map from."""
        x = self.network_input(images)
        return self.teacher(x), self.student(x)

    @property
    def domain_feature_count(self) -> int:
        """How many feature statistics ``domain_statistics`` gives after the pixel statistics."""
        backbone = self.teacher.backbone
        return backbone.aux_channels + backbone.out_channels + 2 * self.config.feature_channels

    def domain_statistics(self, network_input: torch.Tensor, teacher_output: TeacherOutput) -> torch.Tensor:
        """(N, 3 + D) image-level statistics the domain head scores (model/domain.py)."""
        return domain_statistics(network_input, self.preprocess_config, teacher_output.levels,
                                 teacher_output.feature)

    def forward(self, images: torch.Tensor, output_size: tuple[int, int] | None = None,
                network_resolution: bool = False, labels: str = "bilinear") -> DiCNetOutput:
        """Score map, class ids, MSP and MaxLogit at the input size (default), ``output_size``, or the network
        size, and the image-level domain score when the model has a domain head."""
        x = self.network_input(images)
        t, s = self.teacher(x), self.student(x)
        size = None if network_resolution else (output_size or tuple(images.shape[1:3]))
        stats = self.domain_statistics(x, t) if self.domain_head is not None else None
        return self.outputs(t.feature, s, t.logits, size, labels, stats)

    def outputs(self, teacher_feature: torch.Tensor, student_feature: torch.Tensor, logits: torch.Tensor,
                size: tuple[int, int] | None, labels: str = "bilinear",
                domain_statistics: torch.Tensor | None = None) -> DiCNetOutput:
        """Features at 1/8 -> every output map at ``size`` (None = network size): the one post-processing.

        ``labels`` says where the teacher's class ids and baselines (MSP, MaxLogit) are taken:
        ``bilinear``: logits upsampled to the output size, then arg-max / softmax / max (the anomaly-seg protocol);
        ``network``: at the network size, then resized (ids nearest, baselines bilinear) -- a fraction of the cost
        at 1280x720 and identical up to class boundaries; ``nearest``: at the feature resolution.
        The anomaly score never depends on this choice. ``domain_statistics`` (``domain_statistics()``) gives the
        ``domain_score`` when the model has a domain head.
        """
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        pp = self.preprocess_config
        domain = (self.domain_head(domain_statistics) if self.domain_head is not None and domain_statistics is not None
                  else None)
        score_at = self.score_features(teacher_feature, student_feature, logits=logits)
        logits = logits.float()
        if labels == "nearest":  # all three maps share one geometry: one resize for score, MSP and MaxLogit
            maps = restore_size(torch.cat([score_at, baseline_score(logits, "msp"), baseline_score(logits, "maxlogit")],
                                          dim=1), pp, size)
            ids = restore_size(logits.argmax(dim=1, keepdim=True).to(torch.float32), pp, size, mode="nearest")
            return DiCNetOutput(maps[:, 0], ids[:, 0].to(torch.int64), logits, maps[:, 1], maps[:, 2], domain)
        score = restore_size(score_at, pp, size)[:, 0]
        if labels == "bilinear":
            up = restore_size(logits, pp, size)
            return DiCNetOutput(score, up.argmax(dim=1), logits, baseline_score(up, "msp")[:, 0],
                                baseline_score(up, "maxlogit")[:, 0], domain)
        logits_at = restore_size(logits, pp, None)  # "network"
        target = (pp.height, pp.width) if size is None else tuple(size)

        def resize(x: torch.Tensor, mode: str) -> torch.Tensor:
            if tuple(x.shape[-2:]) == target:
                return x
            kw = {"align_corners": False} if mode == "bilinear" else {}
            return F.interpolate(x, size=target, mode=mode, **kw)

        ids = resize(logits_at.argmax(dim=1, keepdim=True).to(torch.float32), "nearest")[:, 0].to(torch.int64)
        baselines = resize(torch.cat([baseline_score(logits_at, "msp"), baseline_score(logits_at, "maxlogit")], 1),
                           "bilinear")  # one resize for both
        return DiCNetOutput(score, ids, logits, baselines[:, 0], baselines[:, 1], domain)


def build_dicnet(cfg: ModelConfig | dict[str, Any], preprocess_config: PreprocessConfig | dict[str, Any]) -> DiCNet:
    """Build an untrained DiCNet from (serialised) configs."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    if isinstance(preprocess_config, dict):
        preprocess_config = PreprocessConfig.from_dict(preprocess_config)
    return DiCNet(cfg, preprocess_config)


__all__ = ["LABEL_MODES", "DiCNet", "DiCNetOutput", "ModelConfig", "Student", "Teacher", "TeacherOutput",
           "build_dicnet"]

"""DiCNet in PyTorch: dilated backbones, pyramid pooling, teacher, student, and the one scoring function."""

from dicnet_ros.model.dicnet import DiCNet, DiCNetOutput, ModelConfig, Student, Teacher, build_dicnet
from dicnet_ros.model.scoring import SCORING_MODES, TEACHER_NORMS, anomaly_score, baseline_score

__all__ = [
    "SCORING_MODES",
    "TEACHER_NORMS",
    "DiCNet",
    "DiCNetOutput",
    "ModelConfig",
    "Student",
    "Teacher",
    "anomaly_score",
    "baseline_score",
    "build_dicnet",
]

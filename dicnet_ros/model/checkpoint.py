"""One checkpoint format for teacher training, distillation, calibration, the torch backend and export.

A checkpoint is a ``torch.save`` dict:
    format            "dicnet-checkpoint/1"
    stage             "teacher" | "student" (student = complete pair, ready to calibrate / export)
    model_config      ModelConfig.to_dict()
    metadata          ModelMetadata as a dict (classes, preprocess, scoring mode, threshold, calibration ...)
    teacher, student  state dicts (student may be None after teacher training)
    mu_c              list[float] or None (also inside the state of the pair)
    outlier_head      optional: state dict of the outlier head (``dicnet fit-outlier-head``)
    domain_head       optional: state dict of the fitted out-of-domain head (``dicnet calibrate``, model/domain.py);
                      without it the model has no domain score
    train_state       optional: epoch, step, optimizer / scheduler / scaler / RNG states, best metric (resume)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dicnet_ros.integrity import DIGEST_KEY, tensors_digest
from dicnet_ros.metadata import MetadataError, ModelMetadata
from dicnet_ros.model.dicnet import DiCNet, ModelConfig, build_dicnet
from dicnet_ros.model.domain import domain_head_from_state

CHECKPOINT_FORMAT = "dicnet-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not a DiCNet checkpoint; the message names the file."""


#: the weight tensors of a checkpoint; their digest (dicnet_ros.integrity) is stored beside them
WEIGHT_KEYS = ("teacher", "student", "outlier_head", "domain_head")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so an interrupted run never leaves a half-written checkpoint; the
    weights' checksum goes in with them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": CHECKPOINT_FORMAT, **payload}
    data[DIGEST_KEY] = tensors_digest(data.get(k) for k in WEIGHT_KEYS)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint dict (no model built)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated / foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a DiCNet checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    for key in ("model_config", "metadata", "teacher"):
        if key not in data:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    recorded = data.get(DIGEST_KEY)
    if recorded is not None and tensors_digest(data.get(k) for k in WEIGHT_KEYS) != recorded:
        raise CheckpointError(f"{path}: weights checksum mismatch: the file was changed or damaged after it was "
                              "written; copy it again or use another checkpoint")
    return data


def checkpoint_metadata(data: dict[str, Any], source: str = "checkpoint") -> ModelMetadata:
    try:
        return ModelMetadata.from_dict(data["metadata"], source)
    except MetadataError as exc:
        raise CheckpointError(str(exc)) from exc


def model_from_checkpoint(path: str | Path, require_student: bool = True) -> tuple[DiCNet, ModelMetadata, dict]:
    """Build the DiCNet of a checkpoint in eval mode; returns (model, metadata, raw checkpoint dict)."""
    data = load_checkpoint(path)
    metadata = checkpoint_metadata(data, str(path))
    cfg = dict(data["model_config"])
    # Weights come from the checkpoint: never look for ImageNet files when rebuilding.
    cfg["teacher_pretrained"] = "none"
    cfg["student_pretrained"] = "none"
    model = build_dicnet(ModelConfig.from_dict(cfg), metadata.preprocess_config)
    try:
        model.teacher.load_state_dict(data["teacher"])
        if data.get("student") is not None:
            model.student.load_state_dict(data["student"])
        elif require_student:
            raise CheckpointError(f"{path}: checkpoint holds only a teacher; run `dicnet distill` first")
        if model.outlier_head is not None:
            if data.get("outlier_head") is None:
                raise CheckpointError(f"{path}: score_fusion 'outlier_maxlogit' but no outlier head in the checkpoint; "
                                      "run `dicnet fit-outlier-head` on it")
            model.outlier_head.load_state_dict(data["outlier_head"])
        if data.get("domain_head") is not None:
            model.domain_head = domain_head_from_state(data["domain_head"])
            if model.domain_head.num_features != model.domain_feature_count:
                raise CheckpointError(f"{path}: the domain head scores {model.domain_head.num_features} feature "
                                      f"statistics, the model has {model.domain_feature_count}; calibrate again")
    except (RuntimeError, KeyError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: weights do not match the model config ({exc})") from exc
    mu_c = data.get("mu_c") or metadata.calibration.get("mu_c")
    if mu_c is not None:
        model.mu_c.copy_(torch.as_tensor(mu_c, dtype=torch.float32))
    fusion_norm = metadata.calibration.get("fusion_norm")
    if fusion_norm is not None:
        model.fusion_norm.copy_(torch.as_tensor(fusion_norm, dtype=torch.float32))
    return model.eval(), metadata, data

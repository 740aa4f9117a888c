"""Stage checkpoints (teacher / student pair) in the one checkpoint format, plus everything resume needs.

The weights and metadata go through :mod:`dicnet_ros.model.checkpoint`; this module adds the training state
(optimizer, scheduler, scaler, epoch, step, RNG states) so an interrupted run continues bit-exactly on CPU.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicnet_ros import __version__
from dicnet_ros.metadata import ModelMetadata
from dicnet_ros.model.checkpoint import load_checkpoint, save_checkpoint
from dicnet_ros.model.dicnet import DiCNet, ModelConfig
from dicnet_ros.preprocessing import PreprocessConfig


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA) at this moment."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only where present on both sides)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_config_from(cfg: dict[str, Any], num_classes: int) -> ModelConfig:
    """ModelConfig from the config's ``model`` section and the dataset's class count."""
    fields = dict(cfg.get("model") or {})
    fields["num_classes"] = num_classes
    if fields.get("score_fusion") == "outlier_maxlogit":
        raise ValueError("model.score_fusion 'outlier_maxlogit' is set by `dicnet fit-outlier-head` on a distilled "
                         "pair; train the teacher and the student with 'maxlogit' (or 'none')")
    return ModelConfig.from_dict(fields)


def preprocess_from(cfg: dict[str, Any]) -> PreprocessConfig:
    """Network input size and normalisation from the config's ``input`` section."""
    inp = dict(cfg.get("input") or {})
    return PreprocessConfig.from_dict(inp)


def build_metadata(model: DiCNet, spec: Any, cfg: dict[str, Any], stage: str,
                   extra: dict[str, Any] | None = None) -> ModelMetadata:
    """Metadata stored with every checkpoint: classes, preprocessing, dataset spec and the training config."""
    training = {"stage": stage, "config": cfg, "dataset": spec.to_dict(), "package_version": __version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
    return ModelMetadata(
        class_names=list(spec.class_names),
        preprocess=model.preprocess_config.to_dict(),
        scoring_mode=model.config.scoring_mode,
        teacher_norm=model.config.teacher_norm,
        anomaly_ids=list(spec.anomaly_ids),
        ignore_id=int(spec.ignore_id),
        model_config=model.config.to_dict(),
        training=training,
    )


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's weights detached on the CPU: what every checkpoint stores."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_stage(path: str | Path, model: DiCNet, metadata: ModelMetadata, stage: str,
               train_state: dict[str, Any] | None = None, include_student: bool = True) -> Path:
    """Write a teacher-only (``stage='teacher'``) or pair (``stage='student'``) checkpoint atomically."""
    mu = model.mu_c.detach().cpu()
    payload = {
        "stage": stage,
        "model_config": model.config.to_dict(),
        "metadata": asdict(metadata),
        "teacher": cpu_state_dict(model.teacher),
        "student": (cpu_state_dict(model.student)
                    if include_student else None),
        "mu_c": mu.tolist() if bool(mu.abs().sum() > 0) else None,
        "train_state": train_state,
        **({"outlier_head": cpu_state_dict(model.outlier_head)}
           if model.outlier_head is not None else {}),
    }
    return save_checkpoint(path, payload)


def load_resume_state(run_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The raw ``last.pt`` of a run dir (None if the run never saved one)."""
    path = Path(run_dir) / "last.pt"
    if not path.is_file():
        return None
    data = load_checkpoint(path)
    if not data.get("train_state"):
        raise RuntimeError(f"{path}: holds no training state to resume from")
    return data, path

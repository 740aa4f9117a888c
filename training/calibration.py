"""Calibration of a trained pair: mu_c (paper Eq. 7), in-distribution score statistics, the mask threshold and
the out-of-domain head.

The threshold is the score exceeded by ``target_fpr`` of the normal validation pixels (1 % -> the 99th
percentile), so the node's default mask has a known false-positive rate on in-distribution data. The domain head
(model/domain.py) is fitted on the images of the mu_c split and standardised on those of the calibration split,
with no label and no out-of-domain example; its alarm threshold is a number of standard deviations of those
images. Everything is written into the checkpoint metadata; the ONNX export and the node read it from there.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dicnet_training import data as tdata
from dicnet_training import distributed as tdist
from dicnet_training.checkpointing import cpu_state_dict
from dicnet_training.engine import progress

from dicnet_ros.model.checkpoint import checkpoint_metadata, load_checkpoint, model_from_checkpoint, save_checkpoint
from dicnet_ros.model.dicnet import SCORE_SETTINGS, DiCNet, ModelConfig
from dicnet_ros.model.domain import DEFAULT_DOMAIN_THRESHOLD, DEFAULT_RANK, DOMAIN_GROUPS, DomainHead
from dicnet_ros.model.scoring import SCORE_FUSIONS, SCORING_MODES, baseline_score, discrepancy_channel_sum
from dicnet_ros.preprocessing import restore_size

log = logging.getLogger("dicnet_training")

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


@torch.no_grad()
def estimate_mu_c(model: DiCNet, loader: Any, device: torch.device, show: bool = False,
                  statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Per-channel mean of D = teacher - student over all feature pixels of the given (normal) images; with
    ``statistics``, each image's out-of-domain statistics are appended to it from the same teacher pass."""
    total = torch.zeros(model.config.feature_channels, dtype=torch.float64, device=device)
    count = 0
    for groups in progress(loader, show, desc="mu_c"):
        for images, _, _ in groups:
            x = model.network_input(images.to(device))
            teacher_out = model.teacher(x)
            if statistics is not None:
                statistics.append(model.domain_statistics(x, teacher_out).float().cpu())
            t = teacher_out.feature.float()
            s = model.student(x).float()
            total += discrepancy_channel_sum(t, s).double()
            count += t.shape[0] * t.shape[2] * t.shape[3]
    return (total / max(1, count)).float().cpu()


def fit_domain_head(model: DiCNet, fit_rows: list[torch.Tensor], scale_rows: list[torch.Tensor],
                    rank: int = DEFAULT_RANK) -> dict[str, Any] | None:
    """Fit ``model.domain_head`` on the (N, 3 + D) image-level statistics (model/domain.py) that ``estimate_mu_c``
    and ``collect_normal_scores`` gathered (rank capped by the fit images); None, with a warning, when there are
    too few."""
    empty = torch.zeros(0, 3 + model.domain_feature_count)
    fit_statistics = torch.cat(fit_rows) if fit_rows else empty
    scale_statistics = torch.cat(scale_rows) if scale_rows else empty
    rank = min(rank, len(fit_statistics) - 2, model.domain_feature_count - 1)
    if rank < 1 or len(scale_statistics) < 2:
        log.warning("out-of-domain head not fitted: it needs at least 3 images to fit and 2 to standardise on, got "
                    "%d and %d; the model will have no domain score", len(fit_statistics), len(scale_statistics))
        model.domain_head = None
        return None
    head = DomainHead(model.domain_feature_count, rank).to(fit_statistics.device)
    summary = head.fit(fit_statistics, scale_statistics)
    model.domain_head = head
    scores = head(scale_statistics)
    return {"groups": list(DOMAIN_GROUPS), "rank": rank, **summary,
            "score_on_calibration": {"mean": float(scores.mean()), "max": float(scores.max())}}


def score_statistics(scores: np.ndarray, target_fpr: float) -> dict[str, float]:
    """Mean, std, quantiles, max of normal-pixel scores and the score at the target FPR."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no in-distribution pixels to calibrate on")
    stats = {"mean": float(scores.mean()), "std": float(scores.std()), "max": float(scores.max()),
             "min": float(scores.min()), "num_pixels": int(scores.size)}
    stats.update({k: float(np.quantile(scores, q)) for k, q in QUANTILES.items()})
    stats["threshold"] = float(np.quantile(scores, 1.0 - target_fpr))
    return stats


@torch.no_grad()
def estimate_fusion_norm(model: DiCNet, loader: Any, device: torch.device, show: bool = False) -> torch.Tensor:
    """(mean, std) of the discrepancy score and of the fused MaxLogit (the teacher's or the outlier head's) over
    every feature cell of in-distribution images: what the fusion standardises both with (no anomaly labels)."""
    sums = torch.zeros(2, 2, dtype=torch.float64)  # [discrepancy, maxlogit] x [sum, sum of squares]
    count = 0
    for groups in progress(loader, show, desc="fusion"):
        for images, _, _ in groups:
            x = model.network_input(images.to(device))
            out = model.teacher(x)
            score = model.score_features(out.feature.float(), model.student(x).float(), fusion="none")
            maxlogit = baseline_score(model.fusion_logits(out.feature.float(), out.logits.float()).float(), "maxlogit")
            for row, values in enumerate((score, maxlogit)):
                v = values.double().cpu()
                sums[row, 0] += v.sum()
                sums[row, 1] += v.pow(2).sum()
            count += score.numel()
    mean = sums[:, 0] / max(count, 1)
    std = (sums[:, 1] / max(count, 1) - mean.pow(2)).clamp_min(1e-12).sqrt()
    return torch.stack([mean[0], std[0], mean[1], std[1]]).float()


@torch.no_grad()
def collect_normal_scores(model: DiCNet, loader: Any, device: torch.device, anomaly_ids: tuple[int, ...],
                          ignore_id: int, max_pixels: int, show: bool = False,
                          statistics: list[torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Scores of normal labelled pixels at label resolution, for both scoring modes (one forward per image); with
    ``statistics``, each image's out-of-domain statistics are appended to it from the same teacher pass."""
    out: dict[str, list[np.ndarray]] = {m: [] for m in SCORING_MODES}
    kept = 0
    num_images = len(loader.dataset)
    per_image = max(1, max_pixels // max(1, num_images))
    rng = np.random.default_rng(0)
    for groups in progress(loader, show, desc="scores"):
        for images, labels, _ in groups:
            x = model.network_input(images.to(device))
            teacher_out = model.teacher(x)
            if statistics is not None:
                statistics.append(model.domain_statistics(x, teacher_out).float().cpu())
            t, logits = teacher_out.feature.float(), teacher_out.logits.float()
            s = model.student(x).float()
            size = tuple(labels.shape[-2:])
            maps = {m: restore_size(model.score_features(t, s, m, logits), model.preprocess_config, size)[:, 0]
                    .cpu().numpy() for m in SCORING_MODES}
            lab = labels.numpy()
            normal = (lab != ignore_id) & ~np.isin(lab, anomaly_ids)
            for i in range(lab.shape[0]):
                idx = np.flatnonzero(normal[i].reshape(-1))
                if idx.size > per_image:
                    idx = np.sort(rng.choice(idx, per_image, replace=False))
                kept += idx.size
                for m in SCORING_MODES:
                    out[m].append(maps[m][i].reshape(-1)[idx].astype(np.float32))
    log.info("calibration: %d normal pixels kept from %d images", kept, num_images)
    return {m: np.concatenate(v) if v else np.zeros(0, np.float32) for m, v in out.items()}


def calibrate(checkpoint: str | Path, cfg: dict[str, Any], out_path: str | Path | None = None,
              split: str | None = None, mu_split: str | None = None, target_fpr: float | None = None,
              scoring_mode: str | None = None, device: str | None = None, show_progress: bool = True,
              score_fusion: str | None = None, score_settings: dict[str, Any] | None = None,
              domain_threshold: float | None = None, domain_rank: int | None = None) -> Path:
    """Estimate mu_c and score statistics, set the threshold, fit the out-of-domain head, and write the calibrated
    checkpoint atomically.

    ``score_settings`` sets scoring fields of the model config first (``score_smoothing``, ``score_class_window``,
    ``score_fusion_weight``, ``score_class_weight``): the statistics and threshold must be those of the score the
    checkpoint will publish. ``domain_threshold`` is the alarm threshold in standard deviations of the calibration
    images (default ``calibration.domain_threshold`` of the config, else ``DEFAULT_DOMAIN_THRESHOLD``)."""
    cal = dict(cfg.get("calibration") or {})
    target_fpr = float(target_fpr if target_fpr is not None else cal.get("target_fpr", 0.01))
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target FPR must be in (0, 1), got {target_fpr}")
    # the argument, else the config's value (null there: the default)
    domain_threshold = float(next(v for v in (domain_threshold, cal.get("domain_threshold"), DEFAULT_DOMAIN_THRESHOLD)
                                  if v is not None))
    domain_rank = int(next(v for v in (domain_rank, cal.get("domain_rank"), DEFAULT_RANK) if v is not None))
    if not (math.isfinite(domain_threshold) and domain_threshold > 0):
        raise ValueError(f"domain threshold must be a positive number of standard deviations, got {domain_threshold}")
    if domain_rank < 1:
        raise ValueError(f"domain rank must be at least 1, got {domain_rank}")
    split = split or cal.get("split", "val")
    mu_split = mu_split or cal.get("mu_split", "train")
    ctx = tdist.setup(device)
    data = load_checkpoint(checkpoint)
    model, meta, _ = model_from_checkpoint(checkpoint, require_student=True)
    if scoring_mode is not None:
        if scoring_mode not in SCORING_MODES:
            raise ValueError(f"scoring mode must be one of {SCORING_MODES}")
        model.config.scoring_mode = scoring_mode
    if score_fusion is not None:
        if score_fusion not in SCORE_FUSIONS:
            raise ValueError(f"score fusion must be one of {SCORE_FUSIONS}")
        if score_fusion == "outlier_maxlogit" and model.outlier_head is None:
            raise ValueError("score fusion 'outlier_maxlogit' needs an outlier head: run `dicnet fit-outlier-head`")
        if score_fusion != "outlier_maxlogit":
            model.outlier_head = None
        model.config = ModelConfig.from_dict({**model.config.to_dict(), "score_fusion": score_fusion})
    settings = {k: v for k, v in (score_settings or {}).items() if v is not None}
    unknown = set(settings) - set(SCORE_SETTINGS)
    if unknown:
        raise ValueError(f"unknown score settings {sorted(unknown)}; choose from {SCORE_SETTINGS}")
    if settings:
        model.config = ModelConfig.from_dict({**model.config.to_dict(), **settings})
    model.to(ctx.device)
    workers = int((cfg.get("eval") or {}).get("workers", 0))
    batch = int((cfg.get("eval") or {}).get("batch_size", 2))
    cfg_split = dict(cfg)
    cfg_split["data"] = {**cfg["data"], "_mu": mu_split, "_cal": split}
    mu_ds = tdata.open_split(cfg_split, "_mu")
    limit = cal.get("mu_max_images")
    if limit is not None and int(limit) < len(mu_ds):
        mu_ds = tdata.Subset(mu_ds, range(int(limit)))
    fit_rows: list[torch.Tensor] = []  # the out-of-domain head's statistics, from the passes made anyway
    scale_rows: list[torch.Tensor] = []
    model.mu_c.copy_(estimate_mu_c(model, tdata.eval_loader(mu_ds, batch, workers, ctx), ctx.device, show_progress,
                                   fit_rows))
    log.info("mu_c over %d %s images: mean %.5f, |mean| %.5f, max |mu_c| %.5f", len(mu_ds), mu_split,
             float(model.mu_c.mean()), float(model.mu_c.abs().mean()), float(model.mu_c.abs().max()))
    cal_ds = tdata.open_split(cfg_split, "_cal")
    spec = cal_ds.spec
    fusion_norm = None
    if model.config.score_fusion != "none":
        model.fusion_norm.copy_(estimate_fusion_norm(model, tdata.eval_loader(cal_ds, batch, workers, ctx), ctx.device,
                                                     show_progress))
        fusion_norm = [float(v) for v in model.fusion_norm.tolist()]
        log.info("fusion with MaxLogit: discrepancy mean %.5f std %.5f, MaxLogit mean %.5f std %.5f on %s",
                 *fusion_norm, split)
    scores = collect_normal_scores(model, tdata.eval_loader(cal_ds, batch, workers, ctx), ctx.device,
                                   tuple(spec.anomaly_ids), spec.ignore_id, int(cal.get("max_pixels", 20_000_000)),
                                   show_progress, scale_rows)
    domain = fit_domain_head(model, fit_rows, scale_rows, domain_rank)
    if domain is not None:
        domain.update({"fit_split": mu_split, "fit_images": len(mu_ds), "scale_split": split,
                       "scale_images": len(cal_ds), "threshold_rule": f"{domain_threshold:g} standard deviations of "
                       f"the {split} images on one statistic"})
        log.info("out-of-domain head: rank %d, fitted on %d %s images, standardised on %d %s images; score on them "
                 "mean %.2f, max %.2f; alarm above %g", domain["rank"], len(mu_ds), mu_split, len(cal_ds), split,
                 domain["score_on_calibration"]["mean"], domain["score_on_calibration"]["max"], domain_threshold)
    by_mode = {m: score_statistics(v, target_fpr) for m, v in scores.items()}
    mode = model.config.scoring_mode
    stats = by_mode[mode]
    threshold = stats["threshold"]
    if not math.isfinite(threshold):
        raise ValueError(f"calibrated threshold is not finite ({threshold})")
    log.info("%s-mode scores on %s normal pixels: mean %.5f std %.5f p50 %.5f p99 %.5f max %.5f -> threshold "
             "%.5f at FPR %.3g", mode, split, stats["mean"], stats["std"], stats["p50"], stats["p99"], stats["max"],
             threshold, target_fpr)
    meta.scoring_mode = mode
    meta.model_config = model.config.to_dict()
    meta.threshold = threshold
    meta.domain_threshold = domain_threshold if domain is not None else None
    meta.calibration = {
        "mu_c": [float(v) for v in model.mu_c.tolist()],
        "mu_split": mu_split,
        "mu_images": len(mu_ds),
        **({"fusion_norm": fusion_norm, "fusion": model.config.score_fusion} if fusion_norm else {}),
        "split": split,
        "num_images": len(cal_ds),
        "target_fpr": target_fpr,
        "scoring_mode": mode,
        "score_stats": {k: v for k, v in stats.items() if k != "threshold"},
        "score_stats_by_mode": by_mode,
        "threshold_rule": f"quantile {1 - target_fpr:g} of normal {split} pixel scores ({mode} mode)",
        **({"domain": domain} if domain is not None else {}),
    }
    checkpoint_metadata({"metadata": meta.__dict__}, str(checkpoint))  # validate before writing
    payload = {k: v for k, v in data.items() if k not in ("format", "outlier_head", "domain_head")}
    if model.outlier_head is not None:
        payload["outlier_head"] = cpu_state_dict(model.outlier_head)
    if model.domain_head is not None:
        payload["domain_head"] = cpu_state_dict(model.domain_head)
    payload.update({"metadata": dict(meta.__dict__), "mu_c": meta.calibration["mu_c"],
                    "model_config": model.config.to_dict(), "train_state": None})
    target = Path(out_path) if out_path else Path(checkpoint)
    save_checkpoint(target, payload)
    log.info("calibrated checkpoint written to %s", target)
    return target

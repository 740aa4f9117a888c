"""`dicnet fit-outlier-head`: fit the outlier head of the ``outlier_maxlogit`` fusion on a distilled pair.

Why: the published score adds the teacher's standardised MaxLogit to the discrepancy, and the teacher is
confident (high MaxLogit, "normal") on large plain anomalies that look like a wall, the sky or the road: on the
simulated benchmark the interiors of such objects were the misses that decided the pooled FPR95. The outlier head
is a copy of the teacher's classifier (1x1 convolution on the ReLU of the teacher feature) refitted with the
teacher frozen: cross-entropy on normal feature cells keeps its classes, and an energy hinge (Liu et al., NeurIPS
2020) keeps log-sum-exp of its logits above ``mean - 1 sd`` on normal cells and pushes it below ``mean - 3 sd`` on
outlier proxies (the dataset's proxy objects and random polygons pasted anywhere in the image). No anomaly label
is used. The teacher's features and the student are untouched, so mu_c stays valid; the fusion statistics and
the threshold change, so run ``dicnet calibrate`` afterwards. Only K x C weights learn: the features of the
training images are computed once and cached (a few minutes on a CPU).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dicnet_training.losses import OutlierHeadConfig

from dicnet_ros.cli_options import add_device_argument

log = logging.getLogger("dicnet_training")

OUTLIER_TARGET = -1  # cell target of outlier proxies in the cache (normal cells hold their class id)


@torch.no_grad()
def cache_cells(model: Any, ds: Any, hc: OutlierHeadConfig, device: torch.device, batch: int = 8,
                show: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ReLU'd teacher features (M, C) float16, targets (M,) int64) of the train split's feature cells.

    Target = class id of a cell that is entirely normal (every pixel a known class), ``OUTLIER_TARGET`` for a
    cell that is mostly outlier proxy (dataset proxies + pasted polygons); other cells are left out.
    """
    from dicnet_training.engine import progress
    from dicnet_training.losses import feature_cell_masks, network_geometry

    from dicnet_ros.data.transforms import paste_outlier_shapes, resize_pair

    spec = ds.spec
    pp = model.preprocess_config
    proxy_ids = np.asarray(spec.outlier_proxy_ids or (-1,))
    count = len(ds) if hc.max_images is None else min(len(ds), hc.max_images)
    rng = np.random.default_rng(hc.seed)
    feats, targets = [], []
    for start in progress(range(0, count, batch), show, desc="outlier-head cache"):
        samples = [ds[i] for i in range(start, min(start + batch, count))]
        pairs = [resize_pair(s.image, s.label, (pp.height, pp.width)) for s in samples]
        images = np.stack([p[0] for p in pairs])
        labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
        pasted = paste_outlier_shapes(images, rng, hc.paste_probability, radius=hc.paste_radius, rows=hc.paste_rows)
        outlier = torch.from_numpy(pasted | np.isin(labels.numpy(), proxy_ids))
        known = (labels >= 0) & (labels < model.config.num_classes) & ~outlier
        feature = model.teacher(model.network_input(torch.from_numpy(images).to(device))).feature.float()
        h, w = feature.shape[-2:]
        outlier_cells, normal_cells = feature_cell_masks(outlier, known | outlier, (h, w), pp)
        stride = pp.output_stride
        centre = network_geometry(labels, pp, -1)[:, stride // 2::stride, stride // 2::stride][:, None, :h, :w]
        target = torch.full_like(centre, -2)
        target[normal_cells & (centre >= 0)] = centre[normal_cells & (centre >= 0)]
        target[outlier_cells] = OUTLIER_TARGET
        keep = (target != -2).reshape(-1)
        feats.append(F.relu(feature).permute(0, 2, 3, 1).reshape(-1, feature.shape[1])[keep.to(device)].half().cpu())
        targets.append(target.reshape(-1)[keep])
    return torch.cat(feats), torch.cat(targets)


def energy_margins(head: torch.nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(m_in, m_out) = mean - 1 sd and mean - 3 sd of the initial head's log-sum-exp over normal cells."""
    with torch.no_grad():
        lse = torch.logsumexp(_linear(head, x[y != OUTLIER_TARGET][:200_000].float()), dim=1)
    mean, sd = float(lse.mean()), float(lse.std())
    return mean - sd, mean - 3 * sd


def _linear(head: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return x @ head.weight[:, :, 0, 0].T + head.bias


def head_loss(head: torch.nn.Conv2d, x: torch.Tensor, y: torch.Tensor, margins: tuple[float, float],
              weight: float) -> torch.Tensor:
    """Cross-entropy on normal cells + ``weight`` x squared energy hinges (normal above m_in, outlier below m_out)."""
    logits = _linear(head, x.float())
    lse = torch.logsumexp(logits, dim=1)
    normal = y != OUTLIER_TARGET
    loss = F.cross_entropy(logits[normal], y[normal]) if normal.any() else logits.sum() * 0
    hinge = F.relu(margins[0] - lse[normal]).pow(2).mean() if normal.any() else 0.0
    if (~normal).any():
        hinge = hinge + F.relu(lse[~normal] - margins[1]).pow(2).mean()
    return loss + weight * hinge


def fit_outlier_head(checkpoint: str | Path, cfg: dict[str, Any], out_path: str | Path | None = None,
                     device: str | None = None, show_progress: bool = True) -> Path:
    """Add (or refit) the outlier head of a pair checkpoint, switch its fusion to ``outlier_maxlogit`` and write
    it (uncalibrated: the fusion statistics and threshold depend on the head)."""
    from dicnet_training import data as tdata
    from dicnet_training import distributed as tdist
    from dicnet_training.checkpointing import cpu_state_dict

    from dicnet_ros.model.checkpoint import checkpoint_metadata, load_checkpoint, model_from_checkpoint, save_checkpoint
    from dicnet_ros.model.dicnet import ModelConfig

    hc = OutlierHeadConfig.from_config(cfg.get("outlier_head"))
    ctx = tdist.setup(device)
    data = load_checkpoint(checkpoint)
    model, meta, _ = model_from_checkpoint(checkpoint, require_student=True)
    model.config = ModelConfig.from_dict({**model.config.to_dict(), "score_fusion": "outlier_maxlogit"})
    head = torch.nn.Conv2d(model.config.feature_channels, model.config.num_classes, 1)
    head.load_state_dict(model.teacher.head[-1].state_dict())  # start from the teacher's own classifier
    model.outlier_head = head
    model.to(ctx.device).eval()
    ds = tdata.with_outlier_objects(tdata.open_split(cfg, "train_split"), cfg)
    start = time.perf_counter()
    x, y = cache_cells(model, ds, hc, ctx.device, show=show_progress)
    n_out = int((y == OUTLIER_TARGET).sum())
    if n_out == 0:
        raise ValueError("no outlier cells: the train split has no outlier proxies and outlier_head.paste_probability "
                         "is 0; render proxies (`dicnet sim --outlier-proxies`), paste polygons or set "
                         "data.outlier_objects")
    log.info("outlier head: %d normal and %d outlier feature cells cached in %.0f s", len(y) - n_out, n_out,
             time.perf_counter() - start)
    head = head.to(ctx.device)
    x, y = x.to(ctx.device), y.to(ctx.device)
    margins = energy_margins(head, x, y)
    log.info("outlier head: log-sum-exp margins normal >= %.3f, outlier <= %.3f", *margins)
    optimizer = torch.optim.Adam(head.parameters(), lr=hc.lr)
    generator = torch.Generator(device="cpu").manual_seed(hc.seed)
    history = []
    for epoch in range(1, hc.epochs + 1):
        order = torch.randperm(len(y), generator=generator).to(ctx.device)
        total, steps = 0.0, 0
        for i in range(0, len(y), hc.batch_cells):
            idx = order[i:i + hc.batch_cells]
            loss = head_loss(head, x[idx], y[idx], margins, hc.weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        history.append({"epoch": epoch, "loss": total / max(steps, 1)})
        log.info("outlier head epoch %d/%d: loss %.5f", epoch, hc.epochs, total / max(steps, 1))
    with torch.no_grad():
        lse = torch.logsumexp(_linear(head, x.float()), dim=1)
        below = float((lse[y == OUTLIER_TARGET] <= margins[1]).float().mean())
        normal = y != OUTLIER_TARGET
        accuracy = float((_linear(head, x[normal].float()).argmax(1) == y[normal]).float().mean())
    log.info("outlier head: %.1f %% of outlier cells below the margin, %.1f %% of normal cells classified right",
             100 * below, 100 * accuracy)
    meta.model_config = model.config.to_dict()
    meta.threshold = None
    meta.calibration = {}
    meta.training = {**(meta.training or {}), "outlier_head": {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(hc).items()},
        "margins": list(margins), "cells": {"normal": len(y) - n_out, "outlier": n_out},
        "outlier_below_margin": below, "normal_accuracy": accuracy, "history": history}}
    checkpoint_metadata({"metadata": meta.__dict__}, str(checkpoint))  # validate before writing
    payload = {k: v for k, v in data.items() if k != "format"}
    payload.update({"metadata": dict(meta.__dict__), "model_config": model.config.to_dict(), "train_state": None,
                    "outlier_head": cpu_state_dict(head)})
    target = Path(out_path) if out_path else Path(checkpoint)
    save_checkpoint(target, payload)
    log.info("checkpoint with outlier head written to %s (run `dicnet calibrate` on it next)", target)
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint / --config / --override (the data and the ``outlier_head`` section), --out."""
    from dicnet_training.calibrate import add_checkpoint_config_arguments

    add_checkpoint_config_arguments(parser, "pair checkpoint (best.pt of distill, or a calibrated one)")
    parser.add_argument("--out", default=None, help="write a new checkpoint here (default: update in place)")
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Fit and write atomically; prints the written path."""
    from dicnet_training.calibrate import config_for
    from dicnet_training.command import Outputs, run_command
    from dicnet_training.engine import setup_logging

    def work(outputs: Outputs) -> int:
        setup_logging(None, True)
        log.info("fitting the outlier head of %s", args.checkpoint)
        cfg = config_for(args.checkpoint, args.config, args.override)
        print(fit_outlier_head(args.checkpoint, cfg, outputs.watch(args.out), args.device, not args.no_progress))
        return 0

    return run_command(args.command, work)

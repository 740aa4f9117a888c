"""Training loops shared by ``dicnet train-teacher`` and ``dicnet distill`` (one CPU, one GPU or DDP).

Both stages follow one pattern: build loaders and optimiser, optionally resume from ``last.pt``, then per
epoch train, validate, and save ``last.pt`` (+ ``best.pt``) on rank 0. Everything that makes a resumed run
identical to an uninterrupted one (sampler epoch, augmentation seeds, RNG states, scheduler) lives here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dicnet_training import checkpointing as ckpt
from dicnet_training import data as tdata
from dicnet_training import distributed as tdist
from dicnet_training.losses import OutlierExposure, distillation_loss
from torch import nn

from dicnet_ros.data.transforms import paste_outlier_shapes
from dicnet_ros.model.checkpoint import model_from_checkpoint
from dicnet_ros.model.dicnet import DiCNet, build_dicnet
from dicnet_ros.preprocessing import preprocess, restore_size

log = logging.getLogger("dicnet_training")

STUDENT_FIELDS = ("student_backbone", "student_widths", "student_ppm_channels", "student_pretrained")


def setup_logging(run_dir: Path | None, is_main: bool) -> None:
    """INFO to stderr (rank 0 only) and to ``run_dir/train.log``."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if not any(getattr(h, "_dicnet", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        handler._dicnet = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        target = str((run_dir / "train.log").resolve())
        if not any(getattr(h, "baseFilename", None) == target for h in root.handlers):
            fh = logging.FileHandler(target)
            fh.setFormatter(fmt)
            root.addHandler(fh)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (augmentations have their own per-sample seeds)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(iterable: Any, enabled: bool, **kwargs: Any) -> Any:
    """tqdm bar only on an interactive terminal (log files stay readable)."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA; FP32 on CPU (bf16 CPU autocast is slower than FP32 on most CPUs)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def log_pretrained(cfg_model: Any) -> None:
    """Say plainly where backbone weights come from; nothing is ever downloaded."""
    for role in ("teacher", "student"):
        backbone = getattr(cfg_model, f"{role}_backbone")
        source = getattr(cfg_model, f"{role}_pretrained")
        if backbone == "resnet_lite":
            msg = "no ImageNet weights exist for resnet_lite: training from scratch"
        elif source == "none":
            msg = "training from scratch (pretrained='none')"
        elif source:
            msg = f"ImageNet weights from {source}"
        else:
            msg = f"ImageNet weights from the torchvision cache ({torch.hub.get_dir()}) if present, else from scratch"
        log.info("%s backbone %s: %s", role, backbone, msg)


class TensorBoard:
    """SummaryWriter on rank 0, silently absent elsewhere or when tensorboard is missing."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is in the train extra
                log.warning("tensorboard not installed: no event files")

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def confusion_to_iou(conf: torch.Tensor) -> tuple[float, list[float]]:
    """mIoU over classes present in ground truth or prediction, and the per-class IoU (nan if absent)."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(denom > 0, tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))
    valid = ~torch.isnan(iou)
    miou = float(iou[valid].mean()) if bool(valid.any()) else float("nan")
    return miou, [float(v) for v in iou]


def update_confusion(conf: torch.Tensor, pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> None:
    """Add one batch to a K x K confusion matrix (rows = ground truth); labels >= K (ignore, anomaly) skipped."""
    keep = label < num_classes
    idx = label[keep].long() * num_classes + pred[keep].long()
    conf += torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes).to(conf)


# ----------------------------------------------------------------------------------------------- teacher


def _lr_lambda_poly(total_steps: int, power: float):
    return lambda step: max(0.0, 1.0 - step / max(1, total_steps)) ** power


@torch.no_grad()
def validate_teacher(model: DiCNet, loader: Any, ctx: tdist.DistContext, show: bool,
                     anomaly_ids: tuple[int, ...] = ()) -> dict[str, float]:
    """Validation mIoU over the known classes (and MSP AUPR where the split has anomalies)."""
    teacher = model.teacher
    was_training = teacher.training
    teacher.eval()
    k = model.config.num_classes
    conf = torch.zeros(k, k, dtype=torch.float64, device=ctx.device)
    evaluator = _maybe_evaluator(anomaly_ids, (0.0, 1.0))
    anomaly_t = torch.tensor(anomaly_ids, device=ctx.device, dtype=torch.long)
    for groups in progress(loader, show, desc="val"):
        for images, labels, _ in groups:
            images, labels = images.to(ctx.device), labels.to(ctx.device)
            logits = teacher(preprocess(images, model.preprocess_config)).logits.float()
            logits = restore_size(logits, model.preprocess_config, tuple(labels.shape[-2:]))
            update_confusion(conf, logits.argmax(1), labels, k)
            if evaluator is not None and bool(torch.isin(labels, anomaly_t).any()):
                msp = 1.0 - logits.softmax(1).amax(1)
                for s, lab in zip(msp.cpu().numpy(), labels.cpu().numpy(), strict=True):
                    evaluator.update(s, lab)
    tdist.all_reduce_sum(conf, ctx)
    teacher.train(was_training)
    miou, _ = confusion_to_iou(conf.cpu())
    out = {"miou": miou, "pixel_acc": float(conf.diag().sum() / conf.sum().clamp_min(1))}
    out.update(_aupr(evaluator, ctx))
    return out


def _maybe_evaluator(anomaly_ids: tuple[int, ...], score_range: tuple[float, float]) -> Any:
    if not anomaly_ids:
        return None
    try:
        from dicnet_ros.metrics import AnomalyEvaluator
    except ImportError:  # the metrics module is optional for training
        return None
    # Exact pooled over the validation images that contain anomalies: the score range of a student is unknown.
    return AnomalyEvaluator(anomaly_ids, score_range=score_range, num_bins=100, per_image=False,
                            keep_exact_pooled=True)


def _aupr(evaluator: Any, ctx: tdist.DistContext) -> dict[str, float]:
    """Pooled AUPR of a validation evaluator, if the split held anomaly pixels."""
    if evaluator is None:
        return {}
    if ctx.distributed:
        evaluator.all_reduce()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # histogram clamping: fine for a progress signal
            value = float(res_aupr(evaluator.compute()))
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return {}
    return {"aupr": value} if math.isfinite(value) else {}


def res_aupr(result: dict[str, Any]) -> float:
    """Pooled AUPR of an evaluator result (raises TypeError when undefined)."""
    return float(result["pooled"]["aupr"])


def _common_setup(cfg: dict[str, Any], run_dir: Path, device: str | None) -> tdist.DistContext:
    dist_cfg = cfg.get("distributed") or {}
    setup_logging(run_dir, int(os.environ.get("RANK", "0")) == 0)  # before setup: its rank line is logged
    ctx = tdist.setup(device, dist_cfg.get("backend", "auto"))
    seed_everything(int(cfg.get("seed", 0)))
    if ctx.device.type == "cpu":
        log.info("device: cpu (%d threads), FP32", torch.get_num_threads())
    else:
        log.info("device: %s, AMP %s", torch.cuda.get_device_name(ctx.device), "on" if cfg.get("amp") else "off")
    return ctx


def _train_state(epoch: int, step: int, optimizer: Any, scheduler: Any, scaler: Any, best: float,
                 best_epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": ckpt.rng_state(), "best_metric": best, "best_epoch": best_epoch,
            "history": history, "sampler_epoch": epoch}


def train_teacher(cfg: dict[str, Any], run_dir: Path, resume: bool = False, show_progress: bool = True,
                  device: str | None = None, stop_after_epochs: int | None = None,
                  init_from: str | Path | None = None) -> Path:
    """Train the segmentation teacher; returns the path of ``best.pt`` (by validation mIoU)."""
    ctx = _common_setup(cfg, run_dir, device)
    tc = cfg["teacher"]
    seed = int(cfg.get("seed", 0))
    train_ds = tdata.open_split(cfg, "train_split")
    val_ds = tdata.open_split(cfg, "val_split")
    spec = train_ds.spec
    model = build_dicnet(ckpt.model_config_from(cfg, spec.num_classes), ckpt.preprocess_from(cfg))
    log_pretrained(model.config)
    if model.config.aux_head is False and float(tc.get("aux_weight") or 0) > 0:
        log.info("model.aux_head is off: the auxiliary loss (weight %s) is not used", tc.get("aux_weight"))
    teacher = model.teacher.to(ctx.device)
    model.to(ctx.device)
    net = tdist.wrap(teacher, ctx, bool((cfg.get("distributed") or {}).get("sync_bn")))
    if net is not teacher:
        model.teacher = tdist.unwrap(net)  # SyncBN conversion may have replaced modules
    augment = tdata.build_augment(cfg, ignore_id=spec.ignore_id)
    loader, sampler, view = tdata.train_loader(train_ds, augment, int(tc["batch_size"]), int(tc.get("workers", 0)),
                                               seed, ctx)
    val_loader = tdata.eval_loader(val_ds, int(tc.get("val_batch_size", tc["batch_size"])),
                                   int(tc.get("workers", 0)), ctx)
    epochs = int(tc["epochs"])
    total = epochs * len(loader)
    optimizer = torch.optim.SGD(net.parameters(), lr=float(tc["lr"]), momentum=float(tc["momentum"]),
                                weight_decay=float(tc["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda_poly(total, float(tc.get("poly_power", 0.9))))
    use_amp = bool(cfg.get("amp", True)) and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, step, best, best_epoch, history = 0, 0, -1.0, -1, []
    found = ckpt.load_resume_state(run_dir) if resume else None
    if resume and found is None:
        log.info("--resume: no %s/last.pt yet, starting fresh", run_dir)
    if found is None and init_from is not None:
        load_init_weights(tdist.unwrap(net), init_from, "teacher")
    if found is not None:
        data, path = found
        tdist.unwrap(net).load_state_dict(data["teacher"])
        start_epoch, step, best, best_epoch, history = _restore_train_state(data, optimizer, scheduler, scaler)
        log.info("resumed from %s after epoch %d (step %d, best mIoU %.4f)", path, start_epoch, step, best)
    criterion = nn.CrossEntropyLoss(ignore_index=int(spec.ignore_id))
    # outlier proxies (training images of the simulator) and labelled anomalies belong to no class: ignored
    untrained = (*spec.outlier_proxy_ids, *spec.anomaly_ids)
    untrained_ids = torch.tensor(untrained, device=ctx.device) if untrained else None
    aux_weight = float(tc.get("aux_weight") or 0.0)
    tb = TensorBoard(run_dir, ctx.is_main)
    log.info("teacher: %d epochs x %d steps, batch %d x %d ranks, network %dx%d, %d train / %d val images",
             epochs, len(loader), tc["batch_size"], ctx.world_size, model.preprocess_config.width,
             model.preprocess_config.height, len(train_ds), len(val_ds))
    last = run_dir / "last.pt"
    stop = epochs if stop_after_epochs is None else min(epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, stop):
        t0 = time.time()
        net.train()
        sampler.set_epoch(epoch)
        view.set_epoch(epoch)
        loss_sum, n = torch.zeros((), dtype=torch.float64), 0
        for images, labels in progress(loader, show_progress and ctx.is_main, desc=f"teacher {epoch + 1}/{epochs}"):
            images = images.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True).long()
            if untrained_ids is not None:
                labels = labels.masked_fill(torch.isin(labels, untrained_ids), int(spec.ignore_id))
            x = preprocess(images, model.preprocess_config)
            with autocast(ctx.device, use_amp):
                out = net(x)
                logits = F.interpolate(out.logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
                loss = criterion(logits.float(), labels)
                if out.aux_logits is not None and aux_weight > 0:
                    aux = F.interpolate(out.aux_logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
                    loss = loss + aux_weight * criterion(aux.float(), labels)
            step = _optimizer_step(loss, optimizer, scaler, scheduler, step, tb, "teacher")
            loss_sum += loss.detach().double().cpu()
            n += 1
        train_loss = _mean_over_ranks(loss_sum, n, ctx)
        val = validate_teacher(model, val_loader, ctx, show_progress and ctx.is_main, spec.anomaly_ids)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_miou": val["miou"],
                  "val_pixel_acc": val["pixel_acc"], "seconds": time.time() - t0, **{
                      f"val_{k}": v for k, v in val.items() if k not in ("miou", "pixel_acc")}}
        history.append(record)
        improved = val["miou"] > best
        if improved:
            best, best_epoch = val["miou"], epoch + 1
        log.info("teacher epoch %d/%d: loss %.4f, val mIoU %.4f, pixel acc %.4f%s (%.0f s)", epoch + 1, epochs,
                 train_loss, val["miou"], val["pixel_acc"],
                 f", val MSP AUPR {val['aupr']:.4f}" if "aupr" in val else "", record["seconds"])
        tb.scalar("teacher/epoch_loss", train_loss, epoch + 1)
        tb.scalar("teacher/val_miou", val["miou"], epoch + 1)
        tb.scalar("teacher/val_aupr_msp", val.get("aupr", float("nan")), epoch + 1)
        if ctx.is_main:
            state = _train_state(epoch + 1, step, optimizer, scheduler, scaler, best, best_epoch, history)
            meta = ckpt.build_metadata(model, spec, cfg, "teacher", {"epoch": epoch + 1, "val_miou": val["miou"],
                                                                     "history": history})
            ckpt.save_stage(last, model, meta, "teacher", state, include_student=False)
            if improved:
                ckpt.save_stage(run_dir / "best.pt", model, meta, "teacher", None, include_student=False)
        tdist.barrier(ctx)
    tb.close()
    log.info("teacher done: best val mIoU %.4f at epoch %d -> %s", best, best_epoch, run_dir / "best.pt")
    return run_dir / "best.pt"


# ----------------------------------------------------------------------------------------------- student


def pair_from_teacher(teacher_path: str | Path, cfg: dict[str, Any]) -> tuple[DiCNet, Any, dict[str, Any]]:
    """A DiCNet whose teacher comes from a checkpoint and whose student follows the config's model section."""
    teacher_model, meta, data = model_from_checkpoint(teacher_path, require_student=False)
    fields = dict(data["model_config"])
    wanted = cfg.get("model") or {}
    for key in (*STUDENT_FIELDS, "scoring_mode"):
        if key in wanted:
            fields[key] = wanted[key]
    for key, value in wanted.items():
        if key not in (*STUDENT_FIELDS, "scoring_mode", "teacher_pretrained") and fields.get(key) != value:
            log.warning("config model.%s=%r differs from the teacher checkpoint's %r: the teacher's is used",
                        key, value, fields.get(key))
    model = build_dicnet(fields, meta.preprocess_config)
    model.teacher.load_state_dict(teacher_model.teacher.state_dict())
    return model, meta, data


def load_init_weights(module: nn.Module, path: str | Path, part: str) -> None:
    """Start a run from the ``part`` ('teacher' or 'student') weights of another checkpoint (fine-tuning, e.g.
    from the shipped model); the optimiser and schedule start fresh. A resumed ``last.pt`` takes precedence."""
    from dicnet_ros.model.checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(path).get(part)
    if state is None:
        raise CheckpointError(f"{path}: holds no {part} weights to start from")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its {part} does not match the model config of this run ({exc})") from exc
    log.info("%s initialised from %s (fresh optimiser and schedule)", part, path)


def _restore_train_state(data: dict[str, Any], optimizer: Any, scheduler: Any,
                         scaler: Any) -> tuple[int, int, float, int, list[dict[str, Any]]]:
    """Optimizer / scheduler / scaler / RNG state of a ``last.pt`` (both loops resume the same way);
    returns (epoch, step, best metric, best epoch, history)."""
    st = data["train_state"]
    optimizer.load_state_dict(st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    scaler.load_state_dict(st["scaler"])
    ckpt.set_rng_state(st["rng"])
    return (int(st["epoch"]), int(st["step"]), float(st["best_metric"]), int(st["best_epoch"]),
            list(st["history"]))


def _optimizer_step(loss: torch.Tensor, optimizer: Any, scaler: Any, scheduler: Any, step: int, tb: Any,
                    stage: str) -> int:
    """One (AMP-scaled) update shared by both training loops; logs loss and lr every 20 steps."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    step += 1
    if step % 20 == 0:
        tb.scalar(f"{stage}/loss", float(loss.detach()), step)
        tb.scalar(f"{stage}/lr", optimizer.param_groups[0]["lr"], step)
    return step


def _mean_over_ranks(loss_sum: torch.Tensor, n: int, ctx: tdist.DistContext) -> float:
    """Mean training loss of the epoch over every rank's batches."""
    totals = torch.stack([loss_sum, torch.tensor(float(n), dtype=torch.float64)]).to(ctx.device)
    totals = tdist.all_reduce_sum(totals, ctx).cpu()
    return float(totals[0]) / max(1.0, float(totals[1]))


@torch.no_grad()
def validate_student(model: DiCNet, student: nn.Module, loader: Any, ctx: tdist.DistContext, show: bool,
                     anomaly_ids: tuple[int, ...] = ()) -> dict[str, float]:
    """Mean distillation MSE on the validation split (+ code-mode AUPR where the split has anomalies)."""
    was = student.training
    student.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    evaluator = _maybe_evaluator(anomaly_ids, (0.0, 1.0))  # created on every rank: all_reduce needs all of them
    for groups in progress(loader, show, desc="val"):
        for images, labels, _ in groups:
            images = images.to(ctx.device)
            x = preprocess(images, model.preprocess_config)
            tf = model.teacher(x).feature.float()
            sf = student(x).float()
            sums[0] += F.mse_loss(sf, tf, reduction="sum").double()
            sums[1] += tf.numel()
            if evaluator is not None and bool(torch.isin(labels, torch.tensor(anomaly_ids)).any()):
                score = restore_size(model.score_features(tf, sf, "code", fusion="none"), model.preprocess_config,
                                     tuple(labels.shape[-2:]))[:, 0]
                for s, lab in zip(score.cpu().numpy(), labels.numpy(), strict=True):
                    evaluator.update(s, lab)
    tdist.all_reduce_sum(sums, ctx)
    student.train(was)
    out = {"loss": float(sums[0] / sums[1].clamp_min(1))}
    out.update(_aupr(evaluator, ctx))
    return out


def distill(cfg: dict[str, Any], teacher_path: str | Path, run_dir: Path, resume: bool = False,
            show_progress: bool = True, device: str | None = None, stop_after_epochs: int | None = None,
            init_from: str | Path | None = None) -> Path:
    """Distil the student from the frozen teacher (Eq. 6); returns ``best.pt`` (lowest val loss), a pair."""
    ctx = _common_setup(cfg, run_dir, device)
    sc = cfg["student"]
    seed = int(cfg.get("seed", 0))
    model, teacher_meta, _ = pair_from_teacher(teacher_path, cfg)
    train_ds = tdata.with_outlier_objects(tdata.open_split(cfg, "train_split"), cfg)
    val_ds = tdata.open_split(cfg, "val_split")
    spec = train_ds.spec
    if list(spec.class_names) != list(teacher_meta.class_names):
        raise ValueError(f"teacher {teacher_path} was trained on classes {teacher_meta.class_names}, "
                         f"the dataset has {list(spec.class_names)}")
    if (cfg.get("input") or {}) and ckpt.preprocess_from(cfg) != model.preprocess_config:
        log.warning("config input size differs from the teacher's; the teacher's %s is used",
                    model.preprocess_config)
    log_pretrained(model.config)
    model.to(ctx.device)
    model.teacher.eval()
    for p in model.teacher.parameters():
        p.requires_grad_(False)
    student = model.student
    net = tdist.wrap(student, ctx, bool((cfg.get("distributed") or {}).get("sync_bn")))
    if net is not student:
        model.student = student = tdist.unwrap(net)
    crop_cfg = dict(cfg)
    crop_cfg["input"] = {"height": model.preprocess_config.height, "width": model.preprocess_config.width}
    augment = tdata.build_augment(crop_cfg, sc.get("augment"), ignore_id=spec.ignore_id)
    loader, sampler, view = tdata.train_loader(train_ds, augment, int(sc["batch_size"]), int(sc.get("workers", 0)),
                                               seed, ctx)
    val_loader = tdata.eval_loader(val_ds, int(sc.get("val_batch_size", sc["batch_size"])),
                                   int(sc.get("workers", 0)), ctx)
    epochs = int(sc["epochs"])
    exposure = OutlierExposure.from_config(sc.get("outlier_exposure"))
    if exposure.enabled:
        log.info("outlier exposure: weight %g, margin %g, %s proxies, pasted shapes in %.0f %% of images",
                 exposure.weight, exposure.margin, "dataset" if spec.outlier_proxy_ids else "no dataset",
                 100 * exposure.paste_probability)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(sc["lr"]), betas=(0.9, 0.999),
                                 weight_decay=float(sc["weight_decay"]))
    scheduler = _student_scheduler(optimizer, sc, epochs * len(loader), len(loader))
    use_amp = bool(cfg.get("amp", True)) and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, step, best, best_epoch, history = 0, 0, math.inf, -1, []
    found = ckpt.load_resume_state(run_dir) if resume else None
    if resume and found is None:
        log.info("--resume: no %s/last.pt yet, starting fresh", run_dir)
    if found is None and init_from is not None:
        load_init_weights(student, init_from, "student")
    if found is not None:
        data, path = found
        student.load_state_dict(data["student"])
        start_epoch, step, best, best_epoch, history = _restore_train_state(data, optimizer, scheduler, scaler)
        log.info("resumed from %s after epoch %d (best val loss %.5f)", path, start_epoch, best)
    tb = TensorBoard(run_dir, ctx.is_main)
    log.info("student: %d epochs x %d steps, batch %d x %d ranks, teacher %s (frozen, eval mode)",
             epochs, len(loader), sc["batch_size"], ctx.world_size, teacher_path)
    stop = epochs if stop_after_epochs is None else min(epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, stop):
        t0 = time.time()
        net.train()
        model.teacher.eval()
        sampler.set_epoch(epoch)
        view.set_epoch(epoch)
        loss_sum, n = torch.zeros((), dtype=torch.float64), 0
        for i, (images, labels) in enumerate(progress(loader, show_progress and ctx.is_main,
                                                      desc=f"student {epoch + 1}/{epochs}")):
            outlier = valid = None
            if exposure.enabled:  # the random pastes depend on (seed, epoch, step, rank) only: resumable
                images, outlier, valid = outlier_batch(images, labels, spec, exposure, (seed, epoch, i, ctx.rank))
                outlier, valid = outlier.to(ctx.device), valid.to(ctx.device)
            images = images.to(ctx.device, non_blocking=True)
            x = preprocess(images, model.preprocess_config)
            with autocast(ctx.device, use_amp):
                with torch.no_grad():
                    target = model.teacher(x).feature
                loss = distillation_loss(net(x).float(), target.float(), exposure, outlier, valid,
                                         model.preprocess_config)
            step = _optimizer_step(loss, optimizer, scaler, scheduler, step, tb, "student")
            loss_sum += loss.detach().double().cpu()
            n += 1
        train_loss = _mean_over_ranks(loss_sum, n, ctx)
        val = validate_student(model, student, val_loader, ctx, show_progress and ctx.is_main, spec.anomaly_ids)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
                  "seconds": time.time() - t0, **({"val_aupr": val["aupr"]} if "aupr" in val else {})}
        history.append(record)
        improved = val["loss"] < best
        if improved:
            best, best_epoch = val["loss"], epoch + 1
        log.info("student epoch %d/%d: loss %.5f, val loss %.5f%s (%.0f s)", epoch + 1, epochs, train_loss,
                 val["loss"], f", val AUPR {val['aupr']:.4f}" if "aupr" in val else "", record["seconds"])
        tb.scalar("student/epoch_loss", train_loss, epoch + 1)
        tb.scalar("student/val_loss", val["loss"], epoch + 1)
        tb.scalar("student/val_aupr", val.get("aupr", float("nan")), epoch + 1)
        if ctx.is_main:
            state = _train_state(epoch + 1, step, optimizer, scheduler, scaler, best, best_epoch, history)
            meta = ckpt.build_metadata(model, spec, cfg, "student", {
                "epoch": epoch + 1, "val_distill_loss": val["loss"], "history": history,
                "teacher_checkpoint": str(teacher_path), "teacher_training": teacher_meta.training.get("config")})
            ckpt.save_stage(run_dir / "last.pt", model, meta, "student", state)
            if improved:
                ckpt.save_stage(run_dir / "best.pt", model, meta, "student", None)
        tdist.barrier(ctx)
    tb.close()
    log.info("student done: best val loss %.5f at epoch %d -> %s", best, best_epoch, run_dir / "best.pt")
    return run_dir / "best.pt"


def outlier_batch(images: torch.Tensor, labels: torch.Tensor, spec: Any, exposure: OutlierExposure,
                  seed: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images with pasted 2-D proxies, outlier pixel mask, valid pixel mask) of one uint8 (N, H, W, 3) batch."""
    outlier = torch.isin(labels, torch.tensor(spec.outlier_proxy_ids or (-1,), dtype=labels.dtype))
    valid = (labels != int(spec.ignore_id)) & ~torch.isin(labels, torch.tensor(spec.anomaly_ids or (-1,),
                                                                               dtype=labels.dtype))
    if exposure.paste_probability > 0:
        batch = images.numpy().copy()
        pasted = paste_outlier_shapes(batch, np.random.default_rng(list(seed)), exposure.paste_probability,
                                      radius=exposure.paste_radius, rows=exposure.paste_rows)
        images, outlier = torch.from_numpy(batch), outlier | torch.from_numpy(pasted)
    return images, outlier, valid | outlier


def _student_scheduler(optimizer: Any, sc: dict[str, Any], total_steps: int, steps_per_epoch: int) -> Any:
    """constant (paper, StreetHazards), step (paper, BDD: x0.1 at given epochs) or cosine (short CPU runs)."""
    kind = str(sc.get("schedule", "constant"))
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind == "step":
        marks = [int(m) * steps_per_epoch for m in sc.get("milestones", [])]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, marks, gamma=float(sc.get("gamma", 0.1)))
    if kind == "cosine":
        floor = float(sc.get("min_lr_ratio", 0.05))
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps))))
    raise ValueError(f"student.schedule must be constant, step or cosine, got {kind!r}")

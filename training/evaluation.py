"""Evaluation of a calibrated pair: DiCNet (paper and code scoring) against MSP / MaxLogit / entropy.

Every map comes from ONE forward pass per image through the model's own preprocessing, is resized to the
label resolution, and goes to one ``AnomalyEvaluator`` per method, so all methods see the same pixels. On a data
set with a component track (the real benchmarks) the published DiCNet score, MSP and MaxLogit also get the
benchmark protocol (``dicnet_ros.metrics.benchmark``: SMIYC pixel definitions and component metrics). A model
with an out-of-domain head also reports the share of frames out of domain and every method's metrics over the
in-domain frames only (``dicnet_ros.metrics.domain``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dicnet_training import data as tdata
from dicnet_training import distributed as tdist
from dicnet_training import report
from dicnet_training.engine import confusion_to_iou, progress, update_confusion

from dicnet_ros.data.benchmark import evaluation_label
from dicnet_ros.metrics import AnomalyEvaluator, ComponentEvaluator, benchmark_metrics
from dicnet_ros.metrics.domain import DomainSplitEvaluator, DomainTally
from dicnet_ros.model.checkpoint import model_from_checkpoint
from dicnet_ros.model.dicnet import SCORE_SETTINGS
from dicnet_ros.model.scoring import baseline_score, minmax_per_image
from dicnet_ros.preprocessing import restore_size

log = logging.getLogger("dicnet_training")

DICNET_METHODS = ("dicnet_paper", "dicnet_code")
BASELINE_METHODS = ("msp", "maxlogit", "entropy")
COMPONENT_BASELINES = ("msp", "maxlogit")  # beside the published DiCNet score in the benchmark protocol


@torch.no_grad()
def score_maps(model: Any, images: torch.Tensor, size: tuple[int, int], minmax: bool = False) -> tuple[
        dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """All methods' (N, H, W) score maps at ``size``, the teacher's class ids and the image-level domain scores
    (N,) (None without a domain head), from one forward pass."""
    x = model.network_input(images)
    t, s = model.teacher(x), model.student(x)
    domain = model.domain_head(model.domain_statistics(x, t)) if model.domain_head is not None else None
    tf, sf, lf = t.feature.float(), s.float(), t.logits.float()
    pp = model.preprocess_config
    maps = {  # the published score in both modes (with the model's fusion, if any)
        "dicnet_paper": model.score_features(tf, sf, "paper", lf),
        "dicnet_code": model.score_features(tf, sf, "code", lf),
    }
    if model.config.score_fusion != "none":  # and the discrepancy alone, to show what the fusion adds
        maps["dicnet_discrepancy"] = model.score_features(tf, sf, None, lf, fusion="none")
    logits = restore_size(t.logits.float(), pp, size)
    out = {k: restore_size(v, pp, size)[:, 0] for k, v in maps.items()}
    if minmax:
        for k in DICNET_METHODS:
            out[f"{k}_minmax"] = minmax_per_image(out[k])
    for b in BASELINE_METHODS:
        out[b] = baseline_score(logits, b)[:, 0]
    return out, logits.argmax(1), domain


def _score_range(name: str, first: torch.Tensor, num_classes: int, calibration: dict[str, Any]) -> tuple[float, float]:
    """Histogram range per method (only used for the streaming pooled path on big sets)."""
    if name == "msp" or name.endswith("_minmax"):
        return 0.0, 1.0
    if name == "entropy":
        return 0.0, math.log(num_classes)
    if name.startswith("dicnet"):
        stats = (calibration.get("score_stats_by_mode") or {}).get(name.split("_")[1], {})
        hi = max(float(stats.get("max", 0.0)) * 20.0, float(first.max()) * 4.0, 1e-6)
        lo = min(0.0, float(first.min()) * 4.0)  # a fused score is standardised: it goes below 0
        return lo, hi
    lo, hi = float(first.min()), float(first.max())
    span = max(hi - lo, 1.0)
    return lo - 2 * span, hi + 2 * span


def evaluate(checkpoint: str | Path, cfg: dict[str, Any], out_dir: str | Path, split: str | None = None,
             minmax: bool | None = None, device: str | None = None, show_progress: bool = True,
             max_images: int | None = None, dataset: Any = None) -> dict[str, Any]:
    """Run the benchmark on a split, write report.md / report.json / roc.png / pr.png / qualitative.png.

    ``dataset`` (e.g. a real benchmark opened by ``dicnet evaluate --data``) replaces the config's data; a data set
    that names a component ``track`` gets the benchmark protocol, and one whose classes are not the model's (every
    benchmark: its labels are only normal / anomaly / void) no teacher mIoU.
    """
    ev = dict(cfg.get("eval") or {})
    split = split or ev.get("split") or cfg["data"].get("test_split", "test")
    minmax = bool(ev.get("minmax", False) if minmax is None else minmax)
    out = Path(out_dir)
    ctx = tdist.setup(device)
    model, meta, _ = model_from_checkpoint(checkpoint, require_student=True)
    model.to(ctx.device)
    if not meta.calibration.get("mu_c"):
        log.warning("%s is not calibrated: paper-mode scores use mu_c = 0 (identical to code mode); run "
                    "`dicnet calibrate` first", checkpoint)
    if dataset is None:
        cfg_split = dict(cfg)
        cfg_split["data"] = {**cfg["data"], "_eval": split}
        ds = tdata.open_split(cfg_split, "_eval")
    else:
        ds, split = dataset, dataset.split
    track, source = getattr(ds, "track", None), ds
    if max_images is not None and max_images < len(ds):
        ds = tdata.Subset(ds, range(max_images))
    spec = ds.spec
    same_classes = list(spec.class_names) == list(meta.class_names)
    if not same_classes and track is None:
        raise ValueError(f"model classes {meta.class_names} differ from the dataset's {list(spec.class_names)}")
    published = f"dicnet_{meta.scoring_mode}"
    components = {m: ComponentEvaluator(track) for m in (published, *COMPONENT_BASELINES)} if track else {}
    k = len(meta.class_names)
    batch = int(ev.get("batch_size", 2))
    loader = tdata.eval_loader(ds, batch, int(ev.get("workers", 0)), ctx)
    evaluators: dict[str, DomainSplitEvaluator] = {}
    domain = DomainTally(meta.domain_threshold if model.domain_head is not None else None)
    conf = torch.zeros(k, k, dtype=torch.float64)
    rng = np.random.default_rng(0)
    per_image_curve = max(1, int(ev.get("curve_pixels", 200_000)) // max(1, len(ds)))
    curve_scores: dict[str, list[np.ndarray]] = {}
    curve_pos: list[np.ndarray] = []
    grid_rows: list[dict[str, np.ndarray]] = []
    want_grid = int(ev.get("qualitative", 4))
    anomaly_ids = np.asarray(spec.anomaly_ids)
    forward_s, n_images, warm = 0.0, 0, False
    first_s, first_n = 0.0, 0  # the first (warm-up) batch: the speed only when it was the only one
    for groups in progress(loader, show_progress and ctx.is_main, desc=f"evaluate {split}"):
        for images, labels, _ in groups:
            images_dev = images.to(ctx.device)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            t0 = time.perf_counter()
            maps, pred, domain_scores = score_maps(model, images_dev, tuple(labels.shape[-2:]), minmax)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            if warm:  # the first batch pays for kernel selection / allocation: not part of the speed
                forward_s += time.perf_counter() - t0
                n_images += images.shape[0]
            else:
                first_s, first_n = time.perf_counter() - t0, images.shape[0]
            warm = True
            maps_np = {m: v.cpu().numpy().astype(np.float32) for m, v in maps.items()}
            pred_np = pred.cpu().numpy()
            labels_np = labels.numpy()
            if same_classes:
                update_confusion(conf, pred.cpu(), labels, k)
            verdicts = [domain.add(None if domain_scores is None else float(domain_scores[i]))
                        for i in range(labels_np.shape[0])]
            for m, v in maps_np.items():
                if m not in evaluators:
                    score_range = _score_range(m, maps[m], k, meta.calibration)
                    evaluators[m] = DomainSplitEvaluator(lambda score_range=score_range: AnomalyEvaluator(
                        spec.anomaly_ids, ignore_ids=(spec.ignore_id,), score_range=score_range,
                        num_bins=int(ev.get("num_bins", 10000)),
                        keep_exact_pooled=bool(track) or bool(ev.get("exact_pooled", True)), per_image=True),
                        eager=ctx.distributed)
                for i in range(v.shape[0]):
                    evaluators[m].update(v[i], labels_np[i], pred_np[i] if same_classes else None, verdicts[i])
                    if m in components:
                        components[m].update(v[i], evaluation_label(labels_np[i], spec))
            for i in range(labels_np.shape[0]):
                lab = labels_np[i].reshape(-1)
                valid = np.flatnonzero(lab != spec.ignore_id)
                pick = rng.choice(valid, min(per_image_curve, valid.size), replace=False) if valid.size else valid
                curve_pos.append(np.isin(lab[pick], anomaly_ids))
                for m, v in maps_np.items():
                    curve_scores.setdefault(m, []).append(v[i].reshape(-1)[pick])
                is_anom = np.isin(labels_np[i], anomaly_ids)
                if len(grid_rows) < want_grid and is_anom.any():
                    grid_rows.append({"image": images[i].numpy(), "label": labels_np[i], "pred": pred_np[i],
                                      "anomaly": is_anom, "msp": maps_np["msp"][i],
                                      "dicnet": maps_np[f"dicnet_{meta.scoring_mode}"][i]})
    if ctx.distributed:
        for pair in evaluators.values():
            for e in pair.evaluators():
                e.all_reduce()
        conf = tdist.all_reduce_sum(conf.to(ctx.device), ctx).cpu()
    domain_summary = domain.summary()
    if ctx.distributed and domain_summary["available"]:  # counts of all ranks; the score range stays per rank
        counts = tdist.all_reduce_sum(torch.tensor([domain.frames, domain.out_of_domain], device=ctx.device), ctx)
        frames, out_of_domain = (int(v) for v in counts.cpu())
        domain_summary.update(frames=frames, out_of_domain=out_of_domain, share_out_of_domain=out_of_domain /
                              max(frames, 1), score_mean=None, score_max=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results_by_method = {m: e.all.compute() for m, e in evaluators.items()}
        in_domain_by_method = {m: e.in_domain.compute() if e.split else results_by_method[m]
                               for m, e in evaluators.items() if e.in_domain is not None}
    benchmark = {m: benchmark_metrics(evaluators[m].all, c) for m, c in components.items()}
    for c in components.values():
        c.close()
    miou, per_class = confusion_to_iou(conf) if same_classes else (float("nan"), [])
    first = next(iter(results_by_method.values()))
    results: dict[str, Any] = {
        "info": {
            "checkpoint": str(checkpoint),
            "data_root": str(source.root if dataset is not None else cfg["data"]["root"]),
            "split": split, "track": track,
            "ground_truth": source.describe() if hasattr(source, "describe") else None,
            "num_images": len(ds), "anomaly_ids": list(spec.anomaly_ids), "ignore_id": spec.ignore_id,
            "class_names": list(meta.class_names),
            "network_size": f"{model.preprocess_config.width}x{model.preprocess_config.height}",
            "teacher_backbone": model.config.teacher_backbone, "student_backbone": model.config.student_backbone,
            "feature_channels": model.config.feature_channels, "teacher_norm": model.config.teacher_norm,
            "scoring_mode": meta.scoring_mode, "score_fusion": model.config.score_fusion,
            **{k: getattr(model.config, k) for k in SCORE_SETTINGS},
            "threshold": meta.threshold, "device": str(ctx.device),
            "batch_size": batch, "minmax": minmax, "calibrated": bool(meta.calibration.get("mu_c")),
            "world_size": ctx.world_size,
        },
        "methods": {m: {"per_image": r["per_image"], "pooled": r["pooled"], "efpr": r["efpr"], "cfpr": r["cfpr"]}
                    for m, r in results_by_method.items()},
        # the out-of-domain alarm: share of frames out of domain, and the metrics over the in-domain frames only
        "domain": domain_summary,
        "methods_in_domain": {m: {"per_image": r["per_image"], "pooled": r["pooled"], "efpr": r["efpr"],
                                  "cfpr": r["cfpr"], "num_images": r["num_images"]}
                              for m, r in in_domain_by_method.items()},
        "segmentation": {"miou": miou, "per_class_iou": per_class,
                         "pixel_acc": float(conf.diag().sum() / conf.sum().clamp_min(1))} if same_classes else None,
        "benchmark": benchmark or None,
        "speed": ({"images_per_second": n_images / forward_s, "forward_seconds": forward_s,
                   "images_timed": n_images, "excludes": "first batch (warm-up)"} if n_images else
                  {"images_per_second": first_n / first_s if first_s > 0 else float("nan"), "forward_seconds": first_s,
                   "images_timed": first_n, "excludes": "nothing (one batch, warm-up included)"}),
        "per_image_images": first["per_image"]["num_images"],
        "per_image_skipped": first["per_image"]["skipped_images"],
        "pooled_method": first["pooled"].get("method"),
    }
    for m in (*results["methods"].values(), *results["methods_in_domain"].values()):
        m["pooled"].pop("histogram", None)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        md, js = report.write_report(results, out)
        pos = np.concatenate(curve_pos) if curve_pos else np.zeros(0, bool)
        if pos.any() and (~pos).any():
            samples = {m: np.concatenate(v) for m, v in curve_scores.items() if not m.endswith("_minmax")}
            report.plot_curves(samples, pos, out,
                               aupr={m: r["pooled"].get("aupr") for m, r in results["methods"].items()},
                               auroc={m: r["pooled"].get("auroc") for m, r in results["methods"].items()})
        if grid_rows:
            # the runtime's colour range (0 .. in-distribution p99.9 or 1.5 x threshold), as the node shows it
            report.qualitative_grid(grid_rows, k, spec.ignore_id, out / "qualitative.png",
                                    meta.score_range if meta.calibration else None)
        log.info("report written to %s and %s", md, js)
        print(report.markdown_table(results))
        if benchmark:
            print(report.benchmark_section(results))
        print(report.domain_section(results).split("\n", 2)[2])  # the alarm's line and the in-domain table
        if same_classes:
            print(f"teacher mIoU (known classes) {100 * miou:.2f} %")
        speed = results["speed"]
        print(f"{speed['images_per_second']:.2f} images/s" + ("" if n_images else " (one batch: warm-up included)"))
    return results

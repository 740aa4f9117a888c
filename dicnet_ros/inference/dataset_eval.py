"""``evaluate_dataset``: any loaded model (ONNX, TensorRT engine, checkpoint) over a labelled data set, through the
one inference interface (``AnomalyModel.infer_batch``), with the real benchmarks' protocol.

Why beside the PyTorch evaluation of ``dicnet evaluate --checkpoint``: what runs on the vehicle is the exported graph
(possibly INT8); evaluating that file on Road Anomaly or SMIYC measures what the node publishes. Methods: ``dicnet``
(the model's published ``anomaly_score``) and the baselines the graph exports (``msp``, ``maxlogit``), all at the
label resolution. Metrics per method: both pixel protocols of ``AnomalyEvaluator`` (anomaly-seg's per-image mean,
pooled) and ``benchmark_metrics`` (SMIYC pixel definitions + component metrics at the best-F1 threshold) when the
data set names a component track (every benchmark reader does; ``track=`` sets one for other data).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.data.benchmark import ANOMALY, VOID, evaluation_label
from dicnet_ros.metrics import AnomalyEvaluator, ComponentEvaluator, benchmark_metrics, benchmark_table
from dicnet_ros.metrics.domain import DomainSplitEvaluator, DomainTally, summary_line

log = logging.getLogger(__name__)

DICNET = "dicnet"
METHOD_TITLES = {DICNET: "DiCNet (published score)", "msp": "MSP (1 - max softmax)",
                 "maxlogit": "MaxLogit (-max logit)"}


def _score_range(name: str, first: np.ndarray, model: Any) -> tuple[float, float]:
    """Histogram range (used only past the exact pixel limit): the model's calibrated one for DiCNet, [0, 1] for MSP,
    the first map's range widened twice its span each way otherwise."""
    if name == DICNET:
        lo, hi = model.metadata.score_range
        span = max(hi - lo, 1e-6)
        return min(lo, float(first.min())) - 2 * span, max(hi, float(first.max())) + 20 * span
    if name == "msp":
        return 0.0, 1.0
    lo, hi = float(first.min()), float(first.max())
    span = max(hi - lo, 1.0)
    return lo - 2 * span, hi + 2 * span


def evaluate_dataset(model: Any, dataset: Any, out_dir: str | Path | None = None, batch_size: int = 1,
                     max_images: int | None = None, track: str | None = None, progress: bool = True,
                     spill_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``model`` over ``dataset`` and return (and with ``out_dir`` write report.json / report.md) the metrics."""
    from tqdm import tqdm

    track = track or getattr(dataset, "track", None)
    spec = dataset.spec
    count = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if count == 0:
        raise ValueError(f"{dataset!r} has no images to evaluate")
    pixels: dict[str, DomainSplitEvaluator] = {}  # all frames, and those the out-of-domain alarm lets through
    domain = DomainTally(model.domain_threshold)
    components: dict[str, ComponentEvaluator] = {}
    infer_ms: list[float] = []
    try:
        for start in tqdm(range(0, count, batch_size), desc="evaluate", unit="batch", disable=not progress):
            samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
            t0 = time.perf_counter()
            results = model.infer_batch([s.image for s in samples])
            infer_ms.append((time.perf_counter() - t0) * 1e3 / len(samples))
            for sample, res in zip(samples, results, strict=True):
                label = evaluation_label(sample.label, spec)
                verdict = domain.add(res.domain_score)
                maps = {DICNET: res.anomaly_score, **res.extras}
                for name, score in maps.items():
                    score = np.asarray(score, np.float32)
                    if score.shape != label.shape:
                        raise ValueError(f"{name} map of {sample.path} is {score.shape[1]}x{score.shape[0]}, its "
                                         f"label {label.shape[1]}x{label.shape[0]}: the model must answer at the "
                                         "input resolution")
                    if name not in pixels:
                        score_range = _score_range(name, score, model)
                        pixels[name] = DomainSplitEvaluator(lambda score_range=score_range: AnomalyEvaluator(
                            (ANOMALY,), (VOID,), score_range, num_bins=100_000, keep_exact_pooled=True))
                        if track is not None:
                            components[name] = ComponentEvaluator(track, spill_dir=spill_dir)
                    pixels[name].update(score, label, None, verdict)
                    if name in components:
                        components[name].update(score, label)
        results_out = _results(model, dataset, count, track, pixels, components, infer_ms, domain)
    finally:
        for evaluator in components.values():
            evaluator.close()
    if out_dir is not None:
        write_dataset_report(results_out, out_dir)
    return results_out


def _results(model: Any, dataset: Any, count: int, track: str | None, pixels: dict[str, DomainSplitEvaluator],
             components: dict[str, ComponentEvaluator], infer_ms: list[float], domain: DomainTally) -> dict[str, Any]:
    def protocols(evaluator: AnomalyEvaluator) -> dict[str, Any]:
        res = evaluator.compute()
        res["pooled"].pop("histogram", None)
        return {"per_image": res["per_image"], "pooled": res["pooled"]}

    methods = {name: protocols(split.all) for name, split in pixels.items()}
    in_domain = {name: protocols(split.in_domain) if split.split else methods[name]
                 for name, split in pixels.items() if split.in_domain is not None}
    describe = getattr(dataset, "describe", None)
    return {
        "info": {"model": model.describe(), "threshold": model.threshold, "data_root": str(dataset.root),
                 "kind": dataset.kind, "split": dataset.split, "num_images": count, "track": track,
                 "ground_truth": describe() if describe else {"anomaly_ids": list(dataset.spec.anomaly_ids),
                                                              "ignore_id": dataset.spec.ignore_id}},
        "methods": methods,
        "domain": domain.summary(),
        **({"in_domain": in_domain} if in_domain else {}),
        "benchmark": {name: benchmark_metrics(split.all, components.get(name)) for name, split in pixels.items()},
        "speed": {"inference_ms_per_image_p50": float(np.median(infer_ms)) if infer_ms else None,
                  "batches": len(infer_ms)},
    }


def report_markdown(results: dict[str, Any]) -> str:
    """report.md: provenance, the benchmark table, the anomaly-seg per-image protocol beside it."""
    info = results["info"]
    gt = info["ground_truth"]
    lines = [
        "# DiCNet evaluation on a labelled data set", "",
        f"- model: `{info['model']['model']}` ({info['model']['backend']} on {info['model']['device']}, "
        f"{info['model']['precision']})",
        f"- data: `{info['data_root']}` ({info['kind']}, split `{info['split']}`, {info['num_images']} images); "
        f"ground truth {gt.get('encoding', gt)}",
        f"- component track: {info['track'] or 'none (no component metrics)'}",
        f"- {summary_line(results['domain'], split_metrics='in_domain' in results)}", "",
        "## Benchmark protocol (all numbers in %)", "",
        benchmark_table(results["benchmark"], METHOD_TITLES), "",
        "Pixels: pooled over every frame's non-void pixels (frames without anomalies add negatives); AP = step-wise "
        "average precision; FPR95 = FPR at the highest threshold reaching 95 % TPR. Components (SMIYC): sIoU per "
        "ground-truth component, PPV per predicted component, mean F1 over sIoU thresholds 0.25..0.75, at the "
        "threshold of the best pooled pixel F1.", "",
        "## Per-image protocol (anomaly-seg: mean over images with anomaly pixels)", "",
        "| Method | AUROC | AUPR | FPR95 | images (skipped) |", "|---|---|---|---|---|",
    ]
    for name, res in results["methods"].items():
        pi = res["per_image"]
        cells = " | ".join("n/a" if pi.get(k) is None else f"{100 * pi[k]:.2f}" for k in ("auroc", "aupr", "fpr95"))
        lines.append(f"| {METHOD_TITLES.get(name, name)} | {cells} | {pi['num_images']} ({pi['skipped_images']}) |")
    if results.get("in_domain"):
        lines += ["", "## In-domain frames only (pooled, %)", "", "| Method | AUROC | AUPR | FPR95 |",
                  "|---|---|---|---|"]
        for name, res in results["in_domain"].items():
            pooled = res["pooled"]
            cells = " | ".join("n/a" if pooled.get(k) is None else f"{100 * pooled[k]:.2f}"
                               for k in ("auroc", "aupr", "fpr95"))
            lines.append(f"| {METHOD_TITLES.get(name, name)} | {cells} |")
    return "\n".join(lines) + "\n"


def write_dataset_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """report.json (every number) and report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "report.md").write_text(report_markdown(results))
    return out / "report.md", out / "report.json"

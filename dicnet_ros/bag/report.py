"""What a bag evaluation shows people: the Markdown report (metrics of both protocols for DiCNet and the
baselines, overall and per anomaly family, latency, files), the latency summary, the ROC / precision-recall
curves and the qualitative strip (image | GT | score | overlay). matplotlib is imported only inside the plotting
functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.bag.accumulate import BASELINE_TOPIC_NAMES, BASELINES, DICNET, METHOD_LABELS, METHODS
from dicnet_ros.bag.ground_truth import GroundTruth
from dicnet_ros.bag.integrity import Integrity
from dicnet_ros.data.label_encoding import ANOMALY, VOID
from dicnet_ros.metrics.domain import summary_line

# ------------------------------------------------------------------------------------------ report & plots


def format_pct(value: Any) -> str:
    """A [0, 1] metric as a percent string, or 'n/a'."""
    return "n/a" if value is None else f"{100.0 * float(value):.2f}"


def _metric_rows(lead: Sequence[str], results: Mapping[str, Any]) -> list[str]:
    """Table rows (both protocols) of every method in ``results`` that has a result, after the ``lead`` cells."""
    rows = []
    for name in METHODS:
        if results.get(name) is None and name != DICNET:
            continue
        for proto in ("per_image", "pooled"):
            vals = (results.get(name) or {}).get(proto, {})
            rows.append("| " + " | ".join([*lead, METHOD_LABELS[name], proto.replace("_", "-"),
                                           format_pct(vals.get("auroc")), format_pct(vals.get("aupr")),
                                           format_pct(vals.get("fpr95"))]) + " |")
    return rows


def _missing_baselines(meta: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    """One 'n/a' line per baseline without a result, saying why (no such model output / no recorded topic)."""
    lines = []
    for name in BASELINES:
        if metrics.get(name) is not None:
            continue
        if meta.get("score_topic"):
            why = f"the bag has no `{BASELINE_TOPIC_NAMES[name]}` topic beside the score topic"
        else:
            why = f"the model exposes no `{name}` score map; an older export? `dicnet export` adds it"
        lines.append(f"{METHOD_LABELS[name]}: n/a ({why}).")
    return lines


def _family_table(by_family: Mapping[str, Any]) -> list[str]:
    """The per-family section: one block of rows per group (families, then mixed)."""
    lines = [
        "", "## Per anomaly family", "",
        "Frames whose visible anomalies all belong to one family (from the simulator's manifest, recorded by "
        "`make-bag`); *mixed* = frames with anomalies of several families. Frames without family information "
        "count only in the overall numbers.",
        "",
        "| family | frames | method | protocol | AUROC ↑ | AUPR ↑ | FPR95 ↓ |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, results in by_family.items():
        lines += _metric_rows([group, str(results["num_frames"])], results)
    return lines


def render_report(meta: Mapping[str, Any], ground_truth: GroundTruth | None = None,
                  integrity: Integrity | None = None) -> str:
    """Markdown report: ground truth (convention and why, pairing, what was left out), metrics table (both
    protocols; DiCNet, MSP and MaxLogit), per anomaly family when the bag says which family each frame shows,
    latency, integrity checks, files."""
    lines = ["# DiCNet bag evaluation", "", f"- bag: `{meta['bag']}`"]
    for key in ("image_topic", "score_topic", "gt_topic"):
        if meta.get(key):
            lines.append(f"- {key.replace('_', ' ')}: `{meta[key]}`")
    for name, topic in (meta.get("baseline_topics") or {}).items():
        lines.append(f"- {METHOD_LABELS.get(name, name)} topic: `{topic}`")
    if meta.get("model"):
        lines.append(f"- model: `{meta['model'].get('model')}` ({meta['model'].get('backend')}, "
                     f"{meta['model'].get('device')}), threshold {meta['threshold']:.6g}")
    lines.append(f"- frames: {meta['num_frames']}, evaluated (paired with a ground-truth mask): "
                 f"{meta['num_evaluated']}")
    if ground_truth is not None:
        lines += ["", "## Ground truth", "", *(f"- {line}" for line in ground_truth.lines())]
    metrics = meta.get("metrics")
    lines += ["", "## Metrics", ""]
    if not metrics:
        lines.append("No ground-truth topic (--gt-topic ''): only the outputs and the latency were produced.")
    else:
        lines += [
            "Percent; anomaly pixels are the positives; ground truth as above.",
            "Per-image = mean over images with both anomaly and normal pixels (anomaly-seg protocol); "
            "pooled = all pixels at once.",
            "",
            "| method | protocol | AUROC ↑ | AUPR ↑ | FPR95 ↓ |",
            "|---|---|---|---|---|",
            *_metric_rows([], metrics),
        ]
        missing = _missing_baselines(meta, metrics)
        if missing:
            lines += ["", *missing]
        if metrics.get("in_domain"):
            domain = meta.get("domain") or {}
            frames = (domain.get("frames") or 0) - (domain.get("out_of_domain") or 0)
            lines += ["", f"In-domain frames only ({frames} of {domain.get('frames')} frames; out-of-domain alarm "
                          "below):", "", "| method | protocol | AUROC ↑ | AUPR ↑ | FPR95 ↓ |", "|---|---|---|---|---|",
                      *_metric_rows([], metrics["in_domain"])]
        at = metrics.get("mask_at_threshold")
        if at:
            lines += ["", f"Mask at the threshold: precision {format_pct(at['precision'])}, recall "
                          f"{format_pct(at['recall'])}, FPR {format_pct(at['fpr'])}, IoU {format_pct(at['iou'])}."]
        if metrics.get("benchmark"):
            from dicnet_ros.metrics import benchmark_table

            lines += ["", f"## Benchmark protocol (component track {meta.get('component_track')})", "",
                      benchmark_table(metrics["benchmark"], METHOD_LABELS), "",
                      "Pixels pooled over non-void pixels, FPR95 at the highest threshold reaching 95 % TPR; "
                      "components (SMIYC sIoU, PPV, mean F1 over sIoU 0.25..0.75) at each method's best pixel-F1 "
                      "threshold."]
        if metrics.get("by_family"):
            lines += _family_table(metrics["by_family"])
    if meta.get("model"):
        lines += ["", "## Out-of-domain alarm", "", summary_line(meta.get("domain") or {"available": False})]
    lat = meta.get("latency", {})
    lines += ["", "## Latency", "", "| stage | p50 ms | p95 ms | mean ms | FPS |", "|---|---|---|---|---|"]
    for stage, vals in lat.items():
        if vals.get("count"):
            lines.append(f"| {stage.replace('_', ' ')} | {vals['p50_ms']:.2f} | {vals['p95_ms']:.2f} | "
                         f"{vals['mean_ms']:.2f} | {vals['fps']:.1f} |")
    if meta.get("output_bag"):
        topics = ", ".join(f"`{t}` ({e})" for t, e in meta.get("output_topics", {}).items())
        lines += ["", "## Files", "", f"- output bag `{meta['output_bag']}`: input topics + {topics}, "
                                      "original stamps"]
    for name in meta.get("files", []):
        lines.append(f"- ![{name}]({name})")
    if integrity is not None:
        lines += ["", "## Integrity of the input bag", "", *(f"- {line}" for line in integrity.lines())]
    return "\n".join(lines) + "\n"


def latency_summary(values_ms: Sequence[float]) -> dict[str, Any]:
    """p50 / p95 / mean / max in ms and the FPS the mean allows."""
    if not values_ms:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None, "fps": None}
    arr = np.asarray(values_ms, np.float64)
    mean = float(arr.mean())
    return {"count": int(arr.size), "p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "mean_ms": mean, "max_ms": float(arr.max()), "fps": 1000.0 / mean if mean > 0 else None}


class _Strip:
    """Collects a few evenly spaced frames for the qualitative PNG (image | GT | score | overlay)."""

    def __init__(self, total: int, count: int) -> None:
        picks = np.linspace(0, max(total - 1, 0), num=min(count, total), dtype=int) if total > 0 else []
        self.wanted: set[int] = {int(i) for i in picks}
        self.rows: dict[int, dict[str, Any]] = {}

    def add(self, index: int, stamp: int, tiles: dict[str, np.ndarray],
            domain: tuple[float | None, bool | None] = (None, None)) -> None:
        """Keep a wanted frame's tiles; ``domain`` = (domain score, in domain) marks out-of-domain frames."""
        if index in self.wanted:
            self.rows[stamp] = {"index": index, **tiles, "domain": domain}

    def add_gt(self, stamp: int, gt: np.ndarray) -> None:
        if stamp in self.rows:
            rgb = np.zeros((*gt.shape, 3), np.uint8)
            rgb[gt == ANOMALY] = (255, 255, 255)
            rgb[gt == VOID] = (90, 90, 160)
            self.rows[stamp]["gt"] = rgb


def write_curves(evaluators: Mapping[str, Any], out_dir: Path) -> list[str]:
    """ROC and PR curves (pooled, from each evaluator's score histogram) as PNGs; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_roc, ax_roc = plt.subplots(figsize=(5, 4.5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 4.5))
    try:
        for name, ev in evaluators.items():
            try:
                curve = ev.histogram.curve()
                curve.check_binary()
            except ValueError:
                continue
            tps, fps = curve.tps.astype(np.float64), curve.fps.astype(np.float64)
            tpr, fpr = tps / curve.num_positive, fps / curve.num_negative
            precision = tps / np.maximum(tps + fps, 1)
            label = METHOD_LABELS.get(name, name.upper())
            ax_roc.plot(np.r_[0, fpr], np.r_[0, tpr], label=label)
            ax_pr.plot(tpr, precision, label=label)
        ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (pooled pixels)")
        ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall (pooled pixels)", ylim=(0, 1.02))
        for fig, ax, name in ((fig_roc, ax_roc, "roc.png"), (fig_pr, ax_pr, "pr.png")):
            ax.legend(loc="best")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=100)
    finally:
        plt.close(fig_roc)
        plt.close(fig_pr)
    return ["roc.png", "pr.png"]


def write_strip(strip: _Strip, path: Path) -> None:
    """Qualitative grid: one row per selected frame, columns image / GT mask / score colour / overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(strip.rows.values(), key=lambda r: r["index"])
    cols = [c for c in ("image", "gt", "score", "overlay") if any(c in r for r in rows)]
    titles = {"image": "image", "gt": "ground truth", "score": "anomaly score", "overlay": "overlay"}
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3 * len(cols), 2.2 * len(rows)), squeeze=False)
    try:
        for r, row in enumerate(rows):
            for c, col in enumerate(cols):
                ax = axes[r][c]
                ax.axis("off")
                if col in row:
                    ax.imshow(row[col])
                if r == 0:
                    ax.set_title(titles[col])
            axes[r][0].text(-0.02, 0.5, f"#{row['index']}", transform=axes[r][0].transAxes, ha="right", va="center")
            score, in_domain = row.get("domain", (None, None))
            if in_domain is False:  # the alarm: a red frame round the row and what it said
                for ax in axes[r]:
                    ax.axis("on")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for spine in ax.spines.values():
                        spine.set(color="red", linewidth=3)
                axes[r][0].set_xlabel(f"OUT OF DOMAIN (score {score:.1f})", color="red", fontsize=8,
                                      fontweight="bold")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)

"""Evaluation report: Markdown/JSON tables, ROC and precision-recall plots, qualitative grid (matplotlib Agg).

Plot colours come from matplotlib colormaps here; the ROS visualisation module has its own palettes and the
two are to be unified later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.metrics.domain import summary_line

METHOD_TITLES = {
    "dicnet_paper": "DiCNet (paper: Eq. 7 with mu_c)",
    "dicnet_code": "DiCNet (code: mean_c D^2)",
    "dicnet_paper_minmax": "DiCNet (paper, per-image min-max)",
    "dicnet_code_minmax": "DiCNet (code, per-image min-max)",
    "dicnet_discrepancy": "DiCNet discrepancy alone (model's mode, no fusion)",
    "msp": "MSP (1 - max softmax)",
    "maxlogit": "MaxLogit (-max logit)",
    "entropy": "Entropy (softmax)",
}


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100.0 * float(value):.2f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The paper-Table-1 style table (per-image and pooled protocols, E-/C-FPR at recall 95/85/75)."""
    methods = results["methods"]
    fused = results.get("info", {}).get("score_fusion", "none") != "none"
    lines = [
        "| Method | per-image AUROC ↑ | per-image AUPR ↑ | per-image FPR95 ↓ | pooled AUROC ↑ | pooled AUPR ↑ | "
        "pooled FPR95 ↓ | E-FPR 95/85/75 ↓ | C-FPR 95/85/75 ↓ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in methods.items():
        pi, po = res["per_image"], res["pooled"]
        efpr = "/".join(_pct((res.get("efpr") or {}).get(k)) for k in ("95", "85", "75"))
        cfpr = "/".join(_pct((res.get("cfpr") or {}).get(k)) for k in ("95", "85", "75"))
        title = METHOD_TITLES.get(name, name)
        if fused and name.startswith("dicnet_") and name != "dicnet_discrepancy":
            title += " + MaxLogit fusion"
        lines.append(f"| {title} | {_pct(pi.get('auroc'))} | {_pct(pi.get('aupr'))} | "
                     f"{_pct(pi.get('fpr95'))} | {_pct(po.get('auroc'))} | {_pct(po.get('aupr'))} | "
                     f"{_pct(po.get('fpr95'))} | {efpr} | {cfpr} |")
    return "\n".join(lines)


def benchmark_section(results: dict[str, Any]) -> str:
    """The benchmark protocol's table (``dicnet_ros.metrics.benchmark``) with how the ground truth was read."""
    from dicnet_ros.metrics import benchmark_table

    info = results["info"]
    gt = info.get("ground_truth") or {}
    return f"""## Benchmark protocol ({gt.get('kind', 'data set')}, component track {info['track']}; all numbers in %)

{benchmark_table(results["benchmark"], METHOD_TITLES)}

Ground truth: {gt.get('encoding', 'the data set spec')}. Pixels: pooled over every frame's non-void pixels (frames
without anomalies add negatives), AP = step-wise average precision, FPR95 = FPR at the highest threshold reaching
95 % TPR. Components (SMIYC): sIoU per ground-truth component, PPV per predicted component, mean F1 over the sIoU
thresholds 0.25..0.75, at each method's best pooled pixel-F1 threshold.
"""


def _segmentation_section(results: dict[str, Any]) -> str:
    seg = results["segmentation"]
    if seg is None:
        return ("## Teacher segmentation\n\nNot measured: the data set's labels are anomaly masks, not the model's "
                "classes.\n")
    iou_rows = "\n".join(f"| {c} | {_pct(v)} |" for c, v in zip(results["info"]["class_names"], seg["per_class_iou"],
                                                                     strict=True))
    return f"""## Teacher segmentation (known classes)

mIoU {_pct(seg['miou'])} %, pixel accuracy {_pct(seg['pixel_acc'])} %.

| class | IoU % |
|---|---|
{iou_rows}
"""


def domain_section(results: dict[str, Any]) -> str:
    """The out-of-domain alarm: share of frames out of domain and the table over the in-domain frames only."""
    summary = results.get("domain") or {"available": False}
    lines = ["## Out-of-domain alarm", "", summary_line(summary)]
    in_domain = results.get("methods_in_domain") or {}
    if in_domain:
        frames = summary["frames"] - summary["out_of_domain"]
        lines += ["", f"In-domain frames only ({frames} of {summary['frames']}; all numbers in %):", "",
                  markdown_table({**results, "methods": in_domain})]
    return "\n".join(lines)


def markdown_report(results: dict[str, Any]) -> str:
    """Full report.md: provenance, the table, the out-of-domain alarm, segmentation quality, speed, protocol
    notes."""
    info = results["info"]
    benchmark = benchmark_section(results) if results.get("benchmark") else ""
    return f"""# DiCNet evaluation

- checkpoint: `{info['checkpoint']}`
- dataset: `{info['data_root']}` split `{info['split']}` ({info['num_images']} images, anomaly ids
  {info['anomaly_ids']}, ignore id {info['ignore_id']} excluded)
- network input {info['network_size']}; scores at the label resolution via the model's own preprocessing
- model: teacher {info['teacher_backbone']}, student {info['student_backbone']}, {info['feature_channels']}
  channels, teacher feature `{info['teacher_norm']}`; shipped scoring mode `{info['scoring_mode']}`
- device {info['device']}: {results['speed']['images_per_second']:.2f} images/s (teacher + student forward and all score
  maps at label size from one pass, batch {info['batch_size']}, timing excludes {results['speed']['excludes']})

## Anomaly segmentation (all numbers in %)

{markdown_table(results)}

Protocols: **per-image** = anomaly-seg protocol (metrics per image, mean over the {results['per_image_images']}
images that contain anomaly pixels; {results['per_image_skipped']} skipped); **pooled** = one computation over
all pixels of the split ({results['pooled_method']}). AUPR = average precision (step-wise, sklearn).
FPR95 = FPR at the operating point whose recall is closest to 95 %. E-FPR / C-FPR = FPR on normal pixels that the
teacher classifies wrongly / correctly, at the pooled thresholds reaching 95/85/75 % recall (paper Table 1).
DiCNet `paper` = Eq. 7, mean over channels of (D - mu_c)^2 with the calibrated mu_c; `code` = mean over channels
of D^2 (official code). Min-max rows (if any) normalise each image's map to [0, 1] (official code's last step):
it leaves per-image numbers unchanged and changes pooled ones.

{benchmark}
{domain_section(results)}

{_segmentation_section(results)}"""


def write_report(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """report.json (all numbers) and report.md (the tables)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False, default=float), encoding="utf-8")
    md_path = out / "report.md"
    md_path.write_text(markdown_report(results), encoding="utf-8")
    return md_path, json_path


def roc_pr(scores: np.ndarray, positives: np.ndarray) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and precision-recall points from scores; anomaly = positive, higher score = anomalous."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order].astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    p, n = max(tps[-1], 1.0), max(fps[-1], 1.0)
    return {"fpr": np.r_[0.0, fps / n], "tpr": np.r_[0.0, tps / p], "recall": tps / p,
            "precision": tps / np.maximum(tps + fps, 1.0)}


def plot_curves(samples: dict[str, np.ndarray], positives: np.ndarray, out_dir: str | Path,
                aupr: dict[str, float] | None = None, auroc: dict[str, float] | None = None) -> list[Path]:
    """roc.png and pr.png, one curve per method, from a pixel subsample (pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    curves = {name: roc_pr(s, positives) for name, s in samples.items()}
    colors = matplotlib.colormaps["tab10"]
    paths = []
    for kind, (xk, yk, xl, yl) in {"roc": ("fpr", "tpr", "false-positive rate", "true-positive rate"),
                                   "pr": ("recall", "precision", "recall", "precision")}.items():
        fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
        for i, (name, c) in enumerate(curves.items()):
            metric = (auroc if kind == "roc" else aupr) or {}
            label = METHOD_TITLES.get(name, name)
            if name in metric and metric[name] is not None:
                label += f" ({'AUROC' if kind == 'roc' else 'AUPR'} {100 * metric[name]:.1f})"
            ax.plot(c[xk], c[yk], color=colors(i % 10), lw=1.4, label=label)
        if kind == "pr":
            ax.axhline(float(positives.mean()), color="grey", ls=":", lw=1, label="chance")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(f"{'ROC' if kind == 'roc' else 'Precision-recall'} (pooled, {positives.size} sampled pixels)",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "upper right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def qualitative_grid(rows: list[dict[str, np.ndarray]], num_classes: int, ignore_id: int, path: str | Path,
                     dicnet_range: tuple[float, float] | None = None) -> Path:
    """Image | ground truth | predicted classes | anomaly ground truth | MSP map | DiCNet map, one row per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = matplotlib.colormaps["tab20"]
    titles = ["image", "ground truth", "teacher classes", "anomaly ground truth", "MSP", "DiCNet"]
    fig, axes = plt.subplots(len(rows), 6, figsize=(15, 1.9 * len(rows) + 0.4), dpi=100, squeeze=False)

    def colour(labels: np.ndarray) -> np.ndarray:
        rgb = cmap(np.minimum(labels, num_classes) % 20)[..., :3]
        rgb[labels == ignore_id] = 0.0
        rgb[(labels >= num_classes) & (labels != ignore_id)] = (1.0, 0.0, 1.0)  # anomalies in magenta
        return rgb

    for r, row in enumerate(rows):
        panels = [row["image"], colour(row["label"]), colour(row["pred"]), row["anomaly"].astype(np.float32)]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel, cmap="gray" if c == 3 else None, vmin=0, vmax=1 if c == 3 else None)
        axes[r, 4].imshow(row["msp"], cmap="inferno", vmin=0, vmax=1)
        lo, hi = dicnet_range or (float(row["dicnet"].min()), float(row["dicnet"].max()))
        axes[r, 5].imshow(row["dicnet"], cmap="inferno", vmin=lo, vmax=hi)
        for c in range(6):
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(titles[c], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

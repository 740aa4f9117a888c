"""The real road benchmarks' protocol (SMIYC, Fishyscapes, LostAndFound, Road Anomaly) on top of the pooled curve:
pixel AUROC / AP / FPR95 with void pixels excluded, and the component metrics at the best-pixel-F1 threshold.

What SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0 computes (``metrics/pixel_classification*.py``) and how it
is reproduced here:

* Pixels: every frame of the set counts, frames without anomaly pixels add negatives only; void (255) is excluded.
  One pooled curve over all ROI pixels: AP = sum (R_k - R_k-1) P_k (the sklearn step sum), AUROC = trapezoid,
  FPR95 = the FPR at the highest threshold whose TPR reaches 95 % (``OperatingCurve.fpr_at_first_recall``), best F1
  and its threshold. The benchmark bins each frame's scores at up to 384 quantiles per class (an approximation);
  here the curve is exact over all pixels (``AnomalyEvaluator`` keeps them up to its pixel limit, beyond it the
  fine histogram, whose error bounds the report carries). Scores stay float32 (the benchmark stores float16).
* Components (``dicnet_ros.metrics.components``): at the best-F1 threshold of the same method and set, which is
  known only once every frame has been seen, so ``ComponentEvaluator`` keeps each frame's score and label cropped
  to the ROI's bounding box (nothing outside it can form a component) in memory up to a budget and in a temporary
  folder beyond it, and evaluates them at the end. As in the benchmark the prediction is ``score > threshold``.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.metrics.components import TRACK_RULES, ComponentCounts, ComponentRules, frame_components
from dicnet_ros.metrics.evaluator import AnomalyEvaluator

__all__ = ["ComponentEvaluator", "benchmark_metrics", "benchmark_table", "smiyc_pixel_metrics"]

DEFAULT_MEMORY_BUDGET = 256 << 20  # bytes of kept frames per evaluator before they go to a temporary folder


def smiyc_pixel_metrics(evaluator: AnomalyEvaluator) -> dict[str, Any]:
    """The benchmark's pixel metrics from an evaluator's pooled curve (None values when undefined)."""
    try:
        curve, how = evaluator.pooled_curve()
        f1, threshold = curve.best_f1()
        return {"auroc": curve.auroc(), "aupr": curve.average_precision(), "fpr95": curve.fpr_at_first_recall(0.95),
                "best_f1": f1, "best_f1_threshold": threshold, "num_positive": curve.num_positive,
                "num_negative": curve.num_negative, "curve": how}
    except ValueError as exc:  # no anomaly pixels, or no normal pixels, in the whole set
        return {"auroc": None, "aupr": None, "fpr95": None, "best_f1": None, "best_f1_threshold": None,
                "error": str(exc)}


class ComponentEvaluator:
    """Keeps every frame (score map + evaluation label, cropped to the ROI) for the component metrics of one
    method; ``compute(threshold)`` evaluates them (steps in ``dicnet_ros.metrics.components``)."""

    def __init__(self, track: str, memory_budget: int = DEFAULT_MEMORY_BUDGET, spill_dir: str | Path | None = None,
                 rules: ComponentRules | None = None):
        if track not in TRACK_RULES:
            raise ValueError(f"unknown component track {track!r}; expected one of {tuple(TRACK_RULES)}")
        self.track = track
        self.rules = rules or TRACK_RULES[track]  # other rules only for worked examples on tiny maps
        self.memory_budget = int(memory_budget)
        self.spill_dir = spill_dir
        self._frames: list[tuple[np.ndarray, np.ndarray] | Path] = []
        self._bytes = 0
        self._empty_frames = 0
        self._folder: Path | None = None
        self._cleanup: Any = None

    def update(self, score: np.ndarray, label: np.ndarray) -> None:
        """Keep one frame; ``label`` is the evaluation label (0 normal, 1 anomaly, 255 void) at the score's size."""
        if score.shape != label.shape:
            raise ValueError(f"score map {score.shape} and label {label.shape} differ in size")
        rows, cols = np.flatnonzero((label != 255).any(axis=1)), np.flatnonzero((label != 255).any(axis=0))
        if rows.size == 0:
            self._empty_frames += 1  # no ROI: no component either way
            return
        crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        pair = (np.array(score[crop], np.float32), np.array(label[crop], np.uint8))
        size = pair[0].nbytes + pair[1].nbytes
        if self._bytes + size <= self.memory_budget:
            self._frames.append(pair)
            self._bytes += size
            return
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="dicnet-components-", dir=self.spill_dir))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._folder, True)
        path = self._folder / f"{len(self._frames):07d}.npz"
        np.savez(path, score=pair[0], label=pair[1])
        self._frames.append(path)

    def __len__(self) -> int:
        return len(self._frames) + self._empty_frames

    def _iter_frames(self):
        for item in self._frames:
            if isinstance(item, Path):
                with np.load(item) as data:
                    yield data["score"], data["label"]
            else:
                yield item

    def compute(self, threshold: float) -> ComponentCounts:
        """Counts of this process's frames at ``threshold`` (all-reduce them for a distributed run)."""
        counts = ComponentCounts()
        for score, label in self._iter_frames():
            counts.add(frame_components(score, label, threshold, self.rules))
        counts.frames += self._empty_frames
        return counts

    def close(self) -> None:
        """Delete the temporary folder (also happens when the evaluator is garbage-collected)."""
        self._frames, self._bytes = [], 0
        if self._cleanup is not None:
            self._cleanup()


def benchmark_metrics(pixels: AnomalyEvaluator, components: ComponentEvaluator | None = None) -> dict[str, Any]:
    """{'pixel': smiyc_pixel_metrics, 'components': ComponentCounts.compute() at the best-F1 threshold (None
    without components or without a threshold), 'track': ...}. Call ``pixels.all_reduce()`` first under DDP."""
    pixel = smiyc_pixel_metrics(pixels)
    out: dict[str, Any] = {"pixel": pixel, "components": None, "track": components.track if components else None}
    if components is not None and pixel["best_f1_threshold"] is not None:
        counts = components.compute(pixel["best_f1_threshold"]).all_reduce()
        out["components"] = counts.compute()
    return out


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.2f}"


def benchmark_table(results: dict[str, dict[str, Any]], titles: dict[str, str] | None = None) -> str:
    """Markdown table of ``{method: benchmark_metrics(...)}``: the benchmark's leaderboard columns, in %."""
    titles = titles or {}
    lines = ["| Method | AUROC ↑ | AP ↑ | FPR95 ↓ | sIoU gt ↑ | PPV ↑ | mean F1 ↑ | best pixel F1 (threshold) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        px, comp = res["pixel"], res.get("components") or {}
        threshold = px.get("best_f1_threshold")
        best = f"{_pct(px.get('best_f1'))} ({threshold:.4g})" if threshold is not None else "n/a"
        lines.append(f"| {titles.get(name, name)} | {_pct(px.get('auroc'))} | {_pct(px.get('aupr'))} | "
                     f"{_pct(px.get('fpr95'))} | {_pct(comp.get('siou'))} | {_pct(comp.get('ppv'))} | "
                     f"{_pct(comp.get('mean_f1'))} | {best} |")
    return "\n".join(lines)

"""Exact anomaly-segmentation metrics on one operating curve: AUROC, AUPR (AP), FPR@recall.

Anomaly pixels are the **positives**. The definitions reproduce hendrycks/anomaly-seg (anom_utils.py) exactly:

* AUROC = ``sklearn.metrics.roc_auc_score`` (trapezoid over the distinct score thresholds, so ties count 1/2).
* AUPR  = ``sklearn.metrics.average_precision_score`` (step-wise AP, *not* the trapezoid).
* FPR95 = ``fpr_and_fdr_at_recall``: the operating point whose recall is *closest* to 95 % (``argmin |recall -
  0.95|``; among equally close points the one with the lowest threshold, as the reference's reversed argmin
  does), then ``FP / #negatives``.

The exact path here (one sort of the pixels) and the streaming ``ScoreHistogram`` both build an ``OperatingCurve``,
so every metric is implemented once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_RECALL_LEVELS",
    "AnomalyScores",
    "OperatingCurve",
    "anomaly_masks",
    "anomaly_metrics",
    "binary_anomaly_metrics",
    "fpr_at_recall",
    "operating_curve",
    "recall_key",
    "threshold_at_recall",
]

DEFAULT_RECALL_LEVELS: tuple[float, ...] = (0.95, 0.85, 0.75)

# Per-pixel class codes shared by the exact and the histogram paths (one bincount / one cumsum per code).
_NEG_UNKNOWN = 0  # normal pixel, no teacher prediction given
_NEG_CORRECT = 1  # normal pixel the teacher classifies correctly (C)
_NEG_ERROR = 2  # normal pixel the teacher classifies wrongly (E)
_POS = 3  # anomaly pixel
_NUM_CODES = 4


def recall_key(level: float) -> str:
    """JSON key of a recall level (0.95 -> "95"), so outputs read like the paper's column names."""
    return f"{round(level * 100):d}"


@dataclass(frozen=True)
class AnomalyScores:
    """Threshold-free metrics of one evaluation; frozen so a reported number cannot be edited later."""

    auroc: float
    aupr: float
    fpr95: float
    num_positive: int
    num_negative: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain-Python dict for JSON logs."""
        return {
            "auroc": float(self.auroc),
            "aupr": float(self.aupr),
            "fpr95": float(self.fpr95),
            "num_positive": int(self.num_positive),
            "num_negative": int(self.num_negative),
        }


@dataclass(frozen=True)
class OperatingCurve:
    """Cumulative counts at each distinct threshold, highest threshold first.

    Both the exact path (thresholds = distinct scores) and the histogram path (thresholds = lower bin edges of
    non-empty bins) produce this, so every metric is implemented once. A pixel is predicted anomalous at
    threshold ``t`` iff ``score >= t``. ``fps_error``/``fps_correct`` count the E/C normal pixels above the
    threshold (``None`` when no teacher prediction was given).
    """

    thresholds: NDArray[np.float64]
    tps: NDArray[np.int64]
    fps: NDArray[np.int64]
    fps_error: NDArray[np.int64] | None = None
    fps_correct: NDArray[np.int64] | None = None

    @property
    def num_positive(self) -> int:
        """Number of anomaly pixels."""
        return int(self.tps[-1])

    @property
    def num_negative(self) -> int:
        """Number of normal pixels."""
        return int(self.fps[-1])

    def check_binary(self) -> None:
        """Fail loudly: every metric here is undefined without both classes."""
        if self.num_positive == 0:
            raise ValueError("no anomaly (positive) pixels: AUROC/AUPR/FPR are undefined")
        if self.num_negative == 0:
            raise ValueError("no normal (negative) pixels: AUROC/AUPR/FPR are undefined")

    def auroc(self) -> float:
        """Trapezoid over the distinct thresholds (= sklearn roc_auc_score), in exact integer counts."""
        self.check_binary()
        tps = self.tps.astype(np.float64)
        d_fp = self.fps.astype(np.float64)
        d_fp[1:] -= d_fp[:-1].copy()
        tp_sum = tps.copy()
        tp_sum[1:] += tps[:-1]
        return float(np.dot(d_fp, tp_sum) / (2.0 * self.num_positive * self.num_negative))

    def average_precision(self) -> float:
        """Step-wise AP = sum_k (R_k - R_{k-1}) P_k (= sklearn average_precision_score)."""
        self.check_binary()
        tps = self.tps.astype(np.float64)
        d_tp = tps.copy()
        d_tp[1:] -= tps[:-1]
        precision = tps / (tps + self.fps)
        return float(np.dot(d_tp, precision) / self.num_positive)

    def cutoff_index(self, recall_level: float = 0.95) -> int:
        """Index of the anomaly-seg operating point: closest recall, lowest threshold among equally close.

        Mirrors ``fpr_and_fdr_at_recall``: the curve is cut at the first point of full recall, reversed, and
        ``np.argmin`` takes the first minimum of the reversed array, i.e. the last one in threshold order. The
        reference's appended (recall 1, fps 0) point can never win (the reversed array already starts at recall
        1), so it is left out. Recall is computed with the same float64 division so ties break identically.
        """
        self.check_binary()
        last_ind = int(np.searchsorted(self.tps, self.tps[-1]))
        recall = self.tps[: last_ind + 1] / self.tps[-1]
        j = int(np.argmin(np.abs(recall[::-1] - recall_level)))
        return last_ind - j

    def fpr_at_recall(self, recall_level: float = 0.95) -> float:
        """FP / #negatives at the anomaly-seg operating point."""
        return float(self.fps[self.cutoff_index(recall_level)] / self.num_negative)

    def threshold_at_recall(self, recall_level: float = 0.95) -> float:
        """Score threshold of the operating point (anomalous iff score >= threshold)."""
        return float(self.thresholds[self.cutoff_index(recall_level)])

    def fpr_at_first_recall(self, recall_level: float = 0.95) -> float:
        """FPR at the HIGHEST threshold whose recall reaches ``recall_level`` (SMIYC's ``tpr95_fpr``:
        ``searchsorted(tpr, 0.95)`` on its curve), not the closest point as anomaly-seg picks."""
        self.check_binary()
        k = int(np.searchsorted(self.tps / self.tps[-1], recall_level))
        return float(self.fps[min(k, self.fps.size - 1)] / self.num_negative)

    def best_f1(self) -> tuple[float, float]:
        """(F1, threshold) of the operating point with the highest pixel F1 = 2 TP / (2 TP + FP + FN), the highest
        threshold among ties (SMIYC's ``best_f1`` / ``best_f1_threshold``: ``nanargmax`` from the top)."""
        self.check_binary()
        tps = self.tps.astype(np.float64)
        f1 = 2 * tps / (tps + self.fps + self.num_positive)
        k = int(np.argmax(f1))
        return float(f1[k]), float(self.thresholds[k])

    def error_conditioned_fpr(self, recall_level: float = 0.95) -> tuple[float | None, float | None]:
        """(E-FPR, C-FPR) at the operating point; ``None`` where that group is empty or was not tracked."""
        k = self.cutoff_index(recall_level)
        out: list[float | None] = []
        for cum in (self.fps_error, self.fps_correct):
            out.append(None if cum is None or cum[-1] == 0 else float(cum[k] / cum[-1]))
        return out[0], out[1]

    def scores(self) -> AnomalyScores:
        """AUROC, AP and FPR95 from the one shared curve."""
        return AnomalyScores(
            auroc=self.auroc(),
            aupr=self.average_precision(),
            fpr95=self.fpr_at_recall(0.95),
            num_positive=self.num_positive,
            num_negative=self.num_negative,
        )


# --------------------------------------------------------------------------------------------- exact path


def _to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, lists and (CPU or CUDA) torch tensors without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_scores(scores: ArrayLike) -> np.ndarray:
    """Flatten scores to float32/float64 (no copy when already float) and reject NaN, which breaks sorting."""
    s = _to_numpy(scores).reshape(-1)
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s


def _curve_from_codes(scores: np.ndarray, codes: np.ndarray, track_errors: bool) -> OperatingCurve:
    """One sort, then cumulative counts at the last index of each group of tied scores.

    The tie order inside a group does not matter (only group ends are read), so the fast unstable sort gives the
    same counts as the reference's mergesort.
    """
    if scores.size == 0:
        raise ValueError("no pixels to evaluate")
    order = np.argsort(scores)[::-1]
    s = scores[order]
    c = codes[order]
    ends = np.flatnonzero(s[1:] != s[:-1])
    ends = np.append(ends, s.size - 1)
    tps = np.cumsum(c == _POS, dtype=np.int64)[ends]
    fps = ends.astype(np.int64) + 1 - tps
    fps_error = fps_correct = None
    if track_errors:
        fps_error = np.cumsum(c == _NEG_ERROR, dtype=np.int64)[ends]
        fps_correct = np.cumsum(c == _NEG_CORRECT, dtype=np.int64)[ends]
    return OperatingCurve(s[ends].astype(np.float64), tps, fps, fps_error, fps_correct)


def operating_curve(scores: ArrayLike, is_positive: ArrayLike, is_error: ArrayLike | None = None) -> OperatingCurve:
    """Exact curve over all given pixels; ``is_error`` marks normal pixels the teacher gets wrong (E)."""
    s = _as_scores(scores)
    pos = _to_numpy(is_positive).reshape(-1).astype(bool, copy=False)
    if pos.size != s.size:
        raise ValueError(f"scores ({s.size}) and labels ({pos.size}) have different sizes")
    codes = np.where(pos, _POS, _NEG_UNKNOWN).astype(np.uint8)
    if is_error is not None:
        err = _to_numpy(is_error).reshape(-1).astype(bool, copy=False)
        if err.size != s.size:
            raise ValueError(f"scores ({s.size}) and is_error ({err.size}) have different sizes")
        codes[~pos] = np.where(err[~pos], _NEG_ERROR, _NEG_CORRECT)
    return _curve_from_codes(s, codes, track_errors=is_error is not None)


def anomaly_masks(
    labels: ArrayLike, anomaly_ids: Iterable[int], ignore_ids: Iterable[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """(is_anomaly, is_valid) masks; overlapping anomaly/ignore ids are an error, not a silent choice."""
    anomaly = np.asarray(list(anomaly_ids), dtype=np.int64)
    ignore = np.asarray(list(ignore_ids), dtype=np.int64)
    if anomaly.size == 0:
        raise ValueError("anomaly_ids must not be empty")
    if np.intersect1d(anomaly, ignore).size:
        raise ValueError(f"ids {np.intersect1d(anomaly, ignore).tolist()} are both anomaly and ignore ids")
    lab = _to_numpy(labels)
    is_anomaly = np.isin(lab, anomaly)
    is_valid = ~np.isin(lab, ignore) if ignore.size else np.ones(lab.shape, dtype=bool)
    return is_anomaly, is_valid


def binary_anomaly_metrics(scores: ArrayLike, is_positive: ArrayLike) -> AnomalyScores:
    """AUROC / AP / FPR95 from a boolean positive mask (one sort shared by the three)."""
    return operating_curve(scores, is_positive).scores()


def anomaly_metrics(
    scores: ArrayLike, labels: ArrayLike, anomaly_ids: Iterable[int], ignore_ids: Iterable[int] = ()
) -> AnomalyScores:
    """Exact AUROC / AP / FPR95 of score arrays of any shape; pixels whose label is in ``ignore_ids`` are dropped.

    Raises ValueError when there are no anomaly or no normal pixels left.
    """
    s = _as_scores(scores)
    is_anomaly, is_valid = anomaly_masks(labels, anomaly_ids, ignore_ids)
    if is_anomaly.size != s.size:
        raise ValueError(f"scores ({s.size}) and labels ({is_anomaly.size}) have different sizes")
    valid = is_valid.reshape(-1)
    return binary_anomaly_metrics(s[valid], is_anomaly.reshape(-1)[valid])


def fpr_at_recall(
    scores: ArrayLike, is_positive: ArrayLike, recall_levels: Sequence[float] = DEFAULT_RECALL_LEVELS
) -> dict[str, float]:
    """anomaly-seg FPR at each recall level, keyed "95"/"85"/"75"."""
    curve = operating_curve(scores, is_positive)
    return {recall_key(r): curve.fpr_at_recall(r) for r in recall_levels}


def threshold_at_recall(scores: ArrayLike, is_positive: ArrayLike, recall_level: float = 0.95) -> float:
    """Score threshold of the anomaly-seg operating point closest to ``recall_level`` (anomalous iff >=)."""
    return operating_curve(scores, is_positive).threshold_at_recall(recall_level)


def _curve_summary(curve: OperatingCurve, recall_levels: Sequence[float]) -> dict[str, Any]:
    """FPR / threshold / E-FPR / C-FPR per recall level, JSON-ready."""
    out: dict[str, Any] = {"fpr": {}, "threshold": {}, "efpr": {}, "cfpr": {}}
    for r in recall_levels:
        key = recall_key(r)
        out["fpr"][key] = curve.fpr_at_recall(r)
        out["threshold"][key] = curve.threshold_at_recall(r)
        out["efpr"][key], out["cfpr"][key] = curve.error_conditioned_fpr(r)
    out["num_error"] = None if curve.fps_error is None else int(curve.fps_error[-1])
    out["num_correct"] = None if curve.fps_correct is None else int(curve.fps_correct[-1])
    return out

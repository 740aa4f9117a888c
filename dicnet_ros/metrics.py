"""Pixel-wise anomaly-segmentation metrics: AUROC, AUPR (AP), FPR@recall, E-/C-FPR.

Anomaly pixels are the **positives**. The definitions reproduce hendrycks/anomaly-seg (anom_utils.py) exactly:

* AUROC = ``sklearn.metrics.roc_auc_score`` (trapezoid over the distinct score thresholds, so ties count 1/2).
* AUPR  = ``sklearn.metrics.average_precision_score`` (step-wise AP, *not* the trapezoid).
* FPR95 = ``fpr_and_fdr_at_recall``: the operating point whose recall is *closest* to 95 % (``argmin |recall -
  0.95|``; among equally close points the one with the lowest threshold, as the reference's reversed argmin
  does), then ``FP / #negatives``.

Two protocols are always reported, by name, because published numbers mix them (anomaly-seg issue #21):

* ``PER_IMAGE`` -- the anomaly-seg StreetHazards protocol: metrics per image over its pixels, images without
  anomaly pixels (or without normal pixels) are skipped and counted, then the mean over the remaining images.
* ``POOLED`` -- one computation over all pixels of the set (exact, or from a constant-memory histogram).

numpy is the only runtime dependency; torch is imported lazily for the distributed reduction only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_RECALL_LEVELS",
    "PER_IMAGE",
    "POOLED",
    "PROTOCOLS",
    "AnomalyEvaluator",
    "AnomalyScores",
    "OperatingCurve",
    "ScoreHistogram",
    "anomaly_masks",
    "anomaly_metrics",
    "binary_anomaly_metrics",
    "error_conditioned_fpr",
    "fpr_at_recall",
    "operating_curve",
    "recall_key",
    "threshold_at_recall",
]

PER_IMAGE = "per_image"
POOLED = "pooled"
PROTOCOLS = (PER_IMAGE, POOLED)
DEFAULT_RECALL_LEVELS: tuple[float, ...] = (0.95, 0.85, 0.75)
DEFAULT_EXACT_PIXEL_LIMIT = 200_000_000

# Per-pixel class codes shared by the exact and the histogram paths (one bincount / one cumsum per code).
_NEG_UNKNOWN = 0  # normal pixel, no teacher prediction given
_NEG_CORRECT = 1  # normal pixel the teacher classifies correctly (C)
_NEG_ERROR = 2  # normal pixel the teacher classifies wrongly (E)
_POS = 3  # anomaly pixel
_NUM_CODES = 4

Spacing = Literal["linear", "log"]


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


def _error_codes(labels: np.ndarray, predicted: np.ndarray | None, is_anomaly: np.ndarray) -> np.ndarray:
    """Per-pixel code (anomaly / E / C / unknown) from labels, teacher predictions and the anomaly mask."""
    codes = np.full(labels.shape, _NEG_UNKNOWN, dtype=np.uint8)
    if predicted is not None:
        codes[:] = np.where(predicted != labels, _NEG_ERROR, _NEG_CORRECT)
    codes[is_anomaly] = _POS
    return codes


def error_conditioned_fpr(
    scores: ArrayLike,
    labels: ArrayLike,
    predicted_labels: ArrayLike,
    anomaly_ids: Iterable[int],
    ignore_ids: Iterable[int] = (),
    recall_levels: Sequence[float] = DEFAULT_RECALL_LEVELS,
) -> dict[str, Any]:
    """E-FPR / C-FPR (DiCNet Table 1), exact, over all given pixels (pooled).

    Definition: normal pixels are those neither anomalous nor ignored. They split into E (teacher prediction
    != label) and C (prediction == label). ``t_r`` is the anomaly-seg operating point for recall ``r`` on the
    anomaly pixels (closest recall, as for FPR95). Then ``E-FPR_r = #{E : score >= t_r} / #E`` and
    ``C-FPR_r = #{C : score >= t_r} / #C``; ``FPR_r`` is their pixel-weighted mean. A group with no pixels gives
    ``None``. The teacher prediction must come from its real logits (not the official code's doubled BN affine).
    """
    s = _as_scores(scores)
    lab = _to_numpy(labels).reshape(-1)
    pred = _to_numpy(predicted_labels).reshape(-1)
    if not (s.size == lab.size == pred.size):
        raise ValueError(f"size mismatch: scores {s.size}, labels {lab.size}, predictions {pred.size}")
    is_anomaly, is_valid = anomaly_masks(lab, anomaly_ids, ignore_ids)
    codes = _error_codes(lab, pred, is_anomaly)[is_valid]
    curve = _curve_from_codes(s[is_valid], codes, track_errors=True)
    return _curve_summary(curve, recall_levels)


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


# --------------------------------------------------------------------------------------- streaming path


def _torch_all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum an int64/float64 vector over torch.distributed ranks; identity when not distributed."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # torch is optional: without it there is nothing to reduce over
        return values
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def _distributed_world() -> tuple[Any, int] | None:
    """The torch.distributed module and world size when a process group is up, else None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist, dist.get_world_size()


class ScoreHistogram:
    """Constant-memory pooled curve: fixed-bin histograms of positive, negative, E- and C-negative scores.

    Bins are ``num_bins`` equal steps of ``[lo, hi]`` (``spacing="linear"``) or of ``[log lo, log hi]``
    (``"log"``, for positive heavy-tailed scores such as the raw DiCNet distance). Scores below ``lo`` go to the
    first bin and scores above ``hi`` to the last; both are counted (``clamped_below``/``clamped_above``) so a too
    small range is visible. The bin index is a monotone function of the score, so **the histogram metrics are
    exactly the exact metrics of the quantised scores**: quantising only turns pixels that share a bin into ties.
    That gives bounds computable from the histogram itself (``error_bounds()``), with ``p_b``/``n_b`` the
    positives/negatives of bin ``b`` and ``P``/``N`` the totals:

    * AUROC: only (positive, negative) pairs inside one bin change, each by at most 1/2:
      ``|dAUROC| <= sum_b p_b n_b / (2 P N)`` (about ``1/(2 num_bins)`` for spread-out continuous scores).
    * AP: each bin's positive steps get the precision at the bin's end instead of their own; both lie in
      ``[(TP0+1)/(TP0+1+FP0+n_b), (TP0+p_b)/(TP0+p_b+FP0)]`` (``TP0, FP0`` = counts above the bin), so
      ``|dAP| <= sum_b p_b/P * (that interval's width)``.
    * FPR@r: the exact operating point lies between the histogram edges next to the chosen one, so the error is
      at most the negative mass of one bin, ``max(n_k, n_k+1)/N``; only when the chosen edge ends a run of bins
      without positives (same recall, the reference picks the lowest threshold) does the whole run count.
    """

    def __init__(
        self,
        score_range: tuple[float, float] = (0.0, 1.0),
        num_bins: int = 10_000,
        spacing: Spacing = "linear",
    ) -> None:
        lo, hi = float(score_range[0]), float(score_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"score_range must be finite with lo < hi, got {score_range}")
        if spacing not in ("linear", "log"):
            raise ValueError(f"spacing must be 'linear' or 'log', got {spacing!r}")
        if spacing == "log" and lo <= 0:
            raise ValueError(f"log spacing needs lo > 0, got {lo}")
        if int(num_bins) < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.lo, self.hi, self.num_bins, self.spacing = lo, hi, int(num_bins), spacing
        a, b = (math.log(lo), math.log(hi)) if spacing == "log" else (lo, hi)
        self._a, self._scale = a, self.num_bins / (b - a)
        self.reset()

    def reset(self) -> None:
        """Zero all counts (e.g. at the start of each validation epoch)."""
        self.counts = np.zeros((self.num_bins, _NUM_CODES), dtype=np.int64)
        self.clamped_below = 0
        self.clamped_above = 0
        self._reduced = False

    @property
    def edges(self) -> NDArray[np.float64]:
        """The ``num_bins + 1`` bin edges in score units."""
        t = np.linspace(0.0, 1.0, self.num_bins + 1)
        if self.spacing == "log":
            return np.exp(math.log(self.lo) + t * (math.log(self.hi) - math.log(self.lo)))
        return self.lo + t * (self.hi - self.lo)

    @property
    def total(self) -> int:
        """Number of pixels counted."""
        return int(self.counts.sum())

    def bin_index(self, scores: np.ndarray) -> NDArray[np.intp]:
        """Monotone score -> bin map (clamped); every step is a correctly rounded monotone float operation."""
        x = scores.astype(np.float64, copy=False)
        if self.spacing == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.log(np.maximum(x, 0.0))  # <= 0 -> -inf -> first bin
        u = (x - self._a) * self._scale
        return np.clip(u, 0, self.num_bins - 1).astype(np.intp)

    def update_codes(self, scores: np.ndarray, codes: np.ndarray) -> None:
        """Add pixels given as flat scores and class codes (one bincount for all four histograms)."""
        if scores.size == 0:
            return
        self.clamped_below += int(np.count_nonzero(scores < self.lo))
        self.clamped_above += int(np.count_nonzero(scores > self.hi))
        flat = self.bin_index(scores) * _NUM_CODES + codes
        self.counts += np.bincount(flat, minlength=self.num_bins * _NUM_CODES).reshape(-1, _NUM_CODES)

    def update(self, scores: ArrayLike, is_positive: ArrayLike, is_error: ArrayLike | None = None) -> None:
        """Add pixels; ``is_error`` (teacher wrong) is read on normal pixels only, for E-/C-FPR."""
        s = _as_scores(scores)
        pos = _to_numpy(is_positive).reshape(-1).astype(bool, copy=False)
        if pos.size != s.size:
            raise ValueError(f"scores ({s.size}) and labels ({pos.size}) have different sizes")
        codes = np.full(s.size, _NEG_UNKNOWN, dtype=np.uint8)
        if is_error is not None:
            err = _to_numpy(is_error).reshape(-1).astype(bool, copy=False)
            if err.size != s.size:
                raise ValueError(f"scores ({s.size}) and is_error ({err.size}) have different sizes")
            codes[:] = np.where(err, _NEG_ERROR, _NEG_CORRECT)
        codes[pos] = _POS
        self.update_codes(s, codes)

    def _check_compatible(self, other: ScoreHistogram) -> None:
        if (self.lo, self.hi, self.num_bins, self.spacing) != (other.lo, other.hi, other.num_bins, other.spacing):
            raise ValueError("cannot merge histograms with different range, bin count or spacing")

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """Add another histogram's counts (same binning) in place; returns self."""
        self._check_compatible(other)
        self.counts += other.counts
        self.clamped_below += other.clamped_below
        self.clamped_above += other.clamped_above
        return self

    def state_vector(self) -> NDArray[np.int64]:
        """All counts as one int64 vector (what gets summed across ranks)."""
        return np.concatenate([self.counts.reshape(-1), [self.clamped_below, self.clamped_above]])

    def load_state_vector(self, vec: np.ndarray) -> None:
        """Inverse of ``state_vector``."""
        n = self.num_bins * _NUM_CODES
        self.counts = np.asarray(vec[:n], dtype=np.int64).reshape(self.num_bins, _NUM_CODES).copy()
        self.clamped_below, self.clamped_above = int(vec[n]), int(vec[n + 1])

    def all_reduce(self) -> ScoreHistogram:
        """Sum counts over torch.distributed ranks (no-op when not distributed); refuses to run twice."""
        if _distributed_world() is None:
            return self
        if self._reduced:
            raise RuntimeError("histogram already all-reduced; a second reduction would multiply the counts")
        self.load_state_vector(_torch_all_reduce_sum(self.state_vector()))
        self._reduced = True
        return self

    def curve(self) -> OperatingCurve:
        """Operating curve at the lower edges of the non-empty bins, highest bin first."""
        rev = self.counts[::-1]
        nonempty = rev.sum(axis=1) > 0
        if not nonempty.any():
            raise ValueError("no pixels to evaluate")
        cum = np.cumsum(rev, axis=0)[nonempty]
        thresholds = self.edges[:-1][::-1][nonempty]
        tps = cum[:, _POS]
        fps = cum[:, _NEG_UNKNOWN] + cum[:, _NEG_CORRECT] + cum[:, _NEG_ERROR]
        track = bool(cum[-1, _NEG_ERROR] + cum[-1, _NEG_CORRECT] > 0)
        if not track:
            return OperatingCurve(thresholds, tps, fps)
        return OperatingCurve(thresholds, tps, fps, cum[:, _NEG_ERROR].copy(), cum[:, _NEG_CORRECT].copy())

    def error_bounds(self, recall_levels: Sequence[float] = DEFAULT_RECALL_LEVELS) -> dict[str, Any]:
        """Upper bounds of |histogram - exact| for AUROC, AP and FPR@r (see the class docstring)."""
        rev = self.counts[::-1]
        rev = rev[rev.sum(axis=1) > 0]
        p = rev[:, _POS].astype(np.float64)
        n = rev[:, :_POS].sum(axis=1).astype(np.float64)
        big_p, big_n = p.sum(), n.sum()
        if big_p == 0 or big_n == 0:
            raise ValueError("no anomaly or no normal pixels in the histogram")
        tp0 = np.cumsum(p) - p
        fp0 = np.cumsum(n) - n
        hi_prec = (tp0 + p) / np.maximum(tp0 + p + fp0, 1.0)
        lo_prec = (tp0 + 1) / (tp0 + 1 + fp0 + n)
        ap_bound = float(np.sum(np.where(p > 0, p / big_p * (hi_prec - lo_prec), 0.0)))
        curve = self.curve()
        fpr_bounds = {}
        for r in recall_levels:
            k = curve.cutoff_index(r)
            # first edge with the same recall as k; the exact point lies after edge j and up to edge k + 1
            first_same = int(np.searchsorted(curve.tps, curve.tps[k]))
            fps_before = curve.fps[first_same - 1] if first_same > 0 else 0
            fps_after = curve.fps[min(k + 1, curve.fps.size - 1)]
            fpr_bounds[recall_key(r)] = float(max(curve.fps[k] - fps_before, fps_after - curve.fps[k]) / big_n)
        return {
            "auroc": float(np.dot(p, n) / (2.0 * big_p * big_n)),
            "aupr": ap_bound,
            "fpr": fpr_bounds,
        }

    def compute(self, recall_levels: Sequence[float] = DEFAULT_RECALL_LEVELS) -> dict[str, Any]:
        """Pooled metrics from the histogram plus the clamping counts and error bounds."""
        curve = self.curve()
        scores = curve.scores()
        out: dict[str, Any] = {"method": "histogram", **scores.as_dict(), **_curve_summary(curve, recall_levels)}
        out["histogram"] = self.describe()
        out["error_bound"] = self.error_bounds(recall_levels)
        return out

    def describe(self) -> dict[str, Any]:
        """Binning and clamping facts for the report."""
        return {
            "num_bins": self.num_bins,
            "range": [self.lo, self.hi],
            "spacing": self.spacing,
            "clamped_below": self.clamped_below,
            "clamped_above": self.clamped_above,
        }


# ----------------------------------------------------------------------------------------------- evaluator

_PER_IMAGE_SUMS = ("auroc", "aupr", "fpr95")


class AnomalyEvaluator:
    """The one evaluator for training validation, ``dicnet evaluate`` and rosbag evaluation.

    Feed one image at a time with ``update``; ``compute`` reports both protocols:

    * per image (anomaly-seg): exact metrics per image, mean over images that have both anomaly and normal
      pixels; skipped images are counted. Per-image E/C-FPR use each image's own threshold (as DiCNet's code).
    * pooled: exact over stored pixels when ``keep_exact_pooled`` (until ``exact_pixel_limit``; beyond it a
      warning is issued and the always-maintained histogram is used), else the streaming ``ScoreHistogram``.

    One evaluator per score map (DiCNet, MSP, ...); nothing model-specific lives here. Under DDP call
    ``all_reduce()`` once on every rank before ``compute()``; ``merge`` combines evaluators in one process.
    """

    def __init__(
        self,
        anomaly_ids: Iterable[int],
        ignore_ids: Iterable[int] = (),
        score_range: tuple[float, float] = (0.0, 1.0),
        num_bins: int = 10_000,
        bin_spacing: Spacing = "linear",
        keep_exact_pooled: bool = False,
        per_image: bool = True,
        recall_levels: Sequence[float] = DEFAULT_RECALL_LEVELS,
        exact_pixel_limit: int = DEFAULT_EXACT_PIXEL_LIMIT,
    ) -> None:
        self.anomaly_ids = tuple(int(i) for i in anomaly_ids)
        self.ignore_ids = tuple(int(i) for i in ignore_ids)
        anomaly_masks(np.zeros(1, dtype=np.int64), self.anomaly_ids, self.ignore_ids)  # validate ids early
        self.keep_exact_pooled = bool(keep_exact_pooled)
        self.per_image = bool(per_image)
        self.recall_levels = tuple(float(r) for r in recall_levels)
        if 0.95 not in self.recall_levels:
            self.recall_levels = (0.95, *self.recall_levels)
        self.exact_pixel_limit = int(exact_pixel_limit)
        self.histogram = ScoreHistogram(score_range, num_bins, bin_spacing)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.histogram.reset()
        levels = len(self.recall_levels)
        self._sums = np.zeros(len(_PER_IMAGE_SUMS) + 2 * levels, dtype=np.float64)
        # num_images_seen, evaluated, skipped_no_anomaly, skipped_no_normal, images_with_E, images_with_C,
        # num_ignored_pixels
        self._counts = np.zeros(7, dtype=np.int64)
        self._exact_scores: list[np.ndarray] = []
        self._exact_codes: list[np.ndarray] = []
        self._exact_pixels = 0
        self._exact_overflow = False
        self._reduced = False

    def update(self, score_map: ArrayLike, label_map: ArrayLike, predicted_labels: ArrayLike | None = None) -> None:
        """Add one image: score map, label map (dataset ids) and optionally the teacher's predicted ids."""
        scores = _to_numpy(score_map)
        labels = _to_numpy(label_map)
        if scores.shape != labels.shape:
            raise ValueError(f"score map shape {scores.shape} != label map shape {labels.shape}")
        pred = None
        if predicted_labels is not None:
            pred = _to_numpy(predicted_labels)
            if pred.shape != labels.shape:
                raise ValueError(f"predicted labels shape {pred.shape} != label map shape {labels.shape}")
            pred = pred.reshape(-1)
        s = _as_scores(scores)
        lab = labels.reshape(-1)
        is_anomaly, is_valid = anomaly_masks(lab, self.anomaly_ids, self.ignore_ids)
        codes = _error_codes(lab, pred, is_anomaly)
        if self.ignore_ids:
            s, codes = s[is_valid], codes[is_valid]
        self._counts[0] += 1
        self._counts[6] += lab.size - s.size
        self.histogram.update_codes(s, codes)
        if self.keep_exact_pooled and not self._exact_overflow:
            self._store_exact(s, codes)
        if self.per_image:
            self._update_per_image(s, codes, track_errors=pred is not None)

    def _store_exact(self, s: np.ndarray, codes: np.ndarray) -> None:
        if self._exact_pixels + s.size > self.exact_pixel_limit:
            warnings.warn(
                f"more than {self.exact_pixel_limit} pixels for exact pooled metrics; falling back to the "
                "histogram (raise exact_pixel_limit if memory allows)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._exact_overflow = True
            self._exact_scores, self._exact_codes, self._exact_pixels = [], [], 0
            return
        self._exact_scores.append(s.copy())
        self._exact_codes.append(codes.copy())
        self._exact_pixels += s.size

    def _update_per_image(self, s: np.ndarray, codes: np.ndarray, track_errors: bool) -> None:
        num_pos = int(np.count_nonzero(codes == _POS))
        if num_pos == 0:
            self._counts[2] += 1
            return
        if num_pos == s.size:
            self._counts[3] += 1
            return
        curve = _curve_from_codes(s, codes, track_errors)
        m = curve.scores()
        self._counts[1] += 1
        self._sums[:3] += (m.auroc, m.aupr, m.fpr95)
        if not track_errors:
            return
        levels = len(self.recall_levels)
        has_e = curve.fps_error is not None and curve.fps_error[-1] > 0
        has_c = curve.fps_correct is not None and curve.fps_correct[-1] > 0
        self._counts[4] += int(has_e)
        self._counts[5] += int(has_c)
        for i, r in enumerate(self.recall_levels):
            efpr, cfpr = curve.error_conditioned_fpr(r)
            self._sums[3 + i] += efpr or 0.0
            self._sums[3 + levels + i] += cfpr or 0.0

    def merge(self, other: AnomalyEvaluator) -> AnomalyEvaluator:
        """Fold another evaluator (same configuration) into this one; returns self."""
        if (self.anomaly_ids, self.ignore_ids, self.recall_levels) != (
            other.anomaly_ids,
            other.ignore_ids,
            other.recall_levels,
        ):
            raise ValueError("cannot merge evaluators with different ids or recall levels")
        self.histogram.merge(other.histogram)
        self._sums += other._sums
        self._counts += other._counts
        if self.keep_exact_pooled:
            if not other.keep_exact_pooled or other._exact_overflow:
                self._exact_overflow = True
            if not self._exact_overflow:
                self._exact_scores += other._exact_scores
                self._exact_codes += other._exact_codes
                self._exact_pixels += other._exact_pixels
                if self._exact_pixels > self.exact_pixel_limit:
                    warnings.warn(
                        "merged exact pixels exceed exact_pixel_limit; using the histogram",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self._exact_overflow = True
            if self._exact_overflow:
                self._exact_scores, self._exact_codes, self._exact_pixels = [], [], 0
        return self

    def all_reduce(self) -> AnomalyEvaluator:
        """Combine all DDP ranks (sums and counts, histograms; stored exact pixels are gathered).

        No-op when torch.distributed is not initialised. Call once per rank before ``compute``.
        """
        world = _distributed_world()
        if world is None:
            return self
        if self._reduced:
            raise RuntimeError("evaluator already all-reduced; a second reduction would multiply the counts")
        dist, world_size = world
        ints = _torch_all_reduce_sum(
            np.concatenate([self.histogram.state_vector(), self._counts, [int(self._exact_overflow)]])
        )
        self.histogram.load_state_vector(ints[: -self._counts.size - 1])
        self._counts = ints[-self._counts.size - 1 : -1].astype(np.int64)
        any_overflow = bool(ints[-1] > 0)
        self._sums = _torch_all_reduce_sum(self._sums).astype(np.float64)
        if self.keep_exact_pooled:
            if any_overflow:
                self._exact_overflow = True
                self._exact_scores, self._exact_codes, self._exact_pixels = [], [], 0
            else:
                local = self._concat_exact()
                gathered: list[Any] = [None] * world_size
                dist.all_gather_object(gathered, local)
                self._exact_scores = [g[0] for g in gathered]
                self._exact_codes = [g[1] for g in gathered]
                self._exact_pixels = sum(g[0].size for g in gathered)
        self._reduced = True
        return self

    def _concat_exact(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._exact_scores:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.uint8)
        dtype = np.result_type(*self._exact_scores)
        return (np.concatenate(self._exact_scores).astype(dtype, copy=False), np.concatenate(self._exact_codes))

    def _per_image_result(self) -> dict[str, Any]:
        c = self._counts
        n = int(c[1])
        levels = len(self.recall_levels)
        out: dict[str, Any] = {"protocol": PER_IMAGE, "enabled": self.per_image}
        for i, name in enumerate(_PER_IMAGE_SUMS):
            out[name] = float(self._sums[i] / n) if n else None
        out["num_images"] = n
        out["skipped_images"] = int(c[2] + c[3])
        out["skipped_no_anomaly"] = int(c[2])
        out["skipped_no_normal"] = int(c[3])
        out["efpr"] = {
            recall_key(r): (float(self._sums[3 + i] / c[4]) if c[4] else None) for i, r in enumerate(self.recall_levels)
        }
        out["cfpr"] = {
            recall_key(r): (float(self._sums[3 + levels + i] / c[5]) if c[5] else None)
            for i, r in enumerate(self.recall_levels)
        }
        out["num_images_with_error_pixels"] = int(c[4])
        out["num_images_with_correct_pixels"] = int(c[5])
        return out

    def _pooled_result(self) -> dict[str, Any]:
        use_exact = self.keep_exact_pooled and not self._exact_overflow
        base: dict[str, Any] = {"protocol": POOLED, "method": "exact" if use_exact else "histogram"}
        try:
            if use_exact:
                s, codes = self._concat_exact()
                track = bool(np.any((codes == _NEG_ERROR) | (codes == _NEG_CORRECT)))
                curve = _curve_from_codes(s, codes, track)
                res = {**curve.scores().as_dict(), **_curve_summary(curve, self.recall_levels)}
                res["histogram"] = self.histogram.describe()
            else:
                res = self.histogram.compute(self.recall_levels)
                res.pop("method")
                h = self.histogram
                if h.clamped_below + h.clamped_above:
                    warnings.warn(
                        f"{h.clamped_below} scores < {h.lo} and {h.clamped_above} scores > {h.hi} were clamped "
                        "into the end bins; widen score_range for tighter pooled metrics",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        except ValueError as exc:  # no positives or no negatives in the whole set
            res = {
                "auroc": None,
                "aupr": None,
                "fpr95": None,
                "error": str(exc),
                "histogram": self.histogram.describe(),
            }
            counts = self.histogram.counts.sum(axis=0)
            res["num_positive"] = int(counts[_POS])
            res["num_negative"] = int(counts[:_POS].sum())
        return {**base, **res}

    def compute(self) -> dict[str, Any]:
        """JSON-serialisable report of both protocols (metric values are None where undefined)."""
        pooled = self._pooled_result()
        return {
            "protocols": list(PROTOCOLS),
            PER_IMAGE: self._per_image_result(),
            POOLED: pooled,
            "efpr": pooled.get("efpr", {recall_key(r): None for r in self.recall_levels}),
            "cfpr": pooled.get("cfpr", {recall_key(r): None for r in self.recall_levels}),
            "num_images": int(self._counts[0]),
            "num_pixels": self.histogram.total,
            "num_ignored_pixels": int(self._counts[6]),
            "anomaly_ids": list(self.anomaly_ids),
            "ignore_ids": list(self.ignore_ids),
        }

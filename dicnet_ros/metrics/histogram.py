"""Streaming pooled metrics in constant memory: ``ScoreHistogram``, exact metrics of the binned scores with bounds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dicnet_ros.metrics.curves import (
    _NEG_CORRECT,
    _NEG_ERROR,
    _NEG_UNKNOWN,
    _NUM_CODES,
    _POS,
    DEFAULT_RECALL_LEVELS,
    OperatingCurve,
    _as_scores,
    _curve_summary,
    _to_numpy,
    recall_key,
)
from dicnet_ros.metrics.distributed import _distributed_world, _torch_all_reduce_sum

__all__ = ["ScoreHistogram", "Spacing"]

Spacing = Literal["linear", "log"]


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

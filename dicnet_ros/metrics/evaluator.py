"""``AnomalyEvaluator``: one evaluator per score map, reporting both protocols by name.

Two protocols are always reported, by name, because published numbers mix them (anomaly-seg issue #21):

* ``PER_IMAGE`` -- the anomaly-seg StreetHazards protocol: metrics per image over its pixels, images without
  anomaly pixels (or without normal pixels) are skipped and counted, then the mean over the remaining images.
* ``POOLED`` -- one computation over all pixels of the set (exact, or from a constant-memory histogram).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dicnet_ros.metrics.curves import (
    _NEG_CORRECT,
    _NEG_ERROR,
    _POS,
    DEFAULT_RECALL_LEVELS,
    OperatingCurve,
    _as_scores,
    _curve_from_codes,
    _curve_summary,
    _to_numpy,
    anomaly_masks,
    recall_key,
)
from dicnet_ros.metrics.distributed import _distributed_world, _torch_all_reduce_sum
from dicnet_ros.metrics.error_fpr import _error_codes
from dicnet_ros.metrics.histogram import ScoreHistogram, Spacing

__all__ = ["DEFAULT_EXACT_PIXEL_LIMIT", "PER_IMAGE", "POOLED", "PROTOCOLS", "AnomalyEvaluator"]

PER_IMAGE = "per_image"
POOLED = "pooled"
PROTOCOLS = (PER_IMAGE, POOLED)
DEFAULT_EXACT_PIXEL_LIMIT = 200_000_000

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
        self._curve_cache: dict[bool, OperatingCurve] = {}  # the exact pooled curve, sorted once per state
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
        self._curve_cache = {}
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
        self._curve_cache = {}
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
        self._curve_cache = {}
        return self

    def _concat_exact(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._exact_scores:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.uint8)
        dtype = np.result_type(*self._exact_scores)
        return (np.concatenate(self._exact_scores).astype(dtype, copy=False), np.concatenate(self._exact_codes))

    def pooled_curve(self) -> tuple[OperatingCurve, str]:
        """The pooled operating curve and how it was obtained ('exact', or 'histogram' past the exact pixel limit or
        without ``keep_exact_pooled``); raises ValueError when there are no pixels."""
        if self.keep_exact_pooled and not self._exact_overflow:
            # a curve compute() built with error tracking has the same points: no second sort
            tracked = self._curve_cache.get(True)
            return (tracked if tracked is not None else self._exact_curve(False)), "exact"
        return self.histogram.curve(), "histogram"

    def _exact_curve(self, track_errors: bool) -> OperatingCurve:
        """The exact pooled curve (one sort of every stored pixel), kept until new pixels arrive."""
        if track_errors not in self._curve_cache:
            s, codes = self._concat_exact()
            self._curve_cache[track_errors] = _curve_from_codes(s, codes, track_errors)
        return self._curve_cache[track_errors]

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
                track = any(bool(np.any((c == _NEG_ERROR) | (c == _NEG_CORRECT))) for c in self._exact_codes)
                curve = self._exact_curve(track)
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

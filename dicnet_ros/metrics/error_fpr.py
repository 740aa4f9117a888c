"""E-FPR / C-FPR (DiCNet Table 1): the FPR at the anomaly-seg operating point, split into normal pixels the
teacher segments wrongly (E) and correctly (C)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from dicnet_ros.metrics.curves import (
    _NEG_CORRECT,
    _NEG_ERROR,
    _NEG_UNKNOWN,
    _POS,
    DEFAULT_RECALL_LEVELS,
    _as_scores,
    _curve_from_codes,
    _curve_summary,
    _to_numpy,
    anomaly_masks,
)

__all__ = ["error_conditioned_fpr"]


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

"""Pixel-wise anomaly-segmentation metrics: AUROC, AUPR (AP), FPR@recall, E-/C-FPR.

One idea per module; everything public is re-exported here (``from dicnet_ros.metrics import ...``):

* ``curves`` -- exact metrics on one operating curve (the hendrycks/anomaly-seg definitions), label masks.
* ``error_fpr`` -- E-FPR / C-FPR: the FPR split by whether the teacher segments a normal pixel correctly.
* ``histogram`` -- ``ScoreHistogram``, the constant-memory streaming curve with error bounds.
* ``distributed`` -- the torch.distributed sum reduction.
* ``evaluator`` -- ``AnomalyEvaluator`` and the ``PER_IMAGE`` / ``POOLED`` protocols.
* ``components`` -- SMIYC component metrics (sIoU, PPV, F1 over the sIoU thresholds) of one frame, summed.
* ``benchmark`` -- the real benchmarks' protocol: pooled pixel metrics as SMIYC defines them and the component
  metrics at the best-pixel-F1 threshold (``ComponentEvaluator``, ``benchmark_metrics``).

numpy is the only runtime dependency; torch is imported lazily for the distributed reduction only.
"""

from dicnet_ros.metrics.benchmark import ComponentEvaluator, benchmark_metrics, benchmark_table, smiyc_pixel_metrics
from dicnet_ros.metrics.components import TRACK_RULES, ComponentCounts, ComponentRules, frame_components
from dicnet_ros.metrics.curves import (
    DEFAULT_RECALL_LEVELS,
    AnomalyScores,
    OperatingCurve,
    anomaly_masks,
    anomaly_metrics,
    binary_anomaly_metrics,
    fpr_at_recall,
    operating_curve,
    recall_key,
    threshold_at_recall,
)
from dicnet_ros.metrics.error_fpr import error_conditioned_fpr
from dicnet_ros.metrics.evaluator import (
    DEFAULT_EXACT_PIXEL_LIMIT as DEFAULT_EXACT_PIXEL_LIMIT,
)
from dicnet_ros.metrics.evaluator import (
    PER_IMAGE,
    POOLED,
    PROTOCOLS,
    AnomalyEvaluator,
)
from dicnet_ros.metrics.histogram import ScoreHistogram
from dicnet_ros.metrics.histogram import Spacing as Spacing

# __all__ as before the split; DEFAULT_EXACT_PIXEL_LIMIT and Spacing stay importable (``X as X`` re-exports).
__all__ = [
    "DEFAULT_RECALL_LEVELS",
    "PER_IMAGE",
    "POOLED",
    "PROTOCOLS",
    "TRACK_RULES",
    "AnomalyEvaluator",
    "AnomalyScores",
    "ComponentCounts",
    "ComponentEvaluator",
    "ComponentRules",
    "OperatingCurve",
    "ScoreHistogram",
    "anomaly_masks",
    "anomaly_metrics",
    "benchmark_metrics",
    "benchmark_table",
    "binary_anomaly_metrics",
    "error_conditioned_fpr",
    "fpr_at_recall",
    "frame_components",
    "operating_curve",
    "recall_key",
    "smiyc_pixel_metrics",
    "threshold_at_recall",
]

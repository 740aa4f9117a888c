"""SMIYC component-level metrics: sIoU per ground-truth component, PPV per predicted component, F1 over the sIoU
thresholds, mean F1, as SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0 (``metrics/instance_segmentation.py``)
computes them.

Why component metrics: a vehicle has to find each obstacle, and pixel metrics let one large object hide many
missed small ones. Per frame, with the evaluation label (0 normal, 1 anomaly, 255 void) and a threshold:

1. prediction = score > threshold, void pixels off; ground-truth components = connected components of label == 1;
   both with 8-connectivity (the benchmark's 3x3 structure).
2. size rules (``TRACK_RULES``): predicted components smaller than ``min_predicted`` pixels are deleted; ground-truth
   components smaller than ``min_ground_truth`` become void. Then every array is restricted to the ROI (label != 255).
3. sIoU(k) of a ground-truth component k: K^ = the predicted components touching k, A = the pixels of K^ inside other
   ground-truth components; sIoU = |k & K^| / (|k | K^| - |A|) (0 when nothing touches k). PPV(p) of a predicted
   component p = |p & ground-truth anomaly| / |p| (and its sIoU the same way round).
4. For each tau in 0.25, 0.30, ..., 0.75: TP = components with sIoU >= tau, FN = those below, FP = predicted components
   with PPV < tau, summed over the frames; F1(tau) = 2 TP / (2 TP + FN + FP); mean F1 = the mean over the 11 taus.
   sIoU and PPV are reported as means over all components of the set.

One quirk of the benchmark is kept on purpose so the numbers are its numbers: its size loop also visits component 0
(everything that is not anomaly), so in a frame with fewer than ``min_ground_truth`` non-anomaly pixels those pixels
become void. Real frames never meet it; tiny synthetic ones can.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import cv2
import numpy as np

from dicnet_ros.metrics.distributed import _distributed_world, _torch_all_reduce_sum

__all__ = ["SIOU_THRESHOLDS", "TRACK_RULES", "ComponentCounts", "ComponentRules", "FrameComponents",
           "frame_components"]

#: tau = 0.25, 0.30, ..., 0.75 exactly as the benchmark builds them (np.linspace, so comparisons tie-break alike)
SIOU_THRESHOLDS: np.ndarray = np.linspace(0.25, 0.75, 11, endpoint=True)
ANOMALY, VOID = 1, 255


@dataclass(frozen=True)
class ComponentRules:
    """Size rules of a track, in pixels at the label resolution."""

    min_predicted: int
    min_ground_truth: int


#: SegEval-AnomalyTrack and SegEval-ObstacleTrack (instance_segmentation.py ``MetricSegment.configs``).
TRACK_RULES: dict[str, ComponentRules] = {
    "anomaly": ComponentRules(min_predicted=500, min_ground_truth=100),
    "obstacle": ComponentRules(min_predicted=50, min_ground_truth=10),
}


@dataclass
class FrameComponents:
    """The per-component values of one frame."""

    siou_gt: np.ndarray  # one per ground-truth component in the ROI
    siou_pred: np.ndarray  # one per predicted component in the ROI
    ppv_pred: np.ndarray  # precision of each predicted component


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components: (H, W) int32 ids (0 = background) and how many there are."""
    count, ids = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return ids, count - 1


def frame_components(score: np.ndarray, label: np.ndarray, threshold: float, rules: ComponentRules) -> FrameComponents:
    """Steps 1-3 of the module docstring for one frame (``label``: 0 normal, 1 anomaly, 255 void)."""
    if score.shape != label.shape:
        raise ValueError(f"score map {score.shape} and label {label.shape} differ in size")
    label = label.copy()
    gt_ids, n_gt = _components(label == ANOMALY)
    pred_ids, n_pred = _components((score > threshold) & (label != VOID))
    pred_sizes = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)
    small = pred_sizes < rules.min_predicted
    small[0] = False
    if small.any():
        pred_ids[small[pred_ids]] = 0
    gt_sizes = np.bincount(gt_ids.ravel(), minlength=n_gt + 1)
    small_gt = gt_sizes < rules.min_ground_truth  # entry 0 included, as in the benchmark (module docstring)
    if small_gt.any():
        label[small_gt[gt_ids]] = VOID
    roi = label != VOID
    gt, pred = gt_ids[roi].astype(np.int64), pred_ids[roi].astype(np.int64)
    # joint counts of (ground-truth id, predicted id) pairs inside the ROI: everything below reads only these
    keys, counts = np.unique(gt * (n_pred + 1) + pred, return_counts=True)
    pair_gt, pair_pred = keys // (n_pred + 1), keys % (n_pred + 1)
    size_gt = np.bincount(pair_gt, weights=counts, minlength=n_gt + 1)
    size_pred = np.bincount(pair_pred, weights=counts, minlength=n_pred + 1)
    siou_gt = [_siou(g, pair_gt, pair_pred, counts, size_gt, size_pred) for g in np.unique(gt[gt > 0])]
    siou_pred, ppv = [], []
    for p in np.unique(pred[pred > 0]):
        value, intersection = _siou(p, pair_pred, pair_gt, counts, size_pred, size_gt, with_intersection=True)
        siou_pred.append(value)
        ppv.append(intersection / size_pred[p])
    return FrameComponents(np.asarray(siou_gt, np.float64), np.asarray(siou_pred, np.float64),
                           np.asarray(ppv, np.float64))


def _siou(k: int, own: np.ndarray, other: np.ndarray, counts: np.ndarray, own_sizes: np.ndarray,
          other_sizes: np.ndarray, with_intersection: bool = False):
    """sIoU of component ``k`` of one side against the components of the other side that touch it."""
    touching = np.unique(other[(own == k) & (other > 0)])
    in_touching = np.isin(other, touching)
    intersection = float(counts[(own == k) & in_touching].sum())
    adjustment = float(counts[(own != k) & (own > 0) & in_touching].sum())
    union = float(other_sizes[touching].sum()) + own_sizes[k] - intersection - adjustment
    value = intersection / union
    return (value, intersection) if with_intersection else value


class ComponentCounts:
    """Step 4 summed over frames: TP / FN / FP per tau and the sums behind the mean sIoU and PPV (mergeable and
    all-reducible, so frames may be spread over processes)."""

    def __init__(self) -> None:
        k = SIOU_THRESHOLDS.size
        self.tp, self.fn, self.fp = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
        self.sums = np.zeros(3, np.float64)  # sIoU over gt components, sIoU over predicted ones, PPV
        self.counts = np.zeros(2, np.int64)  # ground-truth components, predicted components
        self.frames = 0

    def add(self, frame: FrameComponents) -> None:
        t = SIOU_THRESHOLDS[:, None]
        self.tp += np.count_nonzero(frame.siou_gt[None] >= t, axis=1)
        self.fn += np.count_nonzero(frame.siou_gt[None] < t, axis=1)
        self.fp += np.count_nonzero(frame.ppv_pred[None] < t, axis=1)
        self.sums += (frame.siou_gt.sum(), frame.siou_pred.sum(), frame.ppv_pred.sum())
        self.counts += (frame.siou_gt.size, frame.siou_pred.size)
        self.frames += 1

    def merge(self, other: ComponentCounts) -> ComponentCounts:
        self.tp += other.tp
        self.fn += other.fn
        self.fp += other.fp
        self.sums += other.sums
        self.counts += other.counts
        self.frames += other.frames
        return self

    def all_reduce(self) -> ComponentCounts:
        """Sum over torch.distributed ranks (no-op without a process group; torch is not imported for it)."""
        if "torch" not in sys.modules or _distributed_world() is None:
            return self
        ints = _torch_all_reduce_sum(np.concatenate([self.tp, self.fn, self.fp, self.counts, [self.frames]]))
        k = SIOU_THRESHOLDS.size
        self.tp, self.fn, self.fp = ints[:k], ints[k:2 * k], ints[2 * k:3 * k]
        self.counts, self.frames = ints[3 * k:3 * k + 2], int(ints[-1])
        self.sums = _torch_all_reduce_sum(self.sums).astype(np.float64)
        return self

    def compute(self) -> dict[str, object]:
        """JSON-ready: mean sIoU (gt), mean PPV, mean sIoU (pred), F1 per tau and mean F1 (None where undefined)."""
        n_gt, n_pred = (int(c) for c in self.counts)
        denominators = 2 * self.tp + self.fn + self.fp
        f1 = [float(2 * tp / d) if d else None for tp, d in zip(self.tp, denominators, strict=True)]
        keys = [f"{round(100 * t)}" for t in SIOU_THRESHOLDS]
        return {
            "siou": float(self.sums[0] / n_gt) if n_gt else None,
            "ppv": float(self.sums[2] / n_pred) if n_pred else None,
            "siou_pred": float(self.sums[1] / n_pred) if n_pred else None,
            "mean_f1": float(np.mean(f1)) if all(v is not None for v in f1) else None,
            "f1": dict(zip(keys, f1, strict=True)),
            "tp": dict(zip(keys, self.tp.tolist(), strict=True)),
            "fn": dict(zip(keys, self.fn.tolist(), strict=True)),
            "fp": dict(zip(keys, self.fp.tolist(), strict=True)),
            "num_gt_components": n_gt,
            "num_predicted_components": n_pred,
            "num_frames": self.frames,
        }

"""What a bag evaluation adds up while it streams: score maps paired with ground-truth masks by header stamp
(``StampMatcher``) and the metrics of every score map, overall and per anomaly family (``MetricsAccumulator``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from dicnet_ros.bag.families import group_order
from dicnet_ros.bag.messages import BagError
from dicnet_ros.data.label_encoding import ANOMALY, VOID
from dicnet_ros.metrics import DEFAULT_EXACT_PIXEL_LIMIT, AnomalyEvaluator, ComponentEvaluator, benchmark_metrics
from dicnet_ros.metrics.domain import DomainSplitEvaluator

DICNET = "dicnet"
#: Baseline maps a model may return in ``InferenceResult.extras`` (higher = more anomalous), in report order.
BASELINES = ("msp", "maxlogit")
METHODS = (DICNET, *BASELINES)
METHOD_LABELS = {DICNET: "DiCNet", "msp": "MSP", "maxlogit": "MaxLogit"}
#: Recorded baseline maps looked for beside a ``--score-topic`` (the node publishes ``~/msp_score`` beside
#: ``~/anomaly_score`` with ``publish_msp``): method -> topic name in the score topic's namespace.
BASELINE_TOPIC_NAMES = {"msp": "msp_score", "maxlogit": "maxlogit_score"}


class StampMatcher:
    """Pairs score maps with ground-truth masks by a shared key (the frame's header stamp), whichever arrives first
    (bounded memory). The first payload of each kind with a key wins: a repeated stamp is counted, not paired."""

    def __init__(self, max_pending: int = 256) -> None:
        self.max_pending = max_pending
        self.pending: dict[str, OrderedDict[int, Any]] = {"score": OrderedDict(), "gt": OrderedDict()}
        self.dropped = {"score": 0, "gt": 0}
        self.repeated = {"score": 0, "gt": 0}
        self.paired: set[int] = set()

    def add(self, kind: str, stamp: int, payload: Any) -> tuple[Any, Any] | None:
        """Store ``payload`` ('score' or 'gt'); return (score, gt) once both halves of ``stamp`` are in."""
        other = "gt" if kind == "score" else "score"
        if stamp in self.paired or stamp in self.pending[kind]:
            self.repeated[kind] += 1
            return None
        if stamp in self.pending[other]:
            match = self.pending[other].pop(stamp)
            self.paired.add(stamp)
            return (payload, match) if kind == "score" else (match, payload)
        queue = self.pending[kind]
        queue[stamp] = payload
        if len(queue) > self.max_pending:
            queue.popitem(last=False)
            self.dropped[kind] += 1
        return None

    def unmatched(self) -> dict[str, int]:
        """Frames that never found a partner (dropped + still pending)."""
        return {k: self.dropped[k] + len(self.pending[k]) for k in self.pending}


def method_score_range(name: str, first: np.ndarray, dicnet_range: tuple[float, float]) -> tuple[float, float]:
    """Histogram range of a method (curves, and pooled metrics past the exact pixel limit): the model's for
    DiCNet, [0, 1] for MSP; an unbounded baseline (MaxLogit) gets its first map's range widened twice its span
    each way, as ``dicnet evaluate`` does."""
    if name == DICNET:
        return dicnet_range
    if name == "msp":
        return 0.0, 1.0
    lo, hi = float(np.min(first)), float(np.max(first))
    span = max(hi - lo, 1.0)
    return lo - 2 * span, hi + 2 * span


class MetricsAccumulator:
    """One AnomalyEvaluator per score map (DiCNet and the baselines the model has) + mask counts at the
    threshold, and the same per (method, anomaly family) for frames whose stamp ``frame_groups`` names.

    Family evaluators share the overall one's exact pixel budget between them, so reporting per family at most
    doubles the memory; past it they fall back to their histograms like the overall one does. Frames the model's
    out-of-domain alarm flags count in the overall metrics and are left out of the in-domain ones
    (``DomainSplitEvaluator``).
    """

    def __init__(self, score_range: tuple[float, float], frame_groups: Mapping[int, str] | None = None,
                 track: str | None = None) -> None:
        self.score_range = score_range
        #: SMIYC component track: with one, every method also gets the benchmark protocol (``benchmark_metrics``)
        self.track = track
        self.components: dict[str, ComponentEvaluator] = {}
        self.frame_groups = dict(frame_groups or {})
        self.ranges: dict[str, tuple[float, float]] = {}
        self.evaluators: dict[str, AnomalyEvaluator] = {}  # all frames
        self.domain_splits: dict[str, DomainSplitEvaluator] = {}  # the same + the in-domain frames only
        self.family_evaluators: dict[str, dict[str, AnomalyEvaluator]] = {}  # group -> method -> evaluator
        self.family_pixel_limit = DEFAULT_EXACT_PIXEL_LIMIT // max(1, len(set(self.frame_groups.values())))
        self.mask_counts = np.zeros(4, np.int64)  # tp, fp, fn, tn of the thresholded DiCNet mask
        self.has_mask = False

    def _evaluator(self, name: str, exact_pixel_limit: int = DEFAULT_EXACT_PIXEL_LIMIT) -> AnomalyEvaluator:
        return AnomalyEvaluator(anomaly_ids=(ANOMALY,), ignore_ids=(VOID,), score_range=self.ranges[name],
                                keep_exact_pooled=True, per_image=True,
                                exact_pixel_limit=exact_pixel_limit)

    def update(self, scores: Mapping[str, np.ndarray], gt: np.ndarray, mask: np.ndarray | None = None,
               stamp: int | None = None, in_domain: bool | None = None) -> None:
        """Add one frame; ``gt`` is the evaluation label (``LabelEncoding.apply``: 1 anomaly, 0 normal, 255 void);
        ``stamp`` (header stamp, ns) puts it into its family's group as well; ``in_domain`` is the out-of-domain
        alarm's verdict (None: no alarm)."""
        group = self.frame_groups.get(stamp) if stamp is not None else None
        for name, score in scores.items():
            if score.shape != gt.shape:
                raise BagError(f"{name} score map is {score.shape[1]}x{score.shape[0]} but the ground truth is "
                               f"{gt.shape[1]}x{gt.shape[0]}")
            if name not in self.evaluators:
                self.ranges[name] = method_score_range(name, score, self.score_range)
                self.domain_splits[name] = DomainSplitEvaluator(lambda name=name: self._evaluator(name))
                self.evaluators[name] = self.domain_splits[name].all
            self.domain_splits[name].update(score, gt, None, in_domain)
            if self.track is not None:
                if name not in self.components:
                    self.components[name] = ComponentEvaluator(self.track)
                self.components[name].update(score, gt)
            if group is not None:
                by_method = self.family_evaluators.setdefault(group, {})
                if name not in by_method:
                    by_method[name] = self._evaluator(name, self.family_pixel_limit)
                by_method[name].update(score, gt)
        if mask is not None:
            self.has_mask = True
            valid = gt != VOID
            pos, pred = (gt == ANOMALY)[valid], mask[valid]
            self.mask_counts += [np.count_nonzero(pos & pred), np.count_nonzero(~pos & pred),
                                 np.count_nonzero(pos & ~pred), np.count_nonzero(~pos & ~pred)]

    def compute(self) -> dict[str, Any]:
        """{'dicnet': evaluator.compute(), 'msp' / 'maxlogit': ... or None, 'mask_at_threshold': {...},
        'in_domain': {method: ...} (only with an out-of-domain alarm: the in-domain frames' metrics),
        'by_family': {group: {'num_frames': n, 'dicnet': ..., 'msp': ..., 'maxlogit': ...}}} ({} without
        family information)."""
        out: dict[str, Any] = {name: ev.compute() for name, ev in self.evaluators.items()}
        for name in BASELINES:
            out.setdefault(name, None)
        in_domain = {name: split.in_domain.compute() if split.split else out[name]
                     for name, split in self.domain_splits.items() if split.in_domain is not None}
        if in_domain:
            out["in_domain"] = in_domain
        if self.has_mask:
            tp, fp, fn, tn = (int(x) for x in self.mask_counts)
            out["mask_at_threshold"] = {
                "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                "precision": tp / (tp + fp) if tp + fp else None,
                "recall": tp / (tp + fn) if tp + fn else None,
                "fpr": fp / (fp + tn) if fp + tn else None,
                "iou": tp / (tp + fp + fn) if tp + fp + fn else None,
            }
        if self.track is not None:
            out["benchmark"] = {name: benchmark_metrics(ev, self.components.get(name))
                                for name, ev in self.evaluators.items()}
            for evaluator in self.components.values():
                evaluator.close()
        out["by_family"] = {}
        for group in group_order(list(self.family_evaluators)):
            results = {name: ev.compute() for name, ev in self.family_evaluators[group].items()}
            out["by_family"][group] = {"num_frames": max(r["num_images"] for r in results.values()),
                                       **{name: results.get(name) for name in METHODS}, **results}
        return out

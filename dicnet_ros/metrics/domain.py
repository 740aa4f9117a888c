"""What the reports say about the out-of-domain alarm: which frames were out of the model's world, how many, and
the anomaly metrics over the in-domain frames beside those over all frames.

A model's image-level ``domain_score`` (higher = further from the training domain) raises the alarm when it is
above the model's ``domain_threshold``; a model without them (an older export) has no alarm, and every answer
here is then ``None`` rather than a guess. Used by ``dicnet infer --json``, ``dicnet evaluate`` and
``dicnet bag-eval`` alike.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dicnet_ros.metrics.evaluator import AnomalyEvaluator


def in_domain(score: float | None, threshold: float | None) -> bool | None:
    """True when ``score`` is at most ``threshold``, False above it, None when the model has no alarm."""
    if score is None or threshold is None or not math.isfinite(float(score)):
        return None if score is None or threshold is None else False  # NaN/inf score: out of domain
    return float(score) <= float(threshold)


def domain_fields(score: float | None, threshold: float | None) -> dict[str, float | bool | None]:
    """The per-image report fields: ``domain_score`` and ``in_domain`` (both null without an alarm)."""
    return {"domain_score": None if score is None else float(score), "in_domain": in_domain(score, threshold)}


@dataclass
class DomainTally:
    """Counts frames in and out of domain over a run (``add`` each frame's score)."""

    threshold: float | None
    frames: int = 0
    out_of_domain: int = 0
    scores: list[float] = field(default_factory=list)

    def add(self, score: float | None) -> bool | None:
        """Count one frame; returns its ``in_domain`` verdict."""
        verdict = in_domain(score, self.threshold)
        self.frames += 1
        if score is not None:
            self.scores.append(float(score))
        if verdict is False:
            self.out_of_domain += 1
        return verdict

    @property
    def available(self) -> bool:
        """Whether the model has an alarm (a threshold and a score on every frame)."""
        return self.threshold is not None and len(self.scores) == self.frames

    def summary(self) -> dict[str, Any]:
        """JSON-ready: available, threshold, frames, out_of_domain, share_out_of_domain, score mean / max."""
        if not self.available:
            return {"available": False, "threshold": self.threshold, "frames": self.frames, "out_of_domain": None,
                    "share_out_of_domain": None}
        finite = [s for s in self.scores if math.isfinite(s)]
        return {"available": True, "threshold": self.threshold, "frames": self.frames,
                "out_of_domain": self.out_of_domain,
                "share_out_of_domain": self.out_of_domain / self.frames if self.frames else None,
                "score_mean": sum(finite) / len(finite) if finite else None,
                "score_max": max(finite) if finite else None}


def summary_line(summary: dict[str, Any], split_metrics: bool = True) -> str:
    """One Markdown sentence for a report: how many frames were out of domain, or why nobody can tell;
    ``split_metrics``: the report also lists the metrics over the in-domain frames."""
    if not summary.get("available"):
        return ("Out-of-domain alarm: not available (the model has no domain score; calibrate and export it again "
                "to get one).")
    share, largest = summary["share_out_of_domain"], summary.get("score_max")
    return (f"Out-of-domain alarm: {summary['out_of_domain']} of {summary['frames']} frames out of domain "
            f"({'n/a' if share is None else f'{100.0 * share:.1f} %'}; domain score above {summary['threshold']:g}"
            f"{'' if largest is None else f', largest {largest:.2f}'})."
            + (" Metrics over the in-domain frames only are listed beside those over all frames." if split_metrics
               else ""))


class DomainSplitEvaluator:
    """One score map's metrics over all frames and over the in-domain frames only.

    While every frame is in domain both are the same numbers, so the in-domain evaluator is only split off (a copy
    of everything so far) at the first out-of-domain frame: no second copy of the pixels on an in-domain set.
    ``eager`` splits from the start (distributed evaluation, where every rank must reduce the same evaluators).
    """

    def __init__(self, make: Callable[[], AnomalyEvaluator], eager: bool = False):
        self.all = make()
        self._in_domain: AnomalyEvaluator | None = make() if eager else None  # None: identical to ``all`` so far
        self.alarm_available = False

    def update(self, score_map: Any, label_map: Any, predicted_labels: Any = None,
               in_domain: bool | None = None) -> None:
        if in_domain is not None:
            self.alarm_available = True
        if in_domain is False and self._in_domain is None:
            self._in_domain = copy.deepcopy(self.all)
        self.all.update(score_map, label_map, predicted_labels)
        if in_domain is not False and self._in_domain is not None:
            self._in_domain.update(score_map, label_map, predicted_labels)

    @property
    def in_domain(self) -> AnomalyEvaluator | None:
        """The in-domain frames' evaluator (None without an alarm)."""
        if not self.alarm_available:
            return None
        return self._in_domain if self._in_domain is not None else self.all

    @property
    def split(self) -> bool:
        """Whether the in-domain metrics are kept apart (else they are those of ``all``: compute them once)."""
        return self._in_domain is not None

    def evaluators(self) -> list[AnomalyEvaluator]:
        """The distinct evaluators (to all-reduce each once)."""
        return [self.all, *([self._in_domain] if self._in_domain is not None else [])]


__all__ = ["DomainSplitEvaluator", "DomainTally", "domain_fields", "in_domain", "summary_line"]

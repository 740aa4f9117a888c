"""One camera's out-of-domain state: the model's image-level domain score turned into a state with hysteresis.

Why a state and not the raw per-frame verdict: one odd frame (a flash, a bridge shadow) must not flip what a
planner is told, and a covered lens must not flicker between alarms. The camera enters ``out_of_domain`` after
``frames`` consecutive frames above the model's domain threshold and leaves it after as many below. rclpy-free,
so the rules are unit-tested without DDS; the camera pipeline feeds scores in and reports the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dicnet_ros.metrics.domain import in_domain

UNAVAILABLE = "unavailable"  # the model has no domain score or no calibrated domain threshold
UNKNOWN = "unknown"  # no frame scored yet
IN_DOMAIN = "in_domain"
OUT_OF_DOMAIN = "out_of_domain"


@dataclass
class DomainChange:
    """A state change, logged once: from, to, the score that completed it and the threshold."""

    previous: str
    state: str
    score: float
    threshold: float

    def describe(self) -> str:
        if self.state == OUT_OF_DOMAIN:
            return (f"out of domain: domain score {self.score:.3g} > threshold {self.threshold:.3g}: the input looks "
                    "unlike what the model was trained on; anomaly outputs are unreliable")
        return f"back in domain: domain score {self.score:.3g} <= threshold {self.threshold:.3g}"


class DomainMonitor:
    """Hysteresis over per-frame domain scores (higher = further from the training domain)."""

    def __init__(self, threshold: float | None, frames: int) -> None:
        self.threshold = threshold if threshold is not None and math.isfinite(threshold) else None
        self.frames = max(1, int(frames))
        self.state = UNKNOWN if self.threshold is not None else UNAVAILABLE
        self.last_score: float | None = None
        self.run = 0  # consecutive frames on the other side of the threshold than the current state
        self.frames_out = 0  # frames scored out of domain since start
        self.frames_scored = 0

    @property
    def available(self) -> bool:
        return self.threshold is not None

    def out(self, score: float) -> bool:
        """This frame alone is out of domain (the reports' rule, ``metrics.domain.in_domain``: NaN counts as out)."""
        return in_domain(score, self.threshold) is False

    def update(self, score: float | None) -> DomainChange | None:
        """Feed one frame's score; returns the change when this frame completes one."""
        if self.threshold is None or score is None:
            return None
        self.last_score = float(score)
        self.frames_scored += 1
        out = self.out(score)
        self.frames_out += int(out)
        if self.state == UNKNOWN:  # the first frame decides where we start, without waiting
            self.state = OUT_OF_DOMAIN if out else IN_DOMAIN
            return DomainChange(UNKNOWN, self.state, float(score), self.threshold) if out else None
        against = out if self.state == IN_DOMAIN else not out
        self.run = self.run + 1 if against else 0
        if self.run < self.frames:
            return None
        previous, self.state, self.run = self.state, OUT_OF_DOMAIN if out else IN_DOMAIN, 0
        return DomainChange(previous, self.state, float(score), self.threshold)

    def values(self, score: float | None) -> dict[str, str]:
        """The key / values that ``~/domain`` and ``/diagnostics`` report for ``score`` (empty: the frame or the
        model has none; "nan": the model answered NaN)."""
        return {"domain_score": "" if score is None else f"{score:.6g}",
                "domain_threshold": "" if self.threshold is None else f"{self.threshold:.6g}"}

    def status(self) -> tuple[str, str]:
        """(level, sentence) for diagnostics: OK in domain, WARN while frames are out but the alarm is not raised
        yet, ERROR while out of domain; levels are "OK" / "WARN" / "ERROR"."""
        if self.threshold is None:
            return "OK", "domain alarm unavailable (the model has no calibrated domain score)"
        score = "n/a" if self.last_score is None else f"{self.last_score:.3g}"
        if self.state == OUT_OF_DOMAIN:
            return "ERROR", (f"out of domain (domain score {score} > {self.threshold:.3g}): anomaly outputs are "
                             "unreliable")
        if self.state == IN_DOMAIN and self.run:
            return "WARN", (f"{self.run} of {self.frames} consecutive frames out of domain (domain score {score} > "
                            f"{self.threshold:.3g})")
        return "OK", f"in domain (domain score {score} <= {self.threshold:.3g})" if self.last_score is not None \
            else "no frame scored yet"

"""The node's counters (``NodeStats``) and the /diagnostics status built from them."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else math.nan


#: Counters of ``NodeStats.snapshot`` (and /diagnostics), in the order a frame meets them.
COUNTERS = ("received", "processed", "batched", "before_first_frame", "dropped_undelivered", "dropped_queue",
            "dropped_stale", "dropped_too_old", "dropped_too_large", "dropped_bad", "dropped_paused", "errors",
            "no_frame_warnings")


class NodeStats:
    """Counters and latency samples shared by the callback, the worker and the diagnostics timer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.batched = 0  # processed in one model run with other cameras' frames
        # frames a camera already publishing when the node started listening sent before the first one taken
        self.before_first_frame = 0
        self.dropped_stale = 0
        self.dropped_queue = 0
        self.dropped_too_old = 0
        self.dropped_bad = 0
        self.dropped_too_large = 0
        self.dropped_undelivered = 0  # DDS-reported lost samples (best effort, lost in transport after the match)
        self.dropped_paused = 0
        self.no_frame_warnings = 0
        self.errors = 0
        self.window_latency: deque[float] = deque(maxlen=2000)
        self.window_inference: deque[float] = deque(maxlen=2000)
        self.window_batch: deque[float] = deque(maxlen=2000)  # batch size each processed frame ran in
        self.timings: deque[tuple[float, float]] = deque(maxlen=2000)
        self.window_processed = 0
        self.window_bad = 0
        self.window_too_large = 0
        self.window_errors = 0
        self.window_start = time.monotonic()
        self.last_received = time.monotonic()

    def count_dropped(self, kind: str) -> int:
        """One more frame dropped for ``kind`` ("bad", "too_large"): total and this diagnostics window; the total."""
        with self.lock:
            total = getattr(self, f"dropped_{kind}") + 1
            setattr(self, f"dropped_{kind}", total)
            setattr(self, f"window_{kind}", getattr(self, f"window_{kind}") + 1)
            return total

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {k: getattr(self, k) for k in COUNTERS}


def diagnostic_status(stats: NodeStats, info: dict[str, str], threshold: float, params: dict[str, Any],
                      enabled: bool, qos_problems: dict[str, str], input_topic: str, name: str,
                      extra: dict[str, str] | None = None) -> DiagnosticStatus:
    """One camera's status for /diagnostics (level, message, key values); starts the next measurement window.

    ``info``: the model's ``describe()``; ``threshold``: the camera's mask threshold in use; ``name``: the node's
    (single camera) or the camera's (``/NAME/anomaly_node``) fully qualified name."""
    now = time.monotonic()
    with stats.lock:
        elapsed = max(now - stats.window_start, 1e-6)
        fps = stats.window_processed / elapsed
        lat = list(stats.window_latency)
        inf = list(stats.window_inference)
        batch = list(stats.window_batch)
        overhead = [t[1] for t in list(stats.timings)[-len(lat):]] if lat else []
        window_bad, window_errors = stats.window_bad + stats.window_too_large, stats.window_errors
        silent_s = now - stats.last_received
        stats.window_latency.clear()
        stats.window_inference.clear()
        stats.window_batch.clear()
        stats.window_processed = stats.window_bad = stats.window_too_large = stats.window_errors = 0
        stats.window_start = now
    counters = stats.snapshot()
    p95 = _percentile(lat, 95)
    level, message = DiagnosticStatus.OK, f"processing {fps:.1f} fps"
    warn_ms = params["latency_warn_ms"]
    if not enabled:
        message = "paused (~/enable false)"
    elif window_errors:
        level, message = DiagnosticStatus.ERROR, f"inference failed on {window_errors} frame(s)"
    elif qos_problems:
        level, message = DiagnosticStatus.WARN, next(iter(qos_problems.values()))
    elif window_bad:
        level, message = DiagnosticStatus.WARN, f"{window_bad} bad image message(s) skipped"
    elif silent_s > max(5.0, 3 * params["diagnostics_period_s"]):
        level, message = DiagnosticStatus.WARN, f"no images on {input_topic} for {silent_s:.0f} s"
    elif warn_ms > 0 and p95 > warn_ms:
        level, message = DiagnosticStatus.WARN, f"latency p95 {p95:.0f} ms > latency_warn_ms {warn_ms:g}"
    values = {
        "fps": f"{fps:.2f}",
        "latency_p50_ms": f"{_percentile(lat, 50):.2f}",
        "latency_p95_ms": f"{p95:.2f}",
        "inference_p50_ms": f"{_percentile(inf, 50):.2f}",
        "inference_p95_ms": f"{_percentile(inf, 95):.2f}",
        "node_overhead_p50_ms": f"{_percentile(overhead, 50):.2f}",
        "batch_size_mean": f"{np.mean(batch):.2f}" if batch else "nan",
        **{k: str(v) for k, v in counters.items()},
        "enabled": str(enabled),
        "threshold": f"{threshold:g}",
        "backend": str(info.get("backend")),
        "precision": str(info.get("precision")),
        "device": str(info.get("device")),
        "model": str(info.get("model")),
        "input_topic": input_topic,
        "output_resolution": params["output_resolution"],
        **(extra or {}),
    }
    return DiagnosticStatus(level=level, name=f"{name}: anomaly segmentation",
                            message=message, hardware_id=f"{info.get('backend')}:{info.get('device')}",
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])

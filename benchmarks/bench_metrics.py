"""Throughput of the exact and the streaming (histogram) metric paths, to pick one per evaluation size.

Usage: ``python benchmarks/bench_metrics.py [--sizes 1e5 1e6 1e7] [--json out.json]``. Scores are continuous
float32 (every score distinct: the worst case for the exact path's sort), 5 % anomaly pixels.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dicnet_ros.metrics import AnomalyEvaluator, ScoreHistogram, operating_curve


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Best wall time of ``repeats`` runs (least disturbed by other processes on a shared machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_size(n: int, num_bins: int, repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    """Exact (one sort) vs histogram update and histogram compute for ``n`` pixels."""
    is_pos = rng.random(n) < 0.05
    scores = (rng.normal(size=n) + 1.5 * is_pos).astype(np.float32)
    is_err = rng.random(n) < 0.1

    def exact() -> None:
        operating_curve(scores, is_pos, is_err).scores()

    hist = ScoreHistogram((-6.0, 8.0), num_bins=num_bins)

    def stream_update() -> None:
        hist.reset()
        hist.update(scores, is_pos, is_err)

    t_exact = best_time(exact, repeats)
    t_update = best_time(stream_update, repeats)
    t_compute = best_time(hist.compute, repeats)
    return {
        "pixels": n,
        "exact_s": t_exact,
        "exact_px_per_s": n / t_exact,
        "stream_update_s": t_update,
        "stream_update_px_per_s": n / t_update,
        "stream_compute_s": t_compute,
    }


def bench_evaluator(num_images: int, num_bins: int, rng: np.random.Generator) -> dict[str, Any]:
    """Per-image protocol + histogram on 720x1280 images: the `dicnet evaluate` hot path."""
    shape = (720, 1280)
    labels = rng.integers(0, 13, size=shape)
    labels[300:400, 600:700] = 13
    scores = (rng.random(shape) + 0.5 * (labels == 13)).astype(np.float32)
    preds = np.where(rng.random(shape) < 0.1, 0, labels)
    ev = AnomalyEvaluator([13], score_range=(0.0, 1.5), num_bins=num_bins)
    t0 = time.perf_counter()
    for _ in range(num_images):
        ev.update(scores, labels, preds)
    ev.compute()
    dt = time.perf_counter() - t0
    return {"images": num_images, "s_per_image": dt / num_images, "px_per_s": num_images * labels.size / dt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--num-bins", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=5, help="720x1280 images for the evaluator row")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = [bench_size(int(n), args.num_bins, args.repeats, rng) for n in args.sizes]
    print(f"{'pixels':>12} {'exact px/s':>14} {'stream upd px/s':>16} {'stream compute ms':>18}")
    for r in rows:
        print(
            f"{r['pixels']:>12.0e} {r['exact_px_per_s']:>14.3e} {r['stream_update_px_per_s']:>16.3e} "
            f"{r['stream_compute_s'] * 1e3:>18.2f}"
        )
    ev = bench_evaluator(args.images, args.num_bins, rng)
    print(
        f"AnomalyEvaluator.update (per-image exact + histogram, E/C, 720x1280): {ev['s_per_image'] * 1e3:.1f} "
        f"ms/image = {ev['px_per_s']:.3e} px/s"
    )
    if args.json:
        meta = {"numpy": np.__version__, "machine": platform.machine(), "python": platform.python_version()}
        args.json.write_text(json.dumps({"meta": meta, "sizes": rows, "evaluator": ev}, indent=2))


if __name__ == "__main__":
    main()

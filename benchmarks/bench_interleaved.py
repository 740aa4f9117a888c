"""Latency of several ONNX models measured together: every round runs each model once on the same frame, in a new
random order, so a busy moment of a shared CPU hits all of them alike. For "what does this change cost?".

Usage::

    python benchmarks/bench_interleaved.py --models before.onnx after.onnx --size 640x360 --rounds 200 --threads 2

Prints p50 / p95 / mean per model and each model's p50 and mean against the first one's, and per round the ratio
of each model's time to the first one's in that round (its median is the least disturbed estimate).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dicnet_ros.inference import load_model
from dicnet_ros.inference.cpu_features import cpu_name
from dicnet_ros.preprocessing import parse_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--size", type=parse_size, default=(640, 360), help="frame size WxH (default 640x360)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    width, height = args.size
    rng = np.random.default_rng(args.seed)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    models = [load_model(path, "onnxruntime", "cpu", threads=args.threads) for path in args.models]
    for model in models:
        model.warmup(args.warmup)
        for _ in range(args.warmup):
            model.infer(frame)
    times = np.zeros((args.rounds, len(models)))
    for r in range(args.rounds):
        for i in rng.permutation(len(models)):
            start = time.perf_counter()
            models[i].infer(frame)
            times[r, i] = (time.perf_counter() - start) * 1e3
    ratios = times / times[:, :1]
    rows = []
    for i, path in enumerate(args.models):
        p50, p95, mean = np.percentile(times[:, i], 50), np.percentile(times[:, i], 95), times[:, i].mean()
        rows.append({"model": str(path), "p50_ms": p50, "p95_ms": p95, "mean_ms": mean,
                     "p50_vs_first": p50 / np.percentile(times[:, 0], 50), "mean_vs_first": mean / times[:, 0].mean(),
                     "paired_median_ratio": float(np.median(ratios[:, i]))})
    print(f"{width}x{height}, {args.rounds} interleaved rounds, onnxruntime {args.threads} threads, "
          f"{cpu_name()}")
    print("| model | p50 ms | p95 ms | mean ms | p50 / first | mean / first | median of per-round ratios |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| `{row['model']}` | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['mean_ms']:.2f} | "
              f"{row['p50_vs_first']:.3f} | {row['mean_vs_first']:.3f} | {row['paired_median_ratio']:.3f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"size": [width, height], "rounds": args.rounds, "threads": args.threads,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

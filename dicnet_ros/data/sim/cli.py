"""`dicnet sim`: render the simulated driving-anomaly benchmark (train/val without, test with anomalies)."""

from __future__ import annotations

import argparse
import sys

from dicnet_ros.data.sim.generator import SPLITS, default_workers, generate_split, parse_size
from dicnet_ros.data.sim.objects import ANOMALY_SET_HELP, parse_anomaly_set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `dicnet sim` options."""
    parser.add_argument("--out", required=True, help="output root (StreetHazards layout + dataset.yaml)")
    parser.add_argument("--split", choices=SPLITS, help="one split to render")
    parser.add_argument("--count", type=int, help="number of images for --split")
    parser.add_argument("--splits", help="comma-separated splits, e.g. train,val,test (with --counts)")
    parser.add_argument("--counts", help="comma-separated counts matching --splits, e.g. 400,100,100")
    parser.add_argument(
        "--seed", type=int, default=0, help="dataset seed (image i uses a seed from seed/split/i)"
    )
    parser.add_argument("--size", default="384x216", help="image size WxH (default 384x216)")
    parser.add_argument(
        "--anomaly-set", default="all", help="anomaly families for the test split; " + ANOMALY_SET_HELP
    )
    parser.add_argument(
        "--outlier-proxies", type=float, default=0.0, metavar="FRACTION",
        help="fraction of TRAIN images with 1-2 outlier proxies (objects of no class and no anomaly family, "
             "labelled outlier_proxy) for the student's outlier exposure (default 0)",
    )
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="render processes (default min(4, cpus))"
    )
    parser.add_argument(
        "--grid", help="also write a sample grid PNG (image | labels | anomaly mask) to this path"
    )
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")


def _plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    if args.splits:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        counts = [int(c) for c in (args.counts or "").split(",") if c.strip()]
        if len(counts) != len(splits):
            raise ValueError("--counts needs one count per entry of --splits")
        bad = [s for s in splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; expected {', '.join(SPLITS)}")
        return list(zip(splits, counts, strict=True))
    if not args.split or args.count is None:
        raise ValueError("give --split and --count (or --splits and --counts)")
    return [(args.split, args.count)]


def run(args: argparse.Namespace) -> int:
    """Render the requested splits, print the speed; returns a process exit code."""
    try:
        plan = _plan(args)
        size = parse_size(args.size)
        parse_anomaly_set(args.anomaly_set)
    except ValueError as exc:
        print(f"dicnet sim: error: {exc}", file=sys.stderr)
        return 2
    total, seconds = 0, 0.0
    for split, count in plan:
        rep = generate_split(
            args.out,
            split,
            count,
            seed=args.seed,
            size=size,
            anomaly_set=args.anomaly_set,
            workers=args.workers,
            progress=not args.no_progress,
            outlier_proxies=args.outlier_proxies,
        )
        total += rep.count
        seconds += rep.seconds
        print(f"{split}: {rep.count} images -> {rep.manifest.parent} (manifest {rep.manifest.name})")
    rate = total / seconds if seconds > 0 else float("inf")
    print(
        f"rendered {total} images in {seconds:.1f} s ({rate:.1f} img/s, {size[0]}x{size[1]}, "
        f"{args.workers} workers)"
    )
    if args.grid:
        from dicnet_ros.data.sim.grid import make_grid

        make_grid(args.out, args.grid)
        print(f"grid -> {args.grid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m dicnet_ros.data.sim.cli`)."""
    parser = argparse.ArgumentParser(prog="dicnet sim", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

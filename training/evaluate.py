"""`dicnet evaluate`: DiCNet (paper and code scoring) vs MSP / MaxLogit / entropy, both protocols, with plots."""

from __future__ import annotations

import argparse

from dicnet_training import distributed as tdist
from dicnet_training.calibrate import add_checkpoint_config_arguments, config_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options (the data come from --config or from the config stored in the checkpoint)."""
    add_checkpoint_config_arguments(parser, "calibrated pair checkpoint")
    parser.add_argument("--split", default=None, help="split to evaluate (default: config eval.split, test)")
    parser.add_argument("--out", required=True, help="report directory (report.md, report.json, PNGs)")
    parser.add_argument("--minmax", action="store_true",
                        help="also report DiCNet with per-image min-max (the official code's protocol variant)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the report; the table is printed too."""
    from dicnet_training.command import Outputs, run_command
    from dicnet_training.engine import setup_logging
    from dicnet_training.evaluation import evaluate

    def work(outputs: Outputs) -> int:
        setup_logging(None, True)
        cfg = config_for(args.checkpoint, args.config, args.override)
        with tdist.process_group_scope():
            evaluate(args.checkpoint, cfg, outputs.watch(args.out), args.split, args.minmax or None, args.device,
                     not args.no_progress, args.max_images)
        return tdist.exit_worker(0)

    return run_command(args.command, work)

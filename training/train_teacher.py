"""`dicnet train-teacher`: train the segmentation teacher (cross-entropy, SGD + poly, optional aux head)."""

from __future__ import annotations

import argparse

from dicnet_training.stage_cli import add_stage_arguments, run_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options; the config file holds the rest."""
    add_stage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Train; the run dir gets last.pt, best.pt (val mIoU), train.log and TensorBoard events."""
    from dicnet_training.engine import train_teacher

    return run_stage(args, "teacher", train_teacher)

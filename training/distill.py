"""`dicnet distill`: train the student to reproduce the frozen teacher's feature (MSE, Eq. 6)."""

from __future__ import annotations

import argparse
import functools

from dicnet_training.stage_cli import add_stage_arguments, run_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options; the config file holds the rest."""
    add_stage_arguments(parser)
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (best.pt of train-teacher)")


def run(args: argparse.Namespace) -> int:
    """Distil; the run dir gets last.pt, best.pt (lowest val loss, a teacher+student pair) and logs."""
    from dicnet_training.engine import distill

    return run_stage(args, "student", functools.partial(distill, teacher_path=args.teacher))

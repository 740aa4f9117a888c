"""`dicnet calibrate`: mu_c, in-distribution score statistics and the default mask threshold -> checkpoint."""

from __future__ import annotations

import argparse
import logging

from dicnet_training.config import apply_override, deep_merge, load_config

from dicnet_ros.cli_options import add_device_argument
from dicnet_ros.model.checkpoint import checkpoint_metadata, load_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options (the data come from --config or from the config stored in the checkpoint)."""
    add_checkpoint_config_arguments(parser, "pair checkpoint (best.pt of distill)")
    parser.add_argument("--split", default=None, help="split for the score statistics (default val)")
    parser.add_argument("--mu-split", default=None, help="split for mu_c (default: config, train)")
    parser.add_argument("--target-fpr", type=float, default=None,
                        help="in-distribution FPR of the default threshold (default 0.01 -> 99th percentile)")
    parser.add_argument("--scoring-mode", choices=("paper", "code"), default=None,
                        help="switch the model's scoring mode before calibrating")
    parser.add_argument("--score-smoothing", type=int, default=None, metavar="K",
                        help="set the model's k x k score smoothing (odd, 1 = off) before calibrating")
    parser.add_argument("--score-fusion", choices=("none", "maxlogit"), default=None,
                        help="set the model's score fusion before calibrating: maxlogit adds the teacher's MaxLogit, "
                             "both standardised on in-distribution pixels of --split (no anomaly labels); a "
                             "checkpoint from fit-outlier-head keeps its outlier_maxlogit fusion unless set here "
                             "(which drops the outlier head)")
    parser.add_argument("--score-fusion-weight", type=float, default=None, metavar="W",
                        help="set the weight of the standardised MaxLogit term of the fusion before calibrating")
    parser.add_argument("--score-class-window", type=int, default=None, metavar="K",
                        help="set the model's k x k class-guided averaging of the published score (odd, 1 = off) "
                             "before calibrating")
    parser.add_argument("--score-class-weight", type=float, default=None, metavar="A",
                        help="set the share of the same-class mean in the class-guided averaging (0..1) before "
                             "calibrating")
    parser.add_argument("--domain-threshold", type=float, default=None, metavar="SIGMAS",
                        help="out-of-domain alarm threshold in standard deviations of the calibration images (default: "
                             "config calibration.domain_threshold, else 5)")
    parser.add_argument("--domain-rank", type=int, default=None, metavar="K",
                        help="principal directions of the domain head's feature distance (default 16)")
    parser.add_argument("--out", default=None, help="write a new checkpoint here (default: update in place)")
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true")


def add_checkpoint_config_arguments(parser: argparse.ArgumentParser, checkpoint_help: str,
                                    required: bool = True) -> None:
    """--checkpoint, and --config / --override for its data (resolved by ``config_for``)."""
    parser.add_argument("--checkpoint", required=required, help=checkpoint_help)
    parser.add_argument("--config", default=None, help="config for the data (default: the one in the checkpoint)")
    parser.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. data.root=/data/sim")


def config_for(checkpoint: str, config: str | None, overrides: list[str]) -> dict:
    """The given config, else the training config stored in the checkpoint; overrides on top."""
    if config is not None:
        return load_config(config, overrides)
    stored = checkpoint_metadata(load_checkpoint(checkpoint), checkpoint).training.get("config") or {}
    cfg = deep_merge(load_config(None), stored)
    for text in overrides:
        apply_override(cfg, text)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Calibrate and write atomically; prints the written path."""
    from dicnet_training.calibration import calibrate
    from dicnet_training.command import Outputs, run_command
    from dicnet_training.engine import setup_logging

    def work(outputs: Outputs) -> int:
        setup_logging(None, True)
        logging.getLogger("dicnet_training").info("calibrating %s", args.checkpoint)
        cfg = config_for(args.checkpoint, args.config, args.override)
        path = calibrate(args.checkpoint, cfg, outputs.watch(args.out), args.split, args.mu_split, args.target_fpr,
                         args.scoring_mode, args.device, not args.no_progress, args.score_fusion,
                         {"score_smoothing": args.score_smoothing, "score_class_window": args.score_class_window,
                          "score_fusion_weight": args.score_fusion_weight,
                          "score_class_weight": args.score_class_weight},
                         args.domain_threshold, args.domain_rank)
        print(path)
        return 0

    return run_command(args.command, work)

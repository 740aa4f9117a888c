"""The command line both training stages share (`dicnet train-teacher`, `dicnet distill`): options and run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from dicnet_training import distributed as tdist
from dicnet_training.command import Outputs, run_command
from dicnet_training.config import add_config_arguments, load_config


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """Config, output, device, --resume and --init-from; the config file holds the rest."""
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt after an interruption")
    parser.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                        help="fine-tune: start from this checkpoint's weights (e.g. models/dicnet_sim_default.pt) "
                             "with a fresh optimiser and schedule")
    parser.add_argument("--pretrained", default=None, metavar="PATH",
                        help="ImageNet weights of this stage's torchvision backbone from a local file (a torchvision "
                             "state dict, e.g. resnet50-0676ba61.pth); sets model.teacher_pretrained (train-teacher) "
                             "or model.student_pretrained (distill); nothing is downloaded")
    parser.add_argument("--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS)


def run_stage(args: argparse.Namespace, stage: str, train: Callable[..., Path]) -> int:
    """Run one stage into ``--out`` (default: config out_dir/<stage>); rank 0 prints the best checkpoint."""
    def work(outputs: Outputs) -> int:
        cfg = load_config(args.config, args.override)
        if args.pretrained is not None:
            from dicnet_ros.model.backbones import check_pretrained
            from dicnet_ros.model.dicnet import ModelConfig

            backbone = (cfg.get("model") or {}).get(f"{stage}_backbone") or ModelConfig.__dataclass_fields__[
                f"{stage}_backbone"].default
            check_pretrained(str(backbone), args.pretrained)  # a wrong file would surface deep in model building
            cfg.setdefault("model", {})[f"{stage}_pretrained"] = args.pretrained
        out = outputs.watch(Path(args.out) if args.out else Path(cfg["out_dir"]) / stage)
        with tdist.process_group_scope():
            best = train(cfg, run_dir=out, resume=args.resume, show_progress=not args.no_progress,
                         device=args.device, stop_after_epochs=args.stop_after_epochs, init_from=args.init_from)
        if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per rank
            print(best)
        return tdist.exit_worker(0)

    return run_command(args.command, work)

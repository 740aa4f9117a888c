"""The `dicnet` command: one entry point, thin subcommands that call library functions.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported lazily so that `dicnet node` never imports PyTorch and `dicnet sim` never imports
onnxruntime.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # argparse is imported where it is used: `dicnet node` installs its signal handlers first
    import argparse

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("dicnet_ros.data.sim.cli", "render the simulated driving-anomaly benchmark (PyBullet)"),
    "train-teacher": ("dicnet_training.train_teacher", "train the segmentation teacher"),
    "distill": ("dicnet_training.distill", "distill the student from a frozen teacher"),
    "fit-outlier-head": ("dicnet_training.outlier_head", "fit the outlier head of the outlier_maxlogit fusion"),
    "calibrate": ("dicnet_training.calibrate", "estimate mu_c, score statistics and the mask threshold"),
    "evaluate": ("dicnet_training.evaluate", "evaluate DiCNet against MSP / MaxLogit / entropy"),
    "export": ("dicnet_training.export", "export teacher+student as one fused ONNX graph"),
    "build-engine": ("dicnet_ros.inference.build_engine_cli", "build the TensorRT engine ahead of time"),
    "bench": ("dicnet_ros.inference.bench", "latency / FPS benchmark of every available backend"),
    "infer": ("dicnet_ros.inference.infer_cli", "run a model on image files and write score maps"),
    "node": ("dicnet_ros.node.cli", "run the ROS 2 anomaly node"),
    "make-bag": ("dicnet_ros.bag.cli", "turn a dataset split into a rosbag2"),
    "bag-eval": ("dicnet_ros.bag.cli", "run a model over a rosbag2 and evaluate it"),
    "demo": ("dicnet_ros.demo", "the out-of-the-box demo: node + default model + shipped stream"),
}




def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="dicnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load(name: str):
    module_name = SUBCOMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        from dicnet_ros.installation import missing_dependency_message

        message = missing_dependency_message(name, exc.name or "")
        if message is None:
            raise
        raise SystemExit(message) from exc


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of ``dicnet NAME`` (imports its module; SystemExit naming a missing extra)."""
    import argparse

    module = _load(name)
    parser = argparse.ArgumentParser(prog=f"dicnet {name}", description=SUBCOMMANDS[name][1])
    # A module serving several subcommands (make-bag / bag-eval) takes the name as a first argument.
    if hasattr(module, "add_arguments_for"):
        module.add_arguments_for(name, parser)
    else:
        module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "node":  # a Ctrl-C while the node starts must end it quietly: handlers first
        from dicnet_ros.node.signals import install_stop_handlers

        install_stop_handlers()
    if argv and argv[0] == "--version":
        from dicnet_ros import __version__

        print(__version__)
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command '{argv[0]}'")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    parser = subcommand_parser(name)
    module = _load(name)
    args = parser.parse_args(rest)
    args.command = name
    runner = getattr(module, "run_for", None)
    return int((runner(name, args) if runner else module.run(args)) or 0)


if __name__ == "__main__":
    sys.exit(main())

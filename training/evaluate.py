"""`dicnet evaluate`: DiCNet (paper and code scoring) vs MSP / MaxLogit / entropy, both protocols, with plots.

With ``--data DIR`` it evaluates on that data set instead of the config's (any layout ``open_dataset`` detects:
the real benchmarks SMIYC, LostAndFound, Fishyscapes L&F, Road Anomaly, an images/ + masks/ folder, or the
simulator's), adding the benchmarks' protocol (SMIYC pixel definitions and component metrics). ``--model`` runs an
exported model (ONNX, TensorRT engine) through ``load_model`` instead of the checkpoint's PyTorch pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dicnet_training import distributed as tdist
from dicnet_training.calibrate import add_checkpoint_config_arguments, config_for

from dicnet_ros.cli_options import add_backend_argument, add_device_argument, add_model_argument
from dicnet_ros.data.detect import KINDS, add_label_arguments, dataset_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options (the data come from --data, or from --config / the config stored in the checkpoint)."""
    add_checkpoint_config_arguments(parser, "calibrated pair checkpoint (PyTorch; every method and scoring mode)",
                                    required=False)
    add_model_argument(parser, "; here: instead of --checkpoint, run through the node's inference interface (needs "
                               "--data), reporting the published score, MSP and MaxLogit")
    add_backend_argument(parser)
    parser.add_argument("--data", default=None,
                        help="evaluate on this data set (a benchmark folder, an images/ + masks/ folder, or any "
                             "layout the readers detect) instead of the config's data.root")
    parser.add_argument("--kind", default="auto", choices=KINDS, help="layout of --data (default: detect)")
    add_label_arguments(parser)
    parser.add_argument("--split", default=None,
                        help="split to evaluate (default: config eval.split, test; with --data: test)")
    parser.add_argument("--out", required=True, help="report directory (report.md, report.json, PNGs)")
    parser.add_argument("--minmax", action="store_true",
                        help="also report DiCNet with per-image min-max (the official code's protocol variant)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=1, help="images per inference call with --model")
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Evaluate and write the report; the table is printed too. Bad input: one error line, exit code 2."""
    from dicnet_training.command import Outputs, run_command
    from dicnet_training.engine import setup_logging

    def work(outputs: Outputs) -> int:
        setup_logging(None, True)
        if (args.checkpoint is None) == (args.model is None):
            raise ValueError("give exactly one of --checkpoint (the PyTorch pair) and --model (an exported model)")
        dataset = None
        if args.data is not None:
            from dicnet_ros.data import open_dataset

            dataset = open_dataset(args.data, args.split or "test", kind=args.kind, **dataset_options(args))
        elif args.model is not None:
            raise ValueError("--model needs --data (the images and masks to evaluate on)")
        out = outputs.watch(args.out)
        if args.model is not None:
            return _run_model(args, dataset, out)
        cfg = config_for(args.checkpoint, args.config, args.override)
        from dicnet_training.evaluation import evaluate

        with tdist.process_group_scope():
            evaluate(args.checkpoint, cfg, out, args.split, args.minmax or None, args.device,
                     not args.no_progress, args.max_images, dataset=dataset)
        return tdist.exit_worker(0)

    return run_command(args.command, work)


def _run_model(args: argparse.Namespace, dataset: object, out: Path) -> int:
    """--model: the exported model over --data through ``load_model`` (no PyTorch model code involved)."""
    from dicnet_ros.inference import load_model
    from dicnet_ros.inference.dataset_eval import METHOD_TITLES, evaluate_dataset
    from dicnet_ros.metrics import benchmark_table
    from dicnet_ros.resources import resolve_model

    model = load_model(resolve_model(args.model), backend=args.backend, device=args.device)
    try:
        results = evaluate_dataset(model, dataset, out, batch_size=max(1, args.batch_size),
                                   max_images=args.max_images, progress=not args.no_progress)
    finally:
        model.close()
    print(benchmark_table(results["benchmark"], METHOD_TITLES))
    print(f"report written to {out}/report.md and report.json")
    return 0

"""`dicnet build-engine`: build (or verify) the TensorRT engine ahead of time, so a node starts in seconds."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dicnet_ros.cli_options import add_device_argument, add_model_argument
from dicnet_ros.inference.base import BackendUnavailableError, ModelLoadError
from dicnet_ros.preprocessing import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, " (here: a fused .onnx, or a separate-graph manifest/folder)")
    parser.add_argument("--input-size", type=parse_size, default=None,
                        help="camera size WxH for a dynamic-size ONNX (default: the exported or network size)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engine folder (default: next to the ONNX)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching engine exists")
    parser.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit")
    parser.add_argument("--fp16-flag", action="store_true",
                        help="TensorRT < 10.12 only: weakly typed FP16 (newer versions take precision from the ONNX)")
    parser.add_argument("--max-batch", type=int, default=1,
                        help="largest number of images per call (e.g. the camera count of a multi-camera node); the "
                             "engine takes 1 to N images of one size; needs a --dynamic export")
    add_device_argument(parser)  # auto = cuda: TensorRT needs an NVIDIA GPU; cuda:N builds on and for GPU N


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dicnet_ros.inference.trt_backend import TrtModel
    from dicnet_ros.resources import resolve_model

    if args.max_batch < 1:
        print(f"dicnet build-engine: --max-batch must be at least 1, got {args.max_batch}", file=sys.stderr)
        return 2
    try:
        device = args.device if args.device != "auto" else "cuda"
        model = TrtModel(resolve_model(args.model), device=device, cache_dir=args.cache_dir, force_rebuild=args.force,
                         input_size=args.input_size, workspace_mb=args.workspace_mb, fp16_flag=args.fp16_flag,
                         max_batch=args.max_batch)
        model.warmup(1)
    except (BackendUnavailableError, ModelLoadError, FileNotFoundError) as exc:
        print(f"dicnet build-engine: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except (RuntimeError, TypeError, OSError) as exc:  # whatever else TensorRT or CUDA raise: one line, no traceback
        print(f"dicnet build-engine: TensorRT failed: {type(exc).__name__}: {' '.join(str(exc).split())}",
              file=sys.stderr)
        return 1
    for path in model.engine_files:
        print(f"engine ready: {path}")
    return 0

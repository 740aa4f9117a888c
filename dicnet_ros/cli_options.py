"""The options several ``dicnet`` commands share, defined once: ``--model``, ``--backend`` and ``--device`` (and
``--max-pixels``) mean the same thing, with the same default and the same help text, in every ``dicnet COMMAND
-h`` that has them (test/test_cli_options.py checks every subcommand's parser).

A command adds them with ``add_model_argument(parser)`` etc. and turns ``args.model`` into a file with
``dicnet_ros.resources.resolve_model``. Importing it loads no runtime (only numpy, OpenCV and the inference
interface's constants).
"""

from __future__ import annotations

import argparse
import re

from dicnet_ros.image_conversion import DEFAULT_MAX_PIXELS
from dicnet_ros.inference.base import BACKENDS as BACKEND_CHOICES
from dicnet_ros.resources import DEFAULT_MODEL_NAME

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

MODEL_HELP = (f"model file: .onnx, .engine, a separate-graph folder or a .pt checkpoint; a bare file name picks one "
              f"of the package's shipped models (e.g. dicnet_sim_default_int8.onnx); default: the shipped "
              f"{DEFAULT_MODEL_NAME}")
BACKEND_HELP = ("inference runtime: auto (TensorRT, else ONNX Runtime, else PyTorch: the first one installed that "
                "can run the model on --device), tensorrt, onnxruntime or torch; default auto")
DEVICE_HELP = ("where the model runs: auto (the first CUDA GPU when the backend can use one, else the CPU), cpu, "
               "cuda or cuda:N; default auto")
MAX_PIXELS_HELP = (f"refuse images with more pixels than this, read from the file header before decoding (the "
                   f"node's max_input_pixels); 0 = no limit; default {DEFAULT_MAX_PIXELS}")


def device_argument(text: str) -> str:
    """argparse type of --device: auto, cpu, cuda or cuda:N."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def pixel_count(text: str) -> int:
    """argparse type of --max-pixels: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_model_argument(parser: argparse.ArgumentParser, extra_help: str = "") -> argparse.Action:
    """``--model`` (None = the shipped default; resolve with ``resources.resolve_model``)."""
    return parser.add_argument("--model", default=None, metavar="MODEL", help=MODEL_HELP + extra_help)


def add_backend_argument(parser: argparse.ArgumentParser) -> argparse.Action:
    return parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help=BACKEND_HELP)


def add_device_argument(parser: argparse.ArgumentParser) -> argparse.Action:
    return parser.add_argument("--device", default="auto", type=device_argument, metavar="DEVICE", help=DEVICE_HELP)


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> argparse.Action:
    return parser.add_argument("--max-pixels", default=DEFAULT_MAX_PIXELS, type=pixel_count, metavar="N",
                               help=MAX_PIXELS_HELP)


def add_inference_arguments(parser: argparse.ArgumentParser, model_help: str = "") -> None:
    """--model, --backend and --device: what every command that runs a model takes."""
    add_model_argument(parser, model_help)
    add_backend_argument(parser)
    add_device_argument(parser)

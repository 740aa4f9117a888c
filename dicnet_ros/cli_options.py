"""The options several ``dicnet`` commands share, defined once: ``--model``, ``--backend`` and ``--device`` (and
``--threshold``, ``--max-pixels``) mean the same thing, with the same default and the same help text, in every
``dicnet COMMAND -h`` that has them (test/test_cli_options.py checks every subcommand's parser).

A command adds them with ``add_model_argument(parser)`` etc. and turns ``args.model`` into a file with
``dicnet_ros.resources.resolve_model``. Importing it loads no runtime (only numpy, OpenCV and the inference
interface's constants).
"""

from __future__ import annotations

import argparse
import math
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
THRESHOLD_HELP = ("mask threshold on the raw score (mask = score > threshold), overriding the model's calibrated one; "
                  "a finite number, or nan = the model's")
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


def mask_threshold(text: str) -> float | None:
    """argparse type of --threshold: a finite score, or NaN = the model's calibrated threshold (None), as the node's
    ``threshold`` parameter. +-inf would make every mask empty or full, never a useful result: a usage error."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from exc
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (or nan = the model's threshold), got {text!r}")
    return value


# ``unset=True``: the option's value is None when it is not given (same meaning and help); for a command that passes
# only the options a user gave on to something with defaults of its own (``dicnet node`` -> ROS parameters, where a
# --params-file may set them).


def add_threshold_argument(parser: argparse.ArgumentParser) -> argparse.Action:
    return parser.add_argument("--threshold", type=mask_threshold, default=None, metavar="SCORE", help=THRESHOLD_HELP)


def add_model_argument(parser: argparse.ArgumentParser, extra_help: str = "") -> argparse.Action:
    """``--model`` (None = the shipped default; resolve with ``resources.resolve_model``)."""
    return parser.add_argument("--model", default=None, metavar="MODEL", help=MODEL_HELP + extra_help)


def add_backend_argument(parser: argparse.ArgumentParser, unset: bool = False) -> argparse.Action:
    return parser.add_argument("--backend", default=None if unset else "auto", choices=BACKEND_CHOICES,
                               help=BACKEND_HELP)


def add_device_argument(parser: argparse.ArgumentParser, unset: bool = False) -> argparse.Action:
    return parser.add_argument("--device", default=None if unset else "auto", type=device_argument,
                               metavar="DEVICE", help=DEVICE_HELP)


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> argparse.Action:
    return parser.add_argument("--max-pixels", default=DEFAULT_MAX_PIXELS, type=pixel_count, metavar="N",
                               help=MAX_PIXELS_HELP)


def add_inference_arguments(parser: argparse.ArgumentParser, model_help: str = "", unset: bool = False) -> None:
    """--model, --backend and --device: what every command that runs a model takes."""
    add_model_argument(parser, model_help)
    add_backend_argument(parser, unset)
    add_device_argument(parser, unset)

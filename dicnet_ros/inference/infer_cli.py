"""`dicnet infer`: run a model on image files and write score maps (.npy + colour .png) and masks (.png)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicnet_ros.inference.base import BACKENDS, BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.cpu_features import int8_notice
from dicnet_ros.inference.registry import load_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
PROG = "dicnet infer"
EXIT_CODES = """exit status:
  0  every image was processed and its results written
  1  the model could not be loaded, or at least one input could not be processed (each is reported on
     stderr; the results of the others are written)
  2  bad command line (e.g. a non-finite --threshold)"""


class UnreadableImageError(ValueError):
    """An input that is not a decodable image; the message says why (missing, empty, not an image ...)."""


@dataclass
class ImageInputs:
    """Image files found in the given paths, and one problem line per input that yields none."""

    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def image_files(inputs: list[Path]) -> ImageInputs:
    """Files as given plus the images inside folders; missing paths and image-less folders are problems."""
    found = ImageInputs()
    for path in inputs:
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                found.problems.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found.files += images
        elif path.exists():
            found.files.append(path)
        else:
            found.problems.append(f"{path}: no such file or folder")
    return found


def read_rgb(path: Path) -> np.ndarray:
    """The image at ``path`` as contiguous uint8 RGB, or UnreadableImageError.

    Decodes from bytes so OpenCV prints no warnings of its own: each bad input gets exactly one line.
    """
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UnreadableImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if data.size == 0:
        raise UnreadableImageError(f"{path}: empty file")
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise UnreadableImageError(f"{path}: not a readable image") from exc
    if bgr is None:
        raise UnreadableImageError(f"{path}: not a readable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def mask_threshold(text: str) -> float | None:
    """--threshold value: a finite score, or NaN = the model's calibrated threshold (as the node's parameter).

    The mask is ``score > threshold``; +-inf would make every mask empty or full, which is never a useful
    result and which the model rejects, so argparse reports it as a usage error (exit 2).
    """
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from exc
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number (or nan = the model's threshold), got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_CODES
    parser.add_argument("--model", required=True, type=Path, help=".onnx, separate manifest/folder, or .pt")
    parser.add_argument("--images", required=True, type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threshold", type=mask_threshold, default=None,
                        help="mask threshold on the raw score, overriding the model's (finite; nan = the model's)")


def report(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import cv2

    inputs = image_files(args.images)
    for problem in inputs.problems:
        report(problem)
    if not inputs.files:  # before loading the model: that can take minutes (TensorRT engine build)
        report("no image to process")
        return 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(args.model, args.backend, args.device)
    except (BackendUnavailableError, ModelLoadError) as exc:
        report(str(exc))
        return 1
    if args.threshold is not None:
        model.threshold = args.threshold
    int8_line, int8_warning = int8_notice(model)
    if int8_line:
        print(int8_line)
    if int8_warning:
        report(f"warning: {int8_warning}")
    lo, hi = model.metadata.score_range
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        report(f"{args.out}: cannot create the output folder ({exc.strerror or exc})")
        return 1
    written, failed = 0, len(inputs.problems)
    for path in inputs.files:
        try:
            result = model.infer(read_rgb(path))
            np.save(args.out / f"{path.stem}_score.npy", result.anomaly_score)
        except (ValueError, OSError) as exc:  # unreadable input, image size the graph cannot take, disk full
            report(str(exc) if isinstance(exc, UnreadableImageError) else f"{path}: {exc}")
            failed += 1
            continue
        scaled = np.clip((result.anomaly_score - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        cv2.imwrite(str(args.out / f"{path.stem}_score.png"), cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO))
        cv2.imwrite(str(args.out / f"{path.stem}_mask.png"), result.anomaly_mask.astype(np.uint8) * 255)
        if result.semantic_labels is not None:
            cv2.imwrite(str(args.out / f"{path.stem}_labels.png"), result.semantic_labels)
        written += 1
    print(f"wrote {written} result sets to {args.out} ({model.backend_name}, {model.precision}, "
          f"threshold {model.threshold:.4g})")
    if failed:
        report(f"{failed} input(s) could not be processed")
    return 1 if failed else 0

"""`dicnet infer`: run a model on image files and write, per image, the score map (.npy + colour .png), the mask,
the overlay the node publishes, and the teacher's classes (colour .png + raw ids); with ``--json`` each image's
out-of-domain score and verdict.

Images are decoded by the node's guarded decoder (``image_conversion.read_image_file``): the pixel limit is read
from the header before decoding, EXIF orientation is ignored (outputs have the file's stored size, as a camera
frame would), truncated or corrupt files are refused with one line each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicnet_ros.cli_options import (  # noqa: F401 - mask_threshold: part of this module's interface
    add_inference_arguments,
    add_max_pixels_argument,
    add_threshold_argument,
    mask_threshold,
)
from dicnet_ros.inference.base import AnomalyModel, BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.cpu_features import int8_notice
from dicnet_ros.inference.registry import load_model
from dicnet_ros.metrics.domain import domain_fields

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PROG = "dicnet infer"
#: What one result set holds, by file-name suffix after the image's result name.
OUTPUTS = {
    "_score.npy": "raw anomaly score (float32, higher = more anomalous; compare with the threshold)",
    "_score.png": "the score coloured over the model's display range (turbo, as the node's ~/anomaly_score_color)",
    "_mask.png": "255 where score > threshold, else 0",
    "_overlay.png": "the image with the score's colour blended in (the node's ~/overlay)",
    "_labels.png": "the teacher's classes in colour (colours in classes.json)",
    "_label_ids.png": "the teacher's class ids as grey values 0..N-1 (for programs)",
}
CLASSES_FILE = "classes.json"
EXIT_CODES = """outputs, per image NAME (NAME = the file name without its suffix; where two inputs share it, the
path that tells them apart, e.g. a__frame and b__frame):
""" + "\n".join(f"  NAME{suffix:<15} {text}" for suffix, text in OUTPUTS.items()) + f"""
  {CLASSES_FILE:<19} class id -> name and colour of the labels images (once per run)

exit status:
  0  every image was processed and its results written
  1  the model could not be loaded, at least one input could not be processed (each is reported on
     stderr; the results of the others are written), or the --json file could not be written
  2  bad command line (e.g. a non-finite --threshold)"""


class UnreadableImageError(ValueError):
    """An input that is not a decodable image; the message says why (missing, empty, not an image ...)."""


@dataclass
class ImageInputs:
    """Image files found in the given paths, and one problem line per input that yields none."""

    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def image_files(inputs: list[Path]) -> ImageInputs:
    """Files as given plus the images inside folders; missing paths and image-less folders are problems. A file
    reached twice (given twice, or also inside a given folder) is processed once."""
    found = ImageInputs()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.files.append(path)

    for path in inputs:
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                found.problems.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for image in images:
                add(image)
        elif path.exists():
            add(path)
        else:
            found.problems.append(f"{path}: no such file or folder")
    return found


def result_names(files: list[Path]) -> dict[Path, str]:
    """A distinct output name per input: its stem; where stems collide, its path below the colliding files' common
    folder joined by ``__`` (``a__frame``, ``b__frame``), plus the suffix where only that differs (``frame_jpg``)."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(path.stem, []).append(path)
    names: dict[Path, str] = {}
    for stem, group in groups.items():
        if len(group) == 1:
            names[group[0]] = stem
            continue
        common = Path(os.path.commonpath([p.resolve().parent for p in group]))
        for path in group:
            names[path] = "__".join([*path.resolve().parent.relative_to(common).parts, stem])
        counts = Counter(names[p] for p in group)
        for path in group:
            if counts[names[path]] > 1:
                names[path] += "_" + path.suffix.lstrip(".").lower()
    counts = Counter(names.values())  # a joined name may meet a real file name; numbering settles the rest
    for index, path in enumerate(files):
        if counts[names[path]] > 1:
            names[path] += f"_{index}"
    return names


def read_rgb(path: Path, max_pixels: int) -> np.ndarray:
    """The image at ``path`` as uint8 RGB under the camera-frame rules, or UnreadableImageError (one line)."""
    from dicnet_ros.image_conversion import ImageConversionError, read_image_file

    try:
        return read_image_file(path, max_pixels or None)
    except ImageConversionError as exc:
        text = str(exc)
        raise UnreadableImageError(text if str(path) in text else f"{path}: {text}") from exc
    except OSError as exc:
        raise UnreadableImageError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_CODES
    parser.add_argument("--images", required=True, type=Path, nargs="+",
                        help=f"image files or folders (searched recursively for {', '.join(IMAGE_SUFFIXES)})")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    add_inference_arguments(parser)
    add_threshold_argument(parser)
    add_max_pixels_argument(parser)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write per image: image, domain_score, in_domain (the out-of-domain alarm; null "
                             "when the model has none)")


def report(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


class ResultWriter:
    """Writes one image's result set into the output folder (the node's colours and overlay)."""

    def __init__(self, out: Path, model) -> None:
        from dicnet_ros.visualization import class_palette

        self.out = out
        self.display_range = model.metadata.display_range
        self.class_names = list(model.metadata.class_names)
        self.palette = class_palette(max(len(self.class_names), 1))
        self.classes_written = False

    def write_classes(self) -> None:
        """classes.json: written with the first labels image, so a run that wrote nothing leaves nothing."""
        self.classes_written = True
        classes = [{"id": i, "name": name, "rgb": [int(c) for c in self.palette[i]]}
                   for i, name in enumerate(self.class_names)]
        (self.out / CLASSES_FILE).write_text(json.dumps(classes, indent=1) + "\n")

    def write(self, name: str, rgb: np.ndarray, result) -> None:
        import cv2

        from dicnet_ros.visualization import colorize_labels, colorize_score, overlay

        def png(suffix: str, image: np.ndarray) -> None:
            bgr = image[:, :, ::-1] if image.ndim == 3 else image
            if not cv2.imwrite(str(self.out / f"{name}{suffix}"), np.ascontiguousarray(bgr)):
                raise OSError(f"cannot write {self.out / (name + suffix)}")

        np.save(self.out / f"{name}_score.npy", result.anomaly_score)
        heat = colorize_score(result.anomaly_score, *self.display_range)
        png("_score.png", heat)
        png("_mask.png", result.anomaly_mask.astype(np.uint8) * 255)
        same_size = heat.shape == rgb.shape
        png("_overlay.png", overlay(rgb, result.anomaly_score, 0.5, self.display_range,
                                    heat=heat if same_size else None))
        if result.semantic_labels is not None:
            labels = np.ascontiguousarray(result.semantic_labels, np.uint8)
            png("_labels.png", colorize_labels(labels, self.palette))
            png("_label_ids.png", labels)
            if not self.classes_written:
                self.write_classes()


def write_json(path: Path, model: AnomalyModel, records: list[dict]) -> bool:
    """The per-image records and the alarm's threshold as JSON; False (reported) when it cannot be written."""
    document = {"model": str(model.path), "domain_threshold": model.domain_threshold, "images": records}
    try:
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as exc:
        report(f"{path}: cannot write the JSON report ({exc.strerror or exc})")
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from dicnet_ros.resources import resolve_model

    inputs = image_files(args.images)
    for problem in inputs.problems:
        report(problem)
    if not inputs.files:  # before loading the model: that can take minutes (TensorRT engine build)
        report("no image to process")
        return 1
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(resolve_model(args.model), args.backend, args.device)
    except (BackendUnavailableError, ModelLoadError, FileNotFoundError) as exc:
        report(str(exc))
        return 1
    try:
        return _infer_all(args, model, inputs)
    finally:
        model.close()


def _infer_all(args: argparse.Namespace, model, inputs: ImageInputs) -> int:
    """Every image through ``model``; results written as they come, one stderr line per failure."""
    if args.threshold is not None:
        model.threshold = args.threshold
    int8_line, int8_warning = int8_notice(model)
    if int8_line:
        print(int8_line)
    if int8_warning:
        report(f"warning: {int8_warning}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        writer = ResultWriter(args.out, model)
    except OSError as exc:
        report(f"{args.out}: cannot create the output folder ({exc.strerror or exc})")
        return 1
    names = result_names(inputs.files)
    written, failed = 0, len(inputs.problems)
    records: list[dict] = []
    for path in inputs.files:
        try:
            rgb = read_rgb(path, args.max_pixels)
            result = model.infer(rgb)
            writer.write(names[path], rgb, result)
        except (ValueError, OSError) as exc:  # unreadable input, image size the graph cannot take, disk full
            report(str(exc) if isinstance(exc, UnreadableImageError) else f"{path}: {exc}")
            failed += 1
            continue
        records.append({"image": str(path), **domain_fields(result.domain_score, model.domain_threshold)})
        written += 1
    json_written = args.json is None or write_json(args.json, model, records)
    renamed = sum(names[p] != p.stem for p in inputs.files)
    print(f"wrote {written} result sets to {args.out} ({model.backend_name}, {model.precision}, "
          f"threshold {model.threshold:.4g})" + (f"; {renamed} inputs share a file name with another, so their "
                                                 "results are named after their folders" if renamed else ""))
    if failed:
        report(f"{failed} input(s) could not be processed")
    return 1 if failed or not json_written else 0

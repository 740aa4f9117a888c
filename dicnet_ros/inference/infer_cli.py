"""`dicnet infer`: run a model on image files and write score maps (.npy + colour .png) and masks (.png)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from dicnet_ros.inference.base import BACKENDS, BackendUnavailableError, ModelLoadError
from dicnet_ros.inference.registry import load_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def image_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help=".onnx, separate manifest/folder, or .pt")
    parser.add_argument("--images", required=True, type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threshold", type=float, default=None, help="override the model's mask threshold")


def run(args: argparse.Namespace) -> int:
    import cv2

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        model = load_model(args.model, args.backend, args.device)
    except (BackendUnavailableError, ModelLoadError) as exc:
        print(f"dicnet infer: {exc}")
        return 1
    if args.threshold is not None:
        model.threshold = args.threshold
    lo, hi = model.metadata.score_range
    args.out.mkdir(parents=True, exist_ok=True)
    files = image_files(args.images)
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"skipping {path}: not a readable image")
            continue
        result = model.infer(np.ascontiguousarray(bgr[:, :, ::-1]))
        np.save(args.out / f"{path.stem}_score.npy", result.anomaly_score)
        scaled = np.clip((result.anomaly_score - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
        cv2.imwrite(str(args.out / f"{path.stem}_score.png"), cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO))
        cv2.imwrite(str(args.out / f"{path.stem}_mask.png"), result.anomaly_mask.astype(np.uint8) * 255)
        if result.semantic_labels is not None:
            cv2.imwrite(str(args.out / f"{path.stem}_labels.png"), result.semantic_labels)
    print(f"wrote {len(files)} result sets to {args.out} ({model.backend_name}, threshold {model.threshold:.4g})")
    return 0

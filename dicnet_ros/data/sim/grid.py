"""Sample grid of a generated set: rows of (image | colour-coded labels | anomaly mask) plus a legend.

Usage: ``python -m dicnet_ros.data.sim.grid --root DIR --out docs/images/sim_grid.png``
Only numpy + cv2, so it runs wherever the generator runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from dicnet_ros.data.sim.classes import (
    LABEL_OFFSET,
    SIM_ANOMALY_ID,
    SIM_ANOMALY_NAME,
    SIM_CLASS_COLORS,
    SIM_CLASSES,
    SPLIT_DIRS,
    colorize,
)


def _pairs(root: Path, split: str, n: int) -> list[tuple[Path, Path]]:
    img_dir, ann_dir = (root / d for d in SPLIT_DIRS[split])
    files = sorted(img_dir.glob("*.png"))[:n]
    return [(f, ann_dir / f.name) for f in files if (ann_dir / f.name).exists()]


def _row(img_path: Path, ann_path: Path, width: int, tag: str) -> np.ndarray:
    """One row: RGB, label colours and the anomaly mask (white) side by side, each resized to width."""
    rgb = cv2.cvtColor(cv2.imread(str(img_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    raw = cv2.imread(str(ann_path), cv2.IMREAD_UNCHANGED)
    label = raw.astype(np.int32) - LABEL_OFFSET
    label[raw < LABEL_OFFSET] = 255
    h = round(rgb.shape[0] * width / rgb.shape[1])
    lab_rgb = colorize(label.clip(0, 255).astype(np.uint8))
    mask = np.repeat(((label == SIM_ANOMALY_ID) * 255).astype(np.uint8)[..., None], 3, axis=2)
    tiles = [
        cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA),
        cv2.resize(lab_rgb, (width, h), interpolation=cv2.INTER_NEAREST),
        cv2.resize(mask, (width, h), interpolation=cv2.INTER_NEAREST),
    ]
    sep = np.full((h, 4, 3), 255, np.uint8)
    row = np.concatenate([tiles[0], sep, tiles[1], sep, tiles[2]], axis=1)
    (tw, th), _ = cv2.getTextSize(tag, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    row[: th + 10, : tw + 10] = (row[: th + 10, : tw + 10] * 0.35).astype(np.uint8)
    cv2.putText(row, tag, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return row


def _legend(width: int) -> np.ndarray:
    """Class colour swatches with names, wrapped to the grid width."""
    names = [*SIM_CLASSES, SIM_ANOMALY_NAME]
    cell_w, cell_h = 128, 22
    per_row = max(1, width // cell_w)
    rows = (len(names) + per_row - 1) // per_row
    img = np.full((rows * cell_h + 6, width, 3), 255, np.uint8)
    for i, name in enumerate(names):
        x, y = (i % per_row) * cell_w + 4, (i // per_row) * cell_h + 4
        col = tuple(int(c) for c in SIM_CLASS_COLORS[i])
        cv2.rectangle(img, (x, y), (x + 16, y + 14), col, -1)
        cv2.rectangle(img, (x, y), (x + 16, y + 14), (0, 0, 0), 1)
        cv2.putText(img, name, (x + 21, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def make_grid(root: str | Path, out: str | Path, n_train: int = 3, n_test: int = 4, width: int = 320) -> Path:
    """Write the grid PNG for up to n_train train and n_test test images found under root."""
    root, out = Path(root), Path(out)
    rows = []
    for split, n in (("train", n_train), ("val", 0), ("test", n_test)):
        for img, ann in _pairs(root, split, n):
            rows.append(_row(img, ann, width, f"{split} {img.stem}"))
    if not rows:
        raise FileNotFoundError(f"no generated images under {root}")
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    body = np.concatenate([x for r in rows for x in (r, gap)], axis=0)
    header = np.full((24, body.shape[1], 3), 255, np.uint8)
    for k, title in enumerate(("image", "labels", "anomaly mask")):
        cv2.putText(
            header, title, (k * (width + 4) + 5, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    grid = np.concatenate([header, body, _legend(body.shape[1])], axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output root of `dicnet sim`")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--train", type=int, default=3, help="number of train rows")
    parser.add_argument("--test", type=int, default=4, help="number of test rows")
    parser.add_argument("--width", type=int, default=320, help="tile width in pixels")
    args = parser.parse_args(argv)
    print(make_grid(args.root, args.out, args.train, args.test, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())

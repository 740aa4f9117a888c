"""Render a dataset split in parallel and write it in the StreetHazards layout.

Image i of a split is rendered from ``image_seed(seed, split, i)``, so the bytes written do not depend on
the number of workers or on the order in which workers finish.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from dicnet_ros import __version__
from dicnet_ros.data.sim.classes import (
    DATASET_NAME,
    IGNORE_ID,
    LABEL_OFFSET,
    SIM_ANOMALY_ID,
    SIM_ANOMALY_NAME,
    SIM_CLASSES,
    SIM_PROXY_ID,
    SPLIT_DIRS,
)
from dicnet_ros.data.sim.manifest import manifest_path
from dicnet_ros.data.sim.objects import OUTLIER_PROXIES, AnomalyModel, parse_anomaly_set

SPLITS: tuple[str, ...] = tuple(SPLIT_DIRS)


@dataclass
class SplitReport:
    """What ``generate_split`` produced: counts, timing and the manifest path."""

    split: str
    count: int
    seconds: float
    manifest: Path
    anomaly_pixels: int = 0
    images: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


def image_seed(seed: int, split: str, index: int) -> int:
    """Per-image seed from (seed, split, index); independent of worker scheduling."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(split.encode()), int(index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def parse_size(text: str) -> tuple[int, int]:
    """'384x216' -> (384, 216)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"size must look like WxH (e.g. 384x216), got '{text}'") from exc
    if w < 16 or h < 16:
        raise ValueError(f"size too small: {w}x{h}")
    return w, h


def _with_proxies(seed: int, fraction: float) -> bool:
    """Whether this training image gets outlier proxies (its own generator: the scene's draws stay as they were)."""
    return fraction > 0 and bool(np.random.default_rng([seed, 0xB0]).random() < fraction)


def write_dataset_yaml(out: Path, size: tuple[int, int]) -> Path:
    """Write DIR/dataset.yaml in the schema the project's loaders read."""
    meta = {
        "name": DATASET_NAME,
        "classes": list(SIM_CLASSES),
        "anomaly_ids": [SIM_ANOMALY_ID],
        "anomaly_names": [SIM_ANOMALY_NAME],
        "outlier_proxy_ids": [SIM_PROXY_ID],
        "ignore_id": IGNORE_ID,
        "label_offset": LABEL_OFFSET,
        "generator": {"tool": "dicnet sim", "version": __version__, "size": [int(size[0]), int(size[1])]},
    }
    path = Path(out) / "dataset.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None))
    return path


def _render_task(task: tuple) -> dict:
    """Worker body: render one image and write its RGB and annotation PNGs; returns the manifest entry."""
    from dicnet_ros.data.sim.render import render_image  # pybullet is only imported in workers

    index, seed, width, height, models, proxies, img_path, ann_path = task
    res = render_image(seed, width, height, models, proxy_models=proxies)
    if not cv2.imwrite(img_path, cv2.cvtColor(res.rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {img_path}")
    cv2.imwrite(ann_path, (res.label + LABEL_OFFSET).astype(np.uint8))
    return {
        "index": index,
        "file": os.path.basename(img_path),
        "seed": seed,
        "anomaly_pixels": res.anomaly_pixels,
        **({"outlier_proxy_pixels": int((res.label == SIM_PROXY_ID).sum())} if proxies else {}),
        "anomalies": res.anomalies,
    }


def generate_split(
    out: str | Path,
    split: str,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = (384, 216),
    anomaly_set: str = "all",
    workers: int | None = None,
    progress: bool = True,
    outlier_proxies: float = 0.0,
) -> SplitReport:
    """Render ``count`` images of ``split`` into ``out`` (StreetHazards layout) and write the manifest.

    Anomalies are inserted only in the test split; ``anomaly_set`` selects their families
    (see :mod:`dicnet_ros.data.sim.objects`). ``outlier_proxies`` is the fraction of TRAIN images that get
    outlier proxies (``OUTLIER_PROXIES``) for the student's outlier exposure; the decision per image comes from
    its own seed, so images without proxies are the same as with ``outlier_proxies=0``.
    """
    if not 0.0 <= outlier_proxies <= 1.0:
        raise ValueError(f"outlier_proxies must be a fraction in [0, 1], got {outlier_proxies}")
    if split not in SPLIT_DIRS:
        raise ValueError(f"unknown split '{split}', expected one of {', '.join(SPLITS)}")
    models: tuple[AnomalyModel, ...] = parse_anomaly_set(anomaly_set) if split == "test" else ()
    out = Path(out)
    img_dir, ann_dir = (out / d for d in SPLIT_DIRS[split])
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_yaml(out, size)
    width, height = size
    tasks = [
        (
            i,
            image_seed(seed, split, i),
            width,
            height,
            models,
            OUTLIER_PROXIES if split == "train" and _with_proxies(image_seed(seed, split, i), outlier_proxies) else (),
            str(img_dir / f"{i:06d}.png"),
            str(ann_dir / f"{i:06d}.png"),
        )
        for i in range(count)
    ]
    workers = max(1, min(workers or default_workers(), max(count, 1)))
    t0 = time.perf_counter()
    results: list[dict] = []
    bar = _progress(count, f"sim {split}", progress)
    if workers == 1:
        for t in tasks:
            results.append(_render_task(t))
            bar.update(1)
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers, initializer=_worker_init) as pool:
            for r in pool.imap_unordered(_render_task, tasks, chunksize=1):
                results.append(r)
                bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    results.sort(key=lambda r: r["index"])
    manifest = {
        "split": split,
        "seed": seed,
        "count": count,
        "size": [width, height],
        "anomaly_set": anomaly_set if split == "test" else None,
        "outlier_proxies": outlier_proxies if split == "train" else 0.0,
        "generator_version": __version__,
        "images_dir": SPLIT_DIRS[split][0],
        "annotations_dir": SPLIT_DIRS[split][1],
        "images": [{k: v for k, v in r.items() if k != "index"} for r in results],
    }
    mpath = manifest_path(out, split)
    mpath.write_text(json.dumps(manifest, indent=1))
    return SplitReport(split, count, seconds, mpath, sum(r["anomaly_pixels"] for r in results), results)


def _worker_init() -> None:
    """Forget a pybullet connection inherited through fork: each worker opens its own."""
    from dicnet_ros.data.sim import render

    render._CLIENT = None
    render._MEASURE_CLIENT = None


def default_workers() -> int:
    """min(4, cpu count): rendering is CPU bound and the machines here are small."""
    return max(1, min(4, os.cpu_count() or 1))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img")

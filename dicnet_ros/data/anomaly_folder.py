"""A generic anomaly-evaluation folder: your own images with anomaly masks, evaluated like the benchmarks.

Layout::

    <root>/images/<stem>.jpg | .png | .webp      (sub-folders allowed; the stem is the path below images/)
    <root>/masks/<stem>.png                      (8- or 16-bit, grayscale or palette)

The mask convention is named once (``--preset`` or ``--anomaly-values`` / ``--void-values``; default ``binary``:
1 anomaly, 255 void, every other value normal) and decoded through ``dicnet_ros.data.label_encoding``. Every image
needs its mask; an image without one is an error, not a silent skip.
"""

from __future__ import annotations

from pathlib import Path

from dicnet_ros.data.base import pair_by_stem
from dicnet_ros.data.benchmark import BENCHMARK_IMAGE_SUFFIXES, AnomalyBenchmark
from dicnet_ros.data.label_encoding import LabelEncoding


def looks_like_anomaly_folder(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


class AnomalyFolder(AnomalyBenchmark):
    """images/ + masks/ paired by stem."""

    kind = "anomaly_folder"
    default_preset = "binary"

    def __init__(self, root: str | Path, split: str = "test", preset: str | None = None,
                 encoding: LabelEncoding | None = None, track: str | None = None) -> None:
        root = Path(root)
        if not looks_like_anomaly_folder(root):
            raise FileNotFoundError(f"{root}: an anomaly folder needs images/ and masks/ "
                                    "(images/<stem>.jpg|png|webp, masks/<stem>.png)")
        super().__init__(root, split, preset, encoding, track)
        self.items.extend(pair_by_stem(root / "images", root / "masks", BENCHMARK_IMAGE_SUFFIXES))
        self._finish_benchmark(str(root / "images"))

"""Road Anomaly (Lis et al., ICCV 2019) in its published layout and in PEBAL's converted copy.

1. The release (cvlab-epfl/detecting-the-unexpected@df2b099e ``src/datasets/road_anomaly.py``; RbA puts it under
   ``RoadAnomaly/RoadAnomaly_jpg/``)::

       frame_list.json                              # JSON list of the image file names
       frames/<name>.jpg
       frames/<name>.labels/labels_semantic.png     # (+ labels_instance.png, not used)

   Masks (preset ``road-anomaly``): values >= 2 anomaly, everything else normal, no void (the ROI is the image).
2. PEBAL's copy (tianyu0207/PEBAL ``code/dataset/data_loader.py``): ``original/<name>.jpg`` + ``labels/<name>.png``
   with the anomaly already mapped to 1 (preset ``binary``: 0 normal, 1 anomaly, 255 void).

Component rules: the anomaly track's (RoadAnomaly21 is this data set's successor in SMIYC).
"""

from __future__ import annotations

import json
from pathlib import Path

from dicnet_ros.data.base import pair_by_stem, pair_label
from dicnet_ros.data.benchmark import AnomalyBenchmark
from dicnet_ros.data.label_encoding import LabelEncoding

FRAME_LIST = "frame_list.json"


def release_dir(root: Path) -> Path | None:
    """The folder holding frame_list.json and frames/ (root, or RoadAnomaly_jpg / RoadAnomaly below it)."""
    for candidate in (root, root / "RoadAnomaly_jpg", root / "RoadAnomaly"):
        if (candidate / FRAME_LIST).is_file() and (candidate / "frames").is_dir():
            return candidate
    return None


def pebal_dir(root: Path) -> Path | None:
    """PEBAL's copy: original/*.jpg + labels/."""
    if (root / "original").is_dir() and (root / "labels").is_dir() and any((root / "original").glob("*.jpg")):
        return root
    return None


def looks_like_road_anomaly(root: Path) -> bool:
    return release_dir(root) is not None or pebal_dir(root) is not None


class RoadAnomaly(AnomalyBenchmark):
    """The 60 Road Anomaly frames (the count is not checked: the reader takes what frame_list.json names)."""

    kind = "road_anomaly"
    default_preset = "road-anomaly"

    def __init__(self, root: str | Path, split: str = "test", preset: str | None = None,
                 encoding: LabelEncoding | None = None, track: str | None = None) -> None:
        root = Path(root)
        release, pebal = release_dir(root), pebal_dir(root)
        if release is None and pebal is not None and preset is None and encoding is None:
            preset = "binary"  # PEBAL's copy stores the anomaly as 1
        super().__init__(root, split, preset, encoding, track)
        if release is not None:
            try:
                names = json.loads((release / FRAME_LIST).read_text())
            except ValueError as exc:
                raise ValueError(f"{release / FRAME_LIST}: not JSON ({exc})") from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"{release / FRAME_LIST}: expected a JSON list of image file names")
            for name in names:
                image = release / "frames" / name
                if not image.is_file():
                    raise FileNotFoundError(f"{release / FRAME_LIST} names {name}, which is not in {image.parent}")
                self.items.append(pair_label(image, image.with_name(f"{image.stem}.labels") / "labels_semantic.png"))
            self._finish_benchmark(str(release / "frames"))
        elif pebal is not None:
            self.items.extend(pair_by_stem(pebal / "original", pebal / "labels", (".jpg",)))
            self._finish_benchmark(str(pebal / "original"))
        else:
            raise FileNotFoundError(f"{root} is not Road Anomaly: expected {FRAME_LIST} + frames/ (or original/*.jpg "
                                    "+ labels/)")

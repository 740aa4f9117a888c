"""SegmentMeIfYouCan (SMIYC) RoadAnomaly21 and RoadObstacle21 in their published layout.

Layout (SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0 ``datasets/tracks.py``; ``$DIR_DATASETS`` is the
folder the benchmark's README has you unpack both archives into)::

    dataset_AnomalyTrack/images/<fid>.jpg        dataset_AnomalyTrack/labels_masks/<fid>_labels_semantic.png
    dataset_ObstacleTrack/images/<fid>.webp      dataset_ObstacleTrack/labels_masks/<fid>_labels_semantic.png

Masks: 0 normal (AnomalyTrack: the 19 Cityscapes classes; ObstacleTrack: road), 1 anomaly / obstacle, any other
value (255) void, exactly as the benchmark converts them (presets ``smiyc-anomaly`` / ``smiyc-obstacle``, which also
choose the component size rules). The public archives hold labels for the validation frames only; frames without a
mask are listed in the log and not evaluated. Splits: ``test`` = every frame with a mask, ``val`` = the benchmark's
``-validation`` split (frame ids starting with ``validation``; for the ObstacleTrack without the ten frames the
benchmark leaves out, ``validation_19`` and ``validation_21`` .. ``validation_29``).
"""

from __future__ import annotations

from pathlib import Path

from dicnet_ros.data.base import list_images
from dicnet_ros.data.benchmark import BENCHMARK_IMAGE_SUFFIXES, AnomalyBenchmark
from dicnet_ros.data.label_encoding import LabelEncoding

TRACK_FOLDERS: dict[str, str] = {"dataset_AnomalyTrack": "smiyc-anomaly", "dataset_ObstacleTrack": "smiyc-obstacle"}
LABEL_SUFFIX = "_labels_semantic.png"
#: ObstacleTrack-validation leaves these frame-id prefixes out (tracks.py ``exclude_prefix``).
OBSTACLE_VALIDATION_EXCLUDED: tuple[str, ...] = ("validation_19", *(f"validation_{i}" for i in range(21, 30)))


def smiyc_track_dir(root: Path) -> Path | None:
    """The ``dataset_*Track`` folder at ``root``: root itself (images/ + labels_masks/) or the one track folder in
    it; None if neither. Two track folders under one root are ambiguous: the caller must name one."""
    if (root / "images").is_dir() and (root / "labels_masks").is_dir():
        return root
    found = [root / name for name in TRACK_FOLDERS if (root / name / "images").is_dir()]
    if len(found) > 1:
        raise ValueError(f"{root} holds both {found[0].name} and {found[1].name}: pass one of them as the data root")
    return found[0] if found else None


def looks_like_smiyc(root: Path) -> bool:
    """True for a SMIYC track folder (or a folder holding exactly one)."""
    try:
        return smiyc_track_dir(root) is not None
    except ValueError:
        return True  # ambiguous, but SMIYC: the reader says which folder to pass


class SMIYCTrack(AnomalyBenchmark):
    """One SMIYC track; the preset follows the folder name (ObstacleTrack -> obstacle rules)."""

    kind = "smiyc"
    splits = ("test", "val")

    def __init__(self, root: str | Path, split: str = "test", preset: str | None = None,
                 encoding: LabelEncoding | None = None, track: str | None = None) -> None:
        root = Path(root)
        track_dir = smiyc_track_dir(root)
        if track_dir is None:
            raise FileNotFoundError(f"{root} is not a SMIYC track: expected images/ and labels_masks/ "
                                    f"(or a folder {' / '.join(TRACK_FOLDERS)} holding them)")
        # the folder names the track (renamed folders: by the word in the name)
        self.default_preset = TRACK_FOLDERS.get(track_dir.name) or (
            "smiyc-obstacle" if "obstacle" in track_dir.name.lower() else "smiyc-anomaly")
        super().__init__(track_dir, split, preset, encoding, track)
        obstacle = self.default_preset == "smiyc-obstacle"
        unlabelled: list[Path] = []
        for image in list_images(track_dir / "images", BENCHMARK_IMAGE_SUFFIXES):
            fid = image.stem
            if split == "val" and not (fid.startswith("validation")
                                       and not (obstacle and fid.startswith(OBSTACLE_VALIDATION_EXCLUDED))):
                continue
            label = track_dir / "labels_masks" / f"{fid}{LABEL_SUFFIX}"
            if label.is_file():
                self.items.append((str(image), str(label)))
            else:
                unlabelled.append(image)
        self._finish_benchmark(str(track_dir / "images"), unlabelled)

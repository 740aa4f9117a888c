"""Fishyscapes Lost & Found (Blum et al.), the public validation set, in the two layouts it is distributed in.

1. As SMIYC reads it (SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0 ``datasets/tracks_extra.py``): the
   relabelled masks in ``<root>/labels/val/<fid>_fishy-labels.png`` (``$DIR_FISHY_LAF``), the images taken from
   LostAndFound by frame id (``leftImg8bit/{train,test}/<scene>/<fid>_leftImg8bit.png``, ``$DIR_LAF``). The
   Fishyscapes download names its masks ``<NNNN>_<fid>_labels.png``; rename them to ``<fid>_fishy-labels.png``
   (the benchmark ships no step for it). LostAndFound is found through ``laf_root=``, else ``$DIR_LAF``, else a
   folder beside ``root`` (or ``root`` itself) holding ``leftImg8bit/``.
2. As PEBAL (tianyu0207/PEBAL ``code/dataset/data_loader.py``) and others lay it out: ``<root>/LostAndFound/``
   (or ``<root>`` itself) with ``original/<name>.png`` and ``labels/<name>.png``.

Masks (preset ``fishyscapes``): 0 normal, 1 anomaly, any other value (255) void; the component rules are the
anomaly track's (the benchmark's README evaluates ``FishyLAFAnomaly-val`` with ``SegEval-AnomalyTrack``).
"""

from __future__ import annotations

import os
from pathlib import Path

from dicnet_ros.data.base import pair_by_stem
from dicnet_ros.data.benchmark import AnomalyBenchmark
from dicnet_ros.data.label_encoding import LabelEncoding
from dicnet_ros.data.lost_and_found import laf_images, looks_like_lost_and_found

SMIYC_LABELS = Path("labels") / "val"
SMIYC_LABEL_SUFFIX = "_fishy-labels.png"


def pebal_dir(root: Path) -> Path | None:
    """The folder holding original/ and labels/ (root/LostAndFound or root), or None."""
    for candidate in (root / "LostAndFound", root):
        if (candidate / "original").is_dir() and (candidate / "labels").is_dir() and any(
                (candidate / "original").glob("*.png")):
            return candidate
    return None


def looks_like_fishyscapes(root: Path) -> bool:
    """True for either Fishyscapes L&F layout."""
    smiyc = (root / SMIYC_LABELS).is_dir() and any((root / SMIYC_LABELS).glob(f"*{SMIYC_LABEL_SUFFIX}"))
    return smiyc or pebal_dir(root) is not None


def find_laf_root(root: Path, laf_root: str | Path | None) -> Path:
    """Where the LostAndFound images are: the option, ``$DIR_LAF``, ``root`` or a folder beside it."""
    candidates = [Path(laf_root)] if laf_root else []
    if not candidates and os.environ.get("DIR_LAF"):
        candidates.append(Path(os.environ["DIR_LAF"]))
    named = bool(candidates)
    if not named:
        candidates = [root, *sorted(p for p in root.resolve().parent.iterdir() if p.is_dir() and p != root.resolve())]
    for candidate in candidates:
        # a folder found by looking around must not be Cityscapes (leftImg8bit/ + gtFine/), often right beside it
        if (candidate / "leftImg8bit").is_dir() and (named or looks_like_lost_and_found(candidate)
                                                     or not (candidate / "gtFine").is_dir()):
            return candidate
    raise FileNotFoundError(f"Fishyscapes L&F at {root} takes its images from LostAndFound, which was not found "
                            f"(looked in {', '.join(str(c) for c in candidates[:4])}); pass laf_root= or set DIR_LAF "
                            "to the folder holding leftImg8bit/")


class FishyscapesLAF(AnomalyBenchmark):
    """Fishyscapes Lost & Found validation frames with their 0 / 1 / 255 masks."""

    kind = "fishyscapes_laf"
    default_preset = "fishyscapes"

    def __init__(self, root: str | Path, split: str = "test", preset: str | None = None,
                 encoding: LabelEncoding | None = None, track: str | None = None,
                 laf_root: str | Path | None = None) -> None:
        root = Path(root)
        super().__init__(root, split, preset, encoding, track)
        labels_dir = root / SMIYC_LABELS
        if labels_dir.is_dir() and any(labels_dir.glob(f"*{SMIYC_LABEL_SUFFIX}")):
            laf = find_laf_root(root, laf_root)
            images = {**laf_images(laf, "train"), **laf_images(laf, "test")}
            for label in sorted(labels_dir.glob(f"*{SMIYC_LABEL_SUFFIX}")):
                fid = label.name[: -len(SMIYC_LABEL_SUFFIX)]
                if fid not in images:
                    raise FileNotFoundError(f"{label}: LostAndFound frame {fid} not found under {laf / 'leftImg8bit'}")
                self.items.append((str(images[fid]), str(label)))
            self._finish_benchmark(str(labels_dir))
            return
        folder = pebal_dir(root)
        if folder is None:
            raise FileNotFoundError(f"{root} is not Fishyscapes L&F: expected {SMIYC_LABELS}/<fid>{SMIYC_LABEL_SUFFIX} "
                                    "or LostAndFound/original + LostAndFound/labels")
        self.items.extend(pair_by_stem(folder / "original", folder / "labels", (".png",)))
        self._finish_benchmark(str(folder / "original"))

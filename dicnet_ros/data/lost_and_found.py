"""LostAndFound (Pinggera et al. 2016) in its cityscapesScripts-style layout, evaluated as SMIYC evaluates it.

Layout (SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0 ``datasets/tracks.py``, the 2048x1024 PNG release)::

    leftImg8bit/{train,test}/<NN_Scene>/<fid>_leftImg8bit.png      (.webp / .jpg re-encodings are accepted too)
    gtCoarse/{train,test}/<NN_Scene>/<fid>_gtCoarse_labelIds.png

with ``fid = NN_Scene_SSSSSS_TTTTTT``. Masks (preset ``lost-and-found``): 1 free space (normal), 2..200 the
objects (obstacles), everything else (0: off the road) void, so the ROI is the road, and the component rules are the
obstacle track's. Splits ``train`` and ``test`` are the release's folders; ``no_known=True`` leaves out the frames
the benchmark's ``LostAndFound-testNoKnown`` drops (children, and three bicycle sequences). Frames whose mask is all
void (the benchmark's ``-testValid`` drops them) add no pixel and no component, so they need no special case.
"""

from __future__ import annotations

import re
from pathlib import Path

from dicnet_ros.data.base import natural_key, pair_label
from dicnet_ros.data.benchmark import AnomalyBenchmark
from dicnet_ros.data.label_encoding import LabelEncoding

IMAGE_SUFFIX = "_leftImg8bit"
LABEL_SUFFIX = "_gtCoarse_labelIds.png"
FRAME_ID = re.compile(r"^\d{2}_.+_\d{6}_\d{6}$")
#: LostAndFound-testNoKnown leaves out these frame-id prefixes (known classes: children, bicycles).
KNOWN_OBJECT_PREFIXES: tuple[str, ...] = (
    "15_Rechbergstr_Deckenpfronn", "01_Hanns_Klemm_Str_45_000006", "01_Hanns_Klemm_Str_45_000007",
    "10_Schlossberg_9_000004",
)


def looks_like_lost_and_found(root: Path) -> bool:
    """True if ``root`` has leftImg8bit/ and gtCoarse/ (the LostAndFound release, not Cityscapes' gtFine)."""
    return (root / "leftImg8bit").is_dir() and (root / "gtCoarse").is_dir()


def laf_images(root: Path, split: str) -> dict[str, Path]:
    """{frame id: image} of one LostAndFound split folder, taking the first image format present (png, webp, jpg),
    as the benchmark does."""
    folder = root / "leftImg8bit" / split
    for ext in ("png", "webp", "jpg"):
        files = sorted(folder.glob(f"*/*{IMAGE_SUFFIX}.{ext}"), key=lambda p: natural_key(p.name))
        if files:
            return {p.name[: -len(f"{IMAGE_SUFFIX}.{ext}")]: p for p in files}
    return {}


class LostAndFound(AnomalyBenchmark):
    """LostAndFound ``train`` / ``test`` with the benchmark's free-space ROI."""

    kind = "lost_and_found"
    default_preset = "lost-and-found"
    splits = ("test", "train")

    def __init__(self, root: str | Path, split: str = "test", preset: str | None = None,
                 encoding: LabelEncoding | None = None, track: str | None = None, no_known: bool = False) -> None:
        root = Path(root)
        super().__init__(root, split, preset, encoding, track)
        images = laf_images(root, split)
        if not images:
            raise FileNotFoundError(f"LostAndFound split {split!r}: no <scene>/<fid>{IMAGE_SUFFIX}.png under "
                                    f"{root / 'leftImg8bit' / split}")
        for fid, image in images.items():
            if not FRAME_ID.match(fid):
                raise ValueError(f"{image}: frame id {fid!r} is not NN_Scene_SSSSSS_TTTTTT (LostAndFound naming)")
            if no_known and fid.startswith(KNOWN_OBJECT_PREFIXES):
                continue
            self.items.append(pair_label(image, root / "gtCoarse" / split / image.parent.name / f"{fid}{LABEL_SUFFIX}"))
        self._finish_benchmark(str(root / "leftImg8bit" / split))

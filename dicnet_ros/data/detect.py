"""Which loader reads a dataset tree: layout detection and ``open_dataset``.

It sits above the loaders (StreetHazards, BDD-Anomaly, folder, Cityscapes and the real benchmarks: SMIYC,
LostAndFound, Fishyscapes L&F, Road Anomaly, generic anomaly folders), which only know ``base``; this keeps the
shared base free of imports of its own subclasses.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from dicnet_ros.data.anomaly_folder import AnomalyFolder, looks_like_anomaly_folder
from dicnet_ros.data.base import DATASET_YAML, SPLITS, SegmentationDataset, read_yaml
from dicnet_ros.data.bdd_anomaly import BDDAnomaly, looks_like_bdd
from dicnet_ros.data.cityscapes import Cityscapes, looks_like_cityscapes
from dicnet_ros.data.fishyscapes import FishyscapesLAF, looks_like_fishyscapes
from dicnet_ros.data.folder import FolderDataset
from dicnet_ros.data.lost_and_found import LostAndFound, looks_like_lost_and_found
from dicnet_ros.data.road_anomaly import RoadAnomaly, looks_like_road_anomaly
from dicnet_ros.data.smiyc import SMIYCTrack, looks_like_smiyc
from dicnet_ros.data.streethazards import StreetHazards, looks_like_streethazards

log = logging.getLogger(__name__)

#: kind -> reader, in the order ``detect_kind`` tries the layouts after a dataset.yaml.
READERS: dict[str, type[SegmentationDataset]] = {
    "streethazards": StreetHazards,
    "bdd_anomaly": BDDAnomaly,
    "smiyc": SMIYCTrack,
    "cityscapes": Cityscapes,
    "lost_and_found": LostAndFound,
    "fishyscapes_laf": FishyscapesLAF,
    "road_anomaly": RoadAnomaly,
    "anomaly_folder": AnomalyFolder,
    "folder": FolderDataset,
}
KINDS: tuple[str, ...] = ("auto", *READERS)
_LAYOUT_TESTS = (
    (looks_like_streethazards, "streethazards"),
    (looks_like_bdd, "bdd_anomaly"),
    (looks_like_smiyc, "smiyc"),
    (looks_like_cityscapes, "cityscapes"),
    (looks_like_lost_and_found, "lost_and_found"),
    (looks_like_fishyscapes, "fishyscapes_laf"),
    (looks_like_road_anomaly, "road_anomaly"),
    (looks_like_anomaly_folder, "anomaly_folder"),
)


class UnknownLayoutError(ValueError):
    """The tree matches no known layout; each tool says how its user names one (a config key, an option)."""


def detect_kind(root: Path) -> str:
    """Guess the dataset layout from the directory tree."""
    if root.is_file() and root.suffix.lower() in (".yaml", ".yml"):
        return "folder"
    yaml_path = root / DATASET_YAML
    if yaml_path.is_file() and "splits" in read_yaml(yaml_path):
        return "folder"
    for test, kind in _LAYOUT_TESTS:
        if test(root):
            return kind
    raise UnknownLayoutError(
        f"cannot tell the dataset layout of {root}: expected a StreetHazards tree "
        "(train/images/training, train/images/validation or test/images/test), a BDD-Anomaly tree "
        "(seg/images + seg/train_labels), a SMIYC track (images/ + labels_masks/), Cityscapes (leftImg8bit/ + "
        "gtFine/), LostAndFound (leftImg8bit/ + gtCoarse/), Fishyscapes L&F (labels/val/*_fishy-labels.png or "
        "LostAndFound/original + labels), Road Anomaly (frame_list.json + frames/), an anomaly folder (images/ + "
        "masks/) or a dataset.yaml with 'splits' (a folder dataset, dicnet_ros/data/folder.py); or name the "
        f"layout ({', '.join(READERS)})"
    )


def open_dataset(root: str | Path, split: str, kind: str = "auto", **options: Any) -> SegmentationDataset:
    """Open ``split`` ('train' | 'val' | 'test') of the dataset at ``root``.

    ``kind`` is 'auto' (detect from the tree) or one of ``READERS``: 'streethazards' (option ``odgt=``),
    'bdd_anomaly' (options ``anomaly_ids=``, ``cache=``), 'folder' (option ``config=`` for a yaml other than
    root/dataset.yaml), 'cityscapes', or a benchmark ('smiyc', 'lost_and_found' (``no_known=``),
    'fishyscapes_laf' (``laf_root=``), 'road_anomaly', 'anomaly_folder'; all take ``preset=``, ``encoding=`` and
    ``track=``, see ``dicnet_ros.data.benchmark``).
    """
    root = Path(root).expanduser()
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    if not root.exists():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if kind == "auto":
        kind = "streethazards" if options.get("odgt") else detect_kind(root)
        log.info("detected dataset kind %r at %s", kind, root)
    cls = READERS[kind]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "split")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{kind} dataset does not take option(s) {unknown}; it accepts {accepted}")
    return cls(root, split, **options)


def add_label_arguments(parser: Any) -> None:
    """The command-line flags that say how a benchmark's masks read (``dataset_options`` turns them into options)."""
    from dicnet_ros.data.label_encoding import PRESETS, TRACKS

    parser.add_argument("--preset", default=None, choices=tuple(PRESETS),
                        help="mask convention of a benchmark (default: the detected benchmark's own): "
                             + "; ".join(f"{p.name}: {p.encoding.describe().split(': ', 1)[1]}"
                                         for p in PRESETS.values()))
    parser.add_argument("--anomaly-values", default=None, metavar="VALUES",
                        help="mask values that are anomalies, e.g. 2 or 2-200 or 1,254 (every value that is neither "
                             "anomaly nor void is normal)")
    parser.add_argument("--void-values", default=None, metavar="VALUES",
                        help="mask values excluded from the metrics, e.g. 255")
    parser.add_argument("--track", default=None, choices=TRACKS,
                        help="component size rules (SMIYC): anomaly (predicted >= 500 px, ground truth >= 100 px) "
                             "or obstacle (50 / 10); default: the benchmark's own")
    parser.add_argument("--laf-root", default=None,
                        help="Fishyscapes L&F in the SMIYC layout: the LostAndFound folder with leftImg8bit/ "
                             "(default: $DIR_LAF or a folder beside the data)")
    parser.add_argument("--no-known", action="store_true",
                        help="LostAndFound: leave out the frames SMIYC's LostAndFound-testNoKnown drops")


def dataset_options(args: Any) -> dict[str, Any]:
    """open_dataset options from ``add_label_arguments`` flags: only the ones given, so other readers stay valid."""
    from dicnet_ros.data.label_encoding import resolve_encoding

    options: dict[str, Any] = {}
    if args.preset is not None:
        options["preset"] = args.preset
    if args.anomaly_values not in (None, "") or args.void_values not in (None, ""):
        options["encoding"] = resolve_encoding(args.preset, args.anomaly_values, args.void_values)[0]
    if args.track is not None:
        options["track"] = args.track
    if args.laf_root is not None:
        options["laf_root"] = args.laf_root
    if args.no_known:
        options["no_known"] = True
    return options

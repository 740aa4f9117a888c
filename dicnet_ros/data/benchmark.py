"""The common part of the real road-anomaly benchmark readers (SMIYC, Fishyscapes, LostAndFound, Road Anomaly,
generic anomaly folders): their labels ARE the evaluation label.

Why a separate base: these data sets carry no semantic classes, only which pixels are anomalous, normal or void,
each in its own convention. Their readers decode every mask through a ``LabelEncoding`` (one of
``label_encoding.PRESETS`` or the user's ``--anomaly-values`` / ``--void-values``) into 0 normal, 1 anomaly,
255 void, so a sample's label is what the benchmark evaluates and the spec is the same for all of them
(``benchmark_spec``: one pseudo-class, anomaly id 1, ignore id 255). ``make-bag`` and ``evaluate`` therefore need
nothing per benchmark. They are evaluation sets: a reader refuses a training split, so no model is ever trained
or tuned on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dicnet_ros.data.base import DatasetSpec, SegmentationDataset, read_mask
from dicnet_ros.data.label_encoding import ANOMALY, TRACKS, VOID, LabelEncoding, resolve_encoding

log = logging.getLogger(__name__)

#: The only image suffixes the published layouts use (JPG: Road Anomaly, AnomalyTrack; WebP: ObstacleTrack;
#: PNG: LostAndFound, Fishyscapes).
BENCHMARK_IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")


def benchmark_spec(name: str) -> DatasetSpec:
    """The spec of a data set whose labels are the evaluation label (0 normal, 1 anomaly, 255 void)."""
    return DatasetSpec(name=name, class_names=("normal",), anomaly_ids=(ANOMALY,), ignore_id=VOID, label_offset=0,
                       anomaly_names=("anomaly",))


class AnomalyBenchmark(SegmentationDataset):
    """A benchmark reader: subclasses fill ``items`` (image, mask) for the split; masks decode through ``encoding``.

    ``preset`` names the convention (default: the family's own), ``encoding`` replaces its values (from
    ``--anomaly-values`` / ``--void-values``), ``track`` replaces its component track (size rules).
    """

    kind = "benchmark"
    default_preset = "binary"
    #: splits the reader serves; every other split is refused (these are evaluation images)
    splits: tuple[str, ...] = ("test",)

    def __init__(self, root: str | Path, split: str, preset: str | None = None,
                 encoding: LabelEncoding | None = None, track: str | None = None) -> None:
        preset_encoding, preset_track = resolve_encoding(preset, default=self.default_preset)
        self.encoding = encoding or preset_encoding
        self.track = track or preset_track
        if self.track not in TRACKS:
            raise ValueError(f"unknown component track {self.track!r}; expected one of {TRACKS}")
        if split not in self.splits:
            raise ValueError(
                f"{self.kind} at {root} is an evaluation benchmark with split(s) {', '.join(self.splits)}, not "
                f"{split!r}; train and choose models on other data (e.g. Cityscapes), never on evaluation images")
        super().__init__(root, split, benchmark_spec(self.kind))

    def read_label(self, path: str) -> np.ndarray:
        return read_mask(path)

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Stored mask values -> 0 normal / 1 anomaly / 255 void through the encoding."""
        return self.encoding.apply(raw)

    def has_anomalies(self) -> bool:
        return True

    def describe(self) -> dict[str, str]:
        """What reports print about how the ground truth was read."""
        return {"kind": self.kind, "encoding": self.encoding.describe(), "track": self.track}

    def _finish_benchmark(self, where: str, unlabelled: Sequence[Path] = ()) -> None:
        """Log the encoding; images without a mask (withheld test labels) are named in the log, not evaluated."""
        if unlabelled:
            log.info("%s: %d image(s) without a ground-truth mask are not evaluated (e.g. %s)", self.kind,
                     len(unlabelled), unlabelled[0].name)
        if not self.items:
            raise ValueError(f"{self.kind} split {self.split!r} under {self.root}: no image with a ground-truth mask "
                             f"in {where}" + (f" ({len(unlabelled)} images have none: their labels are withheld?)"
                                              if unlabelled else ""))
        log.info("%s %s: %d images from %s; ground truth %s; component track %s", self.kind, self.split,
                 len(self.items), where, self.encoding.describe(), self.track)


def evaluation_label(label: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """A dataset label (class ids) as the evaluation label: 1 on the spec's anomaly ids, 255 on its ignore id,
    0 elsewhere (a benchmark reader's labels already are; simulator / StreetHazards labels become it)."""
    if spec.anomaly_ids == (ANOMALY,) and spec.ignore_id == VOID and spec.class_names == ("normal",):
        return label
    out = np.zeros(label.shape, np.uint8)
    out[label == spec.ignore_id] = VOID
    out[np.isin(label, spec.anomaly_ids)] = ANOMALY
    return out

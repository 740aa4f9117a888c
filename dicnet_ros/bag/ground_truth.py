"""The ground truth of a bag evaluation, settled before any model runs: which mask convention the recording uses
(declared by the user, recorded by ``make_bag``, or detected from the values), which mask pairs with which frame
(nearest header stamp within a tolerance: a mask recorded by another node is often stamped a few ms off its
image), and, when nothing can be evaluated, the one reason why.

Why a survey pass first: the convention must be known before the first pixel is counted (a 255 means anomaly in
one convention and void in another, and the value that decides may only appear late in the drive), and a run
that cannot produce a metric should fail in seconds with its reason, not after inferring every frame. The pass
reads every ground-truth mask but only the header stamp of the camera (or score) messages, not their pixels.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dicnet_ros.bag.messages import (
    GT_ENCODING_DOC,
    IMAGE_TYPE,
    IMAGE_TYPES,
    MAKE_BAG_CONVENTION,
    about_frame,
    bounded,
    decode_gt_mask,
    deserialize,
    header_stamp_ns,
    read_gt_mask,
    stamp_to_ns,
)
from dicnet_ros.bag.read import bag_dataset_info, iter_raw, open_bag, require_topic
from dicnet_ros.data.label_encoding import (
    LabelEncoding,
    detect_mask_convention,
    format_values,
    label_counts,
    mask_convention,
    value_counts,
)

#: Default pairing tolerance: masks stamped up to this far from a frame's stamp pair with it. A few ms covers a
#: labelling node that re-stamps its output; it stays well below half the frame interval of a 30 Hz camera.
DEFAULT_STAMP_TOLERANCE_MS = 10.0
#: ``--gt-encoding`` value that asks for detection (or make-bag's record).
AUTO = "auto"
SHOWN_VALUES = 12


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms"


@dataclass
class StampPairing:
    """Which ground-truth mask (by header stamp) pairs with which frame: each the nearest within the tolerance,
    each frame and each mask used at most once, the closest pairs first."""

    gt_to_frame: dict[int, int]
    frames: int  # frame messages read (duplicates included)
    distinct_frames: int
    masks: int
    distinct_masks: int
    tolerance_ns: int
    worst_offset_ns: int = 0
    closest_offset_ns: int | None = None  # the smallest frame-to-mask offset at all (tells what tolerance needs)

    @property
    def paired(self) -> int:
        return len(self.gt_to_frame)

    @property
    def duplicate_frames(self) -> int:
        """Frames whose header stamp an earlier frame already had: only the first of each is evaluated."""
        return self.frames - self.distinct_frames

    @property
    def duplicate_masks(self) -> int:
        return self.masks - self.distinct_masks

    @property
    def unpaired_frames(self) -> int:
        return self.distinct_frames - self.paired

    @property
    def unpaired_masks(self) -> int:
        return self.distinct_masks - self.paired

    def summary(self) -> dict[str, Any]:
        return {
            "tolerance_ms": self.tolerance_ns / 1e6,
            "frames": self.frames,
            "masks": self.masks,
            "paired": self.paired,
            "worst_offset_ms": self.worst_offset_ns / 1e6 if self.paired else None,
            "frames_without_ground_truth": self.unpaired_frames,
            "masks_without_frame": self.unpaired_masks,
            "duplicate_frame_stamps": self.duplicate_frames,
            "duplicate_mask_stamps": self.duplicate_masks,
        }


def pair_stamps(frame_stamps: Iterable[int], gt_stamps: Iterable[int], tolerance_ns: int) -> StampPairing:
    """Pair every mask with the nearest frame within ``tolerance_ns``; repeated stamps count once."""
    frame_list, gt_list = list(frame_stamps), list(gt_stamps)
    frames, masks = sorted(set(frame_list)), sorted(set(gt_list))
    candidates: list[tuple[int, int, int]] = []
    closest: int | None = None
    for gt in masks:
        i = bisect.bisect_left(frames, gt)
        for j in (i - 1, i):
            if 0 <= j < len(frames):
                offset = abs(frames[j] - gt)
                closest = offset if closest is None else min(closest, offset)
                if offset <= tolerance_ns:
                    candidates.append((offset, gt, frames[j]))
    gt_to_frame: dict[int, int] = {}
    used: set[int] = set()
    worst = 0
    for offset, gt, frame in sorted(candidates):
        if gt in gt_to_frame or frame in used:
            continue
        gt_to_frame[gt] = frame
        used.add(frame)
        worst = max(worst, offset)
    return StampPairing(gt_to_frame, len(frame_list), len(frames), len(gt_list), len(masks), tolerance_ns, worst,
                        closest)


@dataclass
class GroundTruth:
    """The settled ground truth of one evaluation (reported in stdout, report.md and metrics.json)."""

    topic: str
    convention: LabelEncoding
    source: str  # how the convention was chosen, for people
    reason: str
    pairing: StampPairing
    value_pixels: dict[int, int] = field(default_factory=dict)  # raw value -> pixels, over every mask
    label_pixels: dict[str, int] = field(default_factory=dict)  # normal / anomaly / void pixels of paired masks

    def values_text(self) -> str:
        total = sum(self.value_pixels.values()) or 1
        items = sorted(self.value_pixels.items())
        text = ", ".join(f"{v}: {100 * n / total:.2f} %" for v, n in items[:SHOWN_VALUES])
        return text + (f", … ({len(items)} values)" if len(items) > SHOWN_VALUES else "") if items else "none"

    def lines(self) -> list[str]:
        """What every report says about the ground truth: topic, convention and why, pairing, what was left out."""
        p = self.pairing
        lines = [
            f"ground truth: {bounded(self.topic)}, convention {self.convention.describe()} ({self.source}"
            + (f": {self.reason})" if self.reason else ")"),
            f"mask values (share of pixels): {self.values_text()}",
            f"paired {p.paired} of {p.distinct_frames} frames with a mask within ±{_ms(p.tolerance_ns)} of their "
            "header stamp" + (f" (worst offset {_ms(p.worst_offset_ns)})" if p.paired else ""),
        ]
        if p.unpaired_frames:
            lines.append(f"{p.unpaired_frames} frames have no mask within ±{_ms(p.tolerance_ns)}: not evaluated")
        if p.unpaired_masks:
            lines.append(f"{p.unpaired_masks} masks have no frame within ±{_ms(p.tolerance_ns)}: not used")
        for count, what in ((p.duplicate_frames, "frames"), (p.duplicate_masks, "masks")):
            if count:
                lines.append(f"{count} {what} repeat the header stamp of an earlier one: only the first with each "
                             "stamp is used, so they are left out")
        return lines

    def warnings(self) -> list[str]:
        """The lines a user must see even without reading the report (frames or masks left out)."""
        return self.lines()[3:]

    def summary(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "convention": self.convention.name,
            "description": self.convention.describe(),
            "anomaly_values": format_values(self.convention.anomaly),
            "void_values": format_values(self.convention.void),
            "normal_values": None if self.convention.normal is None else format_values(self.convention.normal),
            "chosen_by": self.source,
            "reason": self.reason,
            "value_pixels": {str(v): n for v, n in sorted(self.value_pixels.items())},
            "label_pixels_paired": self.label_pixels,
            "pairing": self.pairing.summary(),
        }

    def nothing_to_evaluate(self) -> str | None:
        """Why no metric can come out of this ground truth, or None when something can."""
        p = self.pairing
        if p.masks == 0:
            return f"the ground-truth topic {bounded(self.topic)} has no messages"
        if p.frames == 0:
            return "there is no frame to evaluate"
        if p.paired == 0:
            return (f"no ground-truth mask is stamped within ±{_ms(p.tolerance_ns)} of a frame (closest: "
                    f"{_ms(p.closest_offset_ns or 0)}); raise --stamp-tolerance-ms if the masks belong to the frames")
        paired = f"the {p.paired} paired masks under convention {self.convention.describe()} (values: " \
                 f"{self.values_text()})"
        hint = "; if that convention is wrong, name it with --gt-encoding or --anomaly-values / --void-values"
        if self.label_pixels.get("anomaly", 0) + self.label_pixels.get("normal", 0) == 0:
            return f"every pixel is void in {paired}{hint}"
        if self.label_pixels.get("anomaly", 0) == 0:
            return f"there is no anomaly pixel in {paired}{hint}, or use --gt-topic '' for outputs only"
        if self.label_pixels.get("normal", 0) == 0:
            return f"there is no normal pixel in {paired}{hint}"
        return None


def choose_convention(requested: str | LabelEncoding | None, recorded: Any) -> tuple[LabelEncoding | None, str]:
    """The declared convention and how it was chosen, or (None, 'detected') when it must come from the values.

    ``requested``: a LabelEncoding (``--anomaly-values``), a ``MASK_CONVENTIONS`` name, or None / ``auto``.
    ``recorded``: the bag's ``dicnet.gt_encoding`` (make_bag writes ``GT_ENCODING_DOC``).
    """
    if isinstance(requested, LabelEncoding):
        return requested, "declared (--anomaly-values / --void-values)"
    if requested not in (None, AUTO):
        return mask_convention(str(requested)), f"declared (--gt-encoding {requested})"
    if recorded in (GT_ENCODING_DOC, MAKE_BAG_CONVENTION.name):
        return MAKE_BAG_CONVENTION, "recorded by dicnet make-bag in the bag's metadata"
    return None, "detected from the mask values"


def survey(reader: Any, frame_topic: str, frame_type: str, frame_conns: Sequence[Any], gt_topic: str,
           gt_conns: Sequence[Any], convention: LabelEncoding | None, source: str,
           tolerance_ns: int) -> GroundTruth:
    """One pass over the frame and mask messages: frame stamps, mask stamps and values; then the convention
    (``detect_mask_convention`` when none was declared) and the pairing."""
    frame_ids = {c.id for c in frame_conns}
    frame_stamps: list[int] = []
    gt_stamps: list[int] = []
    per_mask: dict[int, Mapping[int, int]] = {}
    totals: Counter[int] = Counter()
    for conn, _, raw in iter_raw(reader, [*frame_conns, *gt_conns]):
        if conn.id in frame_ids:
            with about_frame(frame_topic, len(frame_stamps)):
                frame_stamps.append(header_stamp_ns(raw, frame_type))
            continue
        index = len(gt_stamps)
        with about_frame(gt_topic, index):
            msg = deserialize(raw, "sensor_msgs/msg/Image")
        stamp = stamp_to_ns(msg.header.stamp)
        with about_frame(gt_topic, index, stamp):
            counts = value_counts(read_gt_mask(msg))
        gt_stamps.append(stamp)
        per_mask.setdefault(stamp, counts)
        totals.update(counts)
    reason = ""
    if convention is None:
        convention, reason = detect_mask_convention(totals)
    pairing = pair_stamps(frame_stamps, gt_stamps, tolerance_ns)
    labels: Counter[str] = Counter()
    for stamp in pairing.gt_to_frame:
        labels.update(label_counts(convention, per_mask[stamp]))
    return GroundTruth(gt_topic, convention, source, reason, pairing, dict(totals),
                       {k: labels.get(k, 0) for k in ("normal", "anomaly", "void")})


def read_ground_truth(bag: Any, frame_topic: str, gt_topic: str, convention: str | LabelEncoding | None = None,
                      tolerance_ms: float = DEFAULT_STAMP_TOLERANCE_MS) -> tuple[GroundTruth, dict[int, np.ndarray]]:
    """The settled ground truth of a short bag and every paired mask as its evaluation label (0 normal, 1 anomaly,
    255 void), keyed by the header stamp of the frame it pairs with: for tools that keep a drive in memory (the
    demo); ``evaluate_bag`` streams instead."""
    declared, source = choose_convention(convention, bag_dataset_info(bag).get("gt_encoding"))
    masks: dict[int, np.ndarray] = {}
    with open_bag(bag) as reader:
        frame_conns, frame_type = require_topic(reader, frame_topic, IMAGE_TYPES)
        gt_conns, _ = require_topic(reader, gt_topic, (IMAGE_TYPE,))
        truth = survey(reader, frame_topic, frame_type, frame_conns, gt_topic, gt_conns, declared, source,
                       round(tolerance_ms * 1e6))
        for index, (_, _, raw) in enumerate(iter_raw(reader, gt_conns)):
            with about_frame(gt_topic, index):
                msg = deserialize(raw, IMAGE_TYPE)
            key = truth.pairing.gt_to_frame.get(stamp_to_ns(msg.header.stamp))
            if key is not None and key not in masks:
                masks[key] = decode_gt_mask(msg, truth.convention)
    return truth, masks

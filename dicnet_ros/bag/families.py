"""Per-frame anomaly families in a bag: ``make_bag`` records which families each frame shows (from the
simulator's manifest), ``evaluate_bag`` groups frames by them to report metrics per family.

They travel in the bag's ``metadata.yaml`` ``custom_data`` under ``dicnet.frame_families``, as one JSON object
``{"<header stamp ns>": ["animals"], "<stamp>": ["animals", "toys"], ...}`` (families sorted, frames without
family information left out). Custom data rather than a topic: it needs no message type, is not replayed into
the node, and is read before the stream starts; the stamp is the key the evaluation pairs frames by anyway.
A frame belongs to the group of its one family, or to ``mixed`` when it shows several.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from dicnet_ros.bag.messages import CUSTOM_PREFIX, BagError, bounded

FRAME_FAMILIES_KEY = "frame_families"  # custom_data key after CUSTOM_PREFIX
MIXED = "mixed"  # the group of frames whose anomalies belong to several families


def encode_frame_families(families_by_stamp: Mapping[int, Sequence[str]]) -> str:
    """The custom_data value for ``{stamp ns: families}``; frames without families are left out."""
    return json.dumps({str(stamp): sorted(set(fams)) for stamp, fams in families_by_stamp.items() if fams},
                      separators=(",", ":"))


def family_group(families: Sequence[str]) -> str | None:
    """The reporting group of a frame: its one family, ``mixed`` for several, None without any."""
    distinct = set(families)
    if not distinct:
        return None
    return next(iter(distinct)) if len(distinct) == 1 else MIXED


def frame_groups(info: Mapping[str, Any]) -> dict[int, str]:
    """Header stamp -> reporting group, from what ``bag_dataset_info`` read; {} when the bag records none.

    A value that is not the documented mapping is a ``BagError``: quietly dropping it would quietly drop the
    per-family report.
    """
    raw = info.get(FRAME_FAMILIES_KEY)
    if raw is None:
        return {}
    where = f"bag metadata {CUSTOM_PREFIX}{FRAME_FAMILIES_KEY}"
    if not isinstance(raw, dict):
        raise BagError(f"{where} must map header stamps to lists of family names, got {bounded(str(raw))!r}")
    groups: dict[int, str] = {}
    for stamp, families in raw.items():
        if not (isinstance(families, list) and all(isinstance(f, str) and f for f in families)):
            raise BagError(f"{where}: frame {bounded(str(stamp))} has {bounded(str(families))!r}, not a list of "
                           "family names")
        try:
            key = int(stamp)
        except ValueError:
            raise BagError(f"{where}: {bounded(str(stamp))!r} is not a header stamp in nanoseconds") from None
        group = family_group(families)
        if group is not None:
            groups[key] = group
    return groups


def group_order(groups: Sequence[str]) -> list[str]:
    """Families alphabetically, then ``mixed``: the order of the per-family table and metrics.json."""
    return sorted(set(groups) - {MIXED}) + ([MIXED] if MIXED in groups else [])

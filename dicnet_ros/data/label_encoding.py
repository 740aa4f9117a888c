"""Ground-truth mask values -> the evaluation label (0 normal, 1 anomaly, 255 void), for every convention.

Why one place: anomaly masks come in many conventions (0/1, 0/255, 0/1 with 255 void, Road Anomaly's 2 = anomaly,
LostAndFound's object ids 2..200, this package's 255 / 0 / 128). Datasets, bags and ``dicnet evaluate`` all turn
them into the same three-valued label through a ``LabelEncoding``, so a user names their convention once
(``--anomaly-values 2 --void-values 255``, or a preset) and every tool reads it the same way.

``PRESETS`` is the one table of the published benchmarks' conventions (sources in the table); each preset also
names the SMIYC component track whose size rules apply to it (``anomaly``: SegEval-AnomalyTrack, ``obstacle``:
SegEval-ObstacleTrack, as SegmentMeIfYouCan/road-anomaly-benchmark's README pairs them with its data sets).

Ground-truth masks recorded in bags come in a few common conventions (``MASK_CONVENTIONS``: this package's
255 / 0 / 128, 0/1 with 255 void, 0/255); ``detect_mask_convention`` tells them apart from the values a
recording holds, so a user's own bag is read right without being told, and says why it chose what it chose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

NORMAL, ANOMALY, VOID = 0, 1, 255


def parse_values(text: str | int | list | tuple | None) -> tuple[int, ...]:
    """``"2"``, ``"1,2"``, ``"2-200"``, ``"0-6,9"`` (or ints / lists of them) -> sorted unique values 0..65535."""
    if text is None or text == "":
        return ()
    if isinstance(text, int) and not isinstance(text, bool):
        items: list[str] = [str(text)]
    elif isinstance(text, list | tuple):
        items = [str(v) for v in text]
    else:
        items = [part.strip() for part in str(text).split(",") if part.strip()]
    values: set[int] = set()
    for item in items:
        lo_text, dash, hi_text = item.partition("-") if not item.startswith("-") else (item, "", "")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise ValueError(f"mask values must be integers or ranges like 2-200, got {item!r}") from None
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"mask values must lie in 0..65535 with low <= high, got {item!r}")
        values.update(range(lo, hi + 1))
    return tuple(sorted(values))


def format_values(values: tuple[int, ...]) -> str:
    """The inverse of ``parse_values`` in its shortest form: ``(2, 3, 4, 9)`` -> ``"2-4,9"``."""
    parts: list[str] = []
    start = prev = None
    for v in values:
        if prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


@dataclass(frozen=True)
class LabelEncoding:
    """Which mask values mean anomaly, which are void (excluded), and what every other value means.

    ``normal`` None: every value that is neither anomaly nor void is normal. A tuple: only those values are
    normal and every other value is void (SMIYC: 0 normal, 1 anomaly, anything else void).
    """

    name: str
    anomaly: tuple[int, ...]
    void: tuple[int, ...] = ()
    normal: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.anomaly:
            raise ValueError(f"label encoding {self.name!r}: no anomaly value given")
        clash = set(self.anomaly) & set(self.void)
        if clash:
            raise ValueError(f"label encoding {self.name!r}: values {format_values(tuple(sorted(clash)))} are both "
                             "anomaly and void")

    def describe(self) -> str:
        """One line for reports: ``anomaly 2, void 255, other values normal``."""
        rest = "other values normal" if self.normal is None else (
            f"normal {format_values(self.normal)}, other values void")
        void = f", void {format_values(self.void)}" if self.void else ""
        return f"{self.name}: anomaly {format_values(self.anomaly)}{void}, {rest}"

    def lookup(self, size: int = 256) -> np.ndarray:
        """Table value -> evaluation label for masks whose values are below ``size``."""
        table = np.full(size, NORMAL if self.normal is None else VOID, np.uint8)
        if self.normal is not None:
            table[[v for v in self.normal if v < size]] = NORMAL
        table[[v for v in self.void if v < size]] = VOID
        table[[v for v in self.anomaly if v < size]] = ANOMALY
        return table

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) uint8 / uint16 mask -> uint8 evaluation label (0 normal, 1 anomaly, 255 void)."""
        if mask.dtype == np.uint8:
            return self.lookup(256)[mask]
        if mask.dtype == np.uint16:
            return self.lookup(65536)[mask]
        raise ValueError(f"ground-truth masks must be 8- or 16-bit integers, got {mask.dtype}")


def encoding_from_values(anomaly: str | None, void: str | None = None, normal: str | None = None,
                         name: str = "custom") -> LabelEncoding:
    """A ``LabelEncoding`` from command-line style value lists (``--anomaly-values 2 --void-values 255``)."""
    return LabelEncoding(name, parse_values(anomaly), parse_values(void),
                         parse_values(normal) if normal not in (None, "") else None)


#: SMIYC component tracks (the names of the size rules in ``dicnet_ros.metrics.components``).
TRACKS: tuple[str, ...] = ("anomaly", "obstacle")


@dataclass(frozen=True)
class LabelPreset:
    """A benchmark's mask convention and the component track its official evaluation uses."""

    name: str
    encoding: LabelEncoding
    track: str
    source: str

    def __post_init__(self) -> None:
        if self.track not in TRACKS:
            raise ValueError(f"preset {self.name!r}: track must be one of {TRACKS}, got {self.track!r}")


def _preset(name: str, track: str, source: str, anomaly: str, void: str = "", normal: str | None = None) -> LabelPreset:
    return LabelPreset(name, encoding_from_values(anomaly, void, normal, name=name), track, source)


#: The published conventions (road-anomaly-benchmark = SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0).
PRESETS: dict[str, LabelPreset] = {p.name: p for p in (
    _preset("smiyc-anomaly", "anomaly", "road-anomaly-benchmark datasets/tracks.py: 0 usual, 1 anomaly, rest void",
            anomaly="1", normal="0"),
    _preset("smiyc-obstacle", "obstacle", "road-anomaly-benchmark datasets/tracks.py: 0 road, 1 obstacle, rest void",
            anomaly="1", normal="0"),
    _preset("fishyscapes", "anomaly", "Fishyscapes L&F labels: 0 in-distribution, 1 anomaly, 255 void "
            "(hermannsblum/fishyscapes eval.py keeps 0 / 1 only)", anomaly="1", normal="0"),
    _preset("lost-and-found", "obstacle", "road-anomaly-benchmark datasets/tracks.py: gtCoarse labelIds 1 free "
            "space, 2-200 objects, rest void", anomaly="2-200", normal="1"),
    _preset("road-anomaly", "anomaly", "cvlab-epfl/detecting-the-unexpected datasets/road_anomaly.py: "
            "labels_semantic >= 2 anomaly, no void", anomaly="2-255"),
    _preset("binary", "anomaly", "0 normal, 1 anomaly, 255 void, other values normal", anomaly="1", void="255"),
    _preset("binary-255", "anomaly", "0 normal, 255 anomaly, other values normal", anomaly="255"),
    _preset("dicnet-bag", "anomaly", "this package's bag ground truth: 0 normal, 255 anomaly, 128 (and any other "
            "value) void", anomaly="255", normal="0"),
)}


def resolve_encoding(preset: str | None = None, anomaly: str | None = None, void: str | None = None,
                     default: str = "binary") -> tuple[LabelEncoding, str]:
    """(encoding, track) from a preset name and/or explicit values; explicit values win over the preset's encoding
    (every value neither anomaly nor void is then normal) and keep the preset's track."""
    name = preset or default
    if name not in PRESETS:
        raise ValueError(f"unknown label preset {name!r}; known: {', '.join(PRESETS)}")
    chosen = PRESETS[name]
    if anomaly not in (None, ""):
        return encoding_from_values(anomaly, void, name="custom"), chosen.track
    if void not in (None, ""):
        raise ValueError("--void-values needs --anomaly-values (which mask values are anomalies)")
    return chosen.encoding, chosen.track

#: Mask conventions a recorded ground-truth topic may use, by the name ``bag-eval --gt-encoding`` takes. Every
#: value a convention does not name is void (excluded), so stray values (anti-aliased edges, a label id nobody
#: mapped) never count as normal or anomaly pixels.
MASK_CONVENTIONS: dict[str, LabelEncoding] = {
    # what `dicnet make-bag` writes: 255 / 0, 128 (and the rest) void; the preset's encoding under the bag's name
    "dicnet": dataclasses.replace(PRESETS["dicnet-bag"].encoding, name="dicnet"),
    "0-1": LabelEncoding("0-1", anomaly=(1,), void=(255,), normal=(0,)),  # 0/1 masks, 255 = void if present
    "0-255": LabelEncoding("0-255", anomaly=(255,), normal=(0,)),  # 0/255 masks (binary PNGs)
}
#: One line per convention for help texts and the README.
MASK_CONVENTION_HELP = {
    "dicnet": "255 anomaly, 0 normal, 128 void (what dicnet make-bag writes)",
    "0-1": "1 anomaly, 0 normal, 255 void",
    "0-255": "255 anomaly, 0 normal",
}


def mask_convention(name: str) -> LabelEncoding:
    """The named convention, or a ValueError that lists the names."""
    try:
        return MASK_CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown ground-truth convention {name!r}; use one of {', '.join(MASK_CONVENTIONS)} "
                         "(or give the values: --anomaly-values, --void-values)") from None


def value_counts(mask: np.ndarray) -> dict[int, int]:
    """{raw value: pixels} of an 8- or 16-bit mask (only the values that occur)."""
    if mask.dtype == np.uint8:
        counts = np.bincount(mask.reshape(-1), minlength=256)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(mask, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def label_counts(encoding: LabelEncoding, counts: Mapping[int, int]) -> dict[str, int]:
    """Pixels per evaluation label ({'normal', 'anomaly', 'void'}) of a mask summarised by ``value_counts``."""
    names = {NORMAL: "normal", ANOMALY: "anomaly", VOID: "void"}
    table = encoding.lookup(max(counts, default=0) + 1)
    out = dict.fromkeys(names.values(), 0)
    for value, pixels in counts.items():
        out[names[int(table[value])]] += pixels
    return out


def detect_mask_convention(values: Iterable[int]) -> tuple[LabelEncoding, str]:
    """The ``MASK_CONVENTIONS`` entry the values of a whole recording fit, and a one-line reason.

    1 present (with 0 / 255 only): 0-1; 128 present (with 0 / 255 only): dicnet; only 0 and 255: 0-255 (the
    same pixels as dicnet). Anything else (class ids, several anomaly values) cannot be guessed safely: a
    ValueError that says which values were seen and how to declare the convention.
    """
    present = set(values)
    shown = ", ".join(str(v) for v in sorted(present)[:12]) + (" ..." if len(present) > 12 else "")
    if 1 in present and present <= {0, 1, 255}:
        return MASK_CONVENTIONS["0-1"], f"values {shown}: 1 = anomaly, 0 = normal" + (
            ", 255 = void" if 255 in present else "")
    if 128 in present and present <= {0, 128, 255}:
        return MASK_CONVENTIONS["dicnet"], f"values {shown}: 255 = anomaly, 0 = normal, 128 = void"
    if present <= {0, 255}:
        why = "255 = anomaly, 0 = normal" if 255 in present else "only 0 (no anomaly pixel)"
        return MASK_CONVENTIONS["0-255"], f"values {shown or 'none'}: {why}"
    raise ValueError(
        f"cannot tell the ground-truth convention from the mask values {shown}; name it with --gt-encoding "
        f"({', '.join(MASK_CONVENTIONS)}) or give the values, e.g. --anomaly-values 2 --void-values 255")

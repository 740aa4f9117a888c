"""Which anomaly families each image of a rendered split shows, from the simulator's manifest.

``dicnet sim`` writes ``sim_manifest_<split>.json`` beside the images (see :mod:`.generator`); it lists, per
image, the anomalies placed in it with their ``family`` and visible ``pixels``. Per-family evaluation
(``dicnet make-bag`` -> ``dicnet bag-eval``) needs that per image, keyed the way a dataset hands images out:
by file path. Only json is imported, so reading a manifest never needs the simulator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def manifest_path(root: str | Path, split: str) -> Path:
    """Where the simulator writes (and readers find) the manifest of ``split``."""
    return Path(root) / f"sim_manifest_{split}.json"


def visible_families(entry: dict[str, Any]) -> tuple[str, ...]:
    """Sorted families of an image's anomalies that are visible (pixels > 0): an anomaly hidden behind
    something is not in the ground truth, so it does not make the image belong to its family."""
    anomalies = entry.get("anomalies") or []
    return tuple(sorted({str(a["family"]) for a in anomalies if int(a.get("pixels", 1)) > 0}))


def image_families(root: str | Path, split: str) -> dict[Path, tuple[str, ...]]:
    """Resolved image path -> its visible anomaly families, for every image the manifest lists; {} when the
    dataset has no manifest (not simulator output). A manifest that cannot be read raises ValueError."""
    path = manifest_path(root, split)
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        images_dir = Path(root) / str(manifest["images_dir"])
        return {(images_dir / str(entry["file"])).resolve(): visible_families(entry) for entry in manifest["images"]}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable simulator manifest ({type(exc).__name__}: {exc})") from exc

"""Training configuration: a YAML file (by path or by name in ``training/configs``) plus ``key=value`` overrides.

One nested dict drives every stage, so the exact config is stored in each checkpoint and a run can be
reproduced from the checkpoint alone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "out_dir": "runs/dicnet",
    "data": {"root": None, "kind": "auto", "train_split": "train", "val_split": "val", "test_split": "test",
             "options": {}, "max_images": {}, "outlier_objects": {}},
    "model": {},
    "input": {"height": 176, "width": 320},
    "augment": {"scale_range": [0.75, 1.5], "hflip": True, "photometric": True},
    "teacher": {"epochs": 10, "batch_size": 4, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
                "poly_power": 0.9, "aux_weight": 0.4, "workers": 2, "val_batch_size": 4},
    "student": {"epochs": 20, "batch_size": 4, "lr": 1e-4, "weight_decay": 1e-5, "workers": 2,
                "val_batch_size": 4, "augment": None},
    "distributed": {"backend": "auto", "sync_bn": False},
    "amp": True,
    "calibration": {"target_fpr": 0.01, "split": "val", "mu_split": "val", "max_pixels": 20_000_000},
    "eval": {"split": "test", "batch_size": 2, "minmax": False, "num_bins": 10000, "exact_pooled": True,
             "qualitative": 4, "curve_pixels": 200_000, "workers": 1},
}


class ConfigError(ValueError):
    """A config file or an override is malformed; the message names the key."""


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (update wins) without mutating either input."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config_path(name: str | Path) -> Path:
    """A path, or a bare name such as ``sim`` / ``sim.yaml`` looked up in the packaged configs."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name!s} not found (packaged configs: {known})")


def apply_override(cfg: dict[str, Any], text: str) -> None:
    """Set ``a.b.c=value`` in place; the value is parsed as YAML (numbers, lists, null, booleans)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    node = cfg
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(name: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Defaults <- YAML file <- overrides; the result is plain data (stored in checkpoints)."""
    cfg = copy.deepcopy(DEFAULTS)
    if name is not None:
        path = resolve_config_path(name)
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping")
        cfg = deep_merge(cfg, loaded)
        cfg["config_path"] = str(path)
    for text in overrides or ():
        apply_override(cfg, text)
    return cfg


def add_config_arguments(parser: Any, config_required: bool = True) -> None:
    """The --config / --override / --out options shared by the training subcommands."""
    parser.add_argument("--config", required=config_required, help="YAML file or packaged name (sim, ci, ...)")
    parser.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. teacher.epochs=3 model.feature_channels=64")
    parser.add_argument("--out", default=None, help="run directory (default: config out_dir/<stage>)")
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")

"""Training configuration: a YAML file (by path or by name in ``training/configs``) plus ``key=value`` overrides.

One nested dict drives every stage, so the exact config is stored in each checkpoint and a run can be
reproduced from the checkpoint alone. Every key a config file or an override names must exist in the schema:
``DEFAULTS`` for the plain sections, the settings classes of ``typed_sections`` for the others, so a misspelled
key (``teacher.epoch``) is an error naming the close valid keys instead of a setting silently not applied.
"""

from __future__ import annotations

import copy
import difflib
import functools
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from dicnet_ros.cli_options import add_device_argument

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Every setting of the plain sections with its default: the schema of those sections (a new setting is added
#: here, once); the keys of ``model``, ``input``, ``augment``, ``student.augment``, ``student.outlier_exposure``,
#: ``outlier_head`` and ``data.outlier_objects`` are those of the code that reads them (``typed_sections``).
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
                "val_batch_size": 4, "augment": None, "outlier_exposure": {},
                "schedule": "constant", "milestones": [], "gamma": 0.1, "min_lr_ratio": 0.05},
    "distributed": {"backend": "auto", "sync_bn": False},
    "amp": True,
    "calibration": {"target_fpr": 0.01, "split": "val", "mu_split": "val", "max_pixels": 20_000_000,
                    "mu_max_images": None, "domain_threshold": None, "domain_rank": None},
    "eval": {"split": "test", "batch_size": 2, "minmax": False, "num_bins": 10000, "exact_pooled": True,
             "qualitative": 4, "curve_pixels": 200_000, "workers": 1},
    "outlier_head": {},
}

#: The keys of ``data.outlier_objects`` (read by ``dicnet_training.data.with_outlier_objects``).
OUTLIER_OBJECT_KEYS: frozenset[str] = frozenset({"root", "probability", "max_images", "mask_value", "scale_range"})

#: Sections whose keys are the user's own: constructor options of the dataset kind (``open_dataset`` checks
#: them) and image limits per split.
OPEN_SECTIONS: frozenset[tuple[str, ...]] = frozenset({("data", "options"), ("data", "max_images")})

#: Schema leaves: a setting (any value), and a section that takes any key (``OPEN_SECTIONS``).
SETTING, ANY_KEY = "setting", "any key"


class ConfigError(ValueError):
    """A config file or an override is malformed; the message names the key."""


def typed_sections() -> dict[tuple[str, ...], frozenset[str]]:
    """Sections whose keys are the fields of the class that reads them (the class is the schema), less the fields
    the program fills in itself: the class count (from the dataset), the augmentation's crop size and ignore id
    (from ``input`` and the dataset)."""
    from dicnet_training.losses import OutlierExposure, OutlierHeadConfig

    from dicnet_ros.data.transforms import TrainAugment
    from dicnet_ros.model.dicnet import ModelConfig
    from dicnet_ros.preprocessing import PreprocessConfig

    def names(cls: type, *filled_in: str) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls)) - set(filled_in)

    augment = names(TrainAugment, "crop_size", "ignore_id")
    return {("model",): names(ModelConfig, "num_classes"), ("input",): names(PreprocessConfig),
            ("augment",): augment, ("student", "augment"): augment,
            ("student", "outlier_exposure"): names(OutlierExposure), ("outlier_head",): names(OutlierHeadConfig),
            ("data", "outlier_objects"): OUTLIER_OBJECT_KEYS}


@functools.cache
def schema() -> dict[str, Any]:
    """Every key a config may name, as a tree: a dict per section, ``SETTING`` or ``ANY_KEY`` at the leaves."""
    typed = typed_sections()

    def build(default: Any, path: tuple[str, ...]) -> Any:
        if path in OPEN_SECTIONS:
            return ANY_KEY
        if path in typed:
            return dict.fromkeys(sorted(typed[path]), SETTING)
        if isinstance(default, dict):
            return {key: build(value, (*path, key)) for key, value in default.items()}
        return SETTING

    return build(DEFAULTS, ())


def valid_keys() -> list[str]:
    """Every dotted key of the schema, sections included (``teacher``, ``teacher.epochs``, ...)."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                out.append(prefix + key)
                walk(child, f"{prefix}{key}.")

    walk(schema(), "")
    return out


def check_key(key: tuple[str, ...], where: str) -> Any:
    """The schema node of ``key`` (a dotted path split at the dots); ConfigError if the schema has no such key,
    naming the close valid keys (difflib) or, when none is close, the keys of the section it is in."""
    dotted = ".".join(key)
    node: Any = schema()
    for depth, part in enumerate(key):
        if node is ANY_KEY:
            return SETTING  # a key inside an open section
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r} ({where}): {'.'.join(key[:depth])!r} is a setting, not a "
                              "section")
        if part not in node:
            same_depth = [k for k in valid_keys() if k.count(".") == len(key) - 1]
            close = difflib.get_close_matches(dotted, same_depth, n=3, cutoff=0.6)
            hint = (f"close valid keys: {', '.join(close)}" if close else
                    f"{'.'.join(key[:depth]) or 'the top level'} takes: {', '.join(sorted(node))}")
            raise ConfigError(f"unknown config key {dotted!r} ({where}); {hint}")
        node = node[part]
    return node


def check_keys(tree: dict[str, Any], where: str, prefix: tuple[str, ...] = ()) -> None:
    """``check_key`` for every key of a nested config (a YAML file), down through its sections; a section takes a
    mapping (or null where its default is null, e.g. ``student.augment``)."""
    for name, value in tree.items():
        key = (*prefix, str(name))
        node = check_key(key, where)
        if node is SETTING or (value is None and _default_of(key) is None):
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"config key {'.'.join(key)!r} ({where}) is a section: give it a mapping of its keys, "
                              f"not {value!r}")
        if node is not ANY_KEY:
            check_keys(value, where, key)


def _default_of(key: tuple[str, ...]) -> Any:
    node: Any = DEFAULTS
    for part in key:
        node = node.get(part) if isinstance(node, dict) else None
    return node


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
    """Set ``a.b.c=value`` in place; the value is parsed as YAML (numbers, lists, null, booleans).

    The key must exist in the schema (``check_key``); a section that is null (``student.augment``) becomes a
    mapping when one of its keys is set."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = tuple(p for p in key.strip().split(".") if p)
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    where = f"--override {text}"
    node_schema = check_key(parts, where)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    if node_schema is not SETTING:  # a whole section: its keys are checked and merged into it
        check_keys({parts[-1]: value}, where, parts[:-1])
    node = cfg
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        value = deep_merge(node[parts[-1]], value)
    node[parts[-1]] = value


def load_config(name: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Defaults <- YAML file <- overrides; the result is plain data (stored in checkpoints)."""
    cfg = copy.deepcopy(DEFAULTS)
    if name is not None:
        path = resolve_config_path(name)
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping")
        check_keys(loaded, f"in {path}")
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
    add_device_argument(parser)

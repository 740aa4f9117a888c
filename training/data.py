"""Datasets -> DataLoaders for training and evaluation (augmentation seeding, samplers, collate).

Augmentations draw from an rng derived from (seed, epoch, index) so a sample looks the same whatever worker
loads it and whether or not the run was resumed: the basis of bit-exact resume on CPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dicnet_training.distributed import DistContext
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

log = logging.getLogger(__name__)


def open_split(cfg: dict[str, Any], split_key: str) -> Any:
    """The dataset of ``cfg['data'][split_key]`` (e.g. 'train_split'), optionally cut to ``max_images``."""
    from dicnet_training.config import ConfigError

    from dicnet_ros.data import open_dataset
    from dicnet_ros.data.detect import UnknownLayoutError, detect_kind

    data = cfg["data"]
    if not data.get("root"):
        raise ConfigError("config data.root is not set (use --override data.root=/path/to/dataset)")
    split = data.get(split_key, split_key)
    kind = data.get("kind", "auto")
    try:
        ds = open_dataset(data["root"], split, kind=kind, **(data.get("options") or {}))
    except UnknownLayoutError as exc:
        raise ConfigError(f"{exc}: --override data.kind=KIND") from None
    except (FileNotFoundError, ValueError) as exc:
        try:  # a layout named in the config that the tree does not have: say which one it has
            found = detect_kind(Path(data["root"]).expanduser()) if kind != "auto" else kind
        except (OSError, ValueError):
            found = kind
        if found == kind:
            raise
        raise ConfigError(f"{exc}; the tree at {data['root']} is a {found} dataset, not {kind}: "
                          f"--override data.kind={found} (or auto)") from None
    limit = (data.get("max_images") or {}).get(split)
    if limit is not None and int(limit) < len(ds):
        ds = Subset(ds, range(int(limit)))
    log.info("dataset %s split %s: %d images", data["root"], split, len(ds))
    return ds


def with_outlier_objects(ds: Any, cfg: dict[str, Any]) -> Any:
    """The training set with object cut-outs pasted in (``data.outlier_objects``, see
    ``dicnet_ros.data.outlier_objects``); unchanged when the section has no root. Used by the stages that learn
    from outlier proxies (distill, fit-outlier-head), never by the teacher or on validation / evaluation images."""
    from dicnet_training.config import OUTLIER_OBJECT_KEYS

    from dicnet_ros.data.outlier_objects import COCO_OBJECT_VALUE, OutlierObjects, PastedObjects

    section = (cfg.get("data") or {}).get("outlier_objects") or {}
    if not isinstance(section, dict):
        raise ValueError("data.outlier_objects must be a mapping (root, probability, max_images, ...)")
    unknown = sorted(set(section) - set(OUTLIER_OBJECT_KEYS))
    if unknown:
        raise ValueError(f"data.outlier_objects: unknown keys {unknown}; known: {sorted(OUTLIER_OBJECT_KEYS)}")
    if not section.get("root"):
        return ds
    objects = OutlierObjects(section["root"], int(section.get("mask_value", COCO_OBJECT_VALUE)),
                             None if section.get("max_images") is None else int(section["max_images"]))
    pasted = PastedObjects(ds, objects, float(section.get("probability", 0.5)), int(cfg.get("seed", 0)),
                           tuple(section.get("scale_range") or (1.0, 1.0)))
    log.info("outlier objects pasted into %.0f %% of the training images (label id %d)", 100 * pasted.probability,
             pasted.proxy_id)
    return pasted


class Subset:
    """The first images of a dataset (keeps ``spec``, unlike torch's Subset)."""

    def __init__(self, base: Any, indices: range | list[int]):
        self.base = base
        self.indices = list(indices)
        self.spec = base.spec

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


class AugmentedDataset(Dataset):
    """Training view: augmented crops at the network size, rng seeded by (seed, epoch, index)."""

    def __init__(self, base: Any, augment: Any, seed: int):
        self.base = base
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):  # pasted outlier objects change every epoch too
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.base[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        image, label = self.augment(sample.image, sample.label, rng)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))


class EvalDataset(Dataset):
    """Evaluation view: native-size image and label (the model resizes; scores come back at label size)."""

    def __init__(self, base: Any):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        sample = self.base[index]
        return torch.from_numpy(np.ascontiguousarray(sample.image)), torch.from_numpy(
            np.ascontiguousarray(sample.label)), int(index)


def collate_by_size(batch: list[tuple[torch.Tensor, torch.Tensor, int]]) -> list[tuple[torch.Tensor, ...]]:
    """Stack images of equal size; a batch of mixed sizes becomes several groups (datasets may mix sizes)."""
    groups: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor, int]]] = {}
    for item in batch:
        groups.setdefault(tuple(item[0].shape), []).append(item)
    return [(torch.stack([g[0] for g in items]), torch.stack([g[1] for g in items]),
             torch.tensor([g[2] for g in items])) for items in groups.values()]


class ShardSampler(Sampler[int]):
    """Contiguous, unpadded shard of the indices per rank: every evaluation image counted exactly once."""

    def __init__(self, length: int, rank: int, world_size: int):
        per = math.ceil(length / world_size)
        self.indices = list(range(rank * per, min(length, (rank + 1) * per)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_augment(cfg: dict[str, Any], overrides: dict[str, Any] | None = None, ignore_id: int = 255) -> Any:
    """TrainAugment cropping to the network size with the config's options."""
    from dicnet_ros.data.transforms import TrainAugment

    options = dict(cfg.get("augment") or {})
    options.update(overrides or {})
    if "scale_range" in options and options["scale_range"] is not None:
        options["scale_range"] = tuple(options["scale_range"])
    crop = (int(cfg["input"]["height"]), int(cfg["input"]["width"]))
    return TrainAugment(crop_size=crop, ignore_id=ignore_id, **options)


def train_loader(ds: Any, augment: Any, batch_size: int, workers: int, seed: int,
                 ctx: DistContext) -> tuple[DataLoader, DistributedSampler, AugmentedDataset]:
    """Shuffled loader; the sampler is a DistributedSampler even on one rank (deterministic per epoch)."""
    view = AugmentedDataset(ds, augment, seed)
    sampler = DistributedSampler(view, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    loader = DataLoader(view, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=ctx.device.type == "cuda", persistent_workers=False)
    if len(loader) == 0:
        raise ValueError(f"training split has {len(ds)} images: fewer than one batch of {batch_size} per rank")
    return loader, sampler, view


def eval_loader(ds: Any, batch_size: int, workers: int, ctx: DistContext) -> DataLoader:
    """Sharded, unshuffled loader over native-size images."""
    view = EvalDataset(ds)
    return DataLoader(view, batch_size=batch_size, sampler=ShardSampler(len(view), ctx.rank, ctx.world_size),
                      num_workers=workers, collate_fn=collate_by_size, pin_memory=ctx.device.type == "cuda")

"""The student's training objective: distillation (paper Eq. 6) plus, optionally, outlier exposure.

Eq. 6 alone teaches the student to agree with the teacher everywhere it is trained, and a student that
generalises well then also agrees on objects it has never seen: on the simulated benchmark large anomalies got
the features of the known class they resemble and scored like normal pixels (models/README.md). Outlier
exposure adds the missing signal: on outlier proxies (objects of no class and no test family rendered into some
training images, and random textured polygons pasted in) the student is pushed to DISAGREE with the teacher by
at least ``margin`` (mean over channels of the squared difference), with a hinge, so it learns to disagree on
what it does not know rather than to copy it. Normal pixels keep Eq. 6; pixels near a proxy (feature cells that
are partly proxy) and ignored pixels take part in neither term.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from dicnet_ros.preprocessing import PreprocessConfig


@dataclass(frozen=True)
class OutlierExposure:
    """``student.outlier_exposure`` of a config: weight 0 = the paper's Eq. 6 only."""

    weight: float = 0.0
    margin: float = 1.0
    paste_probability: float = 0.0  # share of training images that also get pasted 2-D proxies
    paste_radius: tuple[float, float] = (10.0, 60.0)  # polygon radius range in pixels of a 216-pixel-high image
    paste_rows: tuple[float, float] = (0.35, 1.0)  # range of the polygon centres' rows, fractions of the height

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> OutlierExposure:
        section = dict(section or {})
        unknown = set(section) - {"weight", "margin", *PASTE_KEYS}
        if unknown:
            raise ValueError(f"student.outlier_exposure: unknown keys {sorted(unknown)}")
        pastes = parse_paste_settings(section, "student.outlier_exposure", cls)
        oe = cls(**{k: float(v) for k, v in section.items()}, **pastes)
        if oe.weight < 0 or oe.margin <= 0:
            raise ValueError(f"student.outlier_exposure: need weight >= 0, margin > 0, got {oe}")
        return oe

    @property
    def enabled(self) -> bool:
        return self.weight > 0


PASTE_KEYS = ("paste_probability", "paste_radius", "paste_rows")


def parse_paste_settings(section: dict[str, Any], where: str, defaults: Any) -> dict[str, Any]:
    """Pop and check the pasted-polygon keys (``PASTE_KEYS``, see ``paste_outlier_shapes``) of a config section;
    missing keys take ``defaults``' attributes. One definition for every stage that pastes outlier proxies."""
    out: dict[str, Any] = {}
    for key in PASTE_KEYS:
        value = section.pop(key, getattr(defaults, key))
        try:
            out[key] = float(value) if key == "paste_probability" else tuple(float(v) for v in value)
        except (TypeError, ValueError):
            out[key] = None
        if out[key] is None or (key != "paste_probability" and len(out[key]) != 2):
            raise ValueError(f"{where}.{key}: need {'a number' if key == 'paste_probability' else '[low, high]'}, "
                             f"got {value!r}")
    probability, radius, rows = (out[k] for k in PASTE_KEYS)
    if not 0 <= probability <= 1 or not 0 < radius[0] <= radius[1] or not 0 <= rows[0] <= rows[1] <= 1:
        raise ValueError(f"{where}: need 0 <= paste_probability <= 1, 0 < paste_radius low <= high, "
                         f"0 <= paste_rows low <= high <= 1, got {out}")
    return out


def network_geometry(maps: torch.Tensor, pp: PreprocessConfig, value: float = 0) -> torch.Tensor:
    """Pixel maps (N, H, W) (masks or class ids) -> (N, Hp, Wp) laid out as ``preprocess`` lays out the image:
    nearest-resized to the network size, then padded bottom / right with ``value`` to the stride multiple, so
    that feature cell (i, j) covers exactly the pixels the network saw there."""
    x = maps[:, None].float()
    if tuple(x.shape[-2:]) != (pp.height, pp.width):
        x = F.interpolate(x, size=(pp.height, pp.width), mode="nearest")
    pad_h, pad_w = pp.padded_size[0] - pp.height, pp.padded_size[1] - pp.width
    return F.pad(x, (0, pad_w, 0, pad_h), value=value)[:, 0].to(maps.dtype)


def feature_cell_masks(outlier: torch.Tensor, valid: torch.Tensor, size: tuple[int, int],
                       pp: PreprocessConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel masks (N, H, W) -> feature-cell masks (N, 1, h, w): (mostly outlier, entirely valid normal).

    With ``pp`` the masks are first put in the network's geometry (``network_geometry``): the padded rows and
    columns are neither outlier nor normal. Without it, masks already at the padded size are assumed."""
    if pp is not None:
        outlier, valid = network_geometry(outlier, pp), network_geometry(valid, pp)
    share = F.adaptive_avg_pool2d(outlier.float()[:, None], size)
    normal = F.adaptive_avg_pool2d((valid & ~outlier).float()[:, None], size)
    return share > 0.5, normal > 0.999


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, exposure: OutlierExposure | None = None,
                      outlier: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                      pp: PreprocessConfig | None = None) -> torch.Tensor:
    """Eq. 6 (MSE to the teacher feature) on normal cells + weight * mean(relu(margin - error)) on outlier cells.

    Without outlier exposure (or without masks) this is exactly the paper's MSE over all cells.
    """
    if exposure is None or not exposure.enabled or outlier is None or valid is None:
        return F.mse_loss(student, teacher)
    error = (student - teacher).pow(2).mean(dim=1, keepdim=True)
    outlier_cells, normal_cells = feature_cell_masks(outlier, valid, tuple(error.shape[-2:]), pp)
    loss = error[normal_cells].mean() if bool(normal_cells.any()) else error.sum() * 0.0
    if bool(outlier_cells.any()):
        loss = loss + exposure.weight * F.relu(exposure.margin - error[outlier_cells]).mean()
    return loss


@dataclass(frozen=True)
class OutlierHeadConfig:
    """The ``outlier_head`` section of a training config (``dicnet fit-outlier-head``, outlier_head.py); it sits here
    beside ``OutlierExposure`` so that the config schema (config.py) reads both without importing a command."""

    epochs: int = 15
    lr: float = 1e-3
    weight: float = 1.0  # of the energy hinge, next to the cross-entropy on normal cells
    max_images: int | None = None  # training images to cache (None = the whole train split)
    paste_probability: float = 0.7
    paste_radius: tuple[float, float] = (20.0, 150.0)
    paste_rows: tuple[float, float] = (0.0, 1.0)  # anywhere: large anomalies reach into the sky and buildings
    batch_cells: int = 32768
    seed: int = 0

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> OutlierHeadConfig:
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        if set(section) - known:
            raise ValueError(f"outlier_head: unknown keys {sorted(set(section) - known)}")
        out = replace(cls(), **parse_paste_settings(section, "outlier_head", cls))
        for key, value in section.items():
            try:
                value = None if value is None and key == "max_images" else type(getattr(cls, key) or 0)(value)
            except (TypeError, ValueError):
                raise ValueError(f"outlier_head.{key}: bad value {value!r}") from None
            out = replace(out, **{key: value})
        if out.epochs < 1 or out.lr <= 0 or out.weight < 0 or out.batch_cells < 1:
            raise ValueError(f"outlier_head: need epochs >= 1, lr > 0, weight >= 0, batch_cells >= 1, got {out}")
        return out

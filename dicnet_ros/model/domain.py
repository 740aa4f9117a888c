"""The image-level out-of-domain score: is this frame still in the world the model was trained on?

A per-pixel anomaly score answers "which pixels are unlike the training data" *inside* that world; on a frame
from elsewhere (a real photograph for a simulator model, night, fog, a covered or failed camera) every pixel
is unlike it and the mask means nothing. The domain head says so with one number per image, computed in the
same graph as the maps (so every backend reports the same value) and calibrated label-free on in-distribution
images only (``dicnet calibrate``).

It compares two groups of image-level statistics with their calibration distribution:
- **features**: the spatial means of the teacher's last two backbone stages and the mean and standard deviation
  of its distillation feature, a few hundred numbers per image; their distance from the calibration images is a
  low-rank Mahalanobis distance (the top ``rank`` principal directions with their own variance, the rest with
  the mean residual variance), after per-number standardisation. A scene the teacher has never seen moves
  these statistics far more than an unknown object inside a known scene does.
- **pixels**: the log brightness, log contrast and log sharpness (mean absolute Laplacian) of the network input.
  They catch failed frames whatever the network makes of them: black, white or uniform frames, pure noise,
  heavy blur, heavy over- or under-exposure.

Each group's value is standardised by its mean and standard deviation over in-distribution validation images
(one-sided for the feature distance: only "further away" is out of domain; two-sided for the pixel statistics:
too dark and too bright both are), and the score is the largest of them. ``domain_score`` is therefore in
standard deviations of the calibration images: higher = further out of domain; the alarm threshold (metadata
``domain_threshold``) is a number of those standard deviations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dicnet_ros.preprocessing import PreprocessConfig

#: the standardised quantities the score takes the largest of (``DomainHead.group_distances`` order)
DOMAIN_GROUPS = ("features", "brightness", "contrast", "sharpness")
#: which of them count in both directions (the feature distance is >= 0: only "further" is out of domain)
TWO_SIDED = (False, True, True, True)
NUM_PIXEL_STATISTICS = 3
DEFAULT_RANK = 16
#: default alarm (``dicnet calibrate --domain-threshold``): this many standard deviations of the calibration images
#: on one statistic; chosen on development data (models/README.md, "Out-of-domain alarm")
DEFAULT_DOMAIN_THRESHOLD = 5.0
EPS_BRIGHTNESS = 1e-3
EPS_SHARPNESS = 1e-4


def pixel_statistics(network_input: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """(N, 3) log brightness, log contrast and log sharpness of the un-normalised network input (values 0..1,
    stride padding excluded).

    Sharpness is the mean absolute Laplacian at half the network size: at full size the rounding noise of a
    blurred uint8 frame keeps the Laplacian up (on development images a heavy blur sat 5.9 standard deviations
    below the calibration images at full size, 9.1 at half size, with the same spread in domain)."""
    x = network_input[:, :, : config.height, : config.width].float()
    std = torch.tensor(config.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    mean = torch.tensor(config.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    luminance = (x * std + mean).mean(dim=1, keepdim=True)  # (N, 1, H, W)
    brightness = luminance.mean(dim=(1, 2, 3))
    contrast = (luminance.pow(2).mean(dim=(1, 2, 3)) - brightness.pow(2)).clamp_min(0.0).sqrt()
    half = F.avg_pool2d(luminance, 2)[:, 0]
    centre = half[:, 1:-1, 1:-1]
    laplacian = 4.0 * centre - half[:, :-2, 1:-1] - half[:, 2:, 1:-1] - half[:, 1:-1, :-2] - half[:, 1:-1, 2:]
    sharpness = laplacian.abs().mean(dim=(1, 2))
    return torch.stack([(brightness + EPS_BRIGHTNESS).log(), (contrast + EPS_BRIGHTNESS).log(),
                        (sharpness + EPS_SHARPNESS).log()], dim=1)


def feature_statistics(levels: Sequence[torch.Tensor], teacher_feature: torch.Tensor) -> torch.Tensor:
    """(N, D) spatial means of the backbone ``levels`` and mean and standard deviation of the teacher feature."""
    feature = teacher_feature.float()
    mean = feature.mean(dim=(2, 3))
    std = (feature.pow(2).mean(dim=(2, 3)) - mean.pow(2)).clamp_min(0.0).sqrt()
    return torch.cat([*(level.float().mean(dim=(2, 3)) for level in levels), mean, std], dim=1)


def domain_statistics(network_input: torch.Tensor, config: PreprocessConfig, levels: Sequence[torch.Tensor],
                      teacher_feature: torch.Tensor) -> torch.Tensor:
    """(N, 3 + D): pixel statistics, then feature statistics -- what ``DomainHead`` scores."""
    return torch.cat([pixel_statistics(network_input, config), feature_statistics(levels, teacher_feature)], dim=1)


class DomainHead(nn.Module):
    """Domain statistics (N, 3 + D) -> out-of-domain score (N,) in standard deviations of the calibration images.

    Every number it needs is a buffer filled by ``dicnet calibrate`` (``fit``), so it travels with the weights
    into the exported graph; it has no trainable parameters.
    """

    def __init__(self, num_features: int, rank: int = DEFAULT_RANK):
        super().__init__()
        if not 0 < rank < num_features:
            raise ValueError(f"domain rank must be in 1..{num_features - 1}, got {rank}")
        self.register_buffer("feature_center", torch.zeros(num_features))
        self.register_buffer("feature_scale", torch.ones(num_features))
        self.register_buffer("basis", torch.zeros(rank, num_features))  # orthonormal rows
        self.register_buffer("basis_variance", torch.ones(rank))
        self.register_buffer("residual_variance", torch.ones(1))
        self.register_buffer("group_center", torch.zeros(len(DOMAIN_GROUPS)))
        self.register_buffer("group_scale", torch.ones(len(DOMAIN_GROUPS)))
        self.register_buffer("two_sided", torch.tensor([float(v) for v in TWO_SIDED]))

    @property
    def num_features(self) -> int:
        return int(self.feature_center.numel())

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    def feature_distance(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) root mean squared Mahalanobis distance of the feature statistics: about 1 on the fitted images."""
        z = (features.float() - self.feature_center) / self.feature_scale
        projected = z @ self.basis.t()  # (N, rank)
        total = z.pow(2).sum(dim=1)
        principal = projected.pow(2).sum(dim=1)
        residual = (total - principal).clamp_min(0.0)
        squared = (projected.pow(2) / self.basis_variance).sum(dim=1) + residual / self.residual_variance
        return (squared / self.num_features).sqrt()

    def group_distances(self, statistics: torch.Tensor) -> torch.Tensor:
        """(N, G) raw values of ``DOMAIN_GROUPS`` before standardisation."""
        pixels = statistics[:, :NUM_PIXEL_STATISTICS].float()
        return torch.cat([self.feature_distance(statistics[:, NUM_PIXEL_STATISTICS:])[:, None], pixels], dim=1)

    def group_scores(self, statistics: torch.Tensor) -> torch.Tensor:
        """(N, G) standardised distances: one-sided for the features, absolute for the pixel statistics."""
        z = (self.group_distances(statistics) - self.group_center) / self.group_scale
        return self.two_sided * z.abs() + (1.0 - self.two_sided) * z

    def forward(self, statistics: torch.Tensor) -> torch.Tensor:
        return self.group_scores(statistics).amax(dim=1)

    @torch.no_grad()
    def fit(self, fit_statistics: torch.Tensor, scale_statistics: torch.Tensor) -> dict[str, float | list[float]]:
        """Fit the feature distribution on ``fit_statistics`` (N1, 3 + D) and standardise each group on the
        separate in-distribution images ``scale_statistics`` (N2, 3 + D): a distance standardised on the images it
        was fitted on would look smaller than on any new image. Returns a summary for the metadata."""
        fit_statistics = fit_statistics.double()
        features = fit_statistics[:, NUM_PIXEL_STATISTICS:]
        if features.shape[1] != self.num_features:
            raise ValueError(f"domain statistics have {features.shape[1]} features, the head {self.num_features}")
        if len(features) <= self.rank + 1 or len(scale_statistics) < 2:
            raise ValueError(f"the domain head needs more than {self.rank + 1} fit images and at least 2 images "
                             f"to standardise on, got {len(features)} and {len(scale_statistics)}")
        center = features.mean(dim=0)
        scale = features.std(dim=0, unbiased=False).clamp_min(1e-6)
        z = (features - center) / scale
        _, singular, vh = torch.linalg.svd(z, full_matrices=False)
        variance = singular.pow(2) / len(z)
        residual = variance[self.rank:].sum() / (self.num_features - self.rank)
        self.feature_center.copy_(center.float())
        self.feature_scale.copy_(scale.float())
        self.basis.copy_(vh[: self.rank].float())
        self.basis_variance.copy_(variance[: self.rank].clamp_min(1e-12).float())
        self.residual_variance.fill_(float(residual.clamp_min(1e-12)))
        groups = self.group_distances(scale_statistics.float()).double()
        self.group_center.copy_(groups.mean(dim=0).float())
        self.group_scale.copy_(groups.std(dim=0, unbiased=False).clamp_min(1e-6).float())
        return {"group_center": [float(v) for v in self.group_center], "group_scale": [float(v) for v in
                                                                                         self.group_scale],
                "explained_variance": float(variance[: self.rank].sum() / variance.sum())}


def domain_head_from_state(state: dict[str, torch.Tensor]) -> DomainHead:
    """A head shaped like a saved state dict (checkpoints store the fitted head, not its shape)."""
    rank, num_features = state["basis"].shape
    head = DomainHead(int(num_features), int(rank))
    head.load_state_dict(state)
    return head


__all__ = ["DEFAULT_DOMAIN_THRESHOLD", "DEFAULT_RANK", "DOMAIN_GROUPS", "DomainHead", "domain_head_from_state",
           "domain_statistics", "feature_statistics", "pixel_statistics"]

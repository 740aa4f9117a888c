"""Random-weight DiCNet checkpoints by preset name, for tests and for benchmarking untrained architectures.

Speed does not depend on the weights, but parity tests do depend on non-trivial BatchNorm statistics and a
non-zero ``mu_c``, so these models get random running stats instead of the identity defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicnet_ros.metadata import ModelMetadata

# name -> ModelConfig keyword arguments (num_classes is added by ``preset_config``)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # CI: a few MFLOP, exports and runs in a second
    "tiny": {"teacher_backbone": "resnet_lite", "student_backbone": "resnet_lite", "feature_channels": 32,
             "teacher_widths": [8, 16, 16, 24], "student_widths": [8, 16, 16, 24]},
    # the light CPU pair (default resnet_lite widths), the architecture of the shipped demo model
    "lite": {"teacher_backbone": "resnet_lite", "student_backbone": "resnet_lite", "feature_channels": 128},
    # the paper: dilated ResNet-50 PSPNet teacher, dilated ResNet-34 student, 512 feature channels
    "paper": {"teacher_backbone": "resnet50", "student_backbone": "resnet34", "feature_channels": 512},
}


def preset_config(name: str, num_classes: int = 13) -> dict[str, Any]:
    """ModelConfig dict of a preset, never loading ImageNet weights."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
    return {"num_classes": num_classes, **MODEL_PRESETS[name], "teacher_pretrained": "none",
            "student_pretrained": "none"}


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval-mode parity matters)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def smooth_random_images(count: int, height: int, width: int, generator) -> Any:
    """(count, height, width, 3) uint8 images of random colour blobs: random, but not white noise, so image-level
    statistics vary between them as between camera frames."""
    import torch
    import torch.nn.functional as F

    coarse = torch.rand(count, 3, max(2, height // 16), max(2, width // 16), generator=generator) * 255.0
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return smooth.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def fit_random_domain_head(model, generator, images: int = 24) -> None:
    """Give ``model`` an out-of-domain head fitted on smooth random images (2/3 to fit, 1/3 to standardise on)."""
    import torch

    from dicnet_ros.model.domain import DEFAULT_RANK, DomainHead

    pre = model.preprocess_config
    with torch.no_grad():
        x = model.network_input(smooth_random_images(images, pre.height, pre.width, generator))
        stats = model.domain_statistics(x, model.teacher(x))
    fit = images * 2 // 3
    head = DomainHead(model.domain_feature_count, min(DEFAULT_RANK, fit - 2))
    head.fit(stats[:fit], stats[fit:])
    model.domain_head = head


def random_checkpoint(path: str | Path, preset: str | dict[str, Any] = "tiny", network_size: tuple[int, int] = (96, 64),
                      num_classes: int = 5, seed: int = 0, domain_head: bool = True) -> Path:
    """Build, randomise, calibrate (threshold = median score on a random image; out-of-domain head fitted on random
    images unless ``domain_head`` is False) and save a student checkpoint.

    ``network_size`` is (width, height). Returns the checkpoint path.
    """
    import torch

    from dicnet_ros.model import ModelConfig, build_dicnet
    from dicnet_ros.model.checkpoint import save_checkpoint
    from dicnet_ros.model.domain import DEFAULT_DOMAIN_THRESHOLD
    from dicnet_ros.preprocessing import PreprocessConfig

    torch.manual_seed(seed)
    cfg_dict = preset_config(preset, num_classes) if isinstance(preset, str) else dict(preset)
    cfg = ModelConfig.from_dict(cfg_dict)
    pre = PreprocessConfig(height=network_size[1], width=network_size[0])
    model = build_dicnet(cfg, pre).eval()
    randomize_batchnorm(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model.mu_c.copy_(torch.randn(cfg.feature_channels, generator=gen) * 0.05)
    image = torch.randint(0, 256, (1, pre.height, pre.width, 3), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        score = model(image).anomaly_score
    threshold = float(score.median())
    mu_c = [float(v) for v in model.mu_c]
    if domain_head:
        fit_random_domain_head(model, gen)
    metadata = ModelMetadata(
        class_names=[f"class_{i}" for i in range(num_classes)],
        preprocess=pre.to_dict(),
        scoring_mode=cfg.scoring_mode,
        teacher_norm=cfg.teacher_norm,
        threshold=threshold,
        domain_threshold=DEFAULT_DOMAIN_THRESHOLD if domain_head else None,
        calibration={"mu_c": mu_c, "score_stats": {"p50": threshold, "p999": float(score.max())},
                     "note": "random weights"},
        model_config=cfg.to_dict(),
        training={"note": f"random weights (preset {preset if isinstance(preset, str) else 'custom'}, seed {seed})"},
    )
    payload = {
        "stage": "student",
        "model_config": cfg.to_dict(),
        "metadata": {k: getattr(metadata, k) for k in metadata.__dataclass_fields__},
        "teacher": model.teacher.state_dict(),
        "student": model.student.state_dict(),
        "mu_c": mu_c,
    }
    if model.domain_head is not None:
        payload["domain_head"] = {k: v.detach().clone() for k, v in model.domain_head.state_dict().items()}
    return save_checkpoint(path, payload)

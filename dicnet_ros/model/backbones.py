"""Dilated ResNet backbones at output stride 8.

torchvision's ``replace_stride_with_dilation`` covers the Bottleneck ResNets (50/101); its BasicBlock refuses
dilation, so for 18/34 (and the light CPU backbone) the strides of layer3/layer4 are turned into dilations the
way the CSAIL semantic-segmentation code does (``_nostride_dilate``): the strided 3x3 conv gets dilation d/2,
the other 3x3 convs dilation d.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet_lite")
TORCHVISION_BACKBONES = BACKBONES[:4]


def _nostride_dilate(module: nn.Module, dilate: int) -> None:
    """Replace stride 2 by dilation in every conv of ``module`` (CSAIL's recipe for stride-8 ResNets)."""
    for m in module.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if m.stride == (2, 2):
            m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation = (dilate // 2, dilate // 2)
                m.padding = (dilate // 2, dilate // 2)
        elif m.kernel_size == (3, 3):
            m.dilation = (dilate, dilate)
            m.padding = (dilate, dilate)


class DilatedResNet(nn.Module):
    """A ResNet trunk (stem + layer1..4) at stride 8; returns (stride-8 feature, layer3 feature for aux)."""

    def __init__(self, stem: nn.Module, layers: list[nn.Module], out_channels: int, aux_channels: int):
        super().__init__()
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = out_channels
        self.aux_channels = aux_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        x = self.layer2(self.layer1(x))
        aux = self.layer3(x)
        return self.layer4(aux), aux


def _torchvision_resnet(name: str, weights_path: str | None) -> DilatedResNet:
    import torchvision

    constructor: Callable[..., nn.Module] = getattr(torchvision.models, name)
    bottleneck = name in ("resnet50", "resnet101")
    net = constructor(weights=None, replace_stride_with_dilation=[False, True, True] if bottleneck else None)
    if not bottleneck:
        _nostride_dilate(net.layer3, 2)
        _nostride_dilate(net.layer4, 4)
    _load_pretrained(net, name, weights_path)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    expansion = 4 if bottleneck else 1
    return DilatedResNet(stem, [net.layer1, net.layer2, net.layer3, net.layer4], 512 * expansion, 256 * expansion)


def _load_pretrained(net: nn.Module, name: str, weights_path: str | None) -> None:
    """ImageNet weights are optional: a given path, else the torchvision cache; never a download."""
    if weights_path == "none":
        return
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights not found: {weights_path}")
    else:
        cached = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob(f"{name}-*.pth"))
        if not cached:
            log.info("no ImageNet weights for %s in %s: training from scratch", name, torch.hub.get_dir())
            return
        path = cached[0]
    state = imagenet_state_dict(path, net, name)
    missing, unexpected = net.load_state_dict(state, strict=False)
    log.info("loaded ImageNet weights for %s from %s (missing %d, unexpected %d)", name, path,
             len(missing), len(unexpected))


def imagenet_state_dict(path: Path, net: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The weights of ``path`` for a torchvision ``name``, checked before loading: a torchvision state dict (or one
    under 'state_dict' / 'model', 'module.' prefixes removed) that holds every backbone tensor with its shape. A
    file for another network fails with one line naming it, instead of loading a few tensors or none."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling / zip error means: not a weights file
        raise ValueError(f"{path}: not a PyTorch weights file ({' '.join(str(exc).split())[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of {name} weights")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k]]
    if missing or wrong:
        example = (missing or wrong)[0]
        raise ValueError(f"{path}: not ImageNet weights of torchvision {name} ({len(missing)} of {len(expected)} "
                         f"backbone tensors missing, {len(wrong)} of another shape, e.g. {example})")
    return {k: v for k, v in state.items() if k in expected}


class _BasicBlock(nn.Module):
    """ResNet basic block with a configurable dilation (the light backbone's building block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _stage(cin: int, cout: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    first_dilation = max(1, dilation // 2) if dilation > 1 else 1
    layers = [_BasicBlock(cin, cout, stride, first_dilation)]
    layers += [_BasicBlock(cout, cout, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet_lite(widths: tuple[int, int, int, int] = (24, 32, 64, 96), blocks: tuple[int, ...] = (1, 1, 2, 1)):
    """A light dilated ResNet (a few hundred MFLOP at 320x176) that trains on a CPU in minutes.

    For CI and the shipped demo model; same structure as the big ones (stem /4, layer2 /8, dilated 3 and 4).
    """
    w1, w2, w3, w4 = widths
    stem = nn.Sequential(
        nn.Conv2d(3, w1, 3, 2, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
        nn.Conv2d(w1, w1, 3, 2, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True),
    )
    layers = [
        _stage(w1, w1, blocks[0], 1, 1),
        _stage(w1, w2, blocks[1], 2, 1),
        _stage(w2, w3, blocks[2], 1, 2),
        _stage(w3, w4, blocks[3], 1, 4),
    ]
    return DilatedResNet(stem, layers, w4, w3)


def check_pretrained(name: str, path: str) -> None:
    """Fail early, with one clear line, when ``path`` cannot initialise the torchvision backbone ``name``."""
    import torchvision

    if name not in TORCHVISION_BACKBONES:
        raise ValueError(f"--pretrained: backbone {name!r} has no ImageNet weights (only {TORCHVISION_BACKBONES})")
    weights = Path(path).expanduser()
    if not weights.is_file():
        raise FileNotFoundError(f"--pretrained: weights file not found: {path}")
    imagenet_state_dict(weights, getattr(torchvision.models, name)(weights=None), name)


def build_backbone(name: str, pretrained: str | None = None, widths: tuple[int, ...] | None = None) -> DilatedResNet:
    """Backbone by name. ``pretrained``: None = torchvision cache if present, a path, or 'none'."""
    if name == "resnet_lite":
        return resnet_lite(tuple(widths)) if widths else resnet_lite()  # type: ignore[arg-type]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return _torchvision_resnet(name, pretrained)

"""Networks the `model` config group injects (``_target_``), and the baselines' feature extractor.

Every network takes ``num_classes`` and ``input_size`` (filled in from the data by the train
stage), expects float images (N, 3, S, S) already normalised, and exposes ``features(x)`` (the
penultimate layer, used as the drift-monitoring embedding), ``head`` and ``embed_dim``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class CompactCNN(nn.Module):
    """Conv-BN-ReLU blocks each ending in a 2x2 max-pool, then dense layers (the paper's Fig. 3).

    Before the dense layers the feature map is average-pooled to ``grid`` x ``grid`` so the
    same network works at 28 px and at 256 px without a huge first dense layer.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_block: int | Sequence[int] = 2,
        hidden: int = 256,
        dropout: float = 0.3,
        grid: int = 3,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes is {num_classes}, expected at least 2")
        if input_size < 2 ** len(channels):
            raise ValueError(
                f"input_size {input_size} px is too small for {len(channels)} pooling blocks"
            )
        if isinstance(convs_per_block, int):
            convs_per_block = [convs_per_block] * len(channels)
        if len(convs_per_block) != len(channels):
            raise ValueError(
                f"convs_per_block has {len(convs_per_block)} entries for {len(channels)} blocks"
            )
        layers: list[nn.Module] = []
        cin = in_channels
        for cout, n_convs in zip(channels, convs_per_block, strict=True):
            for i in range(n_convs):
                layers += _conv_bn_relu(cin if i == 0 else cout, cout)
            layers.append(nn.MaxPool2d(2))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.grid = grid
        self.dense = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * grid * grid, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        self.embed_dim = hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if x.shape[-1] != self.grid or x.shape[-2] != self.grid:
            x = F.adaptive_avg_pool2d(x, self.grid)
        return self.dense(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet(nn.Module):
    """ResNet-18-style network (He et al. 2016), written here because torchvision is absent.

    ``stem="auto"`` picks the ImageNet stem (7x7 stride 2 + max-pool) for inputs of 96 px and
    more, and a 3x3 stride-1 stem without pooling for small inputs such as 28 px, where the
    ImageNet stem would shrink the image to 7x7 before the first block.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: int,
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        stem: str = "auto",
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem == "auto":
            stem = "imagenet" if input_size >= 96 else "small"
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "small":
            self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        else:
            raise ValueError(f"stem is {stem!r}, expected 'auto', 'imagenet' or 'small'")
        stages: list[nn.Module] = []
        cin = width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(cin, cout, stride=2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))
        self.embed_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: each starts as identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ImageFeatures(nn.Module):
    """Hand-made features for the scikit-learn baselines, in torch so they export to ONNX.

    Input: float images (N, 3, S, S) in [0, 1]. Output: the image average-pooled to
    ``grid`` x ``grid`` (a thumbnail, 3*grid*grid values) followed by each channel's mean and
    standard deviation (6 values). Standardisation is left to the estimator's pipeline.
    """

    def __init__(self, grid: int = 8, channel_stats: bool = True) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"features grid is {grid}, expected >= 1")
        self.grid = grid
        self.channel_stats = channel_stats
        self.embed_dim = 3 * grid * grid + (6 if channel_stats else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.flatten(F.adaptive_avg_pool2d(x, self.grid), 1)]
        if self.channel_stats:
            flat = torch.flatten(x, 2)
            mean = flat.mean(dim=2)
            std = (flat - mean[..., None]).pow(2).mean(dim=2).sqrt()
            parts += [mean, std]
        return torch.cat(parts, dim=1)

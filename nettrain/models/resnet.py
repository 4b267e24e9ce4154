"""nettrain's ResNet for small images (`model=resnet`): the CIFAR ResNets of He et al. (2016).

    ResNet(input_shape=(3, 32, 32), num_classes=10, depth=20)   # ResNet-20: 0.27 M parameters

depth = 6n + 2 (20, 32, 44, 56, 110): a 3x3 stem, then three stages of n basic blocks at `width`,
2x`width` and 4x`width` channels (the second and third halve the resolution), global average
pooling and one Linear layer. Shortcuts that change shape are 1x1 convolutions. It takes any
(C, H, W) image of at least 4x4 pixels; torchvision's ImageNet ResNets (`model=torchvision`) are
20-40x larger and, without `small_input`, shrink a 32x32 image to 1x1 before their last stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): stem, three stages of n blocks, global average pool, classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 20, width: int = 16):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"model.depth={depth}: must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110)")
        if width < 1:
            raise ValueError(f"model.width={width}: must be an integer >= 1")
        if len(input_shape) != 3:
            raise ValueError(f"ResNet takes images (C, H, W); the data's input shape is {list(input_shape)}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_ch = [], width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            layers = [
                BasicBlock(in_ch if b == 0 else out_ch, out_ch, 2 if (i > 0 and b == 0) else 1) for b in range(blocks)
            ]
            stages.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

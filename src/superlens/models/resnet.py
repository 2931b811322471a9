"""ResNet-18 with torchvision's module names and state-dict keys.

A torchvision ``resnet18`` weight file loads unchanged into ``resnet18(stem="imagenet",
width=64)``, and every activation is reachable by the same name (``layer4.1.conv2``).
``stem="cifar"`` swaps the 7x7/2 convolution and max-pool for one 3x3/1 convolution
(the usual choice for 32x32 inputs); ``width`` scales every layer's channels
(w, 2w, 4w, 8w), for narrow models in tests and quick runs.
"""

from __future__ import annotations

import torch
from torch import nn

from superlens.errors import UserError


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, num_classes: int, stem: str = "imagenet", width: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise UserError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if width < 1 or num_classes < 1:
            raise UserError(f"width and num_classes must be positive, got width={width}, num_classes={num_classes}")
        self.stem = stem
        self.width = width
        imagenet = stem == "imagenet"
        # Registration order is torchvision's, so named_modules() lists the same names in the same order.
        self.conv1 = nn.Conv2d(3, width, 7 if imagenet else 3, 2 if imagenet else 1, 3 if imagenet else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
        channels = [width, 2 * width, 4 * width, 8 * width]
        inplanes = width
        for i, planes in enumerate(channels):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            setattr(self, f"layer{i + 1}", layer)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # Dropout has no parameters, so it leaves the state-dict keys as torchvision's.
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialization: Kaiming-normal convolutions, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                m.reset_parameters()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation: pooled layer4 output, shape (N, 8 * width)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(x)))


def resnet18(num_classes: int = 1000, stem: str = "imagenet", width: int = 64, dropout: float = 0.0) -> ResNet:
    """ResNet-18 whose names and state-dict keys are torchvision's ``resnet18``."""
    return ResNet(num_classes, stem=stem, width=width, dropout=dropout)

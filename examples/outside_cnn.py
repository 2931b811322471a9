"""A CIFAR-10 CNN written without superlens, as a user's own model file: 6 conv layers and 3 dense
layers that take raw 0..255 pixels (the first thing it does is divide by 255), the way many Keras
models are written. ``build`` is the factory ``superlens analyze examples/outside_cnn.py:build`` calls."""

import torch
from torch import nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]


class OutsideCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(*_block(3, 32), *_block(32, 64), *_block(64, 128))  # 32 -> 4 pixels
        self.flatten = nn.Flatten()
        self.dense1 = nn.Sequential(nn.Linear(128 * 4 * 4, 512), nn.ReLU())
        self.dense2 = nn.Sequential(nn.Linear(512, 256), nn.ReLU())
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 32, 32) raw pixels, 0..255
        return self.head(self.dense2(self.dense1(self.flatten(self.features(x / 255.0)))))


def build(num_classes: int = 10) -> nn.Module:
    return OutsideCNN(num_classes)

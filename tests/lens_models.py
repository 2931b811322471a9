"""Models that are not superlens's ResNet, as a user's own factories: a small CNN and a tiny attention model."""

import torch
from torch import nn


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, num_classes),
    )


class TinyViT(nn.Module):
    """Patch embedding, one transformer block, mean-pooled tokens, a linear head."""

    def __init__(self, num_classes: int = 10, dim: int = 24, patch: int = 8):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.block = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=48, batch_first=True, dropout=0.0)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, T, D)
        return self.head(self.mlp(self.block(tokens)).mean(1))


def tiny_vit(num_classes: int = 10) -> nn.Module:
    return TinyViT(num_classes)


def features_only() -> nn.Module:
    """Its output is a feature vector, not class scores."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def dead_layer(num_classes: int = 10) -> nn.Module:
    model = small_cnn(num_classes)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # every activation after the first ReLU is 0
    return model


def not_a_model(num_classes: int = 10):
    return "a string"


def flat_32px(num_classes: int = 10) -> nn.Module:
    """Takes only 32 x 32 inputs (a flatten before a linear layer), as many small CIFAR models do."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, num_classes))


def flat_20px(num_classes: int = 10) -> nn.Module:
    """Takes only 20 x 20 inputs: neither 224 nor 32 fits."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 20 * 20, num_classes))


class NearestMean(nn.Module):
    """Scores each class by minus the distance to its mean image."""

    def __init__(self, means: torch.Tensor):
        super().__init__()
        self.register_buffer("means", means)  # (classes, 3 * H * W) on the 0..255 scale

    def forward(self, x):
        return -torch.cdist(x, self.means)


def raw_pixel_digits(num_classes: int = 10) -> nn.Module:
    """Nearest class mean on raw 0..255 pixels: a model "trained" (its means) on unnormalized images."""
    from collections import OrderedDict

    from superlens.data import load

    train = load("digits").train
    x = train.images.float().flatten(1)
    means = torch.stack([x[train.labels == c].mean(0) for c in range(num_classes)])
    return nn.Sequential(OrderedDict(flat=nn.Flatten(), head=NearestMean(means)))

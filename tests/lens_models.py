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

"""The model a config describes, built the same way by every stage."""

from __future__ import annotations

from typing import Any

import torch

from superlens.models.resnet import resnet18
from superlens.models.weights import load_weights


def config_model(model: dict[str, Any], num_classes: int) -> torch.nn.Module:
    """The ``model`` section's architecture, freshly initialized from the current torch seed, without weights."""
    return resnet18(num_classes, stem=model["stem"], width=model["width"], dropout=model["dropout"])


def build_model(model: dict[str, Any], num_classes: int, seed: int) -> torch.nn.Module:
    """The ``model`` section's network with initial weights drawn from ``seed`` (or the pretrained ones)."""
    torch.manual_seed(seed)
    net = config_model(model, num_classes)
    if model["pretrained"]:
        load_weights(net, model["pretrained"])
    return net

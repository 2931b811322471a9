"""The model a ``ModelSpec`` describes, built the same way by every stage."""

from __future__ import annotations

from pathlib import Path

import torch

from superlens.models.resnet import resnet18
from superlens.models.weights import load_weights
from superlens.specs import ModelSpec


def config_model(spec: ModelSpec, num_classes: int) -> torch.nn.Module:
    """The spec's architecture, freshly initialized from the current torch seed, without weights."""
    return resnet18(num_classes, stem=spec.stem, width=spec.width, dropout=spec.dropout)


def build_model(spec: ModelSpec, num_classes: int, seed: int) -> torch.nn.Module:
    """The spec's network with initial weights drawn from ``seed`` (or the pretrained ones)."""
    torch.manual_seed(seed)
    net = config_model(spec, num_classes)
    if spec.pretrained:
        load_weights(net, spec.pretrained)
    return net


def trained_model(spec: ModelSpec, num_classes: int, weights: Path) -> torch.nn.Module:
    """The spec's network with the state dict saved in ``weights`` (read without unpickling code)."""
    model = config_model(spec, num_classes)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model

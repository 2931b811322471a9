"""Procedural images with planted features and a known class structure.

There are ``n_features`` base features; each is a coloured, oriented grating patch
(its colour and orientation are fixed per feature). Every class owns a fixed set of
``features_per_class`` features, drawn so that features are shared between classes:
a unit that detects one feature is then, by construction, active for several classes.
An image of class c shows each of its class's features with probability
``p_present`` (at least one always), at a random position and amplitude, over a noisy
background. The truth is kept: ``attributes["features"]`` is the (N, n_features)
amplitude of each planted feature in each image, and ``meta["class_features"]`` the
(n_classes, n_features) 0/1 ownership matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from superlens.data.dataset import DatasetSplits, ImageDataset, channel_stats
from superlens.errors import UserError

PALETTE = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0.5, 0], [0.5, 0, 1]],
    dtype=np.float32,
)


def _feature_patterns(n_features: int, patch: int) -> np.ndarray:
    """(n_features, 3, patch, patch) patterns in [0, 1]."""
    yy, xx = np.mgrid[0:patch, 0:patch].astype(np.float32) - (patch - 1) / 2
    window = np.exp(-(xx**2 + yy**2) / (2 * (patch / 3.5) ** 2))
    patterns = []
    for k in range(n_features):
        theta = np.pi * (k // len(PALETTE)) / max(1, -(-n_features // len(PALETTE))) + np.pi * k / 8
        wave = 0.5 + 0.5 * np.cos(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / 4.0)
        patterns.append(PALETTE[k % len(PALETTE)][:, None, None] * (wave * window)[None])
    return np.stack(patterns)


def make_synthetic(
    n_train: int = 2000,
    n_test: int = 500,
    n_classes: int = 10,
    n_features: int = 16,
    features_per_class: int = 3,
    image_size: int = 32,
    p_present: float = 0.85,
    noise: float = 0.08,
    seed: int = 0,
) -> DatasetSplits:
    if not 1 <= features_per_class <= n_features:
        raise UserError(f"features_per_class must lie in [1, n_features={n_features}], got {features_per_class}")
    if n_classes < 2:
        raise UserError(f"n_classes must be at least 2, got {n_classes}")
    patch = max(6, image_size * 3 // 8)
    if patch > image_size:
        raise UserError(f"image_size must be at least {patch}, got {image_size}")
    rng = np.random.default_rng(seed)
    ownership = np.zeros((n_classes, n_features), dtype=np.float32)
    for c in range(n_classes):
        ownership[c, rng.choice(n_features, features_per_class, replace=False)] = 1
    patterns = _feature_patterns(n_features, patch)

    def render(n: int, split: str) -> ImageDataset:
        labels = rng.integers(0, n_classes, n)
        present = (rng.random((n, n_features)) < p_present) * ownership[labels]
        for i in np.flatnonzero(present.sum(1) == 0):  # every image shows its class
            present[i, rng.choice(np.flatnonzero(ownership[labels[i]]))] = 1
        amplitude = present * rng.uniform(0.6, 1.0, (n, n_features)).astype(np.float32)
        x = 0.1 + noise * rng.standard_normal((n, 3, image_size, image_size)).astype(np.float32)
        for i, k in zip(*np.nonzero(amplitude)):
            top, left = rng.integers(0, image_size - patch + 1, 2)
            x[i, :, top : top + patch, left : left + patch] += amplitude[i, k] * patterns[k]
        images = torch.from_numpy((np.clip(x, 0, 1) * 255).round().astype(np.uint8))
        return images, torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(amplitude)

    classes = [f"class{c}" for c in range(n_classes)]
    meta = {"class_features": ownership, "seed": seed}
    (train_x, train_y, train_f), (test_x, test_y, test_f) = render(n_train, "train"), render(n_test, "test")
    mean, std = channel_stats(train_x)
    common = dict(classes=classes, mean=mean, std=std, name="synthetic", meta=meta)
    return DatasetSplits(
        ImageDataset(train_x, train_y, split="train", attributes={"features": train_f}, **common),
        ImageDataset(test_x, test_y, split="test", attributes={"features": test_f}, **common),
    )

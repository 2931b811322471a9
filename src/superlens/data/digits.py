"""scikit-learn's bundled handwritten digits: real data that needs no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from superlens.data.dataset import DatasetSplits, ImageDataset, channel_stats

IMAGE_SIZE = 32
TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits_dataset(image_size: int = IMAGE_SIZE) -> DatasetSplits:
    """1,797 8x8 digits (0..16 ink levels) upsampled to ``image_size`` RGB.

    The train/test split is stratified and fixed (25% test, seed 0), so every run and
    every user sees the same 1,347 / 450 images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=TEST_FRACTION, stratify=bunch.target, random_state=SPLIT_SEED
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    classes = [str(d) for d in range(10)]
    mean, std = channel_stats(x[train_idx])
    common = dict(classes=classes, mean=mean, std=std, name="digits")
    return DatasetSplits(
        ImageDataset(x[train_idx], y[train_idx], split="train", **common),
        ImageDataset(x[test_idx], y[test_idx], split="test", **common),
    )

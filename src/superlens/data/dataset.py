"""The one in-memory dataset type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from superlens.errors import UserError


@dataclass(frozen=True)
class ImageDataset:
    """One split of an image classification dataset, held whole in memory.

    ``images`` is a uint8 tensor of shape (N, 3, H, W); ``labels`` int64 of shape (N,).
    ``mean`` and ``std`` are the per-channel statistics (on the 0..1 scale) that the
    model's input normalization uses. ``attributes`` holds extra per-sample tensors
    (first dimension N), e.g. the planted features of the synthetic dataset; ``meta``
    holds dataset-level facts. ``ids`` names each image stably across subsets and runs:
    its file path (relative to the dataset folder) for folder datasets, ``<split>/<row>``
    for a parquet dataset, ``<split>/<index>`` in the official order otherwise (the default).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = ""
    split: str = ""
    attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    ids: np.ndarray | None = None  # (N,) str; filled with "<split>/<index>" when not given

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if self.ids is None:
            prefix = f"{self.split}/" if self.split else ""
            object.__setattr__(self, "ids", np.char.add(prefix, np.arange(x.shape[0]).astype(str)))
        else:
            object.__setattr__(self, "ids", np.asarray(self.ids, dtype=str))
            if self.ids.shape != (x.shape[0],):
                raise UserError(f"ids must hold one name per image ({x.shape[0]}), got shape {self.ids.shape}")
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise UserError(
                f"images must be a uint8 tensor of shape (N, 3, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise UserError(
                f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise UserError(
                f"labels must lie in [0, {len(self.classes)}), found {int(y.min())}..{int(y.max())}"
            )
        for key, value in self.attributes.items():
            if value.shape[0] != x.shape[0]:
                raise UserError(f"attribute {key!r} has {value.shape[0]} rows, expected {x.shape[0]}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.cpu().numpy(), minlength=self.num_classes)

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> "ImageDataset":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.images.device)
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            attributes={k: v[idx.to(v.device)] for k, v in self.attributes.items()},
            ids=self.ids[idx.cpu().numpy()],
        )

    def to(self, device: torch.device | str) -> "ImageDataset":
        return replace(
            self,
            images=self.images.to(device),
            labels=self.labels.to(device),
            attributes={k: v.to(device) for k, v in self.attributes.items()},
        )


class DatasetSplits(NamedTuple):
    train: ImageDataset
    test: ImageDataset


def fixed_subset(data: ImageDataset, limit: int, seed: int = 0) -> ImageDataset:
    """``data`` itself, or a stratified subset of ``limit`` images that depends only on ``seed``."""
    if len(data) <= limit:
        return data
    from sklearn.model_selection import train_test_split

    labels = data.labels.cpu().numpy()
    keep, _ = train_test_split(np.arange(len(data)), train_size=limit, stratify=labels, random_state=seed)
    return data.subset(np.sort(keep))


def long_tail_counts(counts: np.ndarray, ratio: float) -> np.ndarray:
    """Images kept per class for a long-tailed pool: class c keeps n_max x ratio^(-c / (C - 1)) (class 0 the
    largest, the last class n_max / ratio), where n_max is the smallest class's count, so every class can give it."""
    c = len(counts)
    n_max = int(counts.min())
    keep = np.floor(n_max * float(ratio) ** (-np.arange(c) / max(1, c - 1))).astype(np.int64)
    return np.maximum(keep, 1)


def long_tailed(data: ImageDataset, ratio: float, seed: int = 0) -> ImageDataset:
    """A long-tailed subset of ``data`` (``long_tail_counts``): which images of a class are kept depends only on
    ``seed``, so every arm and seed of a study trains on the same pool. ``meta["class_profile"]`` keeps the counts."""
    labels = data.labels.cpu().numpy()
    keep_per_class = long_tail_counts(np.bincount(labels, minlength=data.num_classes), ratio)
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                                   for c, k in enumerate(keep_per_class)]))
    out = data.subset(keep)
    return replace(out, meta={**out.meta, "class_profile": keep_per_class.tolist(), "imbalance": float(ratio)})


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0..1 scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), 1024):  # float64 one block at a time, never the whole split
        x = images[start : start + 1024].to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += (x * x).sum(dim=(0, 2, 3)).cpu()
    count = images.numel() // images.shape[1]
    mean = total / count
    std = ((total_sq - count * mean * mean) / max(1, count - 1)).clamp_min(0).sqrt()
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def from_hwc(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> contiguous (N, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

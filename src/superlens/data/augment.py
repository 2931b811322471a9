"""Batch transforms that run where the data lives (CPU or GPU), never per sample in Python."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=64)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """(1, C, 1, 1) scale and shift on ``device``, made once per (statistics, device, dtype), not per batch."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1) * 255
    return (1 / s).to(device=device, dtype=dtype), (-m / s).to(device=device, dtype=dtype)


def normalize(images: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, 3, H, W) (or float on the 0..255 scale) -> ``dtype`` with per-channel (x/255 - mean) / std."""
    scale, shift = _constants(tuple(float(v) for v in mean), tuple(float(v) for v in std), images.device, dtype)
    return torch.addcmul(shift, images.to(dtype), scale)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random crop of the original size from each image."""
    if padding <= 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of a float batch to ``size`` x ``size`` (no-op when None or equal)."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)

"""Input checks shared by the analysis functions (each failure is one clear ValueError), and the
dtype they compute in."""

from __future__ import annotations

import numpy as np
import torch

from superlens.errors import UserError


def features_and_labels(x, labels=None, min_classes: int = 2) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x)
    if x.ndim != 2:
        raise UserError(f"features must be a 2-D array (samples x dimensions), got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise UserError(f"features contain NaN or inf in {bad} of {len(x)} rows; check the model's activations")
    if labels is None:
        return x, None
    y = np.asarray(labels)
    if y.shape != (len(x),):
        raise UserError(f"labels must have shape ({len(x)},), got {y.shape}")
    classes = np.unique(y)
    if len(classes) < min_classes:
        raise UserError(f"need at least {min_classes} classes, got {len(classes)}")
    if len(x) <= len(classes):
        raise UserError(f"need more samples ({len(x)}) than classes ({len(classes)})")
    return x, y


def compute_dtype(device: torch.device | str | None) -> torch.dtype:
    """float64 on the CPU (exact to the test's tolerances, and cheap there); float32 on an accelerator,
    where sums are still accumulated in float64."""
    return torch.float64 if device is None or torch.device(device).type == "cpu" else torch.float32

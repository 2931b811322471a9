"""Accuracy that weighs every class alike, and calibration: balanced accuracy and expected calibration error."""

from __future__ import annotations

import numpy as np


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the classes present in ``labels`` of the recall of the argmax prediction."""
    labels = np.asarray(labels)
    predicted = np.asarray(probs).argmax(1)
    recalls = [(predicted[labels == c] == c).mean() for c in np.unique(labels)]
    return float(np.mean(recalls))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins over (0, 1]: sum over bins of |bin| / n x |accuracy - mean
    confidence| of the argmax prediction (Guo et al. 2017, "On Calibration of Modern Neural Networks")."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(1)
    correct = probs.argmax(1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def class_group_accuracy(probs: np.ndarray, labels: np.ndarray, group: np.ndarray) -> float | None:
    """Balanced accuracy over the classes where ``group`` (a per-class bool mask) is True, e.g. a long-tailed
    pool's minority classes; None when no test image belongs to them."""
    labels = np.asarray(labels)
    members = np.asarray(group)[labels]
    return balanced_accuracy(np.asarray(probs)[members], labels[members]) if members.any() else None

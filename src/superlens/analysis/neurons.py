"""Polysemanticity of every unit of a layer, from its activations over labelled images.

``acts`` is (samples, units), e.g. the spatially averaged post-ReLU channels of a
conv layer; activations are expected to be non-negative. Each function returns one
value per unit.
"""

from __future__ import annotations

import numpy as np

from superlens.analysis.validate import features_and_labels

EPS = 1e-12


def class_means(acts, labels) -> np.ndarray:
    """(classes, units) mean activation of each unit over each class's images."""
    acts, labels = features_and_labels(acts, labels)
    classes, codes = np.unique(labels, return_inverse=True)
    onehot = np.eye(len(classes))[codes]
    return (onehot.T @ acts.astype(np.float64)) / onehot.sum(0)[:, None]


def class_selectivity(acts, labels) -> np.ndarray:
    """Class selectivity index (Morcos et al. 2018): (mu_max - mu_rest) / (mu_max + mu_rest).

    mu_max is the largest class-conditional mean activation and mu_rest the mean of the
    other classes' means. 1: the unit fires for one class only; 0: equally for all.
    A unit that never fires gets 0.
    """
    means = class_means(acts, labels)
    top = means.max(0)
    rest = (means.sum(0) - top) / (len(means) - 1)
    return np.where(top + rest > EPS, (top - rest) / np.maximum(top + rest, EPS), 0.0)


def topk_class_entropy(acts, labels, k: int = 100) -> np.ndarray:
    """Entropy (nats) of the class labels of each unit's ``k`` most activating images.

    0 for a unit whose top images share one class; log(C) when they spread evenly over C classes.
    """
    acts, labels = features_and_labels(acts, labels)
    classes, codes = np.unique(labels, return_inverse=True)
    k = min(k, len(acts))
    top = np.argpartition(-acts, k - 1, axis=0)[:k]  # (k, units)
    out = np.empty(acts.shape[1])
    for unit in range(acts.shape[1]):
        p = np.bincount(codes[top[:, unit]], minlength=len(classes)) / k
        p = p[p > 0]
        out[unit] = -(p * np.log(p)).sum()
    return out


def classes_for_mass(acts, labels, mass: float = 0.9) -> np.ndarray:
    """How many classes hold ``mass`` of each unit's class-conditional activation mass.

    Class means are sorted from largest; the count is the smallest number whose sum
    reaches ``mass`` of the total. 1 is monosemantic at class level; C is spread over all.
    A unit that never fires gets 0.
    """
    means = np.clip(class_means(acts, labels), 0, None)
    total = means.sum(0)
    share = np.cumsum(np.sort(means, axis=0)[::-1], axis=0) / np.maximum(total, EPS)
    counts = (share < mass - 1e-12).sum(0) + 1
    return np.where(total > EPS, counts, 0).astype(np.int64)

"""Numbers over a budget curve (test accuracy against the number of labelled images)."""

from __future__ import annotations

import numpy as np


def aubc(n_labeled: np.ndarray, accuracy: np.ndarray) -> float:
    """Area under the budget curve, normalized by the budget range: the mean accuracy over it.

    Trapezoids between consecutive rounds, divided by (last budget - first budget); a
    curve of one point has the accuracy of that point.
    """
    n = np.asarray(n_labeled, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    if len(n) == 1 or n[-1] == n[0]:
        return float(a[-1])
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(n)) / (n[-1] - n[0]))


def labels_to_reach(n_labeled: np.ndarray, accuracy: np.ndarray, target: float) -> float:
    """Labels the curve needs to first reach ``target`` accuracy, by linear interpolation; NaN if never."""
    n = np.asarray(n_labeled, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    above = np.flatnonzero(a >= target)
    if len(above) == 0:
        return float("nan")
    j = above[0]
    if j == 0:
        return float(n[0])
    frac = (target - a[j - 1]) / (a[j] - a[j - 1])
    return float(n[j - 1] + frac * (n[j] - n[j - 1]))


def label_efficiency(n_labeled, accuracy, reference_n, reference_accuracy) -> float:
    """How many times fewer labels a curve needs than a reference curve for the same accuracy.

    For every budget point after the first, ``labels_to_reach(reference, accuracy there)
    / budget there``; the mean over the points whose accuracy the reference reaches
    within its own budgets (NaN when it reaches none). 2.0 means random sampling
    needs twice the labels; 1.0 means no gain; below 1, a loss.
    """
    ratios = [
        labels_to_reach(reference_n, reference_accuracy, float(a)) / float(n)
        for n, a in zip(list(n_labeled)[1:], list(accuracy)[1:])
    ]
    ratios = [r for r in ratios if np.isfinite(r)]
    return float(np.mean(ratios)) if ratios else float("nan")

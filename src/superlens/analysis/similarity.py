"""Representation similarity between two models on the same inputs: linear CKA.

CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), Xc and Yc the column-
centred (n, d) feature matrices of the same n inputs (Kornblith et al. 2019). It is 1
for identical representations, invariant to orthogonal transforms and isotropic
scaling of either, and needs no matching of units.
"""

from __future__ import annotations

import numpy as np

from superlens.errors import UserError


def linear_cka(x, y) -> float:
    """Linear CKA of two (n, d_x) and (n, d_y) feature matrices of the same n inputs (float64 sums).

    Uses the d x d cross-products when the features are fewer than the inputs and the
    n x n Gram matrices otherwise, so memory stays at min(n, d)^2 per matrix.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise UserError(f"linear_cka needs two (n, d) matrices of the same n >= 2 inputs, got {x.shape} and {y.shape}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    if max(x.shape[1], y.shape[1]) <= len(x):
        cross = np.linalg.norm(y.T @ x) ** 2
        norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    else:
        kx, ky = x @ x.T, y @ y.T
        cross = float((kx * ky).sum())
        norm_x, norm_y = np.linalg.norm(kx), np.linalg.norm(ky)
    if norm_x == 0 or norm_y == 0:
        return float("nan")
    return float(cross / (norm_x * norm_y))

"""Cluster geometry of features: silhouette, Davies-Bouldin, neural collapse, k-NN and linear probes.

Silhouette (Rousseeuw 1987): for sample i with a(i) the mean distance to the other
members of its class and b(i) the smallest mean distance to another class,
s(i) = (b - a) / max(a, b), and 0 for a class of one sample; the score is the mean.
It is computed in row chunks with one matrix product per chunk, so memory is
O(n x chunk), and on the GPU when the features are given there or ``device`` says so.
"""

from __future__ import annotations

import numpy as np
import torch

from superlens.analysis.validate import features_and_labels


def _distances(rows: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return torch.addmm(torch.ones((), dtype=x.dtype, device=x.device), rows, x.T, alpha=-1.0).clamp_(min=0.0)
    d2 = torch.addmm(x_sq[None, :], rows, x.T, alpha=-2.0)
    d2 += (rows * rows).sum(1, keepdim=True)
    return d2.clamp_(min=0.0).sqrt_()


def silhouette_score(
    x, labels, metric: str = "euclidean", chunk: int | None = None, device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Mean silhouette coefficient; ``metric`` is ``euclidean`` or ``cosine`` (1 - cosine similarity).

    ``chunk`` rows are processed at a time (default: blocks of at most 2^25 distances,
    256 MiB in float64). ``device`` defaults to the CPU.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    x, y = features_and_labels(x, labels)
    _, codes = np.unique(y, return_inverse=True)
    chunk = chunk or max(64, min(2048, 2**25 // len(x)))
    device = torch.device(device) if device is not None else torch.device("cpu")
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    if metric == "cosine":
        xt = xt / xt.norm(dim=1, keepdim=True).clamp_min(1e-12)
    x_sq = (xt * xt).sum(1)
    codes_t = torch.as_tensor(codes, device=device)
    n_classes = int(codes.max()) + 1
    onehot = torch.nn.functional.one_hot(codes_t, n_classes).to(dtype)
    sizes = onehot.sum(0)
    total = torch.zeros((), dtype=dtype, device=device)
    for start in range(0, len(xt), chunk):
        rows = xt[start : start + chunk]
        d = _distances(rows, xt, x_sq, metric)
        idx = torch.arange(start, start + len(rows), device=device)
        d[torch.arange(len(rows), device=device), idx] = 0.0  # exact zero to itself
        sums = d @ onehot  # (rows, classes): summed distance to each class
        own = codes_t[start : start + len(rows)]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        means = sums / sizes[None, :]
        means.scatter_(1, own[:, None], float("inf"))
        b = means.min(1).values
        s = (b - a) / torch.maximum(a, b)
        s = torch.where((own_size > 1) & (torch.maximum(a, b) > 0), s, torch.zeros_like(s))
        total += s.sum()
    return float(total / len(xt))


def davies_bouldin_score(x, labels) -> float:
    """Mean over classes of max_j (s_i + s_j) / ||c_i - c_j||, s_i the mean distance to centroid c_i."""
    x, y = features_and_labels(x, labels)
    x = x.astype(np.float64)
    classes, codes = np.unique(y, return_inverse=True)
    k = len(classes)
    centroids = np.stack([x[codes == c].mean(0) for c in range(k)])
    spread = np.array([np.linalg.norm(x[codes == c] - centroids[c], axis=1).mean() for c in range(k)])
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)
    if np.allclose(spread, 0) or np.allclose(gaps, 0):
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (spread[:, None] + spread[None]) / gaps
    ratio[~np.isfinite(ratio)] = 0.0
    np.fill_diagonal(ratio, -np.inf)
    return float(ratio.max(1).mean())


def nc1(x, labels) -> float:
    """Within-class variability collapse (Papyan et al. 2020): tr(S_W S_B^+) / C.

    S_W is the within-class covariance (around class means, averaged over all
    samples), S_B the covariance of the class means around the global mean (classes
    weighted equally), ^+ the pseudo-inverse. 0 when every class collapses to a point.
    """
    x, y = features_and_labels(x, labels)
    x = x.astype(np.float64)
    classes, codes = np.unique(y, return_inverse=True)
    means = np.stack([x[codes == c].mean(0) for c in range(len(classes))])
    centered = x - means[codes]
    s_w = centered.T @ centered / len(x)
    between = means - means.mean(0)
    s_b = between.T @ between / len(classes)
    return float(np.trace(s_w @ np.linalg.pinv(s_b, rcond=1e-10, hermitian=True)) / len(classes))


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 10, metric: str = "cosine") -> float:
    """Accuracy of a k-nearest-neighbour majority vote of training features on test features."""
    from sklearn.neighbors import KNeighborsClassifier

    train_x, train_y = features_and_labels(train_x, train_y)
    test_x, test_y = features_and_labels(test_x, test_y, min_classes=1)
    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric=metric)
    return float(clf.fit(train_x, train_y).score(test_x, test_y))


def linear_probe_accuracy(train_x, train_y, test_x, test_y, c: float = 1.0, max_iter: int = 1000) -> float:
    """Test accuracy of an L2-regularized logistic regression on standardized training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = features_and_labels(train_x, train_y)
    test_x, test_y = features_and_labels(test_x, test_y, min_classes=1)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))

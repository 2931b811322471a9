"""Cluster geometry of features: silhouette, Davies-Bouldin, neural collapse, k-NN and linear probes.

Silhouette (Rousseeuw 1987): for sample i with a(i) the mean distance to the other
members of its class and b(i) the smallest mean distance to another class,
s(i) = (b - a) / max(a, b), and 0 for a class of one sample; the score is the mean.
It is computed in row chunks with one matrix product per chunk, so memory is
O(n x chunk), and on the GPU when the features are given there or ``device`` says so.

Every function here keeps the features in the dtype they come in (float32 from a
capture) and converts one block at a time to the compute dtype, so a 10,000 x 25,088
feature matrix (1 GB) is never copied whole; no function forms a d x d matrix. The compute
dtype is float64 on the CPU and float32 on an accelerator (``compute_dtype``: float64 runs at a
small fraction of float32's rate on most GPUs); sums over samples are kept in float64 either way.
"""

from __future__ import annotations

import numpy as np
import torch

from superlens.analysis.validate import compute_dtype, features_and_labels
from superlens.errors import UserError


def _distances(rows: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return torch.addmm(torch.ones((), dtype=x.dtype, device=x.device), rows, x.T, alpha=-1.0).clamp_(min=0.0)
    d2 = torch.addmm(x_sq[None, :], rows, x.T, alpha=-2.0)
    d2 += (rows * rows).sum(1, keepdim=True)
    return d2.clamp_(min=0.0).sqrt_()


def silhouette_score(
    x, labels, metric: str = "euclidean", chunk: int | None = None, device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """Mean silhouette coefficient; ``metric`` is ``euclidean`` or ``cosine`` (1 - cosine similarity).

    ``chunk`` rows (and columns) are processed at a time, converted to ``dtype`` block by
    block (default: ``compute_dtype(device)``; blocks of at most 2^25 values). Each block's
    distances are summed per class in float64. ``device`` defaults to the CPU; the features
    are moved there once in their own dtype.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    x, y = features_and_labels(x, labels)
    _, codes = np.unique(y, return_inverse=True)
    n, d = x.shape
    chunk = chunk or max(64, min(2048, 2**25 // max(n, d)))
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or compute_dtype(device)
    xs = torch.as_tensor(x).to(device)

    def block(start: int) -> torch.Tensor:
        b = xs[start : start + chunk].to(dtype)
        return b / b.norm(dim=1, keepdim=True).clamp_min(1e-12) if metric == "cosine" else b

    x_sq = torch.cat([(lambda b: (b * b).sum(1))(block(s)) for s in range(0, n, chunk)])
    codes_t = torch.as_tensor(codes, device=device)
    n_classes = int(codes.max()) + 1
    onehot = torch.nn.functional.one_hot(codes_t, n_classes).to(torch.float64)
    sizes = onehot.sum(0)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n, chunk):
        rows = block(start)
        sums = torch.zeros(len(rows), n_classes, dtype=torch.float64, device=device)  # summed distance to each class
        for col in range(0, n, chunk):
            cols = rows if col == start else block(col)
            dist = _distances(rows, cols, x_sq[col : col + chunk], metric)
            if col == start:
                dist.fill_diagonal_(0.0)  # exact zero to itself
            sums += dist.double() @ onehot[col : col + chunk]
        own = codes_t[start : start + len(rows)]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        means = sums / sizes[None, :]
        means.scatter_(1, own[:, None], float("inf"))
        b = means.min(1).values
        s = (b - a) / torch.maximum(a, b)
        s = torch.where((own_size > 1) & (torch.maximum(a, b) > 0), s, torch.zeros_like(s))
        total += s.sum()
    return float(total / n)


def _class_means(x: np.ndarray, codes: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """(k, d) float64 class means, summed block by block."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64)
    codes_t = torch.as_tensor(codes)
    for start in range(0, len(x), chunk):
        sums.index_add_(0, codes_t[start : start + chunk], torch.as_tensor(x[start : start + chunk]).to(torch.float64))
    return sums.numpy() / np.bincount(codes, minlength=k)[:, None]


def davies_bouldin_score(x, labels, chunk: int = 1024) -> float:
    """Mean over classes of max_j (s_i + s_j) / ||c_i - c_j||, s_i the mean distance to centroid c_i."""
    x, y = features_and_labels(x, labels)
    classes, codes = np.unique(y, return_inverse=True)
    k = len(classes)
    centroids = _class_means(x, codes, k, chunk)
    dist = np.concatenate([np.linalg.norm(x[s : s + chunk].astype(np.float64) - centroids[codes[s : s + chunk]], axis=1)
                           for s in range(0, len(x), chunk)])
    spread = np.bincount(codes, weights=dist, minlength=k) / np.bincount(codes, minlength=k)
    sq = (centroids * centroids).sum(1)  # distances between centroids from their Gram matrix: no k x k x d array
    gaps = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * centroids @ centroids.T, 0.0))
    np.fill_diagonal(gaps, 0.0)
    if np.allclose(spread, 0) or np.allclose(gaps, 0):
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (spread[:, None] + spread[None]) / gaps
    ratio[~np.isfinite(ratio)] = 0.0
    np.fill_diagonal(ratio, -np.inf)
    return float(ratio.max(1).mean())


def nc1(x, labels, chunk: int = 1024) -> float:
    """Within-class variability collapse (Papyan et al. 2020): tr(S_W S_B^+) / C.

    S_W is the within-class covariance (around class means, averaged over all
    samples), S_B the covariance of the class means around the global mean (classes
    weighted equally), ^+ the pseudo-inverse (eigenvalues below 1e-10 of the largest
    dropped). 0 when every class collapses to a point.

    S_B has rank < C, so with S_B = V diag(l) V^T (the SVD of the C x d centred class
    means) the trace is sum_i v_i^T S_W v_i / l_i, and v_i^T S_W v_i is the mean
    squared projection of the centred samples on v_i: O(n d C) time and no d x d matrix.
    """
    x, y = features_and_labels(x, labels)
    classes, codes = np.unique(y, return_inverse=True)
    k = len(classes)
    means = _class_means(x, codes, k, chunk)
    between = (means - means.mean(0)) / np.sqrt(k)  # S_B = between^T between
    _, sv, vt = np.linalg.svd(between, full_matrices=False)
    eig = sv**2
    keep = eig > 1e-10 * eig.max() if eig.max() > 0 else np.zeros_like(eig, dtype=bool)
    v, eig = vt[keep].T, eig[keep]
    projected = np.zeros(len(eig))
    for start in range(0, len(x), chunk):
        centred = x[start : start + chunk].astype(np.float64) - means[codes[start : start + chunk]]
        projected += ((centred @ v) ** 2).sum(0)
    return float((projected / len(x) / eig).sum() / k)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 10, metric: str = "cosine",
                 device: str | torch.device | None = None) -> float:
    """Accuracy of a k-nearest-neighbour majority vote of training features on test features.

    Without ``device``: scikit-learn's ``KNeighborsClassifier``. With one: the same vote in
    torch on that device (cosine or euclidean; chunks of test rows against all training rows;
    a tied vote goes to the lower class index, as scikit-learn's does)."""
    train_x, train_y = features_and_labels(train_x, train_y)
    test_x, test_y = features_and_labels(test_x, test_y, min_classes=1)
    k = min(k, len(train_x))
    if device is None:
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(n_neighbors=k, metric=metric)
        return float(clf.fit(train_x, train_y).score(test_x, test_y))
    if metric not in ("euclidean", "cosine"):
        raise UserError(f"metric must be euclidean or cosine, got {metric!r}")
    device = torch.device(device)
    classes, codes = np.unique(train_y, return_inverse=True)
    xt = torch.as_tensor(train_x, device=device, dtype=torch.float32)
    yt = torch.as_tensor(codes, device=device)
    if metric == "cosine":
        xt = torch.nn.functional.normalize(xt, dim=1)
    xt_sq = (xt * xt).sum(1)
    correct, chunk = 0, max(1, 2**24 // max(1, len(xt)))
    for start in range(0, len(test_x), chunk):
        q = torch.as_tensor(test_x[start:start + chunk], device=device, dtype=torch.float32)
        if metric == "cosine":
            q = torch.nn.functional.normalize(q, dim=1)
        d = _distances(q, xt, xt_sq, metric)
        nearest = d.topk(k, dim=1, largest=False).indices
        votes = torch.zeros(len(q), len(classes), device=device).scatter_add_(
            1, yt[nearest], torch.ones(nearest.shape, device=device))
        predicted = classes[votes.argmax(1).cpu().numpy()]  # argmax: the first (lowest) class of a tie
        correct += int((predicted == test_y[start:start + chunk]).sum())
    return correct / len(test_x)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, c: float = 1.0, max_iter: int = 1000,
                          device: str | torch.device | None = None) -> float:
    """Test accuracy of an L2-regularized logistic regression on standardized training features.

    Without ``device``: scikit-learn's ``LogisticRegression`` (lbfgs) after ``StandardScaler``.
    With one: the same objective (C x the summed cross-entropy + |W|^2 / 2, intercepts not
    penalized) minimized by L-BFGS in torch on that device, in float32."""
    train_x, train_y = features_and_labels(train_x, train_y)
    test_x, test_y = features_and_labels(test_x, test_y, min_classes=1)
    if device is not None:
        return _torch_probe(train_x, train_y, test_x, test_y, c, max_iter, torch.device(device))
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def _torch_probe(train_x, train_y, test_x, test_y, c: float, max_iter: int, device: torch.device) -> float:
    classes, codes = np.unique(train_y, return_inverse=True)
    x = torch.as_tensor(train_x, device=device, dtype=torch.float32)
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature is left as it is, as StandardScaler does
    x = (x - mean) / std
    y = torch.as_tensor(codes, device=device)
    w = torch.zeros(x.shape[1], len(classes), device=device, requires_grad=True)
    b = torch.zeros(len(classes), device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")
    n = len(x)

    def closure():
        opt.zero_grad()
        # sklearn's objective divided by C * n: mean cross-entropy + |W|^2 / (2 C n)
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + (w * w).sum() / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        q = (torch.as_tensor(test_x, device=device, dtype=torch.float32) - mean) / std
        predicted = classes[(q @ w + b).argmax(1).cpu().numpy()]
    return float((predicted == test_y).mean())

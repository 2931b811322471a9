"""Low-budget strategies that pick typical, well-covering images: TypiClust and ProbCover.

Both work on embeddings (the model's penultimate features, or fixed ones, see
``strategies``) and never form an n x n matrix: distances are computed in blocks
of rows with one matrix product each, k-nearest-neighbour lists and coverage graphs
are kept as sparse lists, so memory is O(n * k) or O(edges).

TypiClust (Hacohen, Dekel and Weinshall, ICML 2022). Cluster labelled + unlabelled
embeddings into min(labelled + budget, ``max_clusters``) clusters. Repeatedly take the
cluster with the fewest labelled (or already chosen) members, the largest first among
equals, ignoring clusters smaller than ``min_cluster_size`` while others remain; from
it pick the unlabelled point of highest typicality, typicality(x) = 1 / mean distance
of x to its ``k`` nearest neighbours within the cluster.

ProbCover (Yehuda, Dekel, Hacohen and Weinshall, NeurIPS 2022). On L2-normalized
embeddings, every point covers the ball of radius ``delta`` around it. Greedily pick
the unlabelled point whose ball holds the most points not yet covered (by the
labelled set or earlier picks), ties to the lowest index. ``delta`` is, unless given,
the largest radius on a grid whose balls stay at least ``purity`` pure: k-means
pseudo-labels (as many clusters as classes) on the pool, and a ball is pure when no
point of another pseudo-label lies inside it, estimated on ``purity_sample`` points.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_VALUES = 2**24  # distances per block (64 MiB in float32)


def _sq_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    d = torch.addmm(b_sq[None, :], a, b.T, alpha=-2.0)
    d += (a * a).sum(1, keepdim=True)
    return d.clamp_(min=0.0)


def knn_mean_distance(x: np.ndarray, k: int) -> np.ndarray:
    """For each row, the mean euclidean distance to its ``k`` nearest other rows (blocks of rows)."""
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t_sq = (t * t).sum(1)
    rows = max(1, BLOCK_VALUES // n)
    out = np.empty(n)
    for start in range(0, n, rows):
        d = _sq_distances(t[start : start + rows], t, t_sq)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")  # not its own neighbour
        out[start : start + len(d)] = d.topk(k, dim=1, largest=False).values.sqrt().mean(1).double().numpy()
    return out


def kmeans(x: np.ndarray, clusters: int, rng: np.random.Generator, pca_dims: int | None = 64) -> np.ndarray:
    """Cluster ids: k-means (a few restarts) for up to 50 clusters, mini-batch k-means beyond,
    on the leading ``pca_dims`` principal components when there are more dimensions (None: all)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.decomposition import PCA

    clusters = max(1, min(clusters, len(x)))
    seed = int(rng.integers(2**31))
    if pca_dims is not None and x.shape[1] > pca_dims and len(x) > pca_dims:
        x = PCA(pca_dims, svd_solver="randomized", random_state=seed).fit_transform(x)
    if clusters <= 50:
        return KMeans(clusters, n_init=3, random_state=seed).fit_predict(x)
    return MiniBatchKMeans(clusters, n_init=1, random_state=seed, batch_size=4096).fit_predict(x)


def typiclust(pool: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator, k: int = 20,
              max_clusters: int = 500, min_cluster_size: int = 5) -> np.ndarray:
    """Positions in ``pool`` of ``budget`` typical points, one cluster at a time (module docstring)."""
    n = len(pool)
    budget = min(budget, n)
    x = np.concatenate([pool, labeled]).astype(np.float32) if len(labeled) else np.asarray(pool, np.float32)
    ids = kmeans(x, min(len(labeled) + budget, max_clusters), rng)
    n_clusters = int(ids.max()) + 1
    sizes = np.bincount(ids, minlength=n_clusters)
    covered = np.bincount(ids[n:], minlength=n_clusters)  # labelled members
    order = np.argsort(ids, kind="stable")
    members = np.split(order, np.cumsum(sizes)[:-1])  # the points of each cluster, by index
    remaining = np.bincount(ids[:n], minlength=n_clusters)  # unlabelled points not yet picked
    typicality: dict[int, np.ndarray] = {}
    taken = np.zeros(len(x), bool)
    taken[n:] = True  # labelled points are never picked
    picks = []
    for _ in range(budget):
        open_ = remaining > 0
        eligible = open_ & (sizes >= min_cluster_size)
        if not eligible.any():
            eligible = open_
        candidates = np.flatnonzero(eligible)
        # fewest labelled first, then largest, then lowest id
        c = candidates[np.lexsort((candidates, -sizes[candidates], covered[candidates]))[0]]
        if c not in typicality:
            typicality[c] = 1.0 / (knn_mean_distance(x[members[c]], k) + 1e-12)
        score = np.where(taken[members[c]], -np.inf, typicality[c])
        best = members[c][int(np.argmax(score))]
        picks.append(best)
        taken[best] = True
        covered[c] += 1
        remaining[c] -= 1
    return np.asarray(picks, dtype=np.int64)


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ball_graph(x: np.ndarray, delta: float, unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists (indptr, indices) of the points within ``delta`` of each row (itself included).

    ``unit``: the rows have norm 1, so ||a - b|| <= delta is a . b >= 1 - delta^2 / 2 and
    one matrix product per block decides it.
    """
    n = len(x)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t_sq = (t * t).sum(1)
    rows = max(1, BLOCK_VALUES // n)
    limit = delta * delta
    counts, parts = np.zeros(n, np.int64), []
    for start in range(0, n, rows):
        if unit:
            block = t[start : start + rows] @ t.T
            near = (block >= 1.0 - limit / 2 - 1e-6).nonzero()
        else:
            near = (_sq_distances(t[start : start + rows], t, t_sq) <= limit).nonzero()
        r, c = near[:, 0].numpy() + start, near[:, 1].numpy().astype(np.int32)
        counts += np.bincount(r, minlength=n)
        parts.append(c)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return indptr, np.concatenate(parts) if parts else np.zeros(0, np.int32)


def purity_radius(x: np.ndarray, pseudo: np.ndarray, purity: float, rng: np.random.Generator, sample: int = 2000,
                  grid: np.ndarray | None = None, max_degree: int | None = None) -> float:
    """The largest radius on ``grid`` whose balls stay ``purity`` pure (module docstring) and, with
    ``max_degree``, hold at most that many points on average (both estimated on ``sample`` points)."""
    grid = np.round(np.arange(0.05, 1.51, 0.05), 2) if grid is None else np.asarray(grid)
    n = len(x)
    chosen = rng.choice(n, min(sample, n), replace=False)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t_sq = (t * t).sum(1)
    labels = torch.from_numpy(np.asarray(pseudo))
    nearest_other = np.empty(len(chosen))
    degree = np.zeros(len(grid))
    limits = torch.from_numpy(np.asarray(grid, dtype=np.float32) ** 2)
    rows = max(1, BLOCK_VALUES // n)
    for start in range(0, len(chosen), rows):
        idx = torch.from_numpy(chosen[start : start + rows])
        d = _sq_distances(t[idx], t, t_sq)
        if max_degree is not None:
            degree += torch.searchsorted(d.sort(1).values, limits.expand(len(d), -1).contiguous(), right=True).sum(0).double().numpy()
        d[labels[None, :] == labels[idx][:, None]] = float("inf")
        nearest_other[start : start + len(idx)] = d.min(1).values.sqrt().double().numpy()
    pure = [(nearest_other > r).mean() for r in grid]
    small = degree / len(chosen) <= max_degree if max_degree is not None else np.ones(len(grid), bool)
    ok = [r for r, p, fits in zip(grid, pure, small) if p >= purity and fits]
    return float(max(ok)) if ok else float(grid[0])


def greedy_cover(indptr: np.ndarray, indices: np.ndarray, candidates: np.ndarray, covered: np.ndarray,
                 budget: int) -> tuple[np.ndarray, list[int]]:
    """Greedy maximum coverage: ``budget`` of ``candidates``, each covering the most uncovered points.

    ``covered`` (bool, all points) is updated in place. Returns the picks and the number
    of covered points after each pick (never decreasing). Ties go to the lowest index;
    once nothing new can be covered, the remaining picks are the lowest-index candidates.
    """
    n = len(indptr) - 1
    neighbours = lambda i: indices[indptr[i] : indptr[i + 1]]  # noqa: E731
    # uncovered points in each ball (every ball holds its centre, so no row of the lists is empty)
    gain = np.add.reduceat(~covered[indices], indptr[:-1], dtype=np.int64) if len(indices) else np.zeros(n, np.int64)
    allowed = np.zeros(n, bool)
    allowed[candidates] = True
    picks, history = [], []
    for _ in range(min(budget, len(candidates))):
        score = np.where(allowed, gain, -1)
        j = int(np.argmax(score))
        if score[j] <= 0:
            j = int(np.flatnonzero(allowed)[0])
        picks.append(j)
        allowed[j] = False
        new = neighbours(j)
        new = new[~covered[new]]
        if len(new):
            covered[new] = True
            # every ball that holds a newly covered point loses it (the graph is symmetric)
            hit = np.concatenate([neighbours(v) for v in new])
            gain -= np.bincount(hit, minlength=n)
        history.append(int(covered.sum()))
    return np.asarray(picks, dtype=np.int64), history


def probcover(pool: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator, delta: float | None = None,
              purity: float = 0.95, pseudo_clusters: int = 10, purity_sample: int = 2000,
              normalize: bool = True, pca_dims: int | None = 64, max_degree: int | None = 1000) -> tuple[np.ndarray, float]:
    """Positions in ``pool`` of ``budget`` greedy max-coverage picks, and the radius used.

    ``normalize``: work on L2-normalized embeddings (as the method does); off, on the raw
    points. ``pca_dims``: build the coverage graph on the leading principal components
    of the normalized embeddings (re-normalized), which makes every distance 8x cheaper
    for 512-d features; None keeps every dimension (exact). ``max_degree``: when ``delta``
    is estimated, it is also kept small enough that a ball holds at most this many points
    on average, which bounds the coverage graph at about ``max_degree`` x n entries
    (None: no bound, the method as published).
    """
    n = len(pool)
    x = np.concatenate([pool, labeled]) if len(labeled) else np.asarray(pool)
    x = _normalized(x) if normalize else np.asarray(x, np.float32)
    if pca_dims is not None and x.shape[1] > pca_dims and len(x) > pca_dims:
        from sklearn.decomposition import PCA

        x = PCA(pca_dims, svd_solver="randomized", random_state=int(rng.integers(2**31))).fit_transform(x)
        x = _normalized(x) if normalize else x.astype(np.float32)
    if delta is None:
        delta = purity_radius(x, kmeans(x, pseudo_clusters, rng), purity, rng, purity_sample, max_degree=max_degree)
    indptr, indices = ball_graph(x, delta, unit=normalize)
    covered = np.zeros(len(x), bool)
    for i in range(n, len(x)):  # the labelled points' balls are covered already
        covered[indices[indptr[i] : indptr[i + 1]]] = True
    picks, _ = greedy_cover(indptr, indices, np.arange(n), covered, budget)
    return picks, float(delta)

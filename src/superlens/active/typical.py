"""Low-budget strategies that pick typical, well-covering images: TypiClust and ProbCover.

Both work on embeddings (the model's penultimate features, or fixed ones, see
``strategies``) and never form an n x n matrix: distances are computed in blocks
of rows with one matrix product each, k-nearest-neighbour lists and coverage graphs
are kept as sparse lists, so memory is O(n * k) or O(edges). ProbCover's graph skips
the pairs of far pseudo-label clusters that a projection bound rules out (``ball_graph``).

TypiClust (Hacohen, Dekel and Weinshall, ICML 2022). On L2-normalized embeddings (so
the picks do not depend on each embedding's scale), cluster labelled + unlabelled
embeddings into min(labelled + budget, ``max_clusters``) clusters. Repeatedly take the
cluster with the fewest labelled (or already chosen) members, the largest first among
equals, ignoring clusters smaller than ``min_cluster_size`` while others remain; from
it pick the unlabelled point of highest typicality, typicality(x) = 1 / mean distance
of x to its k nearest neighbours among the cluster's points not yet labelled or
picked, with k = min(``k``, remaining // 2) recomputed at every pick, as the method's
authors compute it.

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


def _sq_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    d = torch.addmm(b_sq[None, :], a, b.T, alpha=-2.0, out=out)
    d += (a * a).sum(1, keepdim=True)
    return d.clamp_(min=0.0)


def _rows(x: np.ndarray, device=None) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)


def knn_mean_distance(x: np.ndarray, k: int) -> np.ndarray:
    """For each row, the mean euclidean distance to its ``k`` nearest other rows (blocks of rows)."""
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    t = _rows(x)
    t_sq = (t * t).sum(1)
    rows = max(1, BLOCK_VALUES // n)
    out = np.empty(n)
    for start in range(0, n, rows):
        d = _sq_distances(t[start : start + rows], t, t_sq)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")  # not its own neighbour
        out[start : start + len(d)] = d.topk(k, dim=1, largest=False).values.sqrt().mean(1).double().numpy()
    return out


def principal_components(x: np.ndarray, dims: int, device=None) -> np.ndarray:
    """``x`` (rows) projected on its leading ``dims`` principal components, centred.

    Exact: eigenvectors of the covariance, accumulated over blocks of centred rows in
    float32 and decomposed in float64 (a d x d problem), so no n x d copy is made.
    """
    t = _rows(x, device)
    mean = t.mean(0)
    cov = torch.zeros(t.shape[1], t.shape[1], dtype=torch.float64, device=t.device)
    for start in range(0, len(t), 8192):
        block = t[start : start + 8192] - mean
        cov += (block.T @ block).double()
    top = torch.linalg.eigh(cov.cpu()).eigenvectors[:, -dims:].flip(1).float().to(t.device)
    return (t @ top - mean @ top).cpu().numpy()


def kmeans(x: np.ndarray, clusters: int, rng: np.random.Generator, pca_dims: int | None = 64,
           device=None) -> np.ndarray:
    """Cluster ids: k-means (a few restarts) for up to 50 clusters, mini-batch k-means beyond,
    on the leading ``pca_dims`` principal components when there are more dimensions (None: all).
    With an accelerator ``device``: Lloyd's k-means there instead (``lloyd``)."""
    clusters = max(1, min(clusters, len(x)))
    seed = int(rng.integers(2**31))
    if pca_dims is not None and x.shape[1] > pca_dims and len(x) > pca_dims:
        x = principal_components(x, pca_dims, device)
    if device is not None and torch.device(device).type != "cpu":
        return lloyd(x, clusters, np.random.default_rng(seed), device=device)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if clusters <= 50:
        return KMeans(clusters, n_init=3, random_state=seed).fit_predict(x)
    return MiniBatchKMeans(clusters, n_init=1, random_state=seed, batch_size=4096).fit_predict(x)


def lloyd(x: np.ndarray, clusters: int, rng: np.random.Generator, iterations: int = 50, device=None) -> np.ndarray:
    """Cluster ids by Lloyd's k-means on ``device``: greedy k-means++ seeding (each centre the best of
    2 + ln(clusters) candidates drawn by D^2, by the k-means potential, as scikit-learn seeds), then at
    most ``iterations`` rounds of assign and re-centre, stopping when no id changes. An empty cluster
    keeps its centre."""
    t = _rows(x, device)
    n = len(t)
    clusters = max(1, min(clusters, n))
    t_sq = (t * t).sum(1)
    draws = torch.Generator(device=t.device).manual_seed(int(rng.integers(2**63)))

    def distances(rows: torch.Tensor) -> torch.Tensor:  # (len(rows), n) squared distances
        return torch.addmm(t_sq[None, :], t[rows], t.T, alpha=-2.0).add_(t_sq[rows, None]).clamp_min_(0.0)

    trials = 2 + int(np.log(clusters))
    chosen = torch.randint(n, (1,), generator=draws, device=t.device)
    upper = distances(chosen)[0]
    picks = [chosen]
    for _ in range(1, clusters):
        candidates = torch.multinomial(upper + 1e-30, trials, replacement=True, generator=draws)
        d = torch.minimum(distances(candidates), upper[None, :])
        best = d.sum(1).argmin()
        picks.append(candidates[best : best + 1])
        upper = d[best]
    centers = t[torch.cat(picks)]
    ids = torch.full((n,), -1, dtype=torch.long, device=t.device)
    rows = max(1, BLOCK_VALUES // clusters)
    for _ in range(iterations):
        c_sq = (centers * centers).sum(1)
        new = torch.cat([(torch.addmm(c_sq[None, :], t[i : i + rows], centers.T, alpha=-2.0)
                          + t_sq[i : i + rows, None]).argmin(1) for i in range(0, n, rows)])
        if torch.equal(new, ids):
            break
        ids = new
        sums = torch.zeros_like(centers).index_add_(0, ids, t)
        counts = torch.bincount(ids, minlength=clusters).to(t.dtype)[:, None]
        centers = torch.where(counts > 0, sums / counts.clamp_min(1.0), centers)
    return ids.cpu().numpy()


def typiclust(pool: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator, k: int = 20,
              max_clusters: int = 500, min_cluster_size: int = 5, device=None) -> np.ndarray:
    """Positions in ``pool`` of ``budget`` typical points, one cluster at a time (module docstring);
    with an accelerator ``device`` the clustering (and its PCA) runs there."""
    n = len(pool)
    budget = min(budget, n)
    x = _normalized(np.concatenate([pool, labeled]) if len(labeled) else pool)
    ids = kmeans(x, min(len(labeled) + budget, max_clusters), rng, device=device)
    n_clusters = int(ids.max()) + 1
    sizes = np.bincount(ids, minlength=n_clusters)
    covered = np.bincount(ids[n:], minlength=n_clusters)  # labelled members
    order = np.argsort(ids, kind="stable")
    members = np.split(order, np.cumsum(sizes)[:-1])  # the points of each cluster, by index
    remaining = np.bincount(ids[:n], minlength=n_clusters)  # unlabelled points not yet picked
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
        free = members[c][~taken[members[c]]]
        typicality = 1.0 / (knn_mean_distance(x[free], min(k, len(free) // 2)) + 1e-12)  # one cluster: small
        best = free[int(np.argmax(typicality))]
        picks.append(best)
        taken[best] = True
        covered[c] += 1
        remaining[c] -= 1
    return np.asarray(picks, dtype=np.int64)


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


DEGREE_COLUMNS = 8192  # points among which purity_radius counts ball sizes
GROUPED_VALUES = 2**27  # points x groups beyond which ball_graph does not use groups (their projections take 5 bytes each)
GROUPED_MAX = 0.25  # ball_graph tests every pair when its groups would leave more than this share of pairs
TILE = 2048  # rows and columns of one tile of the coverage graph (16 MiB of float32 scores)


def _blocks(starts: np.ndarray, ends: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each group's rows [start, end) into blocks of at most ``tile`` rows: block starts,
    ends, and the group of each block."""
    lo = [np.arange(a, b, tile) for a, b in zip(starts, ends)]
    group = np.repeat(np.arange(len(starts)), [len(v) for v in lo])
    lo = np.concatenate(lo) if lo else np.zeros(0, np.int64)
    return lo, np.minimum(lo + tile, ends[group]), group


def _group_windows(t: torch.Tensor, starts: np.ndarray, member: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Which points of each group can lie within ``reach`` of another group.

    For groups A and B with centroids mu_A, mu_B, ||a - b|| >= |u . (a - b)| along
    u = (mu_A - mu_B) / ||mu_A - mu_B||. With h_B(p) = p . mu_B - p . mu_A(p) (p in A), a
    point a of A has a partner in B only if h_B(a) >= -max_{b in B} h_A(b) - reach ||mu_A - mu_B||.
    Returns H (n x groups: h of every point towards every group) and the thresholds
    T (groups x groups): a in A is kept towards B when H[a, B] >= T[A, B]; the pair of
    groups can be skipped when no point of A (or of B) is kept. ``member``: each row's group;
    ``starts``: the first row of each (the rows of a group are contiguous).
    """
    group = torch.from_numpy(member)
    mu = torch.zeros(len(starts), t.shape[1]).index_add_(0, group, t) / group.bincount()[:, None]
    h = t @ mu.T
    h -= h.gather(1, group[:, None])
    hmax = torch.from_numpy(np.maximum.reduceat(h.numpy(), starts, axis=0))  # groups x groups
    gaps = torch.cdist(mu.double(), mu.double()).float()
    # float32 products err by far less than this, even where two centroids (almost) coincide
    rounding = 1e-4 * (1.0 + float(t.norm(dim=1).max() * mu.norm(dim=1).max()))
    return h.numpy(), (-hmax.T - reach * gaps - rounding).numpy()


def _grouped(x: np.ndarray, groups: np.ndarray, limit: float):
    """``ball_graph``'s rows in group order and which of them to test against each other group:
    (order, group starts, group ends, keep (n x groups), rows as a tensor); None when the
    groups are not worth it (one group, too many values, or too few pairs ruled out)."""
    n = len(x)
    labels = np.unique(groups)
    if len(labels) < 2 or n * len(labels) > GROUPED_VALUES:
        return None
    order = np.argsort(groups, kind="stable")  # each group's rows contiguous
    t = torch.from_numpy(np.ascontiguousarray(x[order]))
    cut = np.flatnonzero(np.diff(np.asarray(groups)[order])) + 1
    g_start, g_end = np.concatenate([[0], cut]).astype(np.int64), np.concatenate([cut, [n]]).astype(np.int64)
    member = np.repeat(np.arange(len(g_start)), g_end - g_start)
    # slack so that rounding never skips a pair the tile test would accept
    reach = float(np.sqrt(limit + 1e-4 * (1.0 + float((t * t).sum(1).max())))) + 1e-4
    h, thresholds = _group_windows(t, g_start, member, reach)
    keep = h >= thresholds[member]  # n x groups
    keep[np.arange(n), member] = True
    kept = np.add.reduceat(keep, g_start, axis=0, dtype=np.int64)  # points of A kept towards B
    sizes = (g_end - g_start).astype(np.float64)
    pairs = np.triu(kept * kept.T, 1).sum() + (sizes * sizes).sum() / 2
    if pairs > GROUPED_MAX * n * n / 2:  # the groups rule out too little to pay for their small tiles
        return None
    return order, g_start, g_end, keep, t


def ball_graph(x: np.ndarray, delta: float, unit: bool = False, tile: int = TILE,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists (indptr, indices) of the points within ``delta`` of each row (itself included).

    Pairs are tested ``tile`` x ``tile`` at a time (the scores of a tile are still in cache
    when they are compared) and each unordered pair once, so the lists are exactly
    symmetric. ``unit``: the rows have norm 1, so ||a - b|| <= delta is
    a . b >= 1 - delta^2 / 2 and the matrix product alone decides it. ``groups`` (a label
    per row, e.g. k-means clusters) lets whole blocks of pairs be skipped: within a group
    every pair is tested, between two groups only the points that the projection on the
    line through the two centroids cannot rule out (``_group_windows``). Without groups,
    or when they would leave more than ``GROUPED_MAX`` of the pairs, or when points x groups
    exceeds ``GROUPED_VALUES``, every pair is tested. The result is the same either way.
    """
    n = len(x)
    x = np.asarray(x, dtype=np.float32)
    limit = delta * delta
    grouped = _grouped(x, groups, limit) if groups is not None and n else None
    if grouped is None:
        order, keep = None, None
        g_start, g_end = np.zeros(1, np.int64), np.full(1, n, np.int64)
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        order, g_start, g_end, keep, t = grouped
    t_sq = (t * t).sum(1)
    b_lo, b_hi, b_group = _blocks(g_start, g_end, tile)
    # per row block: (row within the block, neighbour) pairs, from its own tiles and mirrored from others
    rows: list[list[np.ndarray]] = [[] for _ in b_lo]
    cols: list[list[np.ndarray]] = [[] for _ in b_lo]
    # reused buffers (fresh pages for every tile cost as much as the product), viewed as one contiguous tile each time
    scores, mask = torch.empty(min(tile, n) ** 2), torch.empty(min(tile, n) ** 2, dtype=torch.bool)
    for bi in range(len(b_lo)):
        i, i_end, gi = int(b_lo[bi]), int(b_hi[bi]), int(b_group[bi])
        for bj in range(bi, len(b_lo)):
            j, j_end, gj = int(b_lo[bj]), int(b_hi[bj]), int(b_group[bj])
            if gi == gj:
                ri, cj = None, None
                a, b, b_sq = t[i:i_end], t[j:j_end], t_sq[j:j_end]
            else:
                ri = np.flatnonzero(keep[i:i_end, gj])
                cj = np.flatnonzero(keep[j:j_end, gi]) if len(ri) else ri
                if not len(cj):
                    continue
                cj_t = torch.from_numpy(cj + j)
                a, b, b_sq = t.index_select(0, torch.from_numpy(ri + i)), t.index_select(0, cj_t), t_sq[cj_t]
            shape = (len(a), len(b))
            out, hit = scores[: shape[0] * shape[1]].view(shape), mask[: shape[0] * shape[1]].numpy().reshape(shape)
            # the comparisons and the nonzero run in numpy: 2-7x faster than torch's on these sizes
            if unit:
                torch.mm(a, b.T, out=out)
                np.greater_equal(out.numpy(), np.float32(1.0 - limit / 2 - 1e-6), out=hit)
            else:
                np.less_equal(_sq_distances(a, b, b_sq, out=out).numpy(), np.float32(limit), out=hit)
            flat = np.flatnonzero(hit).astype(np.int32)
            r, c = np.divmod(flat, np.int32(len(b)))
            r, c = (r if ri is None else ri[r]).astype(np.int32), (c if cj is None else cj[c]).astype(np.int32)
            if bi == bj:  # decide each pair of the diagonal tile once, from its upper triangle
                upper = r <= c
                r, c = r[upper], c[upper]
                off = r != c
                rows[bi] += [r, c[off]]
                cols[bi] += [c + i, r[off] + i]
            else:
                rows[bi].append(r)
                cols[bi].append(c + j)
                rows[bj].append(c)
                cols[bj].append(r + i)
    counts, indices = np.zeros(n, np.int64), []
    for bi in range(len(b_lo)):
        r = np.concatenate(rows[bi]) if rows[bi] else np.zeros(0, np.int32)
        c = np.concatenate(cols[bi]) if cols[bi] else np.zeros(0, np.int32)
        rows[bi] = cols[bi] = None  # free as we go
        sort_key = r.astype(np.int16) if tile <= 2**15 else r
        counts[b_lo[bi] : b_hi[bi]] = np.bincount(r, minlength=int(b_hi[bi] - b_lo[bi]))
        indices.append(c[np.argsort(sort_key, kind="stable")])  # radix sort on int16
    indices = np.concatenate(indices) if indices else np.zeros(0, np.int32)
    if order is not None:  # back from group order to the caller's order
        inverse = np.empty(n, np.int64)
        inverse[order] = np.arange(n)
        sorted_ptr = np.concatenate([[0], np.cumsum(counts)])
        # row k of the result is row inverse[k] of the lists built above (rows are long: slices beat a gather)
        indices = np.concatenate([indices[sorted_ptr[k] : sorted_ptr[k + 1]] for k in inverse.tolist()])
        return np.concatenate([[0], np.cumsum(counts[inverse])]), order.astype(np.int32)[indices]
    return np.concatenate([[0], np.cumsum(counts)]), indices


def ball_graph_dense(x: np.ndarray, delta: float, unit: bool = False, device=None) -> tuple[np.ndarray, np.ndarray]:
    """``ball_graph`` on an accelerator: every pair tested, a block of rows against all rows at a time on
    ``device`` (one matrix product and one comparison each); each row's neighbours come back in
    ascending order. The same lists as ``ball_graph`` (up to float32 rounding at the radius)."""
    t = _rows(x, device)
    n = len(t)
    limit = delta * delta
    t_sq = (t * t).sum(1)
    counts, indices = np.zeros(n, np.int64), []
    rows = max(1, BLOCK_VALUES // max(n, 1))
    for i in range(0, n, rows):
        a = t[i : i + rows]
        if unit:
            hit = a @ t.T >= 1.0 - limit / 2 - 1e-6
        else:
            hit = _sq_distances(a, t, t_sq) <= limit
        r, c = hit.nonzero(as_tuple=True)  # row-major: by row, then by neighbour
        counts[i : i + len(a)] = torch.bincount(r, minlength=len(a)).cpu().numpy()
        indices.append(c.to(torch.int32).cpu().numpy())
    indices = np.concatenate(indices) if indices else np.zeros(0, np.int32)
    return np.concatenate([[0], np.cumsum(counts)]), indices


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
    within = np.zeros(len(grid), np.int64)  # points within each radius, summed over the sample
    limits = torch.from_numpy(np.asarray(grid, dtype=np.float32) ** 2)
    # ball sizes are counted among DEGREE_COLUMNS random points and scaled up (counting among all is 10x slower)
    columns = torch.from_numpy(np.sort(rng.choice(n, min(n, DEGREE_COLUMNS), replace=False)))
    rows = max(1, BLOCK_VALUES // n)
    for start in range(0, len(chosen), rows):
        idx = torch.from_numpy(chosen[start : start + rows])
        d = _sq_distances(t[idx], t, t_sq)
        if max_degree is not None:  # bucket i holds limits[i - 1] < d <= limits[i]
            buckets = torch.bucketize(d[:, columns], limits).view(-1).bincount(minlength=len(grid) + 1)
            within += buckets.cumsum(0)[: len(grid)].numpy()
        d.masked_fill_(labels[None, :] == labels[idx][:, None], float("inf"))
        nearest_other[start : start + len(idx)] = d.min(1).values.sqrt().double().numpy()
    degree = within / len(chosen) * n / len(columns)
    pure = [(nearest_other > r).mean() for r in grid]
    small = degree <= max_degree if max_degree is not None else np.ones(len(grid), bool)
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
    budget = min(budget, len(candidates))
    # uncovered points in each ball (every ball holds its centre, so no row of the lists is empty)
    gain = np.add.reduceat(~covered[indices], indptr[:-1], dtype=np.int64) if len(indices) else np.zeros(n, np.int64)
    # a candidate's score is its gain; everything else (and every pick) sits below zero for good
    far = n + 1
    score = gain - far
    score[candidates] += far
    picks, history, count = [], [], int(covered.sum())
    while len(picks) < budget:
        j = int(np.argmax(score))  # the first of equals: the lowest index
        if score[j] <= 0:
            break
        picks.append(j)
        score[j] -= far
        new = neighbours(j)
        new = new[~covered[new]]
        covered[new] = True
        count += len(new)
        # every ball that holds a newly covered point loses it (the graph is symmetric)
        score -= np.bincount(np.concatenate([neighbours(v) for v in new]), minlength=n)
        history.append(count)
    # nothing new can be covered: the lowest-index candidates left, in order
    rest = np.flatnonzero(score >= 0)[: budget - len(picks)]
    return np.asarray(picks + rest.tolist(), dtype=np.int64), history + [count] * len(rest)


def probcover(pool: np.ndarray, labeled: np.ndarray, budget: int, rng: np.random.Generator, delta: float | None = None,
              purity: float = 0.95, pseudo_clusters: int = 10, purity_sample: int = 2000,
              normalize: bool = True, pca_dims: int | None = 64, max_degree: int | None = 1000,
              device=None) -> tuple[np.ndarray, float]:
    """Positions in ``pool`` of ``budget`` greedy max-coverage picks, and the radius used.

    ``normalize``: work on L2-normalized embeddings (as the method does); off, on the raw
    points. ``pca_dims``: build the coverage graph on the leading principal components
    of the normalized embeddings (re-normalized), which makes every distance 8x cheaper
    for 512-d features; None keeps every dimension (exact). ``max_degree``: when ``delta``
    is estimated, it is also kept small enough that a ball holds at most this many points
    on average, which bounds the coverage graph at about ``max_degree`` x n entries
    (None: no bound, the method as published). With an accelerator ``device`` the PCA, the
    pseudo-label clustering and the coverage graph run there (``ball_graph_dense``).
    """
    n = len(pool)
    x = np.concatenate([pool, labeled]) if len(labeled) else np.asarray(pool)
    x = _normalized(x) if normalize else np.asarray(x, np.float32)
    if pca_dims is not None and x.shape[1] > pca_dims and len(x) > pca_dims:
        x = principal_components(x, pca_dims, device)
        x = _normalized(x) if normalize else x
    pseudo = kmeans(x, pseudo_clusters, rng, device=device)  # for the purity radius, and to skip far pairs
    if delta is None:
        delta = purity_radius(x, pseudo, purity, rng, purity_sample, max_degree=max_degree)
    if device is not None and torch.device(device).type != "cpu":
        indptr, indices = ball_graph_dense(x, delta, unit=normalize, device=device)
    else:
        indptr, indices = ball_graph(x, delta, unit=normalize, groups=pseudo)
    covered = np.zeros(len(x), bool)
    covered[indices[indptr[n] :]] = True  # the labelled points (the last rows) cover their balls already
    picks, _ = greedy_cover(indptr, indices, np.arange(n), covered, budget)
    return picks, float(delta)

"""Exact greedy k-center and k-means++ seeding without an n x n matrix.

Both keep, per pool point, an upper bound on its squared distance to the chosen
centres and the number of centres already folded into that bound. A point's bound
is refreshed against the newer centres only when it matters: greedy k-center only
needs the exact value of the point whose bound is largest (a lazy max-heap), and
D^2 sampling only needs it for a proposed point (rejection sampling from the bounds,
which yields draws exactly proportional to D^2). When a new centre changes few
distances, as it does once many centres are chosen, each pick costs about O(t * d)
for t centres instead of O(n * d), and memory stays O(n + k * d).

On an accelerator (``greedy_kcenter_dense``, ``kmeanspp_seeding_dense``) the same procedures
run as one dense O(n * d) update per pick, all on the device: the lazy bounds save work on a
CPU, while a GPU does the dense update in microseconds and would wait on the host for the
lazy bookkeeping.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

CHUNK = 512


def squared_distances_to(points: np.ndarray, centers: np.ndarray, rows: int = 4096, cols: int = 2048) -> np.ndarray:
    """min over ``centers`` of the squared euclidean distance, per row of ``points``.

    Blocks of ``rows`` x ``cols`` distances (32 MiB in float32) are formed one at a
    time with one multi-threaded matrix product each; the result is float64.
    """
    out = np.full(len(points), np.inf)
    if len(centers) == 0 or len(points) == 0:
        return out
    x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    c = torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32))
    x_sq, c_sq = (x * x).sum(1), (c * c).sum(1)
    best = torch.full((len(x),), float("inf"))
    for i in range(0, len(x), rows):
        for j in range(0, len(c), cols):
            block = torch.addmm(c_sq[None, j : j + cols], x[i : i + rows], c[j : j + cols].T, alpha=-2.0)
            block += x_sq[i : i + rows, None]
            torch.minimum(best[i : i + rows], block.min(1).values, out=best[i : i + rows])
    np.maximum(best.double().numpy(), 0.0, out=out)
    return out


def greedy_kcenter(
    points: np.ndarray, centers: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` rows of ``points``, each the farthest from ``centers`` and the rows picked before.

    Returns the picked indices and, for each pick, the covering radius (euclidean) just
    before it was added, which never increases. With no ``centers`` the first pick is a
    uniformly random point. Ties go to the lowest index, as ``argmax`` would.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    n, d = points.shape
    sq = np.einsum("ij,ij->i", points, points).astype(np.float64)
    upper = squared_distances_to(points, np.asarray(centers, dtype=np.float32))
    new = np.empty((k, d), dtype=np.float32)
    new_sq = np.empty(k)
    checked = np.zeros(n, dtype=np.int64)
    picked: list[int] = []
    radii: list[float] = []
    if len(centers) == 0 and k > 0:
        first = int(rng.integers(n))
        upper[:] = np.maximum(sq + sq[first] - 2.0 * (points @ points[first]), 0.0)
        upper[first] = 0.0
        picked.append(first)
        radii.append(np.inf)
        new[0], new_sq[0] = points[first], sq[first]
        checked[:] = 1
    heap = [(-u, i) for i, u in enumerate(upper)]
    heapq.heapify(heap)
    while len(picked) < k:
        _, i = heapq.heappop(heap)
        t = len(picked)
        runner_up = -heap[0][0] if heap else -np.inf
        bound, s = upper[i], checked[i]
        while s < t and bound >= runner_up:  # stop as soon as i can no longer be the farthest
            e = min(t, s + CHUNK)
            bound = min(bound, max(0.0, float((sq[i] + new_sq[s:e] - 2.0 * (new[s:e] @ points[i])).min())))
            s = e
        upper[i], checked[i] = bound, s
        if s < t or bound < runner_up:
            heapq.heappush(heap, (-bound, i))
            continue
        picked.append(i)
        radii.append(float(np.sqrt(bound)))
        new[t], new_sq[t] = points[i], sq[i]
        upper[i] = 0.0
    return np.asarray(picked, dtype=np.int64), np.asarray(radii)


class _SumTree:
    """Fenwick tree over non-negative weights: point update and weighted sampling in O(log n)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.n = len(weights)
        self.weights = np.array(weights, dtype=np.float64)
        self.tree = np.zeros(self.n + 1)
        tree = self.tree
        tree[1:] = self.weights
        for i in range(1, self.n + 1):
            j = i + (i & -i)
            if j <= self.n:
                tree[j] += tree[i]
        self.size_bit = 1 << (self.n.bit_length() - 1) if self.n else 0

    def total(self) -> float:
        s, i = 0.0, self.n
        while i > 0:
            s += self.tree[i]
            i -= i & -i
        return s

    def set(self, index: int, value: float) -> None:
        delta = value - self.weights[index]
        self.weights[index] = value
        i = index + 1
        while i <= self.n:
            self.tree[i] += delta
            i += i & -i

    def find(self, mass: float) -> int:
        """Smallest index whose prefix sum exceeds ``mass``."""
        pos, bit = 0, self.size_bit
        while bit:
            nxt = pos + bit
            if nxt <= self.n and self.tree[nxt] <= mass:
                pos = nxt
                mass -= self.tree[nxt]
            bit >>= 1
        return min(pos, self.n - 1)


def kmeanspp_seeding(factors: list[np.ndarray], k: int, rng: np.random.Generator, first: int) -> np.ndarray:
    """k-means++ seeding (D^2 sampling) of points given in factorized form.

    Point i is the outer (Kronecker) product of its rows in ``factors``: with factors
    A (n x a) and H (n x b) it is the a*b-dimensional vector A[i] (x) H[i], and
    <g_i, g_j> is the product of <A[i], A[j]> and <H[i], H[j]>, so no point is ever
    formed. One factor is a plain point matrix. ``first`` is the first centre. Each
    proposal is drawn from the stale upper bounds and accepted with probability
    exact / bound, so accepted picks follow the D^2 distribution exactly.
    """
    factors = [np.ascontiguousarray(f, dtype=np.float32) for f in factors]
    n = len(factors[0])
    sq = np.ones(n)
    for f in factors:
        sq *= np.einsum("ij,ij->i", f, f)
    chosen = [np.empty((k, f.shape[1]), dtype=np.float32) for f in factors]

    def inner_with_chosen(i: int, start: int, stop: int) -> np.ndarray:
        prod = np.ones(stop - start)
        for f, c in zip(factors, chosen):
            prod *= c[start:stop] @ f[i]
        return prod

    def choose(i: int, t: int) -> None:
        for f, c in zip(factors, chosen):
            c[t] = f[i]
        picked_sq[t] = sq[i]

    picked_sq = np.empty(k)
    inner_first = np.ones(n)
    for f in factors:
        inner_first *= f @ f[first]
    upper = np.maximum(sq + sq[first] - 2.0 * inner_first, 0.0)
    upper[first] = 0.0
    picked = [first]
    choose(first, 0)
    checked = np.ones(n, dtype=np.int64)
    tree = _SumTree(upper)
    while len(picked) < k:
        total = tree.total()
        if total <= 0:  # every remaining point coincides with a centre: fill up at random
            rest = np.setdiff1d(np.arange(n), picked)
            picked += rng.choice(rest, k - len(picked), replace=False).tolist()
            break
        i = tree.find(rng.random() * total)
        t = len(picked)
        bound = upper[i]
        exact = bound
        if checked[i] < t:
            d = sq[i] + picked_sq[checked[i] : t] - 2.0 * inner_with_chosen(i, checked[i], t)
            exact = max(0.0, min(bound, float(d.min())))
            checked[i] = t
        if rng.random() * bound < exact:
            choose(i, t)
            picked.append(int(i))
            upper[i] = 0.0
            tree.set(i, 0.0)
        elif exact != bound:
            upper[i] = exact
            tree.set(i, exact)
    return np.asarray(picked, dtype=np.int64)


# --- the same two procedures as dense updates on an accelerator ---
# On a GPU one O(n * d) update per pick is cheap and keeps every step on the device (no host
# round trip until the picks come back); the lazy bounds above pay off on the CPU.

def _device_rows(points: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(points, dtype=np.float32), device=device)


def greedy_kcenter_dense(points: np.ndarray, centers: np.ndarray, k: int, rng: np.random.Generator, device
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``greedy_kcenter`` with every distance kept on ``device`` and refreshed against each new pick."""
    x = _device_rows(points, device)
    n = len(x)
    x_sq = (x * x).sum(1)
    upper = torch.full((n,), float("inf"), device=x.device)
    c = _device_rows(np.asarray(centers, dtype=np.float32).reshape(-1, x.shape[1]), device)
    for j in range(0, len(c), 2048):
        block = torch.addmm((c[j : j + 2048] ** 2).sum(1)[None, :], x, c[j : j + 2048].T, alpha=-2.0)
        upper = torch.minimum(upper, (block + x_sq[:, None]).min(1).values.clamp_min(0.0))
    picked = torch.empty(k, dtype=torch.long, device=x.device)
    radii = torch.empty(k, device=x.device)
    start = 0
    if len(c) == 0 and k > 0:
        first = int(rng.integers(n))
        upper = (x_sq + x_sq[first] - 2.0 * (x @ x[first])).clamp_min(0.0)
        upper[first] = 0.0
        picked[0], radii[0], start = first, float("inf"), 1
    for t in range(start, k):
        # i is a 1-element tensor, never a 0-dim one: indexing with a 0-dim device tensor reads it back
        # to the host, and these loops must not wait for the device
        i = upper.argmax().reshape(1)  # ties go to the lowest index
        picked[t : t + 1] = i
        radii[t : t + 1] = upper[i].sqrt()
        upper = torch.minimum(upper, (x_sq + x_sq[i] - 2.0 * (x @ x[i].T)[:, 0]).clamp_min(0.0))
        upper.index_fill_(0, i, 0.0)
    return picked.cpu().numpy(), radii.double().cpu().numpy()


def kmeanspp_seeding_dense(factors: list[np.ndarray], k: int, rng: np.random.Generator, first: int, device
                           ) -> np.ndarray:
    """``kmeanspp_seeding`` with the D^2 weights kept on ``device``: each pick is drawn from them by a
    generator seeded from ``rng`` and the weights are refreshed against it. A point that coincides
    with a centre keeps a tiny weight, so when only such points remain they are drawn uniformly."""
    fs = [_device_rows(f, device) for f in factors]
    n = len(fs[0])
    sq = torch.ones(n, device=fs[0].device)
    for f in fs:
        sq = sq * (f * f).sum(1)

    def distances(i: torch.Tensor) -> torch.Tensor:  # i: a 1-element index tensor
        inner = torch.ones(n, device=sq.device)
        for f in fs:
            inner = inner * (f @ f[i].T)[:, 0]
        return (sq + sq[i] - 2.0 * inner).clamp_min(0.0)

    draws = torch.Generator(device=sq.device).manual_seed(int(rng.integers(2**63)))
    open_ = torch.ones(n, dtype=torch.bool, device=sq.device)
    picked = torch.empty(k, dtype=torch.long, device=sq.device)
    picked[0] = first
    open_[first] = False
    upper = distances(torch.tensor([first], device=sq.device))
    for t in range(1, k):
        weights = torch.where(open_, upper + 1e-30, torch.zeros_like(upper))
        i = torch.multinomial(weights, 1, generator=draws)  # (1,): stays on the device
        picked[t : t + 1] = i
        open_.index_fill_(0, i, False)
        upper = torch.minimum(upper, distances(i))
    return picked.cpu().numpy()

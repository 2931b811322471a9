"""Cosine-similarity views of a representation, streamed so no n x n matrix is held whole.

Each view returns a :class:`CosineStats`: a histogram over [-1, 1], and the mean,
std, min and max of every off-diagonal pair (each unordered pair once), with
quartiles read off the histogram (its bins are 0.001 wide by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from superlens.analysis.validate import compute_dtype, features_and_labels


@dataclass
class CosineStats:
    counts: np.ndarray  # (bins,) pairs per bin
    edges: np.ndarray  # (bins + 1,) from -1 to 1
    mean: float
    std: float
    min: float
    max: float
    q25: float
    median: float
    q75: float
    pairs: int

    def summary(self) -> dict[str, float]:
        d = asdict(self)
        return {k: d[k] for k in ("mean", "std", "min", "max", "q25", "median", "q75", "pairs")}

    def coarse_counts(self, bins: int = 100) -> np.ndarray:
        """The histogram merged down to ``bins`` equal bins (for plots)."""
        return self.counts.reshape(bins, -1).sum(1)


class _Accumulator:
    """Running sums of a stream of values in [-1, 1], kept where the values are (no host sync per block)."""

    def __init__(self, bins: int, device: torch.device) -> None:
        self.counts = torch.zeros(bins, dtype=torch.float64, device=device)
        self.bins = bins
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # sum, sum of squares
        self.extremes = torch.full((2,), -np.inf, dtype=torch.float64, device=device)  # -min, max
        self.n = 0

    def add(self, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        v = values.double().clamp_(-1.0, 1.0)
        self.sums += torch.stack([v.sum(), (v * v).sum()])
        self.extremes = torch.maximum(self.extremes, torch.stack([(-v).max(), v.max()]))
        self.n += v.numel()
        idx = ((v + 1.0) * (self.bins / 2.0)).long().clamp_(0, self.bins - 1)
        self.counts += torch.bincount(idx.flatten(), minlength=self.bins).double()

    def result(self) -> CosineStats:
        counts = self.counts.cpu().numpy()
        total, total_sq = self.sums.cpu().tolist()
        neg_min, hi = self.extremes.cpu().tolist()
        edges = np.linspace(-1.0, 1.0, self.bins + 1)
        mean = total / self.n
        std = float(np.sqrt(max(0.0, total_sq / self.n - mean * mean)))
        cdf = np.cumsum(counts) / counts.sum()

        def quantile(q: float) -> float:
            i = int(np.searchsorted(cdf, q))
            prev = cdf[i - 1] if i else 0.0
            frac = (q - prev) / max(cdf[i] - prev, 1e-300)
            return float(edges[i] + frac * (edges[i + 1] - edges[i]))

        return CosineStats(counts, edges, float(mean), std, -neg_min, hi,
                           quantile(0.25), quantile(0.5), quantile(0.75), self.n)


def pairwise_cosine_stats(x, center: bool = False, chunk: int | None = None, bins: int = 2000,
                          device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CosineStats:
    """Cosine similarity of every pair of rows of ``x`` (samples x features).

    ``center`` subtracts the mean row first: for non-negative features (after ReLU)
    raw cosines are all positive and mostly measure the shared mean direction.
    The features are moved to ``device`` (default: the CPU) once in their own dtype;
    blocks of ``chunk`` rows (default: at most 2^25 values each) are centred (on a float64
    mean) and normalized in the compute dtype (``dtype``, default ``validate.compute_dtype``: float64 on the CPU,
    float32 on an accelerator), so memory stays O((n + d) * chunk) beyond x; the histogram
    and the moments are accumulated in float64.
    """
    x, _ = features_and_labels(x)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or compute_dtype(device)
    xs = torch.as_tensor(x).to(device)
    n, d = xs.shape
    chunk = chunk or max(1, min(4096, 2**25 // max(n, d)))
    mean = torch.zeros(d, dtype=torch.float64, device=device)
    if center:
        for start in range(0, n, chunk):
            mean += xs[start : start + chunk].sum(0, dtype=torch.float64)
        mean /= n

    def block(start: int) -> torch.Tensor:
        b = (xs[start : start + chunk].to(torch.float64) - mean).to(dtype)
        return b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)

    acc = _Accumulator(bins, device)
    for start in range(0, n, chunk):
        rows = block(start)
        for col in range(start, n, chunk):  # the upper triangle only: each pair once
            sims = rows @ (rows if col == start else block(col)).T
            if col == start:
                sims = sims[torch.ones_like(sims, dtype=torch.bool).triu_(1)]
            acc.add(sims)
    return acc.result()


def neuron_correlation_stats(x, bins: int = 2000, device: torch.device | str | None = None) -> CosineStats:
    """Pearson correlation between every pair of units (columns) over samples.

    Units that never vary (dead or constant) have no defined correlation and are left out.
    """
    x, _ = features_and_labels(x)
    alive = x.std(0) > 0
    return pairwise_cosine_stats(x[:, alive].T - x[:, alive].mean(0)[:, None], bins=bins, device=device)


def filter_cosine_stats(weight, bins: int = 2000) -> CosineStats:
    """Cosine similarity between every pair of a conv layer's filters (out_channels x in*k*k)."""
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    return pairwise_cosine_stats(w.reshape(len(w), -1), bins=bins)

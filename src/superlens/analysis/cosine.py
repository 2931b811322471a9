"""Cosine-similarity views of a representation, streamed so no n x n matrix is held whole.

Each view returns a :class:`CosineStats`: a histogram over [-1, 1], and the mean,
std, min and max of every off-diagonal pair (each unordered pair once), with
quartiles read off the histogram (its bins are 0.001 wide by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from superlens.analysis.validate import features_and_labels


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
    def __init__(self, bins: int) -> None:
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.bins = bins
        self.total = self.total_sq = 0.0
        self.n = 0
        self.lo, self.hi = np.inf, -np.inf

    def add(self, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        v = values.double().clamp_(-1.0, 1.0)
        self.total += float(v.sum())
        self.total_sq += float((v * v).sum())
        self.n += v.numel()
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        idx = ((v + 1.0) * (self.bins / 2.0)).long().clamp_(0, self.bins - 1)
        self.counts += torch.bincount(idx.flatten().cpu(), minlength=self.bins).double()

    def result(self) -> CosineStats:
        counts = self.counts.numpy()
        edges = np.linspace(-1.0, 1.0, self.bins + 1)
        mean = self.total / self.n
        std = float(np.sqrt(max(0.0, self.total_sq / self.n - mean * mean)))
        cdf = np.cumsum(counts) / counts.sum()

        def quantile(q: float) -> float:
            i = int(np.searchsorted(cdf, q))
            prev = cdf[i - 1] if i else 0.0
            frac = (q - prev) / max(cdf[i] - prev, 1e-300)
            return float(edges[i] + frac * (edges[i + 1] - edges[i]))

        return CosineStats(counts, edges, float(mean), std, self.lo, self.hi,
                           quantile(0.25), quantile(0.5), quantile(0.75), self.n)


def _unit_rows(x: np.ndarray, center: bool) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if center:
        t = t - t.mean(0, keepdim=True)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pairwise_cosine_stats(x, center: bool = False, chunk: int = 1024, bins: int = 2000) -> CosineStats:
    """Cosine similarity of every pair of rows of ``x`` (samples x features).

    ``center`` subtracts the mean row first: for non-negative features (after ReLU)
    raw cosines are all positive and mostly measure the shared mean direction.
    """
    x, _ = features_and_labels(x)
    u = _unit_rows(x, center)
    acc = _Accumulator(bins)
    for start in range(0, len(u), chunk):
        block = u[start : start + chunk] @ u[start:].T  # rows i >= start: upper triangle only
        keep = torch.ones_like(block, dtype=torch.bool).triu_(1)
        acc.add(block[keep])
    return acc.result()


def neuron_correlation_stats(x, bins: int = 2000) -> CosineStats:
    """Pearson correlation between every pair of units (columns) over samples.

    Units that never vary (dead or constant) have no defined correlation and are left out.
    """
    x, _ = features_and_labels(x)
    alive = x.std(0) > 0
    return pairwise_cosine_stats(x[:, alive].T - x[:, alive].mean(0)[:, None], bins=bins)


def filter_cosine_stats(weight, bins: int = 2000) -> CosineStats:
    """Cosine similarity between every pair of a conv layer's filters (out_channels x in*k*k)."""
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    return pairwise_cosine_stats(w.reshape(len(w), -1), bins=bins)

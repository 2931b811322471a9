"""Toy models of superposition (Elhage et al. 2022): small problems whose answers are known.

The model compresses n sparse features into m < n dimensions and reads them back:
x' = ReLU(W^T W x + b), W of shape (m, n) (column i is feature i's direction), trained
to minimize sum_i I_i (x_i - x'_i)^2 with importances I. Each input feature is 0 with
probability S (the sparsity) and uniform on [0, 1] otherwise.

Geometry of a trained W (all exact formulas):
    D_i  = ||W_i||^2 / sum_j (W_i_hat . W_j)^2    dimensions feature i gets (1: alone, 1/2: antipodal pair)
    D*   = m / ||W||_F^2                           dimensions per feature, over all features
    interference_i = sum_{j != i} (W_i_hat . W_j)^2
A feature counts as represented when ||W_i|| > 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from superlens.analysis.superposition import interference
from superlens.errors import UserError


def dimensions_per_feature(w) -> float:
    """D* = m / ||W||_F^2."""
    w = np.asarray(w, dtype=np.float64)
    return float(w.shape[0] / (w**2).sum())


def sparse_batch(batch: int, n: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    values = torch.rand(batch, n, generator=generator)
    keep = torch.rand(batch, n, generator=generator) >= sparsity
    return values * keep


@dataclass
class ToyModel:
    w: np.ndarray  # (m, n)
    b: np.ndarray  # (n,)
    loss: float  # final training loss (mean over the last 100 steps)

    @property
    def norms(self) -> np.ndarray:
        return np.linalg.norm(self.w, axis=0)

    def represented(self, threshold: float = 0.5) -> int:
        return int((self.norms > threshold).sum())

    def summary(self) -> dict[str, float]:
        return {"represented": self.represented(), "dims_per_feature": dimensions_per_feature(self.w),
                "mean_interference": float(interference(self.w).mean()), "loss": self.loss}


def reconstruction(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ w.T @ w + b)


def importance_error(model: ToyModel, x: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Importance-weighted squared reconstruction error of each input under ``model``: what the toy
    counterpart of uncertainty sampling ranks inputs by."""
    with torch.no_grad():
        w, b = (torch.as_tensor(a, dtype=x.dtype) for a in (model.w, model.b))
        return (importance * (x - reconstruction(w, b, x)) ** 2).sum(1)


def train_toy(
    n: int = 20, m: int = 5, sparsity: float = 0.0, importance=None, steps: int = 5000, batch: int = 1024,
    lr: float = 1e-3, seed: int = 0, data: torch.Tensor | None = None, weight_decay: float = 0.0,
) -> ToyModel:
    """Train the ReLU-output toy model. ``importance`` defaults to 0.7^i; ``data`` (N x n) replaces
    fresh sparse batches with batches drawn from a fixed set of inputs (with replacement); AdamW's
    ``weight_decay`` is what lets a model trained on few points store the points rather than the
    features (Henighan et al. 2023 train with it)."""
    if not 0 <= sparsity < 1:
        raise UserError(f"sparsity must lie in [0, 1), got {sparsity}")
    if m < 1 or n < 1:
        raise UserError(f"n and m must be positive, got n={n}, m={m}")
    imp = torch.as_tensor(np.asarray(importance if importance is not None else 0.7 ** np.arange(n)), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    w = torch.nn.init.xavier_normal_(torch.empty(m, n), generator=generator).requires_grad_()
    b = torch.zeros(n, requires_grad=True)
    optimizer = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    recent = []  # the losses of the last 100 steps
    for step in range(steps):
        if data is None:
            x = sparse_batch(batch, n, sparsity, generator)
        else:
            x = data[torch.randint(len(data), (min(batch, len(data)),), generator=generator)]
        loss = (imp * (x - reconstruction(w, b, x)) ** 2).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= steps - 100:
            recent.append(float(loss.detach()))
    return ToyModel(w.detach().numpy().copy(), b.detach().numpy().copy(), float(np.mean(recent)))


def phase_diagram(sparsities, importances, steps: int = 2000, seed: int = 0) -> np.ndarray:
    """n = 2 features, m = 1 dimension, feature 1 of importance 1, feature 2 of the given relative
    importances. Entry [s, r]: 0 = feature 2 not represented, 1 = it takes the dimension alone,
    2 = both share it (superposition, an antipodal pair)."""
    out = np.zeros((len(sparsities), len(importances)), dtype=np.int64)
    for i, s in enumerate(sparsities):
        for j, r in enumerate(importances):
            model = train_toy(2, 1, s, [1.0, r], steps=steps, seed=seed)
            first, second = model.norms > 0.5
            out[i, j] = 2 if (first and second) else (1 if second else 0)
    return out


def selection_experiment(
    n: int = 20, m: int = 5, sparsity: float = 0.9, pool: int = 20000, budget: int = 2000, initial: int = 500,
    steps: int = 3000, seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Train on ``budget`` inputs chosen at random or the way uncertainty sampling chooses.

    "Uncertain" inputs are those a model trained on ``initial`` random inputs reconstructs
    worst (highest importance-weighted loss), a toy counterpart of least-confidence
    active learning; the rest of the budget is filled with them. Returns the geometry
    of both trained models, so their superposition can be compared where it is known.
    """
    generator = torch.Generator().manual_seed(seed)
    x = sparse_batch(pool, n, sparsity, generator)
    imp = torch.as_tensor(0.7 ** np.arange(n), dtype=torch.float32)
    perm = torch.randperm(pool, generator=generator)
    first, rest = perm[:initial], perm[initial:]
    scout = train_toy(n, m, sparsity, steps=steps, seed=seed, data=x[first])
    err = importance_error(scout, x[rest], imp)
    chosen = torch.cat([first, rest[err.argsort(descending=True)[: budget - initial]]])
    random = perm[:budget]
    out = {}
    for name, idx in (("random", random), ("uncertain", chosen)):
        out[name] = train_toy(n, m, sparsity, steps=steps, seed=seed, data=x[idx]).summary()
        out[name]["input_density"] = float((x[idx] > 0).float().mean())
    return out

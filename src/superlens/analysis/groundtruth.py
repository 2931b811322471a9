"""Synthetic layer activations whose features are known: the ground truth for superposition metrics.

A vector is ReLU(sum_i a_i d_i + c m_y + noise): ``features`` unit directions d_i in
``neurons`` dimensions, a few of them active per vector with non-negative magnitudes
a_i, plus an optional class-mean component of weight c along a direction m_y of the
vector's class y. The true number of features per neuron is ``features / neurons``;
the class weight adds class separation without adding features, so a superposition
metric should follow the first and ignore the second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from superlens.errors import UserError

MAGNITUDES = ("uniform", "exponential", "lognormal", "constant")


@dataclass
class SyntheticActivations:
    x: np.ndarray  # (n, neurons) float32 activations
    labels: np.ndarray  # (n,) class of each vector
    directions: np.ndarray  # (features, neurons) unit feature directions
    codes: np.ndarray  # (n, features) float32 true magnitudes (0 where inactive)
    class_means: np.ndarray  # (classes, neurons) unit class directions (scaled by class_weight in x)

    @property
    def features_per_neuron(self) -> float:
        return self.directions.shape[0] / self.directions.shape[1]


def _magnitudes(rng: np.random.Generator, kind: str, size) -> np.ndarray:
    """Non-negative magnitudes with mean 1."""
    if kind == "uniform":
        return rng.uniform(0.0, 2.0, size)
    if kind == "exponential":
        return rng.exponential(1.0, size)
    if kind == "lognormal":
        return rng.lognormal(-0.5, 1.0, size)  # mean exp(-0.5 + 0.5) = 1
    if kind == "constant":
        return np.ones(size)
    raise UserError(f"magnitude must be one of {', '.join(MAGNITUDES)}, got {kind!r}")


def synthetic_activations(n: int, neurons: int, features: int, *, active: int = 3, magnitude: str = "uniform",
                          classes: int = 10, class_weight: float = 0.0, noise: float = 0.0, relu: bool = True,
                          frequency_decay: float = 0.0, seed: int = 0) -> SyntheticActivations:
    """``n`` vectors of ``neurons`` activations built from ``features`` known directions.

    ``active``: features per vector, drawn without replacement with probability
    proportional to rank^-``frequency_decay`` (0: all equally frequent). ``magnitude``:
    the distribution of an active feature's magnitude (mean 1). ``class_weight``: c, the
    weight of the class-mean component (``classes`` random unit directions). ``noise``:
    standard deviation of isotropic Gaussian noise added before the ReLU.
    """
    if not (neurons >= 1 and features >= 1 and 1 <= active <= features and n >= 1):
        raise UserError(f"need n, neurons, features >= 1 and 1 <= active <= features, got n={n}, "
                        f"neurons={neurons}, features={features}, active={active}")
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(features, neurons))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    class_means = rng.normal(size=(classes, neurons))
    class_means /= np.linalg.norm(class_means, axis=1, keepdims=True)
    p = np.arange(1, features + 1, dtype=np.float64) ** -frequency_decay
    p /= p.sum()
    # `active` distinct features per row: the smallest Gumbel-perturbed -log p keys (sampling without replacement)
    keys = rng.gumbel(size=(n, features)) + np.log(p)
    chosen = np.argpartition(-keys, active - 1, axis=1)[:, :active]
    codes = np.zeros((n, features), np.float32)
    np.put_along_axis(codes, chosen, _magnitudes(rng, magnitude, (n, active)).astype(np.float32), axis=1)
    labels = rng.integers(0, classes, n)
    x = codes @ directions.astype(np.float32) + np.float32(class_weight) * class_means[labels].astype(np.float32)
    if noise > 0:
        x += rng.normal(scale=noise, size=x.shape).astype(np.float32)
    if relu:
        np.maximum(x, 0, out=x)
    return SyntheticActivations(x.astype(np.float32), labels, directions, codes, class_means)

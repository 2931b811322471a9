import numpy as np
import pytest

from superlens.toy import (dimensions_per_feature, feature_dimensionality, interference, phase_diagram,
                           selection_experiment, train_toy)


def polygon(k: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(angles), np.sin(angles)])  # (2, k): columns are features


def test_analytic_feature_dimensionality():
    assert feature_dimensionality(np.eye(4)) == pytest.approx(np.ones(4))  # orthogonal: 1 each
    assert feature_dimensionality(np.array([[1.0, -1.0]])) == pytest.approx([0.5, 0.5])  # antipodal pair
    assert feature_dimensionality(polygon(3)) == pytest.approx(np.full(3, 2 / 3))  # triangle in 2-D
    assert feature_dimensionality(polygon(5)) == pytest.approx(np.full(5, 2 / 5))  # pentagon in 2-D
    tetrahedron = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float).T / np.sqrt(3)
    assert feature_dimensionality(tetrahedron) == pytest.approx(np.full(4, 3 / 4))
    assert feature_dimensionality(np.array([[1.0, 0.0], [0.0, 0.0]]))[1] == 0.0  # unrepresented feature


def test_dimensions_per_feature_and_interference():
    pairs = np.zeros((20, 40))  # 20 antipodal pairs, one per axis of 20 dimensions
    for axis in range(20):
        pairs[axis, 2 * axis], pairs[axis, 2 * axis + 1] = 1.0, -1.0
    assert dimensions_per_feature(pairs) == pytest.approx(0.5)
    assert interference(np.eye(3)) == pytest.approx(np.zeros(3))
    assert interference(np.array([[1.0, -1.0]])) == pytest.approx([1.0, 1.0])


def test_dense_inputs_give_five_orthogonal_features():
    # n=20, m=5, importance 0.7^i, S=0: the 5 most important features get orthogonal unit
    # directions, the other 15 (almost) nothing. Tolerances are loose on purpose.
    model = train_toy(20, 5, sparsity=0.0, steps=4000, seed=0)
    norms = model.norms
    assert np.all(np.abs(norms[:5] - 1) < 0.1) and np.all(norms[5:] < 0.2)
    unit = model.w[:, :5] / norms[:5]
    off_diagonal = unit.T @ unit - np.eye(5)
    assert np.abs(off_diagonal).max() < 0.1


def test_sparse_inputs_give_superposition():
    model = train_toy(20, 5, sparsity=0.99, steps=4000, seed=0)
    assert model.represented() > 5  # clearly more features than dimensions
    assert dimensions_per_feature(model.w) < 1.0


def test_phase_diagram_corners():
    grid = phase_diagram([0.0, 0.99], [0.1, 1.0], steps=1500)
    assert grid[0, 0] == 0  # dense, unimportant second feature: dropped
    assert grid[1, 1] == 2  # very sparse, equally important: both share the dimension


def test_selection_experiment_reports_both_arms():
    out = selection_experiment(n=10, m=3, sparsity=0.8, pool=3000, budget=600, initial=200, steps=300)
    assert set(out) == {"random", "uncertain"}
    for arm in out.values():
        assert {"represented", "dims_per_feature", "mean_interference", "loss", "input_density"} <= set(arm)
    # uncertainty picks the inputs the scout reconstructs worst, which carry more active features
    assert out["uncertain"]["input_density"] > out["random"]["input_density"]

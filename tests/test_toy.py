import numpy as np
import pytest
import torch

from superlens.toy import (ToyModel, composition_mediation, dimensions_per_feature, feature_dimensionality, interference,
                           lens_strategies, matched_inputs, memorisation_curve, phase_diagram, point_dimensionality, selection_experiment,
                           train_toy)
from superlens.toy.questions import mediation_verdict, select


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


# The three questions (superlens.toy.questions): the constructions first, then each question trained small.

def test_matched_inputs_keep_frequencies_and_only_then_cooccurrence():
    g = torch.Generator().manual_seed(0)
    on = torch.rand(4000, generator=g) < 0.3
    subset = torch.zeros(4000, 6)
    subset[on, 0] = subset[on, 1] = 0.5  # features 0 and 1 always together, with one value each
    subset[:, 2:] = torch.rand(4000, 4, generator=g) * (torch.rand(4000, 4, generator=g) < 0.1)
    for cooc in (False, True):
        fresh = matched_inputs(subset, 20000, g, keep_cooccurrence=cooc)
        assert (fresh > 0).float().mean(0).numpy() == pytest.approx((subset > 0).float().mean(0).numpy(), abs=0.015)
        assert set(fresh[:, 0].unique().tolist()) <= {0.0, 0.5}  # values come from the feature's own values
        together = ((fresh[:, 0] > 0) & (fresh[:, 1] > 0)).float().mean().item()
        assert together == pytest.approx(0.3 if cooc else 0.09, abs=0.015)


def test_point_dimensionality_by_hand():
    w = np.eye(3)  # points' hidden vectors are the points themselves
    assert point_dimensionality(w, np.eye(3)) == pytest.approx(np.ones(3))  # orthogonal points: 1 each
    assert point_dimensionality(w, np.array([[1.0, 0, 0], [2.0, 0, 0]])) == pytest.approx([0.2, 0.8])
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(2, 7)), rng.random((9, 7))
    h = x @ w.T
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    brute = (h**2).sum(1) / ((unit @ h.T) ** 2).sum(1)
    assert point_dimensionality(w, x) == pytest.approx(brute)
    assert point_dimensionality(w, x).sum() <= 2 + 1e-9  # at most m dimensions in all


@pytest.mark.parametrize("effect, freq, cooc, verdict", [
    (0.05, 0.3, 0.3, "no effect"), (0.5, 0.05, 0.3, "mediated by frequencies"),
    (0.5, 0.3, 0.05, "mediated by co-occurrence"), (-0.5, 0.3, -0.3, "not mediated")])
def test_mediation_verdict(effect, freq, cooc, verdict):
    row = {"effect": effect, "spread": 0.1, "residual_frequencies": freq, "residual_cooccurrence": cooc}
    assert mediation_verdict(row) == verdict


def test_toy_selection_rules_do_what_they_say():
    g, rng = torch.Generator().manual_seed(1), np.random.default_rng(1)
    x = torch.zeros(400, 4)
    x[:200, 0] = 1.0  # a common feature
    x[200:210, 3] = 1.0  # a rare one
    x[300:320, 1] = x[300:320, 2] = 1.0  # two features on together
    first, rest = torch.arange(0, 100), torch.arange(100, 400)
    picks = set(select("coverage", x, first, rest, 10, None, torch.ones(4), rng).tolist())
    # the labelled set holds feature 0 a hundred times and nothing else: every pick carries a feature it lacks
    assert picks <= set(range(200, 210)) | set(range(300, 320)) and len(picks & set(range(200, 210))) == 3
    scout = ToyModel(w=np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]), b=np.zeros(4), loss=0.0)
    picks = select("interference", x, first, rest, 20, scout, torch.ones(4), rng, random_share=0.5)
    assert set(picks[:10].tolist()) <= set(range(300, 320))  # features 1 and 2 share a direction and fire together
    worst = select("uncertainty", x, first, rest, 10, scout, torch.ones(4), rng)
    # features 1 and 2 share a direction, so each reads the other's value back (error 2); feature 3 alone has
    # no direction (error 1); feature 0 alone is read back exactly
    assert set(worst.tolist()) <= set(range(300, 320))


def test_composition_mediation_small():
    out = composition_mediation(n=8, m=3, pool=2000, budget=300, initial=100, steps=300, seeds=(0, 1))
    assert set(out["answers"]) == {"uncertainty", "coverage", "interference"}
    for metrics in out["answers"].values():
        for row in metrics.values():
            assert row["spread"] > 0 and row["verdict"] in ("no effect", "mediated by frequencies",
                                                            "mediated by co-occurrence", "not mediated")
    # uncertainty picks the inputs the scout reconstructs worst, which carry more active features
    density = [s["uncertainty"]["loss"] > s["random"]["loss"] for s in out["per_seed"]]
    assert all(density)


def test_few_points_are_stored_as_points_many_as_features():
    out = memorisation_curve(sizes=(10, 2560), steps=500)  # n = 200 features in m = 2 dimensions
    by = {(r["size"], r["arm"]): r for r in out["rows"]}
    small, large = by[(10, "random")], by[(2560, "random")]
    assert small["point_dims_top"] > small["feature_dims_top"]  # 10 points: the points hold the dimensions
    for arm in ("random", "uncertainty"):  # 2,560 points: the features do
        assert by[(2560, arm)]["feature_dims_top"] > 5 * by[(2560, arm)]["point_dims_top"]
    assert all(abs(r["feature_dims"] - 2) < 0.1 and abs(r["point_dims"] - 2) < 0.1 for r in out["rows"])  # sums: m
    assert large["loss"] > small["loss"]  # ten points can be reconstructed; 2,560 sparse points cannot all be


def test_the_lens_strategies_change_the_data_as_they_say():
    out = lens_strategies(n=10, m=3, pool=2000, budget=300, initial=100, steps=300, seeds=(0,), pairs=3)
    evenness = {r["arm"]: r["evenness"] for r in out["coverage"]}
    assert evenness["coverage"] > evenness["random"] + 0.05  # rare features' frequencies raised towards the common
    pairs = out["interference"]
    assert pairs and all(r["interference_cofire"] > r["random_cofire"] for r in pairs)  # targeted pairs on together
    assert 0 <= out["interference_summary"]["sign_test_p"] <= 1

"""The dose of an arm: its measures on constructed labelled sets with known answers."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from superlens.active.typical import knn_mean_distance
from superlens.analysis.dose import (DoseReference, arm_dose, dose, js_divergence, labelled_by_round, reference_from,
                                     within_reference)
from superlens.errors import UserError


def test_js_divergence_matches_scipy_and_its_bounds():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.integers(0, 20, 7), rng.integers(0, 20, 7)
        assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)
    assert js_divergence([3, 1, 0], [6, 2, 0]) == 0  # the same shape at another size
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the largest value
    assert js_divergence([0, 0], [0, 0]) == 0 and js_divergence([0, 0], [1, 0]) == 1
    with pytest.raises(UserError, match="two non-negative histograms of the same bins"):
        js_divergence([1, 2], [1, 2, 3])


def reference(n=400, classes=4, latents=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    fires = rng.random((n, latents)) < 0.3
    fires[:, latents - 1] = False
    fires[:20, latents - 1] = True  # a rare latent: only the first 20 images carry it
    return DoseReference(labels, rng.random(n), rng.random(n), fires, classes)


def test_the_dose_of_identical_labelled_sets_is_zero_and_grows_with_a_constructed_shift():
    ref = reference()
    base = np.arange(100, 300)
    same = dose(ref, base, base, base[100:], base[100:])
    assert same == {"class_js": 0.0, "latent_js": 0.0, "margin_shift": 0.0, "typicality_shift": 0.0}
    class_js, latent_js = [], []
    for k in (10, 40, 80):  # replace k picks by images of class 0 that carry the rare latent
        arm = np.concatenate([base[:-k], np.arange(0, 4 * k, 4)])
        d = dose(ref, arm, base, arm[100:], base[100:])
        class_js.append(d["class_js"])
        latent_js.append(d["latent_js"])
    assert 0 < class_js[0] < class_js[1] < class_js[2] and 0 < latent_js[0] < latent_js[1] < latent_js[2]
    no_latents = DoseReference(ref.labels, ref.margin, ref.typicality, None, 4)
    assert dose(no_latents, base, base, base, base)["latent_js"] is None


def test_margin_and_typicality_of_a_reference_and_the_shifts_of_picks():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 0.1, (190, 3)), rng.normal(0, 5, (10, 3)) + 20])  # 10 outliers
    probs = rng.dirichlet(np.ones(5), 200)
    ref = reference_from(probs, knn_mean_distance(features.astype(np.float32), 5), np.arange(200) % 5)
    top = np.sort(probs, axis=1)
    assert ref.margin == pytest.approx(top[:, -1] - top[:, -2])
    assert ref.typicality[190:].max() < ref.typicality[:190].min()  # the outliers are the least typical
    assert sorted(ref.typicality) == pytest.approx((np.arange(200) + 0.5) / 200)  # a percentile of the pool
    labelled = np.arange(100)
    outliers = np.concatenate([labelled, np.arange(190, 200)])
    inliers = np.concatenate([labelled, np.arange(100, 110)])
    d = dose(ref, outliers, inliers, np.arange(190, 200), np.arange(100, 110))
    assert d["typicality_shift"] == pytest.approx(ref.typicality[190:].mean() - ref.typicality[100:110].mean())
    assert d["typicality_shift"] < -0.4
    assert d["margin_shift"] == pytest.approx(ref.margin[190:].mean() - ref.margin[100:110].mean())


def test_labelled_sets_by_round_from_the_pool_file():
    acquired = np.array([-1, 0, 2, 1, 0, -1, 1])
    rounds = labelled_by_round(acquired)
    assert list(rounds) == [0, 1, 2]
    assert rounds[0].tolist() == [1, 4] and rounds[1].tolist() == [1, 3, 4, 6] and rounds[2].tolist() == [1, 2, 3, 4, 6]
    ref = reference(n=7, classes=2, latents=2)
    per_round = arm_dose(ref, acquired, acquired)
    assert [r["round"] for r in per_round] == [0, 1, 2] and [r["n_labeled"] for r in per_round] == [2, 4, 5]
    assert all(r["class_js"] == 0 for r in per_round) and per_round[0]["margin_shift"] is None  # no picks yet


@pytest.mark.parametrize("values, expected", [
    ({"class_js": [0.01, 0.02], "margin_shift": [0.01, -0.02]}, True),
    ({"class_js": [0.05, 0.06], "margin_shift": [0.0, 0.0]}, False),  # a distance beyond every A/A seed
    ({"class_js": [0.01, 0.01], "margin_shift": [-0.2, -0.3]}, False),  # a shift beyond, whichever its sign
    ({"latent_js": [0.5]}, None),  # nothing the A/A arm has
])
def test_within_the_aa_arms_spread(values, expected):
    aa = {"class_js": [0.03, 0.01], "margin_shift": [0.05, -0.1]}
    assert within_reference(values, aa) is expected


def test_the_smallest_detectable_psi_effect_in_planted_features_per_neuron():
    from superlens.study.summary import _in_planted_features

    primary = {"metric": "psi", "arms": {"al-margin": {"detectable_effect_80": 0.06}, "al-badge": {}}}
    planted = {"response": [{"psi_rise_per_planted_per_neuron": 0.9}, {"psi_rise_per_planted_per_neuron": 0.3}]}
    _in_planted_features(primary, planted)  # read at the largest K planted: 0.06 / 0.3
    assert primary["arms"]["al-margin"]["detectable_in_planted_per_neuron"] == pytest.approx(0.2)
    assert primary["arms"]["al-badge"]["detectable_in_planted_per_neuron"] is None
    flat = {"response": [{"psi_rise_per_planted_per_neuron": 0.0}]}
    _in_planted_features(primary, flat)  # a control that did not respond converts nothing
    assert primary["arms"]["al-margin"]["detectable_in_planted_per_neuron"] is None

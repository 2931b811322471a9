"""Comparisons that separate superposition from accuracy, and error control over a whole study."""

import numpy as np
import pytest

from superlens.analysis import stats


def curves(rng, seeds, accuracies, shift=0.0, noise=0.002):
    """Per seed: accuracies over rounds and a metric that is a function of accuracy (plus ``shift``)."""
    out = []
    for _ in range(seeds):
        acc = np.sort(accuracies + rng.normal(0, 0.005, len(accuracies)))
        out.append((acc, 2.0 - 3.0 * acc + shift + rng.normal(0, noise, len(acc))))
    return out


def test_accuracy_matched_separates_a_better_classifier_from_a_changed_representation():
    rng = np.random.default_rng(0)
    control = curves(rng, 6, np.array([0.40, 0.50, 0.60, 0.70]))
    better = curves(rng, 6, np.array([0.45, 0.57, 0.68, 0.78]))  # same metric-vs-accuracy law, higher accuracy
    raw = np.array([b[1][-1] - c[1][-1] for b, c in zip(better, control)])
    assert raw.mean() < -0.15  # at equal labels the better classifier looks different
    same_law = stats.accuracy_matched(better, control)
    lo, hi = same_law["difference_ci95"]
    assert lo <= 0 <= hi and abs(same_law["difference"]) < 0.01
    assert same_law["seeds"] == list(range(6))
    assert 0.44 < same_law["accuracy_range"][0] < 0.47 and 0.69 < same_law["accuracy_range"][1] < 0.72
    shifted = stats.accuracy_matched(curves(rng, 6, np.array([0.45, 0.57, 0.68, 0.78]), shift=0.05), control)
    assert shifted["difference"] == pytest.approx(0.05, abs=0.01) and shifted["p_value"] < 0.01


def test_accuracy_matched_leaves_out_seeds_whose_accuracies_never_meet():
    rng = np.random.default_rng(1)
    control = curves(rng, 3, np.array([0.40, 0.50]))
    arm = curves(rng, 2, np.array([0.42, 0.52])) + [(np.array([0.8, 0.9]), np.array([0.0, 0.0]))]
    result = stats.accuracy_matched(arm, control)
    assert result["seeds"] == [0, 1]
    assert stats.matched_difference((np.array([0.1, 0.2]), np.array([1.0, 2.0])),
                                    (np.array([0.15, 0.3]), np.array([0.0, 0.0])))[0] == pytest.approx(1.75)
    with pytest.raises(ValueError, match="one curve per seed"):
        stats.accuracy_matched(arm, control[:2])


def test_compare_to_control_keeps_the_study_wide_error_at_five_percent():
    """3 arms x 13 equicorrelated metrics (rho 0.5) under no effect: one Holm over all 39 keeps
    P(any false positive) at or below 0.05; Holm within each arm does not."""
    rng = np.random.default_rng(2)
    seeds, metrics, sims, rho = 5, [f"m{i}" for i in range(13)], 1500, 0.5
    cov = np.full((13, 13), rho) + (1 - rho) * np.eye(13)
    chol = np.linalg.cholesky(cov)
    study_wide = per_arm = 0
    for _ in range(sims):
        per_seed = {arm: {m: v.tolist() for m, v in zip(metrics, (rng.normal(size=(seeds, 13)) @ chol.T).T)}
                    for arm in ("al-random", "al-a", "al-b", "al-c")}
        result = stats.compare_to_control(per_seed, headline=metrics)
        study_wide += any(v["p_adjusted"] < 0.05 for block in result.values() for v in block.values())
        per_arm += any(min(stats.holm([block[m]["p_value"] for m in metrics])) < 0.05 for block in result.values())
    # Holm bounds it by 0.05 under any dependence; the simulated rate may not exceed that by more than
    # its Monte Carlo error (2 SE at 0.05), while Holm within each arm lands well above it
    tolerance = 2 * np.sqrt(0.05 * 0.95 / sims)
    assert study_wide / sims <= 0.05 + tolerance
    assert per_arm / sims > 0.05 + 3 * tolerance


def test_compare_to_control_families_and_hand_holm():
    per_seed = {"al-random": {"acc": [0.5, 0.6, 0.7], "x": [1.0, 1.0, 1.0]},
                "al-a": {"acc": [0.6, 0.7, 0.8], "x": [2.0, 1.5, 1.0]},
                "al-b": {"acc": [0.5, 0.61, 0.69], "x": [1.0, 1.2, 0.9]}}
    out = stats.compare_to_control(per_seed, headline=["acc"])
    assert out["al-a"]["acc"]["family"] == "headline" and out["al-a"]["x"]["family"] == "secondary"
    p = [out["al-a"]["acc"]["p_value"], out["al-b"]["acc"]["p_value"]]
    assert [out["al-a"]["acc"]["p_adjusted"], out["al-b"]["acc"]["p_adjusted"]] == pytest.approx(stats.holm(p))
    assert out["al-a"]["acc"]["difference"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="control arm"):
        stats.compare_to_control(per_seed, control="al-x")


def test_adjusted_intervals_agree_with_the_adjusted_p():
    """Wherever Holm's adjusted p is >= 0.05 the simultaneous (Bonferroni-level) interval contains 0."""
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(300):
        block = {f"m{i}": stats.compare_paired(dict(enumerate(rng.normal(0.6, 1, 5))), dict(enumerate(np.zeros(5))))
                 for i in range(6)}
        stats.adjust_together(list(block.values()))
        for v in block.values():
            lo, hi = v["difference_ci95_adjusted"]
            assert lo <= v["difference"] <= hi and hi - lo >= v["difference_ci95"][1] - v["difference_ci95"][0]
            if v["p_adjusted"] >= 0.05:
                checked += 1
                assert lo <= 0 <= hi
    assert checked > 100
    one = stats.compare_paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert stats.simultaneous_interval(one, 1) == pytest.approx(one["difference_ci95"])  # a family of one: the same


def test_power_by_simulation():
    rng = np.random.default_rng(4)
    n, sd = 5, 1.0
    effect = stats.detectable_effect(sd, n)
    hits = np.mean([stats.paired_test(rng.normal(effect, sd, n)) < 0.05 for _ in range(4000)])
    assert hits == pytest.approx(0.8, abs=0.03)
    assert stats.seeds_needed(1.0, 1.0) == 10  # d_z = 1: 10 seeds for 80% (41% at 5)
    assert stats._power(1.0, 1.0, 5) == pytest.approx(0.40, abs=0.02)
    assert stats.seeds_needed(0.0, 1.0) is None

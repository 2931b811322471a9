"""The paired design, the control comparison, honest intervals and per-round superposition."""

import csv
import json
from itertools import product

import numpy as np
import pytest
import torch
from torch import nn

from superlens.analysis import stats
from superlens.config import load_config
from superlens.rundir import RunDir
from superlens.study import HEADLINE, REPRESENTATION_QUALITY, run_study

TINY = [
    "workers=1",  # one job at a time in the test process (the demo preset runs two side by side)
    "seeds=[0,1,2]", "model.width=4", "recipe.epochs=1", "recipe.batch_size=128",
    "active.initial_size=40", "active.query_size=40", "active.rounds=2",
    "analysis.max_samples=150", "analysis.probe_samples=200", "analysis.tsne=false",
    "featvis.enabled=false", "sae.enabled=false", "toy.enabled=false",
]
TIMING = ("query_seconds", "train_seconds")


@pytest.mark.parametrize("n", [3, 5, 10])
def test_mean_ci_covers_the_true_mean_at_95_percent(n):
    rng = np.random.default_rng(n)
    reps = 4000
    hits = 0
    for _ in range(reps):
        lo, hi = stats.mean_ci(rng.normal(1.5, 2.0, n))["ci95"]
        hits += lo <= 1.5 <= hi
    assert hits / reps >= 0.93  # a percentile bootstrap gives about 0.74 at n = 3


def test_intervals_cut_to_the_range_of_an_accuracy_keep_their_coverage():
    # accuracies near 1 with 3 seeds: the whole t-interval often passes 1; the cut one stays in [0, 1]
    rng = np.random.default_rng(0)
    true = 0.97
    whole = cut = 0
    for _ in range(4000):
        acc = rng.binomial(200, true, 3) / 200
        lo, hi = stats.t_interval(acc)
        c_lo, c_hi = stats.mean_ci(acc, bounds=stats.metric_bounds("test_accuracy"))["ci95"]
        assert 0.0 <= c_lo and c_hi <= 1.0 and c_lo >= lo and c_hi <= hi
        whole += lo <= true <= hi
        cut += c_lo <= true <= c_hi
    assert cut == whole
    assert stats.t_interval([0.99, 1.0, 0.98])[1] > 1.0 and stats.t_interval([0.99, 1.0, 0.98], bounds=(0, 1))[1] == 1.0
    assert stats.metric_bounds("aubc") == (0.0, 1.0) and stats.metric_bounds("sae_spliced_accuracy") == (0.0, 1.0)
    assert stats.metric_bounds("silhouette") is None and stats.metric_bounds("psi_clears_floor") == (0.0, 1.0)


def test_paired_tests_against_hand_enumeration_and_scipy():
    from scipy.stats import ttest_rel

    d = [1.0, 2.0, -0.5]
    # 8 sign patterns; |sum| >= 2.5 for +-(1 + 2 - 0.5) and +-(1 + 2 + 0.5): 4 of 8
    assert stats.paired_test(d, "signflip") == pytest.approx(0.5)
    by_hand = np.mean([abs(np.dot(s, d)) >= 2.5 - 1e-12 for s in product((1, -1), repeat=3)])
    assert stats.paired_test(d, "signflip") == pytest.approx(by_hand)
    assert stats.paired_test([1, 2, 3, 4, 5], "signflip") == pytest.approx(2 / 32)  # the smallest p at 5 seeds
    assert stats.smallest_p(5, "signflip") == pytest.approx(2 / 32) and stats.smallest_p(6, "signflip") < 0.05
    a, b = np.array([0.8, 0.7, 0.9, 0.85]), np.array([0.7, 0.72, 0.8, 0.8])
    assert stats.paired_test(a - b, "t") == pytest.approx(ttest_rel(a, b).pvalue)
    assert np.isnan(stats.paired_test([0.3], "t"))
    with pytest.raises(ValueError, match="unknown paired test"):
        stats.paired_test(d, "wilcoxon")


def test_holm_by_hand_and_effect_size():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = stats.holm([0.2, None, 0.01])
    assert out[0] == pytest.approx(0.2) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)
    d = np.array([1.0, 2.0, 3.0, 4.0])
    assert stats.paired_effect(d) == pytest.approx(d.mean() / d.std(ddof=1) * (1 - 3 / 11))


def test_interval_of_a_paired_difference_matches_the_t_test():
    # the 95% t-interval excludes 0 exactly when the paired t-test gives p < 0.05
    rng = np.random.default_rng(1)
    for _ in range(200):
        d = rng.normal(0.5, 1.0, 5)
        lo, hi = stats.t_interval(d)
        assert (lo > 0 or hi < 0) == (stats.paired_test(d, "t") < 0.05)


@pytest.fixture(scope="session")  # one set-up per worker, whatever the order of its tests
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("paired")
    cfg = load_config("demo", [*TINY, "arms=[baseline,al-least_confidence,al-margin,al-random]"])
    summary = run_study(cfg, out, progress=False, log=lambda *_: None)
    return out, cfg, summary


@pytest.mark.xdist_group("test_comparisons-study")  # its module fixture: built once, on one worker
def test_round_zero_is_identical_across_the_arms_of_a_seed(study):
    out, cfg, _ = study
    run = RunDir(out)
    for seed in cfg["seeds"]:
        firsts = []
        for arm in ("al-least_confidence", "al-margin", "al-random"):
            row = json.loads((run.job(arm, seed).done).read_text())["records"][0]
            firsts.append({k: v for k, v in row.items() if k not in TIMING + ("arm",)})
        assert firsts[0] == firsts[1] == firsts[2]
        assert firsts[0]["n_labeled"] == 40 and "silhouette_features" in firsts[0]
        shared = torch.load(run.round0(seed).model, weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in shared.values())


@pytest.mark.xdist_group("test_comparisons-study")  # its module fixture: built once, on one worker
def test_vs_random_recomputed_by_hand(study):
    from scipy.stats import t

    _, cfg, summary = study
    arm, ref = summary["arms"]["al-least_confidence"], summary["arms"]["al-random"]
    block = arm["vs_random"]
    for key in ("test_accuracy", "silhouette_features", "nc1_area", "cosine_mean"):
        d = np.array(arm["per_seed"][key]) - np.array(ref["per_seed"][key])
        half = t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        assert block[key]["difference"] == pytest.approx(d.mean())
        assert block[key]["difference_ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
        stat = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
        assert block[key]["p_value"] == pytest.approx(2 * t.sf(abs(stat), len(d) - 1))
        assert block[key]["seeds"] == cfg["seeds"]
        assert block[key]["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1) * (1 - 3 / (4 * (len(d) - 1) - 1)))
    headline = [k for k in block if block[k]["family"] == "headline"]
    assert set(headline) <= set(HEADLINE) and "test_accuracy" in headline and "silhouette_features_area" not in headline
    quality = [k for k in block if block[k]["family"] == "representation_quality"]
    assert set(quality) <= set(REPRESENTATION_QUALITY) and "silhouette_features_area" in quality and "nc1" in quality
    assert block["cosine_centered_mean"]["family"] == "secondary"
    other = summary["arms"]["al-margin"]["vs_random"]
    for members in (headline, quality):  # one Holm within each family, over both AL arms' comparisons: study-wide
        expected = stats.holm([block[k]["p_value"] for k in members] + [other[k]["p_value"] for k in members])
        assert [block[k]["p_adjusted"] for k in members] + [other[k]["p_adjusted"] for k in members] == \
            pytest.approx(expected)
        m = len(expected)  # the simultaneous intervals at the Bonferroni level of the whole family
        assert block[members[0]]["difference_ci95_adjusted"] == pytest.approx(
            stats.simultaneous_interval(block[members[0]], m))
    assert "vs_random" not in ref and "vs_baseline" in ref and "vs_baseline" in arm
    assert summary["statistics"]["test"] == "paired t-test over seeds"
    assert "t-interval" in summary["statistics"]["interval"]


@pytest.mark.xdist_group("test_comparisons-study")  # its module fixture: built once, on one worker
def test_per_round_metrics_and_compute_in_rounds_csv(study):
    out, _, summary = study
    rows = list(csv.DictReader(open(out / "rounds.csv")))
    al = [r for r in rows if r["arm"] == "al-margin" and r["seed"] == "1"]
    assert [r["round"] for r in al] == ["0", "1", "2"]
    for r in al:
        for key in ("silhouette_features", "davies_bouldin_features", "cosine_centered_mean", "class_selectivity_mean",
                    "nc1", "images_seen", "optimizer_steps"):
            assert r[key] != "", key
    # one epoch per round over 40, 80, 120 labelled images in batches of 128
    assert [int(r["images_seen"]) for r in al] == [40, 80, 120]
    assert [int(r["optimizer_steps_total"]) for r in al] == [1, 2, 3]
    # the final round's snapshot is the final model's analysis
    final = json.loads((RunDir(out).job("al-margin", 1).analysis).read_text())["metrics"]
    assert float(al[-1]["silhouette_features"]) == pytest.approx(final["silhouette_features"], rel=1e-6)
    assert summary["arms"]["al-margin"]["images_seen_total"] == 240
    html = (out / "report.html").read_text()
    assert html.index("Verdict: each strategy against random sampling") < html.index("Setup")
    assert "Representation over the labelling budget" in html and "optimizer steps" in html
    assert "Representation quality (class separation)" in html
    # the dose without an A/A arm and without SAEs: class mix, margin and typicality, no verdict
    dose = summary["arms"]["al-margin"]["dose"]
    assert dose["seeds"] == [0, 1, 2] and dose["reference_arm"] is None and dose["changed_the_data"] is None
    assert dose["final"]["latent_js"]["mean"] is None and 0 <= dose["final"]["class_js"]["mean"] <= 1
    assert "dose" not in summary["arms"]["al-random"] and "dose" not in summary["arms"]["baseline"]
    assert "no A/A arm to compare with" in html


def test_signflip_with_three_seeds_is_called_unreachable(tmp_path):
    cfg = load_config("demo", [*TINY, "arms=[al-least_confidence,al-random]", "stats.test=signflip",
                               "analysis.per_round=false", "analysis.enabled=false"])
    summary = run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    assert summary["statistics"]["smallest_p"] == pytest.approx(0.25) and not summary["statistics"]["can_reach_0.05"]
    assert summary["arms"]["al-least_confidence"]["vs_random"]["test_accuracy"]["p_value"] >= 0.25
    assert "cannot reach p &lt; 0.05" in (tmp_path / "report.html").read_text()


def test_fixed_step_budget_gives_equal_compute(tmp_path):
    cfg = load_config("demo", [*TINY, "seeds=[0]", "arms=[baseline,al-random]", "recipe.steps=3",
                               "active.reset=scratch_same_init", "analysis.enabled=false"])
    run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "rounds.csv")))
    assert {int(r["optimizer_steps"]) for r in rows} == {3}


def test_pooled_sae_study_runs(tmp_path):
    cfg = load_config("demo", [*TINY, "seeds=[0]", "arms=[al-random]", "analysis.enabled=false", "sae.enabled=true",
                               "sae.pooled=true", "sae.stability=false", "sae.max_images=100",
                               "sae.settings.steps=10", "sae.settings.batch_size=32", "sae.superposition.max_steps=100",
                               "sae.superposition.window=50", "sae.superposition.batch_size=64"])
    summary = run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    m = summary["arms"]["al-random"]
    # a width-4 model's 32 pooled units and 100 SAE steps: the protocol runs, psi may well be 0 (nothing reproduced)
    assert 0 <= m["sae_accuracy_spliced"] <= 1 and m["psi"] >= 0 and m["psi_sae_sd"] >= 0


def test_pooled_splice_is_exact_for_an_identity_autoencoder():
    from superlens.analysis.sae import SAESettings, SparseAutoencoder
    from superlens.analysis.sae_measures import spliced_accuracies
    from superlens.data import load
    from superlens.models import resnet18

    test = load("digits").test.subset(np.arange(60))
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    c = 32
    sae = SparseAutoencoder(c, c, SAESettings(kind="l1"), torch.Generator().manual_seed(0))
    with torch.no_grad():  # decode(encode(x)) = x for non-negative x
        sae.W_enc.copy_(torch.eye(c)), sae.W_dec.copy_(torch.eye(c)), sae.b_enc.zero_(), sae.b_dec.zero_()
    out = spliced_accuracies(model, "layer4", sae, test, torch.zeros(c), device="cpu", pooled=True)
    assert out["accuracy_spliced"] == out["accuracy_clean"]


def test_featvis_uses_the_recipe_input_size():
    from superlens.analysis.featvis import FeatVisSettings

    assert FeatVisSettings().at_input_size(64).size == 64
    assert FeatVisSettings(upsample_to=224).at_input_size(64).size is None
    assert FeatVisSettings().at_input_size(None).size is None


def test_featvis_reads_a_layer_before_an_in_place_relu():
    from collections import OrderedDict

    from superlens.analysis.featvis import FeatVisSettings, visualize
    from superlens.data import load

    conv = nn.Conv2d(3, 2, 3, padding=1)
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([-50.0, 0.0]))  # channel 0 is far below zero everywhere
    model = nn.Sequential(OrderedDict(conv=conv, bn=bn, relu=nn.ReLU(inplace=True)))
    data = load("synthetic", n_train=50, n_test=10, image_size=16).train
    result = visualize(model, "bn", [0], data, FeatVisSettings(steps=30, seed=0))
    assert result.activation[0, 0] < -10  # the BatchNorm output, not the ReLU's zeros
    assert result.losses[-1] < result.losses[0]  # and it receives a gradient

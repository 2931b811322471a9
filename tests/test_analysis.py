import numpy as np
import pytest
import torch
from sklearn.metrics import davies_bouldin_score as sk_db
from sklearn.metrics import silhouette_score as sk_silhouette

from superlens.analysis import cosine, geometry, neurons
from superlens.analysis.embedding import tsne
from superlens.analysis.features import capture
from superlens.data import load
from superlens.errors import UserError
from superlens.models import resnet18


def layouts():
    rng = np.random.default_rng(0)
    balanced = rng.integers(0, 5, 300)
    skewed = np.minimum(rng.geometric(0.35, 300), 6)
    singleton = balanced.copy()
    singleton[7] = 42  # a class with a single member: silhouette 0 for it
    strings = np.array(["cat", "dog", "emu"])[rng.integers(0, 3, 300)]
    return {"balanced": balanced, "skewed": skewed, "singleton": singleton, "strings": strings}


@pytest.mark.parametrize("layout", list(layouts()))
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_matches_scikit_learn(layout, metric):
    labels = layouts()[layout]
    x = np.random.default_rng(1).normal(size=(300, 12)) + (np.unique(labels, return_inverse=True)[1][:, None] * 0.3)
    ours = geometry.silhouette_score(x, labels, metric=metric, chunk=37)
    assert abs(ours - sk_silhouette(x, labels, metric=metric)) < 1e-6


def test_silhouette_float32_features_and_chunking():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 64)).astype(np.float32)
    y = rng.integers(0, 10, 1000)
    ref = sk_silhouette(x.astype(np.float64), y)
    for chunk in (None, 7, 999, 5000):  # blocks of rows and columns, not dividing n
        assert abs(geometry.silhouette_score(x, y, chunk=chunk) - ref) < 1e-6


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_and_cosine_in_float32_as_on_an_accelerator(metric):
    import torch

    from superlens.analysis.validate import compute_dtype

    assert compute_dtype("cpu") == compute_dtype(None) == torch.float64
    assert compute_dtype(torch.device("cuda", 1)) == torch.float32  # the dtype a GPU computes in
    rng = np.random.default_rng(3)
    y = rng.integers(0, 10, 1500)
    x = (rng.normal(size=(1500, 256)) + y[:, None] * 0.05).astype(np.float32)
    ref = sk_silhouette(x.astype(np.float64), y, metric=metric)
    assert abs(geometry.silhouette_score(x, y, metric=metric, dtype=torch.float32, chunk=333) - ref) < 1e-5
    s32, s64 = (cosine.pairwise_cosine_stats(x, center=True, chunk=333, dtype=d) for d in (torch.float32, torch.float64))
    assert s32.mean == pytest.approx(s64.mean, abs=1e-6) and s32.std == pytest.approx(s64.std, abs=1e-6)
    assert np.abs(s32.counts - s64.counts).sum() <= 1e-3 * s64.counts.sum()  # a few pairs on bin edges


@pytest.mark.parametrize("layout", list(layouts()))
def test_davies_bouldin_matches_scikit_learn(layout):
    labels = layouts()[layout]
    x = np.random.default_rng(3).normal(size=(300, 5))
    assert abs(geometry.davies_bouldin_score(x, labels) - sk_db(x, labels)) < 1e-9


def test_davies_bouldin_documentation_example():
    # cluster {(0,1), (1,1)}: centroid (0.5, 1), mean distance 0.5; (3,4) alone: spread 0;
    # centroid distance sqrt(2.5^2 + 3^2) -> DB = 0.5 / sqrt(15.25) = 0.12804 (scikit-learn prints 0.12...)
    score = geometry.davies_bouldin_score([[0, 1], [1, 1], [3, 4]], [0, 0, 1])
    assert score == pytest.approx(0.5 / np.sqrt(15.25), abs=1e-12)


def test_nc1_is_zero_when_classes_collapse_and_grows_with_spread():
    rng = np.random.default_rng(4)
    means = rng.normal(size=(4, 6)) * 5
    y = np.repeat(np.arange(4), 25)
    assert geometry.nc1(means[y], y) == pytest.approx(0.0, abs=1e-12)
    small = geometry.nc1(means[y] + rng.normal(size=(100, 6)) * 0.1, y)
    large = geometry.nc1(means[y] + rng.normal(size=(100, 6)) * 1.0, y)
    assert 0 < small < large
    # hand-made: 2 classes on a line at -1 and +1, within-class offsets +-0.5 -> S_W = 0.25, S_B = 1
    x = np.array([[-1.5], [-0.5], [0.5], [1.5]])
    assert geometry.nc1(x, [0, 0, 1, 1]) == pytest.approx(0.25 / 1.0 / 2)


def test_probes_on_separable_data():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 200)
    x = np.eye(3)[y] * 10 + rng.normal(size=(200, 3)) * 0.1
    assert geometry.knn_accuracy(x[:150], y[:150], x[150:], y[150:], k=5) == 1.0
    assert geometry.linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:]) == 1.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_probes_on_the_device_agree_with_scikit_learn(metric):
    """The torch probes (used when the features are on a GPU) against scikit-learn on the same overlapping,
    non-negative, many-class features as a real layer gives: accuracy within 0.5 points."""
    rng = np.random.default_rng(9)
    classes, d = 10, 64
    means = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, 2500)
    x = np.maximum(means[y] + rng.normal(size=(2500, d)) * 2.0, 0).astype(np.float32)
    x[:, :3] = 1.0  # constant features: standardization must leave them alone, as StandardScaler does
    tr, te = slice(0, 2000), slice(2000, None)
    knn = geometry.knn_accuracy(x[tr], y[tr], x[te], y[te], k=10, metric=metric)
    assert 0.3 < knn < 0.99  # a case where the probes can disagree
    assert abs(geometry.knn_accuracy(x[tr], y[tr], x[te], y[te], k=10, metric=metric, device="cpu") - knn) <= 0.005
    if metric == "cosine":
        for c in (1.0, 0.01):
            probe = geometry.linear_probe_accuracy(x[tr], y[tr], x[te], y[te], c=c)
            assert 0.3 < probe < 0.99
            on_device = geometry.linear_probe_accuracy(x[tr], y[tr], x[te], y[te], c=c, device="cpu")
            assert abs(on_device - probe) <= 0.005, (c, on_device, probe)


def test_pairwise_cosine_stats_against_brute_force():
    x = np.random.default_rng(6).normal(size=(120, 8)) + 0.5
    s = cosine.pairwise_cosine_stats(x, chunk=17)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = (u @ u.T)[np.triu_indices(120, 1)]
    assert s.pairs == len(pairs) and s.counts.sum() == len(pairs)
    assert s.mean == pytest.approx(pairs.mean(), abs=1e-12)
    assert s.std == pytest.approx(pairs.std(), abs=1e-9)
    assert (s.min, s.max) == (pytest.approx(pairs.min()), pytest.approx(pairs.max()))
    for q, name in ((25, "q25"), (50, "median"), (75, "q75")):
        assert abs(getattr(s, name) - np.percentile(pairs, q)) < 2e-3  # bins are 0.001 wide
    centered = cosine.pairwise_cosine_stats(x, center=True)
    assert centered.mean < s.mean


def test_cosine_is_zero_between_orthonormal_vectors():
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(16, 16)))
    s = cosine.pairwise_cosine_stats(q.T)
    assert abs(s.mean) < 1e-12 and abs(s.min) < 1e-12 and abs(s.max) < 1e-12


def test_neuron_correlation_and_filter_cosines():
    rng = np.random.default_rng(8)
    base = rng.normal(size=(500, 1))
    acts = np.hstack([base, 2 * base + 1, -base, rng.normal(size=(500, 1)), np.ones((500, 1))])
    s = cosine.neuron_correlation_stats(acts)
    assert s.pairs == 6  # the constant unit is left out
    assert s.max == pytest.approx(1.0) and s.min == pytest.approx(-1.0)
    w = torch.zeros(3, 2, 1, 1)
    w[0, 0] = w[1, 1] = w[2, 0] = 1
    f = cosine.filter_cosine_stats(w)
    assert f.pairs == 3 and f.max == pytest.approx(1.0) and f.min == pytest.approx(0.0)


def test_class_selectivity_oracles():
    y = np.repeat(np.arange(4), 10)
    one_class = (y == 2).astype(float)[:, None]
    identical = np.ones((40, 1))
    silent = np.zeros((40, 1))
    acts = np.hstack([one_class, identical, silent])
    assert neurons.class_selectivity(acts, y).tolist() == pytest.approx([1.0, 0.0, 0.0])
    # means per class 1, 2, 3, 6 -> (6 - 2) / (6 + 2) = 0.5
    graded = np.array([1.0, 2.0, 3.0, 6.0])[y][:, None]
    assert neurons.class_selectivity(graded, y)[0] == pytest.approx(0.5)


def test_topk_class_entropy_oracles():
    y = np.repeat(np.arange(5), 20)
    rank_in_class = np.tile(np.arange(20.0), 5)  # the top 50: the 10 highest of every class
    assert neurons.topk_class_entropy(rank_in_class[:, None], y, k=50)[0] == pytest.approx(np.log(5))
    one_class = np.where(y == 3, rank_in_class + 1, 0.0)
    assert neurons.topk_class_entropy(one_class[:, None], y, k=10)[0] == pytest.approx(0.0)


def test_classes_for_mass_oracles():
    y = np.repeat(np.arange(4), 5)
    one = (y == 1).astype(float)
    even = np.ones(20)
    skewed = np.array([0.7, 0.2, 0.05, 0.05])[y]  # 0.7 + 0.2 = 0.9 of the mass
    out = neurons.classes_for_mass(np.stack([one, even, skewed, np.zeros(20)], 1), y, 0.9)
    assert out.tolist() == [1, 4, 2, 0]


def test_analysis_input_errors():
    x = np.random.default_rng(9).normal(size=(10, 3))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 of 10 rows"):
        geometry.silhouette_score(bad, np.arange(10) % 2)
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        geometry.davies_bouldin_score(x, np.zeros(10))
    with pytest.raises(ValueError, match="more samples .* than classes"):
        geometry.silhouette_score(x[:3], [0, 1, 2])
    with pytest.raises(ValueError, match="labels must have shape"):
        neurons.class_selectivity(x, [0, 1])


def test_tsne_is_seeded_and_two_dimensional():
    x = np.random.default_rng(10).normal(size=(80, 60))
    a, b = tsne(x, seed=3), tsne(x, seed=3)
    assert a.shape == (80, 2) and np.allclose(a, b)


def test_capture_by_name_pooling_and_errors():
    train, _ = load("synthetic", n_train=24, n_test=4)
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    out = capture(model, train, ["layer4", "layer4.1.conv2", "avgpool"], pool="none", batch_size=10)
    assert out["layer4"].shape == (24, 32, 4, 4)
    avg = capture(model, train, "layer4", pool="avg")["layer4"]
    assert np.allclose(avg, out["layer4"].mean(axis=(2, 3)), atol=1e-6)
    assert np.allclose(out["avgpool"][:, :, 0, 0], avg, atol=1e-6)
    flat = capture(model, train, "layer4", pool="flatten")["layer4"]
    assert flat.shape == (24, 32 * 16)
    twice = capture(model, train, "layer4.1.conv2", pool="avg", repeat_block="layer4.1")["layer4.1.conv2"]
    assert not np.allclose(twice, out["layer4.1.conv2"].mean(axis=(2, 3)))
    with pytest.raises(UserError, match="unknown layer 'layer5'; available: conv1, bn1, relu, maxpool, layer1"):
        capture(model, train, "layer5")
    both = capture(model, train, ["layer4", "layer4.1"], pool={"layer4": "flatten", "layer4.1": "avg"})  # one pass
    assert np.allclose(both["layer4"], flat, atol=1e-6) and np.allclose(both["layer4.1"], avg, atol=1e-6)
    assert list(capture(model, train, ["layer4", "layer4"], pool="avg")) == ["layer4"]
    with pytest.raises(UserError, match="pool must be one of avg, max, flatten, none, got None for 'layer4.1'"):
        capture(model, train, ["layer4", "layer4.1"], pool={"layer4": "avg"})

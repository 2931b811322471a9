"""TypiClust and ProbCover against constructions with known answers."""

import numpy as np
import pytest
import torch

from superlens.active import strategies, typical
from superlens.active.typical import ball_graph, greedy_cover, probcover, purity_radius, typiclust

CENTRES = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [20, 5], [-10, 5]], dtype=float)


def blobs():
    """Six 5 x 5 grids (spacing 0.1) around known centres; the centre of a grid is its most typical point."""
    offsets = np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), -1).reshape(-1, 2) * 0.1
    points = np.concatenate([c + offsets for c in CENTRES])
    blob = np.repeat(np.arange(len(CENTRES)), len(offsets))
    return points.astype(np.float32), blob


def lifted():
    """Six 5 x 5 grids (spacing 0.02) around orthogonal unit directions in 8-D: TypiClust's L2
    normalization changes each point's norm by a factor that depends only on its distance from its
    grid's centre, so point 12 of each 25-point grid stays its centre and its most typical point."""
    grid = np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), -1).reshape(-1, 2) * 0.02
    points = np.zeros((6 * 25, 8), np.float32)
    for b in range(6):
        points[b * 25 : (b + 1) * 25, b] = 1.0
        points[b * 25 : (b + 1) * 25, 6:] = grid
    return points, np.repeat(np.arange(6), 25)


@pytest.fixture(params=["sklearn", "lloyd"])
def clustering(request, monkeypatch):
    """TypiClust's clustering as on the CPU (scikit-learn), or as on an accelerator (``lloyd``, run here on the CPU)."""
    if request.param == "lloyd":
        monkeypatch.setattr(typical, "kmeans", lambda x, clusters, rng, pca_dims=64, device=None:
                            typical.lloyd(x, clusters, rng, device="cpu"))
    return request.param


def test_lloyd_finds_separated_clusters_and_matches_scikit_learn():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 5)) * 10
    truth = rng.integers(0, 8, 2000)
    x = (centres[truth] + rng.normal(size=(2000, 5))).astype(np.float32)
    for seed in range(5):
        ids = typical.lloyd(x, 8, np.random.default_rng(seed))
        assert len(set(zip(ids, truth))) == 8  # the same partition, up to the names of the clusters
    mixed = rng.normal(size=(3000, 6)).astype(np.float32)  # no clusters: local optima differ a little

    def inertia(ids):
        return sum(((mixed[ids == c] - mixed[ids == c].mean(0)) ** 2).sum() for c in np.unique(ids))

    ours = np.mean([inertia(typical.lloyd(mixed, 20, np.random.default_rng(s))) for s in range(3)])
    theirs = np.mean([inertia(KMeans(20, n_init=1, random_state=s).fit_predict(mixed)) for s in range(3)])
    assert ours <= 1.03 * theirs


def test_typiclust_picks_the_centre_of_every_blob(clustering):
    x, blob = lifted()
    picks = typiclust(x, x[:0], 6, np.random.default_rng(0), k=20)
    assert sorted(blob[picks]) == list(range(6))  # one per blob
    assert (picks % 25 == 12).all()  # each its centre


def test_typiclust_never_picks_a_covered_blob_while_one_is_uncovered(clustering):
    x, blob = lifted()
    covered = np.isin(blob, [1, 4])
    pool, labeled = x[~covered], x[covered][[0, 30]]  # one labelled point in blob 1, one in blob 4
    picks = typiclust(pool, labeled, 4, np.random.default_rng(1), k=20)
    assert sorted(blob[~covered][picks]) == [0, 2, 3, 5]
    assert (np.flatnonzero(~covered)[picks] % 25 == 12).all()


def test_typiclust_ignores_the_scale_of_each_embedding():
    rng = np.random.default_rng(5)
    pool, labeled = rng.normal(size=(600, 16)).astype(np.float32), rng.normal(size=(20, 16)).astype(np.float32)
    picks = typiclust(pool, labeled, 30, np.random.default_rng(0))
    scaled = typiclust(pool * rng.uniform(0.5, 2, (600, 1)).astype(np.float32), labeled, 30, np.random.default_rng(0))
    assert np.array_equal(picks, scaled)


def test_typiclust_typicality_is_over_the_remaining_points_of_a_cluster(monkeypatch):
    """Each pick recomputes typicality over the cluster's points not yet labelled or picked, with
    k = min(k, remaining // 2)."""
    calls, real = [], typical.knn_mean_distance

    def recording(x, k):
        calls.append((len(x), k))
        return real(x, k)

    monkeypatch.setattr(typical, "knn_mean_distance", recording)
    x = np.random.default_rng(6).normal(size=(10, 4)).astype(np.float32) + 20
    picks = typiclust(x, x[:0], 3, np.random.default_rng(0), k=20, max_clusters=1)
    assert len(set(picks.tolist())) == 3 and calls == [(10, 5), (9, 4), (8, 4)]


def brute_force_cover(x, delta, candidates, covered, budget):
    within = np.linalg.norm(x[:, None] - x[None], axis=2) <= delta + 1e-9
    covered = covered.copy()
    picks, history = [], []
    allowed = np.zeros(len(x), bool)
    allowed[candidates] = True
    for _ in range(budget):
        gains = np.array([(within[i] & ~covered).sum() if allowed[i] else -1 for i in range(len(x))])
        j = int(np.argmax(gains))
        if gains[j] <= 0:
            j = int(np.flatnonzero(allowed)[0])
        picks.append(j)
        allowed[j] = False
        covered |= within[j]
        history.append(int(covered.sum()))
    return picks, history


@pytest.mark.parametrize("delta", [1.0, 1.5, 2.0])
def test_greedy_cover_equals_brute_force_on_a_grid(delta):
    g = np.stack(np.meshgrid(np.arange(7), np.arange(5)), -1).reshape(-1, 2).astype(np.float32)
    rng = np.random.default_rng(0)
    covered = np.zeros(len(g), bool)
    covered[rng.choice(len(g), 3, replace=False)] = True
    candidates = np.flatnonzero(rng.random(len(g)) < 0.7)
    indptr, indices = ball_graph(g, delta)
    assert np.diff(indptr).min() >= 1  # every point covers itself
    picks, history = greedy_cover(indptr, indices, candidates, covered.copy(), 8)
    expected, expected_history = brute_force_cover(g, delta, candidates, covered, 8)
    assert picks.tolist() == expected and history == expected_history
    assert all(a <= b for a, b in zip(history, history[1:]))  # coverage never decreases


def test_probcover_with_known_delta_and_the_purity_radius():
    g = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2).astype(np.float32)
    picks, used = probcover(g, g[:0], 4, np.random.default_rng(0), delta=1.0, normalize=False)
    assert used == 1.0
    expected, _ = brute_force_cover(g, 1.0, np.arange(len(g)), np.zeros(len(g), bool), 4)
    assert picks.tolist() == expected
    # two pseudo-classes 1.0 apart on a line: every ball below radius 1 is pure
    x = np.array([[0.0, 0.0]] * 5 + [[1.0, 0.0]] * 5, dtype=np.float32)
    assert purity_radius(x, np.repeat([0, 1], 5), 0.95, np.random.default_rng(0)) == pytest.approx(0.95)


@pytest.mark.parametrize("name", ["typiclust", "probcover"])
def test_registry_strategies_are_seeded_and_pick_unlabelled_only(name):
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(c, 0.3, (60, 8)) for c in range(5)]).astype(np.float32)
    probs = np.full((len(emb), 5), 0.2, np.float32)
    pool_ids = np.arange(40, 300)
    inputs = lambda: strategies.QueryInputs(  # noqa: E731
        probs=probs[40:], embeddings=emb[40:], labeled_embeddings=emb[:40], pool_ids=pool_ids, labeled_ids=np.arange(40))
    strategy = strategies.get(name)
    a = strategy.select(inputs(), 25, np.random.default_rng(7))
    b = strategy.select(inputs(), 25, np.random.default_rng(7))
    assert np.array_equal(a, b) and len(set(a.tolist())) == 25 and a.max() < len(pool_ids)
    fixed = inputs()
    strategy.select(fixed, 5, np.random.default_rng(7), embedding="round0")
    assert len(fixed.state["fixed_embeddings"]["ids"]) == 300


def test_low_budget_arms_and_initial_set_in_a_study(tmp_path):
    from superlens.config import load_config
    from superlens.rundir import RunDir
    from superlens.study import run_study

    cfg = load_config("demo", ["workers=1", "seeds=[0]", "model.width=4", "recipe.epochs=1",
                               "arms=[al-random,al-typiclust,al-probcover]",
                               "active.initial_size=40", "active.query_size=30", "active.rounds=2", "active.initial=typiclust",
                               "analysis.enabled=false", "featvis.enabled=false", "sae.enabled=false", "toy.enabled=false"])
    run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    run = RunDir(tmp_path)
    assert (np.load(run.round0(0).pool) == 0).sum() == 40
    for arm in ("al-typiclust", "al-probcover"):
        pool = np.load(run.job(arm, 0).pool)
        assert np.bincount(pool[pool >= 0]).tolist() == [40, 30, 30]  # each image acquired at most once


@pytest.mark.parametrize("unit", [False, True])
def test_ball_graph_in_tiles_equals_all_pairs(unit):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(203, 6)).astype(np.float32)  # tiles of 32: a ragged last one, 7 x 7 blocks
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    delta = 0.9 if unit else 2.0
    d = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=2)
    far_from_edge = np.abs(d - delta) > 1e-4  # pairs float32 rounding cannot move across delta
    indptr, indices = ball_graph(x, delta, unit=unit, tile=32)
    within = np.zeros((len(x), len(x)), bool)
    within[np.repeat(np.arange(len(x)), np.diff(indptr)), indices] = True
    assert len(indices) == within.sum()  # no pair listed twice
    assert np.array_equal(within, within.T) and within.diagonal().all()
    assert np.array_equal(within[far_from_edge], (d <= delta)[far_from_edge])


@pytest.mark.parametrize("unit", [False, True])
def test_the_dense_ball_graph_gives_the_same_lists(unit):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(311, 6)).astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    delta = 0.9 if unit else 2.0
    tiled = ball_graph(x, delta, unit=unit, tile=32)
    indptr, indices = typical.ball_graph_dense(x, delta, unit=unit, device="cpu")
    assert _as_sets(indptr, indices) == _as_sets(*tiled)
    assert all(np.all(np.diff(indices[indptr[i] : indptr[i + 1]]) > 0) for i in range(len(x)))  # ascending


def test_probcover_on_an_accelerator_builds_the_graph_there(monkeypatch):
    import superlens.active.typical as t

    x, blob = lifted()
    on_cpu = probcover(x, x[:0], 6, np.random.default_rng(0), delta=0.1)
    used = []
    monkeypatch.setattr(t, "kmeans", lambda x, c, rng, pca_dims=64, device=None: t.lloyd(x, c, rng, device="cpu"))
    monkeypatch.setattr(t, "ball_graph_dense", lambda x, delta, unit, device: (used.append(str(device)),
                                                                                  t.ball_graph(x, delta, unit=unit))[1])
    assert np.array_equal(probcover(x, x[:0], 6, np.random.default_rng(0), delta=0.1, device="cuda:0")[0],
                          on_cpu[0]) and used == ["cuda:0"]


def _as_sets(indptr, indices):
    return [set(indices[indptr[i] : indptr[i + 1]].tolist()) for i in range(len(indptr) - 1)]


@pytest.mark.parametrize("unit", [False, True])
def test_ball_graph_with_groups_skips_far_groups_and_finds_every_pair(unit, monkeypatch):
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 3, (6, 5))
    label = rng.integers(0, 6, 300)
    x = (centres[label] + rng.normal(0, 0.6, (300, 5))).astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    delta = 0.25 if unit else 1.2
    d = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=2)
    far_from_edge = np.abs(d - delta) > 1e-4
    expected = d <= delta
    products = []
    real_mm, real_addmm = torch.mm, torch.addmm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: products.append(1) or real_mm(*a, **k))
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: products.append(1) or real_addmm(*a, **k))
    monkeypatch.setattr(typical, "GROUPED_MAX", 1.0)  # use the groups even where they rule out little
    for groups, tile in [(label, 32), (rng.integers(0, 4, 300), 32), (label, 2048)]:  # true clusters, arbitrary labels
        products.clear()
        indptr, indices = ball_graph(x, delta, unit=unit, tile=tile, groups=groups)
        within = np.zeros((300, 300), bool)
        within[np.repeat(np.arange(300), np.diff(indptr)), indices] = True
        assert len(indices) == within.sum() and np.array_equal(within, within.T)
        assert np.array_equal(within[far_from_edge], expected[far_from_edge])
        if groups is label and tile == 32:
            blocks = sum(-(-c // 32) for c in np.bincount(label))
            assert len(products) < blocks * (blocks + 1) // 2  # some pairs of blocks were never multiplied
    ungrouped = ball_graph(x, delta, unit=unit)
    assert _as_sets(*ungrouped) == _as_sets(*ball_graph(x, delta, unit=unit, groups=label))


def test_ball_graph_tests_every_pair_when_groups_rule_out_little(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(256, 4)).astype(np.float32)  # one cloud cut into arbitrary groups
    products = []
    real_addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: products.append(a[1].shape[0] * a[2].shape[1]) or real_addmm(*a, **k))
    plain = ball_graph(x, 1.0, tile=64)
    work = sum(products)
    products.clear()
    grouped = ball_graph(x, 1.0, tile=64, groups=rng.integers(0, 8, 256))
    assert sum(products) == work  # the same 64 x 64 tiles, not 36 pairs of small groups
    assert _as_sets(*grouped) == _as_sets(*plain)

from functools import partial

import numpy as np
import pytest

from superlens.active import strategies as S
from superlens.active.kcenter import (
    _SumTree, greedy_kcenter, greedy_kcenter_dense, kmeanspp_seeding, kmeanspp_seeding_dense)
from superlens.errors import UserError


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture()
def probs():
    return softmax(np.random.default_rng(0).normal(0, 2, (200, 10)))


def inputs(**kw):
    n = len(next(v for v in kw.values() if v is not None and not isinstance(v, dict)))
    kw.setdefault("pool_ids", np.arange(n) if "mc_probs" not in kw else np.arange(kw["mc_probs"].shape[1]))
    return S.QueryInputs(**kw)


def brute_top_k(scores, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def test_uncertainty_strategies_pick_exact_top_k(probs):
    rng = np.random.default_rng(0)
    k = 17
    lc = [1 - max(p) for p in probs]
    sorted_p = np.sort(probs, 1)
    margin = list(-(sorted_p[:, -1] - sorted_p[:, -2]))
    ent = [-sum(q * np.log(q) for q in p) for p in probs]
    for name, scores in (("least_confidence", lc), ("margin", margin), ("entropy", ent)):
        picked = S.get(name).select(inputs(probs=probs), k, rng)
        assert list(picked) == brute_top_k(scores, k), name


def test_margin_on_a_hand_made_case():
    p = np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.6, 0.2, 0.2]])
    assert list(S.get("margin").select(inputs(probs=p), 2, None)) == [2, 0]
    assert list(S.get("least_confidence").select(inputs(probs=p), 2, None)) == [2, 0]


def test_bald_equals_its_formula_on_fixed_samples():
    rng = np.random.default_rng(1)
    mc = softmax(rng.normal(size=(5, 30, 4)).reshape(-1, 4)).reshape(5, 30, 4)
    mean = mc.mean(0)
    h_mean = -(mean * np.log(mean)).sum(1)
    mean_h = np.mean([-(m * np.log(m)).sum(1) for m in mc], axis=0)
    assert np.allclose(S.bald_scores(mc), h_mean - mean_h, atol=1e-9)
    assert list(S.get("bald").select(inputs(mc_probs=mc), 5, rng)) == brute_top_k(h_mean - mean_h, 5)
    same = np.repeat(mc[:1], 5, axis=0)  # no disagreement between samples: zero information
    assert np.allclose(S.bald_scores(same), 0, atol=1e-9)


def brute_kcenter(points, centers, k, first=None):
    d = ((points[:, None] - centers[None]) ** 2).sum(-1).min(1) if len(centers) else None
    picked = []
    for step in range(k):
        i = first if d is None else int(np.argmax(d))
        picked.append(i)
        new = ((points - points[i]) ** 2).sum(1)
        d = new if d is None else np.minimum(d, new)
    return picked


@pytest.mark.parametrize("kcenter", ["lazy", "dense"])
@pytest.mark.parametrize("n_centers", [0, 1, 15])
def test_coreset_equals_brute_force_greedy_k_center(n_centers, kcenter):
    rng = np.random.default_rng(n_centers)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    centers = rng.normal(size=(n_centers, 6)).astype(np.float32)
    pick = greedy_kcenter if kcenter == "lazy" else partial(greedy_kcenter_dense, device="cpu")
    picked, radii = pick(x, centers, 60, np.random.default_rng(3))
    first = int(np.random.default_rng(3).integers(400)) if n_centers == 0 else None
    assert list(picked) == brute_kcenter(x.astype(np.float64), centers.astype(np.float64), 60, first)
    assert np.all(np.diff(radii[np.isfinite(radii)]) <= 1e-6)  # the covering radius never increases
    assert len(set(picked)) == 60


def test_coreset_strategy_uses_labelled_embeddings():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(100, 3)).astype(np.float32)
    labeled = pool[:5] + 0.01
    chosen = S.get("coreset").select(inputs(embeddings=pool, labeled_embeddings=labeled), 10, rng)
    assert not set(chosen) & set(range(5))  # points next to a labelled one are covered already


def test_badge_factorized_inner_products_equal_explicit(probs):
    h = np.random.default_rng(2).normal(size=(200, 16)).astype(np.float32)
    a, hh = S.badge_factors(probs, h)
    onehot = np.eye(10)[probs.argmax(1)]
    explicit = ((probs - onehot)[:, :, None] * h[:, None, :]).reshape(200, -1)  # n x (C * D)
    rows, cols = np.arange(0, 200, 7), np.arange(0, 200, 11)
    factorized = (a[rows] @ a[cols].T) * (hh[rows] @ hh[cols].T)
    assert np.allclose(factorized, explicit[rows] @ explicit[cols].T, rtol=1e-4, atol=1e-5)


SEEDINGS = {"lazy": kmeanspp_seeding, "dense": partial(kmeanspp_seeding_dense, device="cpu")}


@pytest.mark.parametrize("seeding", SEEDINGS)
def test_kmeanspp_draws_follow_d_squared(seeding):
    # one centre at 0; the others at distances 1, 2, 3 -> D^2 weights 1 : 4 : 9
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    counts = np.zeros(4)
    for seed in range(3000):
        picked = SEEDINGS[seeding]([x], 2, np.random.default_rng(seed), first=0)
        counts[picked[1]] += 1
    assert counts[0] == 0
    assert np.allclose(counts[1:] / counts.sum(), [1 / 14, 4 / 14, 9 / 14], atol=0.03)


@pytest.mark.parametrize("seeding", SEEDINGS)
def test_kmeanspp_after_stale_bounds_still_follows_d_squared(seeding):
    # centres 0 then (most likely) 3; the third draw's weights depend on refreshed bounds
    x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    seen = {}
    for seed in range(3000):
        p = SEEDINGS[seeding]([x], 3, np.random.default_rng(seed), first=0)
        if p[1] == 4:
            seen[int(p[2])] = seen.get(int(p[2]), 0) + 1
    total = sum(seen.values())
    expected = {1: 1, 2: 4, 3: 9}  # min distance to {0, 10}: 1, 2, 3 -> 1 : 4 : 9
    for i, w in expected.items():
        assert abs(seen.get(i, 0) / total - w / 14) < 0.03


@pytest.mark.parametrize("seeding", SEEDINGS)
def test_kmeanspp_with_factors_follows_d_squared_of_the_outer_products(seeding):
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    h = np.array([[1.0], [2.0], [1.0]])
    g = (a[:, :, None] * h[:, None, :]).reshape(3, -1)  # explicit points (1,0), (0,2), (1,1)
    d2 = ((g - g[0]) ** 2).sum(1)  # from centre 0: 0, 5, 1
    counts = np.zeros(3)
    for seed in range(3000):
        counts[SEEDINGS[seeding]([a, h], 2, np.random.default_rng(seed), first=0)[1]] += 1
    assert np.allclose(counts / counts.sum(), d2 / d2.sum(), atol=0.03)


@pytest.mark.parametrize("seeding", SEEDINGS)
def test_kmeanspp_fills_up_with_distinct_points_when_the_rest_coincide(seeding):
    x = np.array([[0.0], [0.0], [0.0], [5.0]])
    for seed in range(20):
        picked = SEEDINGS[seeding]([x], 4, np.random.default_rng(seed), first=0)
        assert sorted(picked) == [0, 1, 2, 3] and picked[1] == 3  # the far point first, then the rest


def test_on_an_accelerator_coreset_and_badge_take_the_dense_path(monkeypatch, probs):
    import torch

    called = []
    monkeypatch.setattr(S, "greedy_kcenter_dense", lambda x, c, k, rng, device: (
        called.append(("kcenter", device)), greedy_kcenter(x, c, k, rng))[1])
    monkeypatch.setattr(S, "kmeanspp_seeding_dense", lambda f, k, rng, first, device: (
        called.append(("kmeans++", device)), kmeanspp_seeding(f, k, rng, first=first))[1])
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    for device in (None, "cpu", torch.device("cuda", 1)):
        S.get("coreset").select(inputs(embeddings=emb, labeled_embeddings=emb[:3], device=device), 5, rng)
        S.get("badge").select(inputs(probs=probs, embeddings=emb, device=device), 5, rng)
    assert called == [("kcenter", torch.device("cuda", 1)), ("kmeans++", torch.device("cuda", 1))]


def test_sum_tree_sampling_and_updates():
    tree = _SumTree(np.array([1.0, 0.0, 3.0]))
    assert tree.total() == pytest.approx(4.0)
    assert tree.find(0.5) == 0 and tree.find(1.5) == 2
    tree.set(1, 2.0)
    assert tree.total() == pytest.approx(6.0) and tree.find(2.0) == 1


def test_badge_and_cluster_margin_pick_distinct_pool_items(probs):
    emb = np.random.default_rng(4).normal(size=(200, 8)).astype(np.float32)
    for name in ("badge", "cluster_margin"):
        q = inputs(probs=probs, embeddings=emb)
        chosen = S.get(name).select(q, 25, np.random.default_rng(0))
        assert len(chosen) == len(set(chosen)) == 25 and chosen.max() < 200, name


def test_cluster_margin_takes_from_low_margin_candidates_across_clusters(probs):
    emb = np.concatenate([np.random.default_rng(5).normal(c * 10, 0.1, (50, 2)) for c in range(4)]).astype(np.float32)
    q = inputs(probs=probs, embeddings=emb)
    chosen = S._cluster_margin(q, 8, np.random.default_rng(0), margin_multiplier=4, n_clusters=4)
    candidates = set(S.top_k(S.margin_scores(probs), 32).tolist())
    assert set(chosen.tolist()) <= candidates
    clusters = {int(i) // 50 for i in chosen}
    assert len(clusters) == len({int(i) // 50 for i in candidates})  # spread over every cluster present
    assert "cluster_of" in q.state  # kept for later rounds


def test_unknown_strategy_lists_known_ones():
    with pytest.raises(UserError, match="unknown strategy 'greedy'; known: random, least_confidence, margin, entropy, bald, coreset, badge, cluster_margin"):
        S.get("greedy")

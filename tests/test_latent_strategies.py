"""The two strategies that select through the lens (latent_coverage, interference): their rules on
constructed pools where the answer is known, the lazy greedy against the plain one, and the lens on a
real (tiny) network."""

import numpy as np
import pytest
import torch

from superlens.active.latents import (
    LatentLens, coverage_gain, coverage_picks, fit_lens, interference_picks, pair_interference, summaries,
)


def plain_greedy(pool_fires, labeled_fires, k, tiebreak):
    """The greedy of coverage_picks without laziness: every gain recomputed at every pick."""
    counts = labeled_fires.sum(0).astype(np.float64)
    left, picks = list(range(len(pool_fires))), []
    for _ in range(k):
        gains = [float(coverage_gain(counts[np.flatnonzero(pool_fires[i])]).sum()) for i in left]
        best = max(range(len(left)), key=lambda j: (gains[j], -tiebreak[left[j]]))
        picks.append(left.pop(best))
        counts[pool_fires[picks[-1]]] += 1
    return picks


def test_coverage_prefers_images_that_carry_latents_the_labelled_set_lacks():
    labeled = np.zeros((20, 6), bool)
    labeled[:, :4] = True  # every labelled image carries latents 0-3; none carries 4 or 5
    pool = np.zeros((10, 6), bool)
    pool[:, 0] = True  # common latent on every pool image
    pool[3, 4] = True  # image 3 carries rare latent 4
    pool[7, 5] = True  # image 7 carries rare latent 5
    pool[8, 4] = pool[8, 5] = True  # image 8 carries both
    picks, gains, first = coverage_picks(pool, labeled, 3, np.random.default_rng(0))
    assert picks[0] == 8  # both rare latents at once
    assert set(picks[1:]) == {3, 7}  # then one more copy of each rare latent, before any common-only image
    assert gains[0] == pytest.approx(np.log(22 / 21) + 2 * np.log(2))
    assert first[8] > first[3] > first[0] and first[3] == first[7]


def test_coverage_evens_out_latent_counts_against_random_picks():
    rng = np.random.default_rng(1)
    freq = np.geomspace(0.5, 0.01, 40)  # a long tail of rare latents
    pool = rng.random((3000, 40)) < freq
    labeled = rng.random((100, 40)) < freq
    picks, _, _ = coverage_picks(pool, labeled, 300, np.random.default_rng(2))
    chosen = labeled.sum(0) + pool[picks].sum(0)
    at_random = labeled.sum(0) + pool[rng.permutation(3000)[:300]].sum(0)
    assert len(set(picks.tolist())) == 300
    assert chosen[20:].min() > at_random[20:].min()  # the rare half is raised
    entropy = lambda c: -(c / c.sum() * np.log(c / c.sum() + 1e-30)).sum()  # noqa: E731
    assert entropy(chosen) > entropy(at_random) + 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_greedy_equals_the_plain_greedy(seed):
    rng = np.random.default_rng(seed)
    pool = rng.random((60, 12)) < 0.25
    pool[:5] = False  # images that carry no latent: gain 0, ties broken by the permutation
    labeled = rng.random((8, 12)) < 0.25
    picks, gains, _ = coverage_picks(pool, labeled, 30, np.random.default_rng(seed + 10))
    tiebreak = np.random.default_rng(seed + 10).permutation(60)  # what coverage_picks draws first
    assert picks.tolist() == plain_greedy(pool, labeled, 30, tiebreak)
    assert np.all(np.diff(gains) <= 1e-12)  # a submodular objective's greedy gains never grow


def test_pair_interference_by_hand_and_its_ranking():
    overlap = torch.tensor([[0.0, 0.9, 0.1], [0.9, 0.0, 0.0], [0.1, 0.0, 0.0]])
    z = torch.zeros(4, 2, 3)  # images x positions x latents
    z[0, 0, 0], z[0, 0, 1] = 1.0, 2.0  # latents 0 and 1 (overlap 0.9) at the same position
    z[1, 0, 0], z[1, 0, 2] = 1.0, 2.0  # latents 0 and 2 (overlap 0.1)
    z[2, 0, 0], z[2, 1, 1] = 1.0, 2.0  # 0 and 1 on the image, but at different positions
    score = pair_interference(z, overlap).numpy()
    assert score[0] == pytest.approx(2 * 1 * 2 * 0.9 / 5)
    assert score[1] == pytest.approx(2 * 1 * 2 * 0.1 / 5)
    assert score[2] == 0 and score[3] == 0  # no co-firing at a position; nothing firing
    assert interference_picks(score, 1, 0.0, np.random.default_rng(0)).tolist() == [0]


def test_interference_takes_the_top_share_then_random():
    score = np.arange(100, dtype=float)
    picks = interference_picks(score, 20, 0.5, np.random.default_rng(0))
    assert picks[:10].tolist() == list(range(99, 89, -1))
    assert len(set(picks.tolist())) == 20 and all(p < 90 for p in picks[10:])
    assert interference_picks(score, 20, 1.0, np.random.default_rng(0)).max() < 100
    assert interference_picks(score, 500, 0.5, np.random.default_rng(0)).size == 100


def test_the_lens_on_a_tiny_network_keeps_reproduced_latents_or_says_it_used_all():
    from superlens.data.dataset import ImageDataset
    from superlens.models import build_model
    from superlens.specs import ModelSpec

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    data = ImageDataset(images, torch.arange(64) % 4, ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3, "t", "train")
    net = build_model(ModelSpec(stem="cifar", width=4), 4, 0)
    lens = fit_lens(net, data, "layer4", None, "cpu", np.random.default_rng(0), fit_images=40, expansion=2, k=2,
                    steps=40, batch_size=32, match=0.9, min_latents=10**6, window=20)
    assert lens.used == "all" and int(lens.keep.sum()) == lens.keep.numel() == 64  # 2 x 32 channels
    fires, pair = summaries(lens, net, data, np.arange(10, 30), "layer4", None, "cpu", chunk=7)
    assert fires.shape == (20, 64) and pair.shape == (20,) and np.all((pair >= 0) & (pair <= 1 + 1e-6))
    strict = LatentLens(lens.sae, torch.zeros(64, dtype=torch.bool), torch.zeros(0, 0), 0, "reproduced")
    none_fire, zero = summaries(strict, net, data, np.arange(5), "layer4", None, "cpu")
    assert none_fire.shape == (5, 0) and np.all(zero == 0)

"""The psi protocol's agreement with itself (superlens.analysis.agreement) on constructions with known answers."""

import numpy as np
import pytest

from superlens.analysis.agreement import THRESHOLDS, reproduced_fraction, split_half_agreement
from superlens.analysis.groundtruth import synthetic_activations
from superlens.analysis.superposition import unit_rows


def test_reproduced_fraction_known_answers():
    rng = np.random.default_rng(0)
    a = unit_rows(rng.normal(size=(128, 64)))
    assert reproduced_fraction(a, a) == [1.0] * len(THRESHOLDS)  # every latent matches itself at cosine 1
    unrelated = reproduced_fraction(a, unit_rows(rng.normal(size=(128, 64))))  # random 64-d directions
    assert unrelated[0] < 0.05 and unrelated[1:] == [0.0] * (len(THRESHOLDS) - 1)
    # half the rows bent to cosine 0.75 from their originals: counted up to 0.7, not from 0.8
    bent = a.copy()
    other = unit_rows(rng.normal(size=(64, 64)))
    other -= (other * a[:64]).sum(1, keepdims=True) * a[:64]
    bent[:64] = 0.75 * a[:64] + np.sqrt(1 - 0.75**2) * unit_rows(other)
    curve = dict(zip(THRESHOLDS, reproduced_fraction(a, bent)))
    assert curve[0.7] == 1.0 and curve[0.8] == 0.5 and curve[0.95] == 0.5
    live = np.zeros(128, bool)
    live[64:] = True  # only the untouched rows count
    assert reproduced_fraction(a, bent, live=live) == [1.0] * len(THRESHOLDS)


def test_split_halves_agree_when_the_features_are_the_layers():
    # 16 neurons, 24 sparse features shared by every image, 2 on per vector: TopK SAEs of 32 latents with k = 2
    # on disjoint halves find the same directions (at most 24 of 32 latents can match a true feature)
    d = synthetic_activations(3000, 16, 24, active=2, magnitude="exponential", seed=3)
    groups = np.repeat(np.arange(750), 4)  # 4 vectors per "image"
    out = split_half_agreement(d.x, groups=groups, expansion=2, k=2, max_steps=1500, batch_size=256, window=150)
    at = dict(zip(out["thresholds"], range(len(out["thresholds"]))))
    assert out["images_per_half"] == [375, 375] and out["vectors_per_half"] == [1500, 1500]
    assert out["across_halves"][at[0.9]] > 0.5
    assert out["across_halves"][at[0.9]] == pytest.approx(out["within_half"][at[0.9]], abs=0.15)
    assert np.all(np.diff(out["across_halves"]) <= 1e-12)  # a stricter threshold never counts more

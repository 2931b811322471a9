"""The psi protocol's controls: the Gaussian null keeps the layer's moments, planted features are made as
asked, and recall counts what a reproduced decoder matches. The protocol runs on these constructions
(a layer without sparse structure against its floor, features planted on it) take minutes and live in
benchmarks/controls_known_answers.py."""

import numpy as np
import pytest

from superlens.analysis.controls import gaussian_null, plant, planted_directions, recall
from superlens.errors import UserError


def test_the_gaussian_null_keeps_the_mean_and_covariance_before_the_relu():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    x = rng.normal(size=(20000, 6)) @ mix + 5.0 * np.abs(mix).sum(0)  # far from 0: the ReLU leaves it untouched
    null = gaussian_null(x, seed=1)
    assert null.shape == x.shape and (null >= 0).all()
    assert np.allclose(null.mean(0), x.mean(0), atol=0.1)
    cov = np.cov(x, rowvar=False)
    assert np.abs(np.cov(null, rowvar=False) - cov).max() < 0.05 * np.abs(cov).max()
    with pytest.raises(UserError, match="rows, neurons"):
        gaussian_null(np.ones(5))


def test_planted_features_are_sparse_non_negative_and_present_as_often_as_asked():
    directions = planted_directions(16, 8, seed=3)
    assert directions.shape == (8, 16) and np.allclose(np.linalg.norm(directions, axis=1), 1.0)
    assert (directions >= 0).all() and ((directions > 0).sum(1) == 4).all()  # a quarter of the neurons each
    background = np.zeros((20000, 16), np.float32)
    x = plant(background, directions, frequency=0.05, magnitude=2.0, seed=0)
    codes = x @ np.linalg.pinv(directions)  # the directions are independent: their codes come back exactly
    assert np.allclose(codes @ directions, x, atol=1e-4)
    present = codes > 1e-6
    assert abs(present.mean() - 0.05) < 0.005 and abs(codes[present].mean() - 2.0) < 0.1


def test_recall_is_the_share_of_planted_directions_a_reproduced_latent_matches():
    directions = planted_directions(16, 8, seed=3)
    other = planted_directions(16, 8, seed=9)
    assert recall(directions, [directions], 0.9) == 1.0
    assert recall(directions, [directions, directions[:4]], 0.9) == pytest.approx(0.75)  # mean over seeds
    assert recall(directions, [np.zeros((0, 16))], 0.9) == 0.0
    assert recall(directions, [other], 0.999) == 0.0

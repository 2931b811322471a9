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


def test_reinitialized_redraws_every_resettable_parameter_and_leaves_the_model_alone():
    import torch
    from torch import nn

    from superlens.analysis.controls import reinitialized

    class Scaled(nn.Module):  # a module with a parameter and no reset_parameters: kept as it is
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.full((4,), 3.0))

        def forward(self, x):
            return x * self.scale[:, None, None]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Scaled(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh, kept = reinitialized(model, seed=3)
    again, _ = reinitialized(model, seed=3)
    assert kept == 1 and torch.equal(fresh[2].scale, model[2].scale)
    assert not torch.equal(fresh[0].weight, model[0].weight) and not torch.equal(fresh[4].weight, model[4].weight)
    assert torch.equal(fresh[1].running_mean, torch.zeros(4)) and torch.equal(fresh[1].weight, torch.ones(4))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values()))  # seeded
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model itself is untouched


def test_the_floor_verdict_by_hand():
    from superlens.analysis.controls import floor_verdict

    assert floor_verdict(0.30, 0.02, 0.10, 0.05) == {"above": pytest.approx(0.20), "margin": 0.05, "clears": True}
    assert floor_verdict(0.12, 0.03, 0.10, 0.01)["clears"] is False  # 0.02 above, within the 0.03 spread

import numpy as np
import pytest
import torch

from superlens.analysis.sae import SAESettings, conv_vectors, train_sae
from superlens.analysis.sae_measures import effective_features, matched_decoder_cosine, sae_metrics, spliced_accuracies
from superlens.errors import UserError


@pytest.fixture(scope="module")
def dictionary_data():
    """Vectors made of 3 atoms (of 64 known unit atoms in 32-D) with weights in [0.5, 1.5]."""
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(64, 32))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((20000, 64))
    for row in codes:
        row[rng.choice(64, 3, replace=False)] = rng.uniform(0.5, 1.5, 3)
    return atoms, (codes @ atoms).astype(np.float32)


def mean_max_cosine(atoms, sae):
    decoder = sae.W_dec.detach().numpy()
    return float((atoms @ decoder.T).max(axis=1).mean())


@pytest.mark.parametrize("kind, steps", [("topk", 1000), ("l1", 2000)])
def test_sae_recovers_a_known_dictionary(dictionary_data, kind, steps):
    atoms, x = dictionary_data
    result = train_sae(x, SAESettings(kind=kind, expansion=2, k=3, steps=steps, batch_size=1024, dead_after=20000))
    assert mean_max_cosine(atoms, result.sae) >= 0.9
    m = sae_metrics(result.sae, x)
    assert m["fvu"] < 0.2 and m["cosine"] > 0.9
    if kind == "topk":
        assert m["l0"] == pytest.approx(3.0)
    norms = np.linalg.norm(result.sae.W_dec.detach().numpy(), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)  # unit-norm decoder rows


def test_metric_definitions_on_a_hand_made_case():
    x = np.random.default_rng(1).normal(size=(500, 4)).astype(np.float32)
    result = train_sae(x, SAESettings(expansion=1, k=4, steps=1))
    sae = result.sae
    with torch.no_grad():  # make it the identity: W_enc = W_dec = I, biases 0, no sparsity at k=4
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    m = sae_metrics(sae, np.abs(x))  # non-negative inputs pass the ReLU untouched
    assert m["fvu"] == pytest.approx(0.0, abs=1e-10) and m["cosine"] == pytest.approx(1.0)
    x_hat = sae(torch.from_numpy(x)).detach().numpy()
    ref_fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert sae_metrics(sae, x)["fvu"] == pytest.approx(ref_fvu, rel=1e-5)


def test_effective_feature_count():
    uniform = np.zeros((100, 10))
    uniform[:, :7] = 2.0  # 7 latents equally active, 3 never
    assert effective_features(uniform) == pytest.approx(7.0)
    assert effective_features(np.eye(5)) == pytest.approx(5.0)
    one = np.zeros((10, 4))
    one[:, 2] = 1.0
    assert effective_features(one) == pytest.approx(1.0)


def test_matched_decoder_cosine():
    rng = np.random.default_rng(2)
    d = rng.normal(size=(6, 5))
    assert matched_decoder_cosine(d, d[::-1]) == pytest.approx(1.0)  # a permutation matches exactly
    from itertools import permutations

    other = rng.normal(size=(6, 5))
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    sim = unit(d) @ unit(other).T
    best = max(np.mean([sim[i, p[i]] for i in range(6)]) for p in permutations(range(6)))
    assert matched_decoder_cosine(d, other) == pytest.approx(best)


def test_conv_vectors_layout():
    acts = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    v = conv_vectors(acts)
    assert v.shape == (8, 3) and np.array_equal(v[1], acts[0, :, 0, 1])
    with pytest.raises(UserError, match="activations"):
        conv_vectors(np.zeros((2, 3, 4)))


def test_splicing_an_identity_reconstruction_recovers_everything():
    from superlens.data import load
    from superlens.models import resnet18
    from superlens.training import fit, make_recipe

    train, test = load("digits")
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    fit(model, train, make_recipe("standard", epochs=2, batch_size=64, lr=0.05), progress=False)
    sae = train_sae(np.random.default_rng(0).random((100, 32)).astype(np.float32), SAESettings(expansion=1, k=32, steps=1)).sae
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(32))
        sae.W_dec.copy_(torch.eye(32))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    out = spliced_accuracies(model, "layer4", sae, test, torch.zeros(32, 4, 4))
    assert out["accuracy_spliced"] == pytest.approx(out["accuracy_clean"])  # layer4 is post-ReLU: identity
    assert out["recovered_vs_zero"] == pytest.approx(1.0)
    assert out["accuracy_zero_ablation"] == out["accuracy_mean_ablation"]  # the mean given was zero


def test_sae_input_errors():
    with pytest.raises(UserError, match="NaN or inf"):
        train_sae(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(UserError, match="kind must be"):
        SAESettings(kind="gated")

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


def test_sparse_topk_decoding_equals_the_dense_product_forward_and_backward():
    """Training decodes a TopK code by gathering its k decoder rows; the values and the gradients must be
    those of the dense product z @ W_dec with the scattered code."""
    from superlens.analysis.sae import batched_topk_decode, topk_decode

    g = torch.Generator().manual_seed(0)
    pre = torch.randn(3, 50, 40, generator=g)
    W = torch.randn(3, 40, 8, generator=g, dtype=torch.float64)
    top, idx = pre.topk(4, dim=2)
    vals = torch.relu(top).double()
    for sparse in (True, False):
        w = W.clone().requires_grad_(True)
        v = vals.clone().requires_grad_(True)
        if sparse:
            out = batched_topk_decode(v, idx, w)
        else:
            out = torch.bmm(torch.zeros(3, 50, 40, dtype=torch.float64).scatter(2, idx, v), w)
        (out ** 2).sum().backward()
        if sparse:
            sparse_out, sparse_grads = out.detach(), (w.grad, v.grad)
    assert torch.allclose(sparse_out, out.detach(), atol=1e-12)
    assert torch.allclose(sparse_grads[0], w.grad, atol=1e-12) and torch.allclose(sparse_grads[1], v.grad, atol=1e-12)
    one = topk_decode(vals[0], idx[0], W[0])
    assert torch.allclose(one, sparse_out[0], atol=1e-12)


def test_the_sparse_training_loss_and_its_gradients_equal_the_dense_formulation():
    """The batched protocol loss (TopK, class gains, auxiliary-k term on dead latents) computed sparsely
    equals the dense formulas (every latent's pre-activation, a scattered code, dense products)."""
    import torch.nn.functional as F

    from superlens.analysis.sae_batched import _Batched

    torch.manual_seed(0)
    x = torch.randn(400, 12).abs().double()
    model = _Batched.start(x, 1.0, 48, [0, 1], classes=3)
    for p in model.params():
        p.data = p.data.double() + 0.1 * torch.randn_like(p.data.double())
    settings = SAESettings(k=3, aux_k=5, aux_coef=0.5, dead_after=100)
    rows = torch.randint(400, (2, 64))
    classes = torch.randint(3, (2, 64))
    since = torch.zeros(2, 48).double()
    since[:, ::4] = 1000  # a quarter of the latents are dead
    xb = x[rows]

    def dense() -> torch.Tensor:
        gain = model.gains(classes)
        pre = torch.baddbmm(model.b_enc, (xb - model.b_dec) * gain, model.W_enc)
        z = F.relu(pre)
        vals, j = z.topk(settings.k, dim=2)
        z = torch.zeros_like(z).scatter_(2, j, vals)
        residual = xb - (torch.bmm(z, model.W_dec) * gain + model.b_dec)
        loss = (residual * residual).sum(2).mean(1)
        fired = (z > 0).any(1)
        dead = torch.where(fired, torch.zeros_like(since), since + xb.shape[1]) >= settings.dead_after
        dead_pre = torch.where(dead[:, None, :], F.relu(pre), torch.zeros_like(pre))
        vals, j = dead_pre.topk(5, dim=2)
        e_hat = torch.bmm(torch.zeros_like(dead_pre).scatter_(2, j, vals), model.W_dec) * gain
        err = residual.detach()
        aux = ((err - e_hat) ** 2).sum(2).mean(1) / (err * err).sum(2).mean(1)
        return loss + 0.5 * aux

    results = []
    for compute in (dense, lambda: model.loss(xb, settings, since, 5, aux=True, classes=classes)[0]):
        for p in model.params():
            p.grad = None
        loss = compute()
        loss.sum().backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.params()]))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-10)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, atol=1e-10)


def test_picked_pre_activations_and_their_gradients_equal_the_dense_product_at_the_picks():
    from superlens.analysis.sae import picked_pre

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 30, 6, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(2, 6, 20, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 1, 20, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.baddbmm(b, x, W).topk(3, dim=2).indices
    idx[0, 0] = torch.tensor([5, 5, 7])  # a latent picked twice in one row still sums its gradients
    dense = torch.gather(torch.baddbmm(b, x, W), 2, idx)
    assert torch.allclose(picked_pre(x, W, b, idx), dense, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, W, b: picked_pre(x, W, b, idx), (x, W, b))
    # read from the picking product (as training does): the same values and the dense product's gradients
    weights = torch.randn(idx.shape, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((out * weights).sum(), (x, W, b))
             for out in (picked_pre(x, W, b, idx, torch.baddbmm(b, x, W).detach()), dense)]
    for a, c in zip(*grads):
        assert torch.allclose(a, c, atol=1e-12)


def test_a_bf16_pick_reads_float32_values_and_picks_the_float32_latents_but_for_near_ties(monkeypatch):
    """``pick_dtype``: the k latents are chosen by a bf16 product, their values and gradients are float32's at
    those latents; the chosen latents are float32's except where two pre-activations lie within bf16's
    rounding. ``pick_precision`` asks for it only on a CPU with bf16 units."""
    import superlens.hardware
    from superlens.analysis.sae import topk_forward
    from superlens.analysis.sae_batched import pick_precision

    g = torch.Generator().manual_seed(0)
    S, B, d, L = 2, 300, 16, 64
    x = torch.randn(S, B, d, generator=g)
    W_enc = torch.randn(S, d, L, generator=g, requires_grad=True)
    b_enc = torch.randn(S, 1, L, generator=g, requires_grad=True)
    W_dec = torch.nn.functional.normalize(torch.randn(S, L, d, generator=g), dim=2).requires_grad_()
    settings = SAESettings(kind="topk", k=4)
    pre = torch.baddbmm(b_enc, x, W_enc).detach()
    exact = pre.topk(4, dim=2).indices
    _, _, decoded, activity = topk_forward(x, W_enc, b_enc, W_dec, settings, False, torch.bfloat16)
    picked = torch.baddbmm(b_enc.bfloat16(), x.bfloat16(), W_enc.bfloat16()).topk(4, dim=2).indices
    same = (picked.sort(2).values == exact.sort(2).values).all(2)
    assert same.float().mean() > 0.9
    vals = torch.relu(pre.gather(2, picked))  # float32 values at the bf16 picks
    expected = torch.einsum("sbk,sbkd->sbd", vals, W_dec.detach()[torch.arange(S)[:, None, None], picked])
    assert torch.allclose(decoded, expected, atol=1e-4)
    decoded.sum().backward()
    assert W_enc.grad is not None and torch.isfinite(W_enc.grad).all()
    monkeypatch.setattr(superlens.hardware, "cpu_bf16_units", lambda: True)
    assert pick_precision(torch.device("cpu"), True, True) == "bf16 pick"
    assert pick_precision(torch.device("cpu"), True, False) == "float32"
    assert pick_precision(torch.device("cuda"), True, True) == "tf32"
    monkeypatch.setattr(superlens.hardware, "cpu_bf16_units", lambda: False)
    assert pick_precision(torch.device("cpu"), True, True) == "float32"


def test_tf32_is_switched_on_for_cuda_products_only_and_restored():
    from superlens.analysis.sae_batched import matmul_precision

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with matmul_precision(torch.device("cuda"), True):  # only the flag is set: no CUDA device is needed
            assert torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        for device, tf32 in ((torch.device("cuda"), False), (torch.device("cpu"), True)):
            with matmul_precision(device, tf32):
                assert not torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(RuntimeError), matmul_precision(torch.device("cuda"), True):
            raise RuntimeError("a failure inside still restores the caller's setting")
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before

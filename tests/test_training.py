import numpy as np
import pytest
import torch
import torch.nn.functional as F

from superlens.data import load
from superlens.data.augment import normalize, random_crop, random_flip
from superlens.errors import UserError
from superlens.models import resnet18
from superlens.training import RECIPES, evaluate, fit, lr_factor, make_recipe


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def small_recipe(**kw):
    return make_recipe("standard", **{"epochs": 3, "batch_size": 64, "lr": 0.05, "warmup_epochs": 0.5, **kw})


def test_recipes_as_data():
    dk = RECIPES["devkar2024"]
    assert (dk.optimizer, dk.lr, dk.batch_size, dk.epochs) == ("adam", 1e-3, 128, 20)
    assert dk.crop_padding == 0 and not dk.flip and dk.amp
    st = RECIPES["standard"]
    assert st.optimizer == "sgd" and st.nesterov and st.weight_decay > 0 and st.label_smoothing > 0
    assert st.crop_padding > 0 and st.flip
    assert make_recipe({"name": "devkar2024", "epochs": 2}).epochs == 2
    with pytest.raises(UserError, match="unknown recipe key 'learning_rate'"):
        make_recipe("standard", learning_rate=0.1)
    with pytest.raises(UserError, match="unknown recipe 'fast'"):
        make_recipe("fast")
    with pytest.raises(UserError, match="recipe.optimizer"):
        make_recipe("standard", optimizer="lbfgs")


def test_schedule_warms_up_then_decays():
    r = make_recipe("standard", warmup_epochs=1)
    factors = [lr_factor(r, s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:])) and factors[-1] < 0.01
    assert lr_factor(RECIPES["devkar2024"], 57, 100, 10) == 1.0


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    g = torch.Generator().manual_seed(1)
    out = random_crop(x, 2, g)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, a : a + 5, b : b + 5] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, mean, std), ref, atol=1e-5)


def test_loss_goes_down_and_accuracy_rises_on_digits(digits):
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=8)
    before = evaluate(model, digits.test)
    result = fit(model, digits.train, small_recipe(), seed=0, progress=False)
    after = evaluate(model, digits.test)
    assert result.losses[-1] < result.losses[0]
    assert after.loss < before.loss
    assert after.accuracy > 0.5 > before.accuracy


def test_seeded_training_is_deterministic(digits):
    """Bit for bit on the CPU (its kernels are deterministic); on a GPU, under cuDNN autotuning and
    atomics, to a tolerance."""
    subset = digits.train.subset(np.arange(200))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        weights = []
        for _ in range(2):
            torch.manual_seed(7)
            model = resnet18(10, stem="cifar", width=4)
            fit(model, subset, small_recipe(epochs=1), seed=7, device=device, progress=False)
            weights.append({k: v.cpu() for k, v in model.state_dict().items()})
        for key in weights[0]:
            if device == "cpu" or not weights[0][key].is_floating_point():
                assert torch.equal(weights[0][key], weights[1][key]), key
            else:
                assert torch.allclose(weights[0][key], weights[1][key], rtol=0.05, atol=0.05), key


def test_the_cpu_bf16_path_trains_to_the_fp32_accuracy_within_seed_noise(digits):
    """recipe.amp=bf16 against amp=false on the CPU, three seeds each: the mean test accuracies differ by
    less than the seeds' own spread allows (3 standard errors of the difference, at least 0.03)."""
    subset = digits.train
    test = digits.test.subset(np.arange(300))
    accuracy = {}
    for amp in ("bf16", False):
        accuracy[amp] = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = resnet18(10, stem="cifar", width=4)
            recipe = small_recipe(epochs=3, amp=amp)
            fit(model, subset, recipe, seed=seed, device="cpu", progress=False)
            accuracy[amp].append(evaluate(model, test, recipe, device="cpu").accuracy)
    a, b = np.array(accuracy["bf16"]), np.array(accuracy[False])
    assert b.mean() > 0.3  # the case trains at all (chance: 0.1)
    se = np.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3)
    assert abs(a.mean() - b.mean()) <= max(3 * se, 0.03), accuracy


def test_evaluate_returns_consistent_outputs(digits):
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    test = digits.test.subset(np.arange(100))
    result = evaluate(model, test, make_recipe("standard", eval_batch_size=33))
    assert result.probs.shape == (100, 10) and result.embeddings.shape == (100, 32)
    assert np.allclose(result.probs.sum(1), 1, atol=1e-5)
    assert result.accuracy == pytest.approx(float((result.probs.argmax(1) == result.labels).mean()))
    logits = torch.from_numpy(np.log(result.probs))
    ref_loss = F.cross_entropy(logits, torch.from_numpy(result.labels)).item()
    assert result.loss == pytest.approx(ref_loss, rel=1e-4)


def test_warm_start_continues_optimizer_state(digits):
    subset = digits.train.subset(np.arange(128))
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    recipe = make_recipe("devkar2024", epochs=1, batch_size=64)
    first = fit(model, subset, recipe, progress=False)
    steps = float(first.optimizer.state[model.fc.weight]["step"])
    second = fit(model, subset, recipe, optimizer=first.optimizer, progress=False)
    assert second.optimizer is first.optimizer
    assert second.optimizer.state[model.fc.weight]["step"] == steps + 2


def test_too_few_images_is_a_user_error(digits):
    with pytest.raises(UserError, match="at least 2 images"):
        fit(resnet18(10, width=4), digits.train.subset([0]), small_recipe(), progress=False)


def test_a_saved_optimizer_state_takes_the_layout_of_channels_last_parameters(digits):
    """Resuming on a GPU a run made on a CPU: the saved Adam moments are contiguous, the parameters
    channels_last; fit gives the state the parameters' strides (fused CUDA kernels require them)."""
    subset = digits.train.subset(np.arange(64))
    model = resnet18(10, stem="cifar", width=4)
    recipe = make_recipe("devkar2024", epochs=1, batch_size=32)
    first = fit(model, subset, recipe, device="cpu", progress=False)
    model.to(memory_format=torch.contiguous_format)  # as a checkpoint holds a state: contiguous tensors
    saved = {**first.optimizer.state_dict(), "state": {
        k: {n: t.contiguous() if isinstance(t, torch.Tensor) else t for n, t in v.items()}
        for k, v in first.optimizer.state_dict()["state"].items()}}
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    optimizer.load_state_dict(saved)
    conv = model.conv1.weight
    assert optimizer.state[conv]["exp_avg"].stride() != conv.stride()  # what load_state_dict leaves
    before = optimizer.state[conv]["exp_avg"].clone()
    from superlens.training import align_optimizer_state

    align_optimizer_state(optimizer)
    assert optimizer.state[conv]["exp_avg"].stride() == conv.stride()
    assert torch.equal(optimizer.state[conv]["exp_avg"], before)
    optimizer.load_state_dict(saved)
    fit(model, subset, make_recipe("devkar2024", epochs=0, batch_size=32), optimizer=optimizer, device="cpu",
        progress=False)
    assert all(s["exp_avg"].stride() == p.stride() for p, s in optimizer.state.items())

"""The GPU path, checked without a GPU.

The harness makes every tensor the study moves "to the device" behave towards the
host as a CUDA tensor does: numpy conversion is refused until the tensor is brought
back with ``.cpu()`` or ``.to("cpu")``, and results computed from it (activations,
probabilities, embeddings) inherit that. A tiny study then runs every strategy arm,
the per-round metrics, the analysis, the SAE and featvis through it. A second test
runs the mixed-precision path on the CPU (bf16 autocast), so a bf16 tensor that
reaches numpy or float64 code fails here, not on a user's GPU.
"""

import json

import numpy as np
import pytest
import torch

from superlens.active.strategies import REGISTRY
from superlens.config import load_config
from superlens.data.dataset import ImageDataset
from superlens.study import run_study

CUDA_NUMPY = "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."


class OnDevice(torch.Tensor):
    """A CPU tensor that refuses the host conversions a CUDA tensor refuses."""

    def numpy(self, *args, **kwargs):
        raise TypeError(CUDA_NUMPY)

    def __array__(self, *args, **kwargs):
        raise TypeError(CUDA_NUMPY)

    def cpu(self, *args, **kwargs):
        return super().cpu(*args, **kwargs).as_subclass(torch.Tensor)

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        target = kwargs.get("device", args[0] if args else None)
        return out.as_subclass(torch.Tensor) if isinstance(target, str) and target == "cpu" else out


def on_device(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(OnDevice)


def test_the_harness_refuses_what_cuda_refuses():
    t = on_device(torch.arange(4.0))
    with pytest.raises(TypeError, match="can't convert cuda"):
        t.numpy()
    with pytest.raises(TypeError, match="can't convert cuda"):
        np.asarray(t * 2)  # results of device tensors are device tensors
    assert t.cpu().numpy().tolist() == [0, 1, 2, 3]
    assert type(torch.nn.functional.relu(t)) is OnDevice and type(t.to("cpu")) is torch.Tensor
    assert float(t.sum()) == 6.0  # reading a scalar is allowed on CUDA (it synchronizes)


@pytest.fixture
def harness(monkeypatch):
    def to(self, device):
        return ImageDataset(on_device(self.images), on_device(self.labels), self.classes, self.mean, self.std,
                            self.name, self.split, {k: on_device(v) for k, v in self.attributes.items()}, self.meta)

    monkeypatch.setattr(ImageDataset, "to", to)


TINY = [
    "device=cpu",  # the harness stands in for the device on the CPU, also on a machine that has a GPU
    "workers=1",  # one job at a time in the test process (the demo preset runs two side by side)
    "seeds=[0]", "model.width=4", "recipe.epochs=1", "recipe.batch_size=64", "data.train_subset=400",
    "active.initial_size=40", "active.query_size=30", "active.rounds=1",
    "analysis.max_samples=120", "analysis.probe_samples=150", "analysis.tsne=false",
    "sae.max_images=40", "sae.stability=false", "sae.settings.steps=5", "sae.settings.batch_size=64",
    "sae.superposition.max_steps=100", "sae.superposition.window=50",  # the paths, not a converged psi
    "featvis.units=[1,2]", "featvis.settings.steps=3", "toy.enabled=false",
    "active.strategy_options.cluster_margin.n_clusters=5", "active.mc_samples=3",
    *[f"active.strategy_options.{name}.{key}={value}" for name in ("latent_coverage", "interference")
      for key, value in (("fit_images", 60), ("steps", 20), ("batch_size", 64))],
]


def test_every_stage_runs_with_data_on_a_device(harness, tmp_path):
    arms = ",".join(["baseline"] + [f"al-{name}" for name in REGISTRY])
    cfg = load_config("demo", [*TINY, f"arms=[{arms}]", "sae.per_round=true"])
    summary = run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    assert set(summary["arms"]) == {"baseline"} | {f"al-{name}" for name in REGISTRY}
    for arm, entry in summary["arms"].items():
        assert 0 <= entry["test_accuracy"] <= 1 and "silhouette_features" in entry and "psi" in entry, arm
    assert (tmp_path / "arms" / "baseline" / "seed0" / "featvis-layer4.1.conv2.npz").exists()


def test_the_other_precision_path_on_the_cpu(tmp_path):
    """The suite runs in the CPU's default precision (bf16 where the CPU has bf16 units); a study in the
    other one runs every stage too."""
    from superlens.hardware import cpu_bf16_units

    other = "false" if cpu_bf16_units() else "bf16"
    cfg = load_config("demo", [*TINY, "arms=[baseline,al-margin,al-random]", f"recipe.amp={other}"])
    summary = run_study(cfg, tmp_path, progress=False, log=lambda *_: None)
    for entry in summary["arms"].values():
        assert np.isfinite(entry["test_accuracy"]) and np.isfinite(entry["psi"]) and np.isfinite(entry["nc1"])
    records = json.loads((tmp_path / "arms" / "al-margin" / "seed0" / "done.json").read_text())["records"]
    assert [r["n_labeled"] for r in records] == [40, 70]


def test_bf16_backbone_keeps_a_float32_head():
    from superlens.data import load
    from superlens.models import resnet18
    from superlens.training import evaluate, make_recipe

    test = load("digits").test
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    result = evaluate(model, test, make_recipe("standard", amp="bf16"), device="cpu")
    assert result.probs.dtype == np.float32 and result.embeddings.dtype == np.float32
    top = np.sort(result.probs, axis=1)[:, -1]
    assert len(np.unique(top)) > len(top) // 2  # bf16 logits would collapse the scores into a few ties


def test_bad_precision_and_compile_settings(monkeypatch, capsys):
    from superlens.errors import UserError
    from superlens.models import resnet18
    from superlens.training import resolve_device
    from superlens.training import amp_dtype, compiled, make_recipe

    with pytest.raises(UserError, match="recipe.amp must be one of True, False, 'bf16', 'fp16', got 'fp8'"):
        make_recipe("standard", amp="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device='cuda' but this torch has no CUDA device"):
            resolve_device("cuda")
    # a GPU without bf16 (V100, T4): fp16 with loss scaling, and one warning line when bf16 was asked for
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    cuda = torch.device("cuda")
    assert amp_dtype(make_recipe("standard"), cuda) == torch.float16
    assert amp_dtype(make_recipe("standard", amp="bf16"), cuda) == torch.float16
    assert amp_dtype(make_recipe("standard", amp="bf16"), cuda) == torch.float16
    assert capsys.readouterr().err.count("Tesla T4 has no fast bf16") == 1
    assert set(asked) == {cuda}  # the configured device is asked, not whichever is current
    from superlens import training

    monkeypatch.setattr(training, "cpu_bf16_units", lambda: False)
    assert amp_dtype(make_recipe("standard"), torch.device("cpu")) is None  # amp=true: fp32 on CPUs without bf16 units
    monkeypatch.setattr(training, "cpu_bf16_units", lambda: True)
    assert amp_dtype(make_recipe("standard"), torch.device("cpu")) == torch.bfloat16  # and bf16 on those with them
    assert amp_dtype(make_recipe("standard", amp=False), torch.device("cpu")) is None  # amp=false forces fp32
    assert amp_dtype(make_recipe("standard", amp="bf16"), torch.device("cpu")) == torch.bfloat16
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(UserError, match="recipe.compile needs torch.compile"):
        compiled(resnet18(10, width=4), make_recipe("standard", compile=True))


def test_a_compiler_that_fails_falls_back_with_one_warning(monkeypatch, capsys):
    from superlens.data import load
    from superlens.models import resnet18
    from superlens.training import fit, make_recipe

    def broken_compile(model, backend=None):
        def fail(*args, **kwargs):
            raise RuntimeError("no C compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    train = load("digits").train.subset(np.arange(100))
    result = fit(resnet18(10, stem="cifar", width=4), train, make_recipe("standard", epochs=1, batch_size=50, compile=True),
                 device="cpu", progress=False)
    assert result.steps == 2
    assert capsys.readouterr().err.count("recipe.compile failed (RuntimeError: no C compiler found)") == 1


def test_compiled_training_keeps_one_batch_shape():
    from superlens.data import load
    from superlens.models import resnet18
    from superlens.training import fit, make_recipe

    train = load("digits").train.subset(np.arange(150))
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    shapes = []
    model.conv1.register_forward_pre_hook(lambda m, i: shapes.append(tuple(i[0].shape)))
    result = fit(model, train, make_recipe("standard", epochs=2, batch_size=64, compile="eager"), device="cpu",
                 progress=False)
    assert result.steps == 4 and result.images_seen == 256  # 150 = 2 x 64 + 22: the ragged 22 are dropped
    assert len(set(shapes)) == 1 and shapes[0][0] == 64


def test_the_harness_stays_on_the_cpu_where_a_gpu_is_found(monkeypatch):
    """On a GPU machine device=auto resolves to CUDA, and the harness's CPU tensors would meet CUDA indices."""
    from superlens.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = load_config("demo", TINY)
    assert resolve_device(cfg["device"]).type == "cpu"


def test_a_cuda_index_the_process_does_not_see_is_one_line(monkeypatch, tmp_path, capsys):
    from conftest import run_cli
    from superlens.errors import UserError
    from superlens.training import bf16_supported, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"device='cuda:1' but this process sees 1 CUDA device \(cuda:0\)"):
        resolve_device("cuda:1")
    with pytest.raises(UserError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    code, _, err = run_cli(["run", "demo", *TINY[1:], "device=cuda:3", "arms=[al-random]", "--out", tmp_path / "run",
                            "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "device='cuda:3' but this process sees 1 CUDA device" in err
    assert not (tmp_path / "run" / "round0").exists()  # nothing trained
    code, _, err = run_cli(["run", "demo", *TINY[1:], "device=cuda:1", "executor=ray", "arms=[al-random]",
                            "--out", tmp_path / "ray", "--quiet"], capsys)
    assert code == 2 and "each Ray job sees the one GPU it is given as cuda:0" in err
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: {0: (9, 0), 1: (7, 0)}[device.index])
    assert bf16_supported(torch.device("cuda", 0)) and not bf16_supported(torch.device("cuda", 1))


def test_a_backward_the_compiler_fails_falls_back_with_one_warning(monkeypatch, capsys):
    """torch.compile compiles the backward lazily, at the first loss.backward(): a failure there is caught too."""
    from superlens.data import load
    from superlens.models import resnet18
    from superlens.training import fit, make_recipe

    class FailingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward compilation failed: no C compiler")

    def compile_with_broken_backward(model, backend=None):
        return lambda x: FailingBackward.apply(model(x))

    monkeypatch.setattr(torch, "compile", compile_with_broken_backward)
    train = load("digits").train.subset(np.arange(100))
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    before = [p.detach().clone() for p in model.parameters()]
    result = fit(model, train, make_recipe("standard", epochs=2, batch_size=50, compile=True), device="cpu",
                 progress=False)
    assert result.steps == 4 and all(np.isfinite(result.losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained
    assert capsys.readouterr().err.count("recipe.compile failed (RuntimeError: backward compilation failed") == 1


def test_compiled_models_are_not_kept_forever(monkeypatch):
    import gc
    import weakref

    from superlens import training
    from superlens.models import resnet18

    monkeypatch.setattr(torch, "compile", lambda model, backend=None: (lambda x: model(x)))
    monkeypatch.setattr(training, "_COMPILED", [])
    recipe = training.make_recipe("standard", compile=True)
    first = resnet18(10, width=4)
    gone = weakref.ref(first)
    wrapper = training.compiled(first, recipe)
    assert training.compiled(first, recipe) is wrapper  # reused across rounds
    del first, wrapper
    for _ in range(training.COMPILED_KEPT):
        training.compiled(resnet18(10, width=4), recipe)
    gc.collect()
    assert gone() is None and len(training._COMPILED) == training.COMPILED_KEPT


def test_compile_modes_are_validated_with_one_line(capsys):
    from conftest import run_cli
    from superlens.errors import UserError
    from superlens.training import make_recipe

    assert make_recipe("standard", compile=True, compile_mode="reduce-overhead").compile_mode == "reduce-overhead"
    with pytest.raises(UserError, match="recipe.compile=reduce-overhead is a torch.compile mode, not a backend: "
                                        "use recipe.compile=true recipe.compile_mode=reduce-overhead"):
        make_recipe("standard", compile="reduce-overhead")
    with pytest.raises(UserError, match="recipe.compile_mode must be one of 'default', 'reduce-overhead'"):
        make_recipe("standard", compile=True, compile_mode="fastest")
    with pytest.raises(UserError, match="recipe.compile must be true or false or one of 'inductor'"):
        make_recipe("standard", compile="tensorrt-x")
    code, _, err = run_cli(["run", "demo", "recipe.compile=max-autotune", "--out", "/nonexistent/never"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "recipe.compile_mode=max-autotune" in err


def test_the_compile_mode_reaches_torch_compile_and_a_failure_is_remembered(monkeypatch, capsys):
    """A mode goes to torch.compile as mode=; a backend and mode that failed once are not compiled again
    in the process (a study would otherwise retry at every fit)."""
    from superlens import training
    from superlens.data import load
    from superlens.models import resnet18

    calls = []

    def failing_compile(model, backend=None, mode=None):
        calls.append((backend, mode))

        def wrapper(x):
            raise RuntimeError("no C compiler found")
        return wrapper

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(training, "_WARNED", set())  # another test of this process may have said it already
    train = load("digits").train.subset(np.arange(100))
    recipe = training.make_recipe("standard", epochs=1, batch_size=50, compile=True, compile_mode="max-autotune")
    for _ in range(3):
        result = training.fit(resnet18(10, stem="cifar", width=4), train, recipe, device="cpu", progress=False)
        assert result.steps == 2
    assert calls == [("inductor", "max-autotune")]  # compiled once; the next fits train eagerly at once
    assert capsys.readouterr().err.count("recipe.compile failed") == 1


def test_a_loaded_optimizer_state_keeps_the_kernel_choice_of_this_device():
    """Resume across devices, simulated by the state's flags: a GPU-made state (fused) loaded for a CPU
    optimizer, and a CPU-made one (foreach) loaded for a fused optimizer, keep the loading optimizer's kind."""
    from superlens.training import load_optimizer_state

    params = [torch.nn.Parameter(torch.randn(4, 3))]
    made_on_cpu = torch.optim.Adam(params, lr=1e-3)
    params[0].grad = torch.ones(4, 3)
    made_on_cpu.step()
    state = made_on_cpu.state_dict()
    gpu_state = {**state, "param_groups": [{**g, "fused": True, "foreach": None} for g in state["param_groups"]]}
    cpu_opt = torch.optim.Adam(params, lr=1e-3)
    load_optimizer_state(cpu_opt, gpu_state)
    assert cpu_opt.param_groups[0]["fused"] in (None, False) and cpu_opt.param_groups[0]["foreach"] is None
    assert torch.equal(cpu_opt.state[params[0]]["exp_avg"], made_on_cpu.state[params[0]]["exp_avg"])
    try:
        fused = torch.optim.Adam(params, lr=1e-3, fused=True)
    except (RuntimeError, TypeError):
        pytest.skip("this torch has no fused Adam for CPU parameters")
    foreach_state = {**state, "param_groups": [{**g, "fused": None, "foreach": True} for g in state["param_groups"]]}
    load_optimizer_state(fused, foreach_state)
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["foreach"] is None
    plain = torch.optim.Adam(params, lr=1e-3)
    plain.load_state_dict(foreach_state)
    assert plain.param_groups[0]["foreach"] is True  # what load_state_dict alone would have left


def test_ragged_eval_batches_padded_as_on_cuda_give_the_same_outputs(monkeypatch):
    """On CUDA the last, ragged batch of evaluate and capture is padded to the batch size (one shape for
    cuDNN); forced on here, the outputs equal the unpadded ones."""
    from superlens.analysis import features
    from superlens.data import load
    from superlens.models import resnet18
    from superlens.training import evaluate, make_recipe, pad_batch
    from superlens import training

    test = load("digits").test.subset(np.arange(70))
    torch.manual_seed(0)
    model = resnet18(10, stem="cifar", width=4)
    recipe = make_recipe("standard", eval_batch_size=32, amp=False)
    plain = evaluate(model, test, recipe, device="cpu")
    acts = features.capture(model, test, "layer3", pool="avg", batch_size=32, device="cpu")["layer3"]
    images = test.images[:5]
    padded = pad_batch(images, 32, torch.device("cpu"), pad=True)
    assert padded.shape[0] == 32 and torch.equal(padded[:5], images) and torch.equal(padded[31], images[4])
    assert pad_batch(images, 32, torch.device("cpu")) is images  # not on the CPU
    forced = lambda images, size, device, pad=None: pad_batch(images, size, device, pad=True)  # noqa: E731
    monkeypatch.setattr(training, "pad_batch", forced)
    monkeypatch.setattr(features, "pad_batch", forced)
    again = evaluate(model, test, recipe, device="cpu")
    assert np.allclose(again.probs, plain.probs, atol=1e-6) and again.accuracy == plain.accuracy
    assert np.allclose(again.embeddings, plain.embeddings, atol=1e-6) and again.loss == pytest.approx(plain.loss)
    assert np.allclose(features.capture(model, test, "layer3", pool="avg", batch_size=32, device="cpu")["layer3"],
                       acts, atol=1e-6)

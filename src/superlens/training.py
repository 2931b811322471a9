"""Recipes as data, one short training loop, one evaluation pass.

The whole training set sits on the device as uint8; each step gathers a batch by
index, augments it there, normalizes it, and runs the model (mixed precision and
channels_last on CUDA). Shuffling and augmentation draw from one seeded generator,
so a seeded run on CPU is bit-for-bit repeatable. No step reads a value back to the
host: losses and counts are accumulated on the device and copied once at the end.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superlens.data.augment import normalize, random_crop, random_flip, resize
from superlens.data.dataset import ImageDataset
from superlens.errors import UserError, describe
from superlens.hardware import cpu_bf16_units
from superlens.specs import RECIPES, Recipe, make_recipe

__all__ = ["RECIPES", "Recipe", "make_recipe", "fit", "evaluate", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when there is one), or the named device, which must exist."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but this torch has no CUDA device; use device=cpu or device=auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device={name!r} but this process sees {count} CUDA device{'s' if count != 1 else ''} "
                        f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); a Ray job sees its own GPU as "
                        "cuda:0, so use device=auto or device=cuda there (CUDA_VISIBLE_DEVICES picks GPUs)")
    return device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def align_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (momentum, Adam moments) its parameter's memory layout.

    ``Optimizer.load_state_dict`` casts a saved state's dtype and device but not its layout:
    a state saved on the CPU (contiguous) and loaded for parameters that are channels_last
    on CUDA breaks the fused kernels, which need equal strides."""
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if (isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride()):
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


_KERNEL_CHOICES = ("fused", "foreach", "capturable", "differentiable")  # how a step runs, not what it computes


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping the kernel choice ``make_optimizer`` made for this
    device: ``load_state_dict`` installs the saved param groups whole, so a state saved on a CPU would
    turn a fused CUDA optimizer into the foreach one, and one saved on a GPU would set ``fused`` on CPU
    parameters (an error on torch versions without fused CPU kernels)."""
    chosen = [{key: group.get(key) for key in _KERNEL_CHOICES} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, chosen):
        group.update(keep)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer; fused kernels (one launch for all parameters) when they sit on CUDA."""
    on_cuda = all(p.is_cuda for p in model.parameters())
    kind = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.SGD
    kwargs: dict[str, Any] = {"lr": recipe.lr, "weight_decay": recipe.weight_decay}
    if recipe.optimizer == "sgd":
        kwargs.update(momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0)
    if on_cuda:
        try:
            return kind(model.parameters(), fused=True, **kwargs)
        except (TypeError, RuntimeError):  # a torch without a fused kernel for this optimizer
            pass
    return kind(model.parameters(), **kwargs)


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"superlens: warning: {message}", file=sys.stderr)


def amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``recipe`` on ``device``, or None for full precision.

    ``recipe.amp=true`` (the default) is mixed precision where the device has fast low-precision
    arithmetic: bf16 on a GPU that computes it (fp16 with loss scaling on older ones) and on a CPU
    with bf16 units (AVX512-BF16, AMX); full precision on other CPUs. ``false`` forces fp32."""
    if recipe.amp is False:
        return None
    cuda = device.type == "cuda"
    bf16_ok = not cuda or bf16_supported(device)
    if recipe.amp is True:
        if not cuda:
            return torch.bfloat16 if device.type == "cpu" and cpu_bf16_units() else None
        return torch.bfloat16 if bf16_ok else torch.float16
    if recipe.amp == "bf16" and not bf16_ok:
        warn_once(f"{torch.cuda.get_device_name(device)} has no fast bf16; recipe.amp=bf16 runs in fp16 with loss scaling")
        return torch.float16
    return torch.bfloat16 if recipe.amp == "bf16" else torch.float16


def bf16_supported(device: torch.device) -> bool:
    """Whether the CUDA device ``device`` (not the current one) computes bf16 natively: compute capability 8.0
    (Ampere) or newer."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def channels_last(device: torch.device) -> bool:
    """Whether convolutions run channels_last on ``device``: on CUDA (tensor-core kernels). Not on the CPU,
    though oneDNN's convolutions are faster in it: with torch 2.13.0 on 2 threads a channels_last
    backward pass crashes the process (segmentation fault, or "double free or corruption") at some batch
    shapes (29 images of 16 x 16 through a width-8 ResNet-18, fp32 and bf16 alike; a plain loop outside
    superlens shows it), while the contiguous layout runs them."""
    return device.type == "cuda"


def dtype_name(dtype: torch.dtype | None) -> str:
    """An autocast dtype as runs record it ("bfloat16", "float16"); None (no autocast) is "float32"."""
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def precision_record(recipe: Recipe, device: torch.device) -> dict[str, Any]:
    """What a run's manifest says about its arithmetic: autocast dtype, memory layout, bf16 units."""
    return {"device": str(device), "autocast": dtype_name(amp_dtype(recipe, device)),
            "channels_last": channels_last(device), "cpu_bf16_units": cpu_bf16_units(), "recipe_amp": recipe.amp}


def lr_factor(recipe: Recipe, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of ``recipe.lr`` at optimizer step ``step`` (0-based)."""
    if recipe.schedule == "constant":
        return 1.0
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if recipe.schedule == "warmup_cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in ``dtype`` on ``device``; a no-op for None."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


_COMPILED: list[tuple[nn.Module, nn.Module]] = []  # (model, its compiled wrapper), the most recent last
COMPILED_KEPT = 2  # compiled models kept for reuse: a job's model across its rounds, and one more
_COMPILE_FAILED: set[tuple[str, str]] = set()  # (backend, mode) that failed in this process: not tried again


def _compile_key(recipe: Recipe) -> tuple[str, str]:
    return ("inductor" if recipe.compile is True else str(recipe.compile), recipe.compile_mode)


def compiled(model: nn.Module, recipe: Recipe) -> nn.Module:
    """``model`` itself, or its torch.compile'd wrapper, made once per model and reused every round.

    Only the ``COMPILED_KEPT`` most recent wrappers are kept: a wrapper holds its model (and
    its GPU memory), so an unbounded cache would keep every model a process ever trained.
    A backend and mode whose compilation failed once in this process are not tried again:
    the model trains eagerly (a study would otherwise retry at every fit)."""
    if recipe.compile is False or _compile_key(recipe) in _COMPILE_FAILED:
        return model
    if not hasattr(torch, "compile"):
        raise UserError("recipe.compile needs torch.compile (torch >= 2.0); set recipe.compile=false")
    for i, (kept, wrapper) in enumerate(_COMPILED):
        if kept is model:
            _COMPILED.append(_COMPILED.pop(i))
            return wrapper
    backend, mode = _compile_key(recipe)
    options = {} if mode == "default" else {"mode": mode}
    _COMPILED.append((model, torch.compile(model, backend=backend, **options)))
    del _COMPILED[:-COMPILED_KEPT]
    return _COMPILED[-1][1]


def _uncompiled(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Forget ``model``'s compiled wrapper (its compilation failed), remember that the recipe's backend and
    mode fail in this process, and train eagerly from now on."""
    _COMPILED[:] = [(kept, wrapper) for kept, wrapper in _COMPILED if kept is not model]
    _COMPILE_FAILED.add(_compile_key(recipe))
    return model


def prepare_batch(images: torch.Tensor, data: ImageDataset, recipe: Recipe, train: bool, generator=None) -> torch.Tensor:
    """uint8 batch -> normalized float model input, augmented when ``train``."""
    if train:
        images = random_crop(images, recipe.crop_padding, generator)
        if recipe.flip:
            images = random_flip(images, generator)
    x = resize(normalize(images, data.mean, data.std), recipe.input_size)
    if channels_last(x.device):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass
class TrainResult:
    optimizer: torch.optim.Optimizer
    losses: list[float]  # mean training loss per epoch
    images_seen: int
    steps: int  # optimizer steps taken


def fit(
    model: nn.Module,
    data: ImageDataset,
    recipe: Recipe,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` on ``data`` in place with ``recipe``.

    Pass the ``optimizer`` of an earlier call to continue with its state (momentum,
    Adam moments), as warm-started active learning does; otherwise a new one is made.
    The learning-rate schedule always spans this call's epochs.
    """
    device = torch.device(device) if device is not None else default_device()
    if len(data) < 2:
        raise UserError(f"training needs at least 2 images, got {len(data)}")
    model.to(device)
    if channels_last(device):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    data = data.to(device)
    optimizer = optimizer or make_optimizer(model, recipe)
    align_optimizer_state(optimizer)
    dtype = amp_dtype(recipe, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None  # fp16 needs loss scaling
    net = compiled(model, recipe)
    generator = torch.Generator(device=device).manual_seed(seed)
    n = len(data)
    batch = min(recipe.batch_size, n)
    # A compiled model keeps one batch shape (no recompilation): the ragged last batch is dropped.
    ragged = n % batch == 1 or (net is not model and n % batch != 0)
    steps_per_epoch = n // batch if ragged else math.ceil(n / batch)
    total_steps = recipe.steps if recipe.steps is not None else steps_per_epoch * recipe.epochs
    bar = _bar(total=total_steps * batch, desc=desc, enabled=progress)
    model.train()
    epoch_losses, step, seen = [], 0, 0
    while step < total_steps:  # one pass of this loop is one epoch (a fresh shuffle)
        order = torch.randperm(n, device=device, generator=generator)
        epoch_loss, epoch_seen = torch.zeros((), device=device), 0
        for start in range(0, steps_per_epoch * batch, batch):
            if step >= total_steps:
                break
            idx = order[start : start + batch]
            for group in optimizer.param_groups:  # a Python float: no host sync
                group["lr"] = recipe.lr * lr_factor(recipe, step, total_steps, steps_per_epoch)
            x = prepare_batch(data.images[idx], data, recipe, train=True, generator=generator)
            try:
                loss = _forward_backward(net, x, data.labels[idx], recipe, optimizer, scaler, device, dtype)
            except Exception as exc:  # the compiler can fail at the first forward or, lazily, the first backward
                if net is model:
                    raise
                warn_once(f"recipe.compile failed ({describe(exc, limit=160)}); training continues without torch.compile")
                net = _uncompiled(model, recipe)
                loss = _forward_backward(net, x, data.labels[idx], recipe, optimizer, scaler, device, dtype)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            epoch_loss += loss.detach() * len(idx)
            epoch_seen += len(idx)
            step += 1
            bar.update(len(idx))
        seen += epoch_seen
        epoch_losses.append(epoch_loss / max(1, epoch_seen))
    bar.close()
    losses = torch.stack(epoch_losses).cpu().tolist() if epoch_losses else []
    return TrainResult(optimizer, losses, seen, step)


def _forward_backward(net, x, labels, recipe: Recipe, optimizer, scaler, device, dtype) -> torch.Tensor:
    """One batch's loss and gradients (fresh: the gradients of a failed attempt are dropped)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, dtype):
        loss = F.cross_entropy(net(x), labels, label_smoothing=recipe.label_smoothing)
    (loss if scaler is None else scaler.scale(loss)).backward()
    return loss


def pad_batch(images: torch.Tensor, size: int, device: torch.device, pad: bool | None = None) -> torch.Tensor:
    """On CUDA (or with ``pad``), a ragged last batch of an eval pass filled up to ``size`` with copies of
    its last image: every batch then has one shape, so cuDNN's autotuning (``cudnn.benchmark``) runs
    once instead of again for each new ragged shape. In eval mode images do not interact, so the
    caller keeps the first ``len(images)`` outputs."""
    if pad is None:
        pad = device.type == "cuda"
    if not pad or len(images) >= size or len(images) == 0:
        return images
    return torch.cat([images, images[-1:].expand(size - len(images), *images.shape[1:])])


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    probs: np.ndarray  # (N, C) float32 softmax probabilities
    embeddings: np.ndarray  # (N, D) float32 penultimate features
    labels: np.ndarray  # (N,) int64


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageDataset,
    recipe: Recipe | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    indices: np.ndarray | torch.Tensor | None = None,
) -> EvalResult:
    """One pass in eval mode: accuracy, mean cross-entropy, probabilities and embeddings.

    ``model`` needs ``embed(x)`` (penultimate features) and ``fc``, as ``superlens``'s
    ResNet has. Normalization and input size follow ``recipe`` (default: the standard one).
    ``indices`` evaluates those images of ``data`` only, gathered batch by batch (no copy
    of the subset). The backbone runs in the recipe's mixed precision; the head in
    float32, so uncertainty scores are not coarsened into ties. Results stay on the
    device until one copy at the end.
    """
    recipe = recipe or RECIPES["standard"]
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    if channels_last(device):
        model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(recipe, device)
    # Without indices a batch is a slice (a view); with them, a gather of that batch only.
    order = None if indices is None else torch.as_tensor(indices, dtype=torch.long).to(data.images.device)
    n = len(data) if order is None else len(order)
    probs, embeds = [], []
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bar = _bar(total=n, desc="eval", enabled=progress)
    for start in range(0, n, recipe.eval_batch_size):
        idx = slice(start, start + recipe.eval_batch_size) if order is None else order[start : start + recipe.eval_batch_size]
        images = data.images[idx].to(device, non_blocking=True)
        labels = data.labels[idx].to(device, non_blocking=True)
        x = prepare_batch(pad_batch(images, recipe.eval_batch_size, device), data, recipe, train=False)
        with autocast(device, dtype):
            emb = model.embed(x)
        emb = emb[: len(labels)].float()
        logits = model.fc(emb)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        probs.append(logits.softmax(1))
        embeds.append(emb)
        bar.update(len(labels))
    bar.close()
    p = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, data.num_classes), np.float32)
    e = torch.cat(embeds).cpu().numpy() if embeds else np.zeros((0, 0), np.float32)
    y = (data.labels if order is None else data.labels[order]).cpu().numpy()
    totals = torch.stack([loss_sum, correct.double()]).cpu().tolist()
    return EvalResult(totals[1] / max(1, n), totals[0] / max(1, n), p, e, y)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, disable=not enabled, leave=False, mininterval=0.5)


def first_tensor(output):
    """The tensor of a module's output (the first, when it returns several)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@torch.no_grad()
def output_accuracy(model: nn.Module, data: ImageDataset, recipe, device) -> tuple[float | None, str | None]:
    """Accuracy of ``argmax model(x)`` when the output is (N, classes); else None and why."""
    model.to(device).eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    dtype = amp_dtype(recipe, device)
    for start in range(0, len(data), recipe.eval_batch_size):
        images = data.images[start : start + recipe.eval_batch_size].to(device)
        with autocast(device, dtype):
            out = first_tensor(model(prepare_batch(images, data, recipe, train=False)))
        if out is None or out.ndim != 2 or out.shape[1] != data.num_classes:
            shape = "not a tensor" if out is None else f"shape {tuple(out.shape)}"
            return None, f"the model's output is {shape}, not (N, {data.num_classes}): test accuracy skipped"
        correct += (out.argmax(1) == data.labels[start : start + recipe.eval_batch_size].to(device)).sum()
    return float(correct.cpu()) / max(1, len(data)), None

"""Recipes as data, one short training loop, one evaluation pass.

The whole training set sits on the device as uint8; each step gathers a batch by
index, augments it there, normalizes it, and runs the model (bf16 autocast and
channels_last on CUDA). Shuffling and augmentation draw from one seeded generator,
so a seeded run on CPU is bit-for-bit repeatable.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superlens.data.augment import normalize, random_crop, random_flip, resize
from superlens.data.dataset import ImageDataset
from superlens.errors import UserError


@dataclass(frozen=True)
class Recipe:
    """Everything that describes how a model is trained and evaluated."""

    optimizer: str = "sgd"  # "sgd" or "adam"
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 5e-4
    batch_size: int = 256
    epochs: int = 30
    schedule: str = "warmup_cosine"  # "constant", "warmup_cosine" or "warmup_linear"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    crop_padding: int = 4  # 0 turns random crops off
    flip: bool = True
    amp: bool = True  # bf16 autocast, on CUDA only
    input_size: int | None = None  # resize inputs on the device (e.g. 224); None keeps them
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        checks = {
            "optimizer": self.optimizer in ("sgd", "adam"),
            "schedule": self.schedule in ("constant", "warmup_cosine", "warmup_linear"),
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "crop_padding": self.crop_padding >= 0,
            "eval_batch_size": self.eval_batch_size >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise UserError(f"recipe.{key} has an invalid value {getattr(self, key)!r}")


RECIPES: dict[str, Recipe] = {
    # As the study's notebooks trained: Adam 1e-3, batch 128, 20 epochs, no augmentation,
    # mixed precision; no weight decay, schedule or label smoothing.
    "devkar2024": Recipe(
        optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, epochs=20, schedule="constant",
        warmup_epochs=0.0, label_smoothing=0.0, crop_padding=0, flip=False, amp=True,
    ),
    # A sound from-scratch recipe for small images.
    "standard": Recipe(),
}


def make_recipe(base: str | Recipe | dict = "standard", **overrides: Any) -> Recipe:
    """A recipe from a preset name (or Recipe, or dict with an optional ``name``) plus overrides."""
    if isinstance(base, dict):
        overrides = {**base, **overrides}
        base = overrides.pop("name", "standard")
    if isinstance(base, str):
        if base not in RECIPES:
            raise UserError(f"unknown recipe {base!r}; known: {', '.join(RECIPES)}")
        base = RECIPES[base]
    known = {f.name for f in fields(Recipe)}
    for key in overrides:
        if key not in known:
            raise UserError(f"unknown recipe key {key!r}; known: {', '.join(sorted(known))}")
    return replace(base, **overrides)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0, weight_decay=recipe.weight_decay,
    )


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


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def prepare_batch(images: torch.Tensor, data: ImageDataset, recipe: Recipe, train: bool, generator=None) -> torch.Tensor:
    """uint8 batch -> normalized float model input, augmented when ``train``."""
    if train:
        images = random_crop(images, recipe.crop_padding, generator)
        if recipe.flip:
            images = random_flip(images, generator)
    x = resize(normalize(images, data.mean, data.std), recipe.input_size)
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass
class TrainResult:
    optimizer: torch.optim.Optimizer
    losses: list[float]  # mean training loss per epoch
    images_seen: int


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
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    data = data.to(device)
    optimizer = optimizer or make_optimizer(model, recipe)
    generator = torch.Generator(device=device).manual_seed(seed)
    n = len(data)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    bar = _bar(total=n * recipe.epochs, desc=desc, enabled=progress)
    model.train()
    losses, step = [], 0
    for _ in range(recipe.epochs):
        order = torch.randperm(n, device=device, generator=generator)
        epoch_loss = torch.zeros((), device=device)
        for start in range(0, n, recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * lr_factor(recipe, step, total_steps, steps_per_epoch)
            x = prepare_batch(data.images[idx], data, recipe, train=True, generator=generator)
            with _autocast(device, recipe.amp):
                loss = F.cross_entropy(model(x), data.labels[idx], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach() * len(idx)
            step += 1
            bar.update(len(idx))
        losses.append(float(epoch_loss) / n)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return TrainResult(optimizer, losses, n * recipe.epochs)


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
) -> EvalResult:
    """One pass in eval mode: accuracy, mean cross-entropy, probabilities and embeddings.

    ``model`` needs ``embed(x)`` (penultimate features) and ``fc``, as ``superlens``'s
    ResNet has. Normalization and input size follow ``recipe`` (default: the standard one).
    """
    recipe = recipe or RECIPES["standard"]
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    probs, embeds, loss_sum = [], [], 0.0
    bar = _bar(total=len(data), desc="eval", enabled=progress)
    for start in range(0, len(data), recipe.eval_batch_size):
        images = data.images[start : start + recipe.eval_batch_size].to(device, non_blocking=True)
        labels = data.labels[start : start + recipe.eval_batch_size].to(device)
        x = prepare_batch(images, data, recipe, train=False)
        with _autocast(device, recipe.amp):
            emb = model.embed(x)
            logits = model.fc(emb).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        probs.append(logits.softmax(1).cpu())
        embeds.append(emb.float().cpu())
        bar.update(len(labels))
    bar.close()
    p = torch.cat(probs).numpy() if probs else np.zeros((0, data.num_classes), np.float32)
    e = torch.cat(embeds).numpy() if embeds else np.zeros((0, 0), np.float32)
    y = data.labels.cpu().numpy()
    n = max(1, len(y))
    return EvalResult(float((p.argmax(1) == y).sum() / n), loss_sum / n, p, e, y)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, disable=not enabled, leave=False, mininterval=0.5)

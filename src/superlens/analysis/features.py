"""Activations of named modules (torchvision names such as ``layer4.1.conv2``), in one pass."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from superlens.data.dataset import ImageDataset
from superlens.errors import UserError
from superlens.training import (RECIPES, Recipe, amp_dtype, autocast, channels_last, default_device, dtype_name,
                                first_tensor, pad_batch, prepare_batch)

POOLINGS = ("avg", "max", "flatten", "none")


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        raise UserError(f"unknown layer {name!r}; available: {', '.join(layer_names(model))}")
    return modules[name]


def reduce_outputs(x: torch.Tensor, pool: str) -> torch.Tensor:
    """A module's output per image reduced as ``pool`` says (see ``capture``)."""
    if x.ndim == 4 and pool == "avg":
        return x.mean(dim=(2, 3))
    if x.ndim == 4 and pool == "max":
        return x.amax(dim=(2, 3))
    if x.ndim == 3 and pool == "avg":  # tokens (N, T, D): the features are the units
        return x.mean(dim=1)
    if x.ndim == 3 and pool == "max":
        return x.amax(dim=1)
    if pool in ("flatten", "avg", "max"):
        return x.flatten(1)
    return x


def capture_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype activations are captured in: the recipe's mixed precision on CUDA (bf16 there),
    full precision on the CPU, where the measured values are kept exact at a small cost; recorded in
    analysis.json and sae.json as ``capture_dtype``."""
    return amp_dtype(recipe, device) if device.type == "cuda" else None


def capture_dtype_name(recipe: Recipe, device: torch.device) -> str:
    return dtype_name(capture_dtype(recipe, torch.device(device)))


@torch.no_grad()
def capture(
    model: nn.Module,
    data: ImageDataset,
    layers: str | Iterable[str],
    *,
    pool: str | dict[str, str] = "avg",
    recipe: Recipe | None = None,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    repeat_block: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Outputs of each named module for every image of ``data``, as float32 arrays.

    ``pool``: ``avg`` or ``max`` over the spatial positions of 4-D outputs (one value
    per channel), ``flatten`` (C*H*W values), or ``none`` (keep (C, H, W)); a dict gives each
    layer its own (one pass over the images for layers reduced differently).
    Inputs are normalized as ``recipe`` says (default: the standard recipe, i.e. the
    dataset's statistics at native size). ``repeat_block`` (e.g. ``"layer4.1"``) runs
    that block a second time on its own output and keeps what its inner modules
    produce the second time; it replays a known slip in the study's notebook and is
    for the paper preset only. ``progress(done, total)`` is called after each batch.
    """
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    pools = dict(pool) if isinstance(pool, dict) else {name: pool for name in names}
    for name in names:
        if pools.get(name) not in POOLINGS:
            raise UserError(f"pool must be one of {', '.join(POOLINGS)}, got {pools.get(name)!r} for {name!r}")
    modules = {name: resolve_module(model, name) for name in names}
    recipe = recipe or RECIPES["standard"]
    device = torch.device(device) if device is not None else default_device()
    model.to(device).eval()
    if channels_last(device):
        model.to(memory_format=torch.channels_last)
    dtype = capture_dtype(recipe, device)
    # One preallocated host buffer per layer, filled in place. Not pinned: the CUDA host allocator rounds a
    # pinned request up to a power of two and keeps it cached for the process (50,000 x 25,088 features would
    # hold 8 GiB); a device-to-pageable copy of a batch costs a sync, small beside the forward pass.
    store: dict[str, torch.Tensor] = {}
    latest: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(_keeper(name, latest)) for name, module in modules.items()]
    if repeat_block is not None:
        handles.append(resolve_module(model, repeat_block).register_forward_hook(_repeat_once()))
    try:
        for start in range(0, len(data), batch_size):
            images = data.images[start : start + batch_size].to(device)
            with autocast(device, dtype):  # a ragged last batch padded on CUDA: one shape, one cuDNN autotuning
                model(prepare_batch(pad_batch(images, batch_size, device), data, recipe, train=False))
            for name in names:
                # reduced in float32 on the device; copied to the host without waiting for it
                out = reduce_outputs(latest.pop(name)[: len(images)].float(), pools[name])
                if name not in store:
                    store[name] = torch.empty((len(data),) + tuple(out.shape[1:]), dtype=torch.float32)
                store[name][start : start + len(out)].copy_(out)
            if progress is not None:
                progress(min(start + batch_size, len(data)), len(data))
    finally:
        for handle in handles:
            handle.remove()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {name: store[name].numpy() if name in store else np.zeros((0,), np.float32) for name in names}


def features_and_units(model: nn.Module, data: ImageDataset, layer: str, pool: str, neuron_layer: str,
                       **kw) -> tuple[np.ndarray, np.ndarray]:
    """``layer`` reduced as ``pool`` says and ``neuron_layer`` averaged over positions (one value per unit), in one
    pass over the images; one layer asked both ways is captured whole once and reduced twice."""
    if layer != neuron_layer or pool == "avg":
        out = capture(model, data, [layer, neuron_layer], pool={layer: pool, neuron_layer: "avg"}, **kw)
        return out[layer], out[neuron_layer]
    whole = torch.from_numpy(capture(model, data, layer, pool="none", **kw)[layer])
    return reduce_outputs(whole, pool).numpy(), reduce_outputs(whole, "avg").numpy()


def _keeper(name: str, latest: dict[str, torch.Tensor]):
    def hook(module, inputs, output):
        if isinstance(output, (tuple, list)):  # e.g. attention blocks: their first output
            output = output[0]
        latest[name] = output.detach().clone()  # a later in-place ReLU must not change it

    return hook


def _repeat_once():
    busy = []

    def hook(module, inputs, output):
        if busy:
            return None
        busy.append(True)
        try:
            return module(output)
        finally:
            busy.pop()

    return hook


def output_shapes(model: nn.Module, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Size]:
    """Output shape of every named module (or of ``names``) for the batch ``x``."""
    shapes: dict[str, torch.Size] = {}
    handles = []

    def keep(name):
        def hook(module, inputs, output) -> None:  # returns nothing: the output is left alone
            t = first_tensor(output)
            if t is not None:
                shapes.setdefault(name, t.shape)
        return hook

    for name, module in model.named_modules():
        if name and (names is None or name in names):
            handles.append(module.register_forward_hook(keep(name)))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def list_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, module type, output shape) of every named module for one input batch ``x``."""
    shapes = output_shapes(model, x)
    return [(name, type(module).__name__, tuple(shapes[name])) for name, module in model.named_modules()
            if name in shapes]


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Raise a UserError naming the close matches of a layer the model does not have."""
    import difflib

    names = [n for n, _ in model.named_modules() if n]
    for layer in layers:
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise UserError(f"unknown layer {layer!r}{hint}. `superlens analyze MODEL --list-layers` prints every name")

"""Activation maximization of conv channels, with dataset exemplars beside each image.

The image is optimized in a decorrelated space: a Fourier spectrum whose amplitudes
are scaled by 1/frequency (so low frequencies dominate, as in natural images), mapped
through the square root of the data's RGB covariance (so colour channels are not
optimized independently) and squashed into [0, 1] by a sigmoid. Each step sees the
image under a random pad + jitter + scale + rotation (transformation robustness),
normalized as the model's training inputs were. All units of a layer are optimized
together as one batch, and everything is seeded, so a call is deterministic on CPU.
Every choice is a field of :class:`FeatVisSettings` with its default documented there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superlens.analysis.features import capture, resolve_module
from superlens.data.augment import normalize
from superlens.data.dataset import ImageDataset
from superlens.errors import UserError
from superlens.specs import FeatVisSettings

# Layers whose output is 0 wherever their input is negative: optimized through their input.
RECTIFIERS = (nn.ReLU, nn.ReLU6)

# The units of layer4.1.conv2 that the study's notebook rendered.
PAPER_UNITS = (8, 25, 54, 89, 131, 200, 221, 276, 340, 455, 500)


@dataclass
class FeatVisResult:
    layer: str
    units: list[int]
    images: np.ndarray  # (units, images_per_unit, 3, H, W) float32 in [0, 1]
    activation: np.ndarray  # (units, images_per_unit) the unit's mean activation on its image
    losses: list[float] = field(default_factory=list)  # objective per step (mean over the batch)


def color_sqrt(data: ImageDataset, max_images: int = 2000) -> torch.Tensor:
    """A 3x3 matrix M with M M^T proportional to the RGB covariance of ``data`` (largest column norm 1)."""
    x = data.images[: max_images].to(torch.float64).div(255.0)
    pixels = x.permute(1, 0, 2, 3).reshape(3, -1)
    cov = torch.cov(pixels)
    u, s, _ = torch.linalg.svd(cov)
    m = u @ torch.diag(s.clamp_min(0).sqrt())
    return (m / m.norm(dim=0).max()).float()


def _frequencies(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


class ImageParam(nn.Module):
    """A batch of images, as parameters in Fourier (or pixel) space; ``forward`` gives RGB in [0, 1]."""

    def __init__(self, batch: int, size: int, settings: FeatVisSettings, color: torch.Tensor | None, generator) -> None:
        super().__init__()
        self.size, self.settings = size, settings
        if settings.fourier:
            shape = (batch, 3, size, size // 2 + 1, 2)
            scale = 1.0 / _frequencies(size, size).clamp_min(1.0 / size) ** settings.decay_power
            self.register_buffer("scale", scale)
        else:
            shape = (batch, 3, size, size)
        self.param = nn.Parameter(torch.randn(shape, generator=generator) * settings.init_scale)
        self.register_buffer("color", color if color is not None else torch.eye(3))

    def forward(self) -> torch.Tensor:
        if self.settings.fourier:
            spectrum = torch.view_as_complex(self.param) * self.scale
            x = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
        else:
            x = self.param
        if self.settings.decorrelate:
            x = torch.einsum("ij,bjhw->bihw", self.color, x)
        return torch.sigmoid(x)


def random_transform(images: torch.Tensor, settings: FeatVisSettings, generator: torch.Generator,
                     options: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Pad (grey), then one random affine map per image: rotation, scale and translation.

    ``generator`` lives on the images' device and ``options`` (the angles in radians and
    the scales as tensors there) can be made once by ``transform_options``: then no step
    waits for the host.
    """
    n, _, h, _ = images.shape
    pad = int(round(settings.pad * h))
    if pad:
        images = F.pad(images, (pad, pad, pad, pad), value=0.5)
    angles, scales = options if options is not None else transform_options(settings, images.device)
    dev = images.device
    angle = angles[torch.randint(len(angles), (n,), generator=generator, device=dev)]
    scale = scales[torch.randint(len(scales), (n,), generator=generator, device=dev)]
    shift = (torch.rand(n, 2, generator=generator, device=dev) * 2 - 1) * settings.jitter * 2  # normalized coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def transform_options(settings: FeatVisSettings, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(settings.angles, device=device) * math.pi / 180, torch.tensor(settings.scales, device=device))


def check_units(model: nn.Module, layer: str, units: Sequence[int], sample: torch.Tensor) -> int:
    """The layer's channel count; raises a UserError for a unit outside it."""
    module = resolve_module(model, layer)
    seen: dict[str, torch.Size] = {}

    def hook(module, inputs, output) -> None:  # returning nothing leaves the output alone
        seen["shape"] = output.shape

    handle = module.register_forward_hook(hook)
    with torch.no_grad():
        model(sample)
    handle.remove()
    channels = int(seen["shape"][1])
    _check_range(layer, units, channels)
    return channels


def _check_range(layer: str, units: Sequence[int], channels: int) -> None:
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise UserError(f"unit {bad[0]} is out of range: {layer} has {channels} channels (units 0..{channels - 1})")


def visualize(
    model: nn.Module,
    layer: str,
    units: Sequence[int],
    data: ImageDataset,
    settings: FeatVisSettings = FeatVisSettings(),
    device: torch.device | str | None = None,
) -> FeatVisResult:
    """Optimize images that maximize the mean activation of each channel in ``units`` of ``layer``.

    ``data`` supplies the normalization statistics, the colour covariance and the native size.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    units = [int(u) for u in units]
    size = settings.size or data.image_size[0]
    probe = torch.zeros(1, 3, settings.upsample_to or size, settings.upsample_to or size, device=device)
    check_units(model, layer, units, probe)
    generator = torch.Generator().manual_seed(settings.seed)
    k = settings.images_per_unit
    param = ImageParam(len(units) * k, size, settings, color_sqrt(data) if settings.decorrelate else None, generator).to(device)
    optimizer = torch.optim.Adam(param.parameters(), lr=settings.lr)
    channel = torch.tensor(units, device=device).repeat_interleave(k)
    module = resolve_module(model, layer)
    out: dict[str, torch.Tensor] = {}
    # A copy: a following in-place ReLU (e.g. after a BatchNorm) would otherwise overwrite it.
    handles = [module.register_forward_hook(lambda m, i, o: out.__setitem__("act", o.clone()))]
    if isinstance(module, RECTIFIERS):
        # A rectifier's output has no gradient where it is 0: a unit silent on the starting image would never
        # move. Its input (taken before an in-place rectifier overwrites it) is optimized; its output is reported.
        handles.append(module.register_forward_pre_hook(lambda m, i: out.__setitem__("pre", i[0].clone())))
    losses = torch.zeros(settings.steps, device=device)
    draws = torch.Generator(device=device).manual_seed(settings.seed + 1)  # the transforms' own stream, on the device
    options = transform_options(settings, device)
    try:
        for step in range(settings.steps):
            images = random_transform(param(), settings, draws, options)
            loss, _ = _objective(model, images, channel, settings, data, out, k)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
        with torch.no_grad():
            final = param()
            _, activation = _objective(model, final, channel, settings, data, out, k)
    finally:
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    shape = (len(units), k) + tuple(final.shape[1:])
    return FeatVisResult(layer, units, final.detach().cpu().numpy().reshape(shape),
                         activation.detach().cpu().numpy().reshape(len(units), k), losses.cpu().tolist())


def _model_input(images: torch.Tensor, settings: FeatVisSettings, data: ImageDataset) -> torch.Tensor:
    if settings.upsample_to:
        images = F.interpolate(images, size=(settings.upsample_to,) * 2, mode="bilinear", align_corners=False)
    if settings.normalize_input:
        images = normalize(images * 255.0, data.mean, data.std)
    return images


def _objective(model, images, channel, settings, data, out, k):
    model(_model_input(images, settings, data))
    act = out["act"]
    rows = torch.arange(len(channel), device=act.device)

    def unit_mean(values: torch.Tensor) -> torch.Tensor:
        per_image = values[rows, channel]
        return per_image.flatten(1).mean(1) if per_image.ndim > 1 else per_image

    activation = unit_mean(act)
    loss = -(unit_mean(out["pre"]) if "pre" in out else activation).mean()
    if settings.diversity > 0 and k > 1 and act.ndim == 4:
        flat = act.flatten(2)
        gram = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1).view(-1, k, flat.shape[1] ** 2)
        sim = gram @ gram.transpose(1, 2)  # (units, k, k)
        off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
        loss = loss + settings.diversity * off.mean() / (k * (k - 1))
    return loss, activation


@dataclass
class Exemplars:
    indices: np.ndarray  # (units, top) training-set indices, most activating first
    activation: np.ndarray  # (units, top) the unit's mean activation on each
    labels: np.ndarray  # (units, top)


def exemplars(model: nn.Module, layer: str, units: Sequence[int], data: ImageDataset, top: int = 9, recipe=None,
              device=None) -> Exemplars:
    """The ``top`` images of ``data`` that most activate each unit (mean over positions)."""
    acts = capture(model, data, layer, pool="avg", recipe=recipe, device=device)[layer]
    units = list(units)
    _check_range(layer, units, acts.shape[1])
    cols = acts[:, units]
    order = np.argsort(-cols, axis=0, kind="stable")[:top].T
    labels = data.labels.cpu().numpy()
    return Exemplars(order, np.take_along_axis(cols.T, order, axis=1), labels[order])

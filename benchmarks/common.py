"""What every benchmark script prints beside its figures: the device, its peak, the model's FLOPs."""

from __future__ import annotations

import platform

import torch
from torch import nn

# Dense tensor-core peaks in TFLOP/s from the vendors' data sheets (without sparsity).
PEAK_TFLOPS = {  # name substring: (bf16/fp16, fp32)
    "H200": (989.0, 67.0), "H100 PCIe": (756.0, 51.0), "H100": (989.0, 67.0),
    "A100": (312.0, 19.5), "L40S": (362.0, 91.6), "A10G": (70.0, 31.2), "L4": (121.0, 30.3),
    "V100": (125.0, 15.7), "T4": (65.0, 8.1),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def peak_tflops(device: torch.device, mixed: bool) -> float | None:
    """The device's dense peak for the arithmetic in use, when it is known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, single) in PEAK_TFLOPS.items():
        if key in name:
            return half if mixed else single
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass per input, counted over convolutions and linear layers."""
    total = [0.0]

    def conv(m, i, o):
        total[0] += 2.0 * o.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, i, o):
        total[0] += 2.0 * o.numel() * m.in_features

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0] / len(x)


def fraction_of_peak(rate: float, flops_per_item: float, device: torch.device, mixed: bool) -> str:
    peak = peak_tflops(device, mixed)
    return "n/a" if peak is None else f"{rate * flops_per_item / (peak * 1e12):.1%}"

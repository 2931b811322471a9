"""What the compute device can do fast: bf16 arithmetic and the memory layout its kernels prefer.

Asked once per process and device; training, evaluation, capture and the SAEs read it
to choose their precision and layout automatically (a recipe or setting can force fp32).
"""

from __future__ import annotations

import functools
import sys

import torch


@functools.lru_cache(maxsize=None)
def cpu_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX) and oneDNN uses it. CPUs without
    such units emulate bf16, which is slower than fp32, so they keep fp32."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    if sys.platform != "linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA device of compute capability 8.0 (Ampere) or newer,
    or a CPU with bf16 units (``cpu_bf16_units``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and cpu_bf16_units()

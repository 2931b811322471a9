"""What the CPU can do fast: whether it multiplies bf16 natively.

Asked once per process; training and evaluation read it to choose bf16 autocast on such
CPUs (``recipe.amp=false`` forces fp32).
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


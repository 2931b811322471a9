"""Peak host memory of capturing a layer's activations: 10,000 x 25,088 and 50,000 x 512 values.

    python benchmarks/capture_memory.py [--device cpu|cuda]

Each case runs in a fresh process: a small model whose layer outputs (C, H, W) per image
is run over N images by ``superlens.analysis.features.capture`` (pool="none", as
``superlens analyze`` and the SAE stage capture), then the activations become the SAE's
channel vectors (``conv_vectors``). It prints the activations' own size and the process's
peak resident memory above what it held before the capture: about 1x the size means one
copy (the capture buffer), about 2x one more (the vectors, while both exist).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource

CASES = [  # (label, images, channels, side): values per image = channels x side^2
    ("10,000 x 25,088 (512 x 7 x 7)", 10_000, 512, 7),
    ("50,000 x 512 (512 x 1 x 1)", 50_000, 512, 1),
]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _case(n: int, channels: int, side: int, device: str, out) -> None:
    import numpy as np
    import torch
    from torch import nn

    from superlens.analysis.features import capture
    from superlens.analysis.sae import conv_vectors
    from superlens.data import ImageDataset

    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    data = ImageDataset(images, torch.zeros(n, dtype=torch.int64), ["0"], (0.5,) * 3, (0.25,) * 3)
    model = nn.Sequential(nn.Conv2d(3, channels, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(side))
    capture(model, data.subset(np.arange(8)), "2", pool="none", device=device)  # warm-up: allocator, kernels
    before = _peak_mib()
    acts = capture(model, data, "2", pool="none", device=device)["2"]  # the pooled output: (C, side, side)
    after_capture = _peak_mib()
    vectors = conv_vectors(acts)
    after_vectors = _peak_mib()
    out.put((acts.nbytes / 2**20, after_capture - before, after_vectors - before, vectors.shape))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    print("| case | activations MiB | peak above start after capture MiB | after the SAE vectors MiB |")
    print("|---|---|---|---|")
    for label, n, channels, side in CASES:
        q = ctx.Queue()
        p = ctx.Process(target=_case, args=(n, channels, side, args.device, q))
        p.start()
        size, cap, vec, shape = q.get()
        p.join()
        print(f"| {label} | {size:,.0f} | {cap:,.0f} ({cap / size:.2f}x) | {vec:,.0f} ({vec / size:.2f}x) |", flush=True)


if __name__ == "__main__":
    main()

"""Sparse-autoencoder training throughput (vectors/s) at a ResNet-18 layer4 size.

    python benchmarks/sae_speed.py [--device cuda] [--dim 512] [--expansion 8] [--steps 200]

Trains on random non-negative vectors (their content does not change the cost) for
both variants, TopK and L1, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from superlens.analysis.sae import SAESettings, train_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    x = np.maximum(np.random.default_rng(0).normal(size=(100_000, args.dim)), 0).astype(np.float32)
    name = torch.cuda.get_device_name(args.device) if "cuda" in args.device else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; {args.dim}-d vectors, {args.expansion * args.dim} latents, batch {args.batch_size}")
    print("| variant | steps | seconds | vectors/s |")
    print("|---|---|---|---|")
    for kind in ("topk", "l1"):
        settings = SAESettings(kind=kind, expansion=args.expansion, batch_size=args.batch_size, steps=args.steps)
        train_sae(x, replace(settings, steps=3), device=args.device)  # warm-up
        start = time.perf_counter()
        train_sae(x, settings, device=args.device)
        if "cuda" in args.device:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"| {kind} | {args.steps} | {seconds:.1f} | {args.steps * args.batch_size / seconds:,.0f} |", flush=True)


if __name__ == "__main__":
    main()

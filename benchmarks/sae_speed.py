"""Sparse-autoencoder training throughput (vectors/s) at a ResNet-18 layer4 size, against a plain loop.

    python benchmarks/sae_speed.py [--device cuda] [--dim 512] [--expansion 8] [--steps 200]

Trains on random non-negative vectors (their content does not change the cost) for
both variants, TopK and L1, with ``superlens.analysis.sae.train_sae`` (decoder
renormalization and the auxiliary-k dead-latent loss included); then, in the same
run, a plain hand-written TopK loop (encode, top-k, decode, MSE, Adam) on the same
data and sizes. ``ours / plain`` is the cost of the bookkeeping. On CUDA the fraction
of the fp32 peak is printed (FLOPs: encoder + decoder matmuls, x3 for training).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from common import device_name, fraction_of_peak, sync
from superlens.analysis.sae import SAESettings, train_sae


def plain_topk(x: torch.Tensor, latents: int, k: int, batch: int, steps: int) -> None:
    d = x.shape[1]
    w_enc = torch.randn(d, latents, device=x.device, requires_grad=True)
    w_dec = torch.randn(latents, d, device=x.device, requires_grad=True)
    b = torch.zeros(d, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([w_enc, w_dec, b], lr=1e-3)
    for _ in range(steps):
        xb = x[torch.randint(len(x), (batch,), device=x.device)]
        z = F.relu((xb - b) @ w_enc)
        vals, idx = z.topk(k, dim=1)
        x_hat = torch.zeros_like(z).scatter_(1, idx, vals) @ w_dec + b
        loss = ((xb - x_hat) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    device = torch.device(args.device)
    x = np.maximum(np.random.default_rng(0).normal(size=(100_000, args.dim)), 0).astype(np.float32)
    latents = args.expansion * args.dim
    flops = 3 * 2 * 2 * args.dim * latents  # per vector: encoder and decoder matmuls, forward + backward
    print(f"{device_name(device)}; torch {torch.__version__}; {args.dim}-d vectors, {latents} latents, batch {args.batch_size}")
    print("| variant | steps | seconds | vectors/s | of fp32 peak |")
    print("|---|---|---|---|---|")
    for kind in ("topk", "l1"):
        settings = SAESettings(kind=kind, expansion=args.expansion, batch_size=args.batch_size, steps=args.steps)
        train_sae(x, replace(settings, steps=3), device=device)  # warm-up
        sync(device)
        start = time.perf_counter()
        train_sae(x, settings, device=device)
        sync(device)
        seconds = time.perf_counter() - start
        rate = args.steps * args.batch_size / seconds
        print(f"| superlens {kind} | {args.steps} | {seconds:.1f} | {rate:,.0f} | {fraction_of_peak(rate, flops, device, False)} |",
              flush=True)
    xt = torch.from_numpy(x).to(device)
    plain_topk(xt, latents, 16, args.batch_size, 3)
    sync(device)
    start = time.perf_counter()
    plain_topk(xt, latents, 16, args.batch_size, args.steps)
    sync(device)
    seconds = time.perf_counter() - start
    rate = args.steps * args.batch_size / seconds
    print(f"| plain topk loop | {args.steps} | {seconds:.1f} | {rate:,.0f} | {fraction_of_peak(rate, flops, device, False)} |")


if __name__ == "__main__":
    main()

"""Sparse-autoencoder training throughput (vectors/s) at a ResNet-18 layer4 size, against a plain loop.

    python benchmarks/sae_speed.py [--device cuda] [--dim 512] [--expansion 8] [--steps 200]
    python benchmarks/sae_speed.py --protocol [--dim 128] [--expansion 4] [--batch-size 512]

``--protocol``: the psi protocol's step (``train_saes``: 3 SAE seeds side by side, class
gains, TopK k = 4, no dead latent) against the dense formulation it replaced (every
latent's pre-activation with gradients, the code scattered into a dense matrix and
decoded by a batched product), both in this run; the defaults are ``cifar10-cpu``'s
settings (layer4 of the width-16 ResNet-18: 128 channels, expansion 4, batch 512).

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


def dense_protocol_step(x: torch.Tensor, y: torch.Tensor, latents: int, k: int, batch: int, steps: int,
                        seeds: int = 3) -> None:
    """The protocol's step as it was computed before sparse decoding: dense encoder with gradients, a
    scattered code, a batched dense decode, class gains, Adam, decoder renormalization."""
    d = x.shape[1]
    W_dec = torch.nn.Parameter(F.normalize(torch.randn(seeds, latents, d, device=x.device), dim=2))
    W_enc = torch.nn.Parameter(W_dec.detach().transpose(1, 2).clone())
    b_enc = torch.nn.Parameter(torch.zeros(seeds, 1, latents, device=x.device))
    b_dec = torch.nn.Parameter(torch.zeros(seeds, 1, d, device=x.device))
    log_gain = torch.nn.Parameter(torch.zeros(seeds, int(y.max()) + 1, d, device=x.device))
    opt = torch.optim.Adam([W_dec, W_enc, b_enc, b_dec, log_gain], lr=1e-3)
    for _ in range(steps):
        rows = torch.randint(len(x), (seeds, batch), device=x.device)
        xb = x[rows]
        gain = torch.exp(log_gain).gather(1, y[rows][:, :, None].expand(-1, -1, d))
        pre = torch.baddbmm(b_enc, (xb - b_dec) * gain, W_enc)
        z = F.relu(pre)
        vals, j = z.topk(k, dim=2)
        z = torch.zeros_like(z).scatter_(2, j, vals)
        residual = xb - (torch.bmm(z, W_dec) * gain + b_dec)
        loss = (residual * residual).sum(2).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.data = F.normalize(W_dec.data, dim=2)


def protocol(args, device: torch.device) -> None:
    from superlens.analysis.sae_batched import train_saes
    from superlens.specs import SuperpositionSettings

    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(20_000, args.dim)), 0).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    settings = SuperpositionSettings(expansion=args.expansion, batch_size=args.batch_size, max_steps=args.steps,
                                     window=args.steps, tolerance=1e-9).sae_settings()
    latents = args.expansion * args.dim
    print(f"{device_name(device)}; torch {torch.__version__}; {torch.get_num_threads()} threads; psi protocol step: "
          f"{args.dim}-d vectors, {latents} latents, k 4, batch {args.batch_size}, 3 seeds, class gains")
    print("| variant | steps | ms / step | vectors/s (all seeds) |")
    print("|---|---|---|---|")
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    timings = {}
    for name, run in (("superlens train_saes (sparse TopK)",
                       lambda steps: train_saes(x, replace(settings, steps=steps), [0, 1, 2], 1e-9, steps,
                                                device=device, classes=y)),
                      ("dense formulation (before)",
                       lambda steps: dense_protocol_step(xt, yt, latents, 4, args.batch_size, steps))):
        run(20)  # warm-up
        sync(device)
        start = time.perf_counter()
        run(args.steps)
        sync(device)
        seconds = time.perf_counter() - start
        timings[name] = seconds / args.steps
        print(f"| {name} | {args.steps} | {1000 * timings[name]:.2f} | {3 * args.batch_size / timings[name]:,.0f} |",
              flush=True)
    first, second = timings.values()
    print(f"speed-up of the sparse step: {second / first:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dim", type=int, default=None, help="default 512 (128 with --protocol)")
    ap.add_argument("--expansion", type=int, default=None, help="default 8 (4 with --protocol)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 2048 (512 with --protocol)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--protocol", action="store_true", help="the psi protocol's step against its dense formulation")
    args = ap.parse_args()
    for name, (plain, protocol_default) in {"dim": (512, 128), "expansion": (8, 4), "batch_size": (2048, 512)}.items():
        if getattr(args, name) is None:
            setattr(args, name, protocol_default if args.protocol else plain)
    device = torch.device(args.device)
    if args.protocol:
        return protocol(args, device)
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

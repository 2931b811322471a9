"""Peak memory of each analysis at the Tiny ImageNet preset's shapes: 10,000 x 25,088 features.

    python benchmarks/analysis_memory.py [--n 10000] [--dim 25088] [--device cpu] [--only silhouette nc1 ...]

The devkar2024-tinyimagenet analysis flattens layer4 at 224 px (512 x 7 x 7 = 25,088
values per image) for 10,000 test images: 1 GB of float32 features. Each analysis
runs in a fresh process that first builds such a matrix (non-negative, 200 classes,
as pooled ReLU features are) and reports its own peak resident memory, so every row
includes the interpreter, torch and the 1 GB of features; the first row is that
floor alone.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import numpy as np

STAGES = ("features only", "silhouette", "silhouette_cosine", "davies_bouldin", "nc1", "cosine", "cosine_centered",
          "tsne")


def features(n: int, d: int, classes: int = 200):
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = rng.standard_normal((n, d), dtype=np.float32)
    for c in range(classes):  # a class offset, added block-wise to stay at one copy
        x[y == c] += rng.standard_normal(d, dtype=np.float32)
    np.maximum(x, 0, out=x)
    return x, y


def run(stage: str, n: int, d: int, device: str, queue) -> None:
    import torch

    from superlens.analysis import cosine, geometry
    from superlens.analysis.embedding import tsne

    torch.set_num_threads(torch.get_num_threads())
    x, y = features(n, d)
    dev = None if device == "cpu" else device
    start = time.perf_counter()
    value = None
    if stage == "silhouette":
        value = geometry.silhouette_score(x, y, device=dev)
    elif stage == "silhouette_cosine":
        value = geometry.silhouette_score(x, y, metric="cosine", device=dev)
    elif stage == "davies_bouldin":
        value = geometry.davies_bouldin_score(x, y)
    elif stage == "nc1":
        value = geometry.nc1(x, y)
    elif stage == "cosine":
        value = cosine.pairwise_cosine_stats(x, device=dev).mean
    elif stage == "cosine_centered":
        value = cosine.pairwise_cosine_stats(x, center=True, device=dev).mean
    elif stage == "tsne":
        value = float(np.abs(tsne(x, seed=0)).mean())
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    queue.put((stage, seconds, peak_mib, value))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=25_088)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="+", default=None, choices=STAGES)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    print(f"{args.n} x {args.dim} float32 features ({args.n * args.dim * 4 / 2**30:.2f} GiB), device {args.device}")
    print("| analysis | seconds | peak resident MiB | value |")
    print("|---|---|---|---|")
    for stage in args.only or STAGES:
        queue = ctx.Queue()
        proc = ctx.Process(target=run, args=(stage, args.n, args.dim, args.device, queue))
        proc.start()
        name, seconds, peak, value = queue.get()
        proc.join()
        shown = "" if value is None else f"{value:.4g}"
        print(f"| {name} | {seconds:.1f} | {peak:,.0f} | {shown} |", flush=True)


if __name__ == "__main__":
    main()

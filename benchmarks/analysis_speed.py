"""Silhouette and Davies-Bouldin against scikit-learn, and t-SNE, at study sizes.

    python benchmarks/analysis_speed.py [--sizes 10000 50000] [--device cuda] [--tsne 10000]

Features are n x 512 float32 Gaussian class clusters (10 classes). For each size:
seconds of superlens and of scikit-learn on the same input, their ratio, and the
largest absolute difference of the scores; then seconds of one t-SNE
(PCA to 50 dimensions + openTSNE). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from sklearn.metrics import davies_bouldin_score as sk_db
from sklearn.metrics import silhouette_score as sk_silhouette

from superlens.analysis.embedding import tsne
from superlens.analysis.geometry import davies_bouldin_score, silhouette_score


def features(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.normal(size=(10, 512)) * 0.5)[y] + rng.normal(size=(n, 512))
    return x.astype(np.float32), y


def timed(fn, *args, **kw):
    start = time.perf_counter()
    value = fn(*args, **kw)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--device", default=None, help="device for the silhouette (default: CPU)")
    ap.add_argument("--tsne", type=int, default=10_000, help="points for the t-SNE timing (0 skips it)")
    ap.add_argument("--skip-sklearn-above", type=int, default=60_000)
    args = ap.parse_args()
    where = torch.cuda.get_device_name(args.device) if args.device and "cuda" in args.device else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; {platform.processor() or platform.machine()}; torch {torch.__version__}")
    print("| n x 512 | metric | superlens s | scikit-learn s | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        x, y = features(n)
        ours, t_ours = timed(silhouette_score, x, y, device=args.device)
        ref, t_ref = timed(sk_silhouette, x, y)
        print(f"| {n:,} | silhouette | {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.2f}x | {abs(ours - ref):.1e} |", flush=True)
        ours, t_ours = timed(davies_bouldin_score, x, y)
        ref, t_ref = timed(sk_db, x, y)
        print(f"| {n:,} | davies_bouldin | {t_ours:.3f} | {t_ref:.3f} | {t_ref / t_ours:.2f}x | {abs(ours - ref):.1e} |", flush=True)
    if args.tsne:
        x, _ = features(args.tsne)
        _, seconds = timed(tsne, x, seed=0)
        print(f"\nt-SNE of {args.tsne:,} x 512 points (PCA to 50, openTSNE, 1 thread): {seconds:.1f} s")


if __name__ == "__main__":
    main()

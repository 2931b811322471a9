"""Query time and peak memory of every strategy at CIFAR-10 and Tiny ImageNet pool sizes.

    python benchmarks/query_strategies.py [--sizes 50000:10 100000:200] [--budget 5000] [--centre-scale 1.0]

Each pool is n x 512 features with C classes: class-clustered, non-negative (as
pooled ReLU features are), with softmax outputs of a linear head on them, and a
labelled set of 5,000 images. ``--centre-scale`` multiplies the class centres: 1 is
the default pools, 0 a pool without classes (one cloud), in between weaker classes,
which is where methods that prune by cluster do worst. Times cover ``select`` alone plus, for bald, drawing
the MC-dropout samples (20 masks) as the engine does. Peak memory is the largest
extra allocation tracemalloc saw during a second, traced run of the same query
(numpy arrays and Python objects; torch's own buffers are not traced), next to the
size of the feature matrix for scale.
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc

import numpy as np
import torch

from superlens.active import strategies as S
from superlens.active.loop import mc_dropout_samples

LABELED = 5000
DIM = 512


def make_pool(n: int, classes: int, seed: int = 0, centre_scale: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n + LABELED)
    centers = rng.normal(0, 1, (classes, DIM)).astype(np.float32) * np.float32(centre_scale)
    feats = np.maximum(centers[y] + rng.normal(0, 1, (n + LABELED, DIM)).astype(np.float32), 0)
    head = torch.nn.Linear(DIM, classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(centers) * 0.05)
        probs = head(torch.from_numpy(feats[:n])).softmax(1).numpy()
    return feats[:n], feats[n:], probs, head


def query(name, pool, labeled, probs, head, budget):
    strategy = S.get(name)
    inputs = S.QueryInputs(probs=probs, embeddings=pool, labeled_embeddings=labeled, pool_ids=np.arange(len(pool)))
    if "mc_probs" in strategy.needs:
        inputs.mc_probs = mc_dropout_samples(pool, head, 0.5, 20, torch.device("cpu"))
    picked = strategy.select(inputs, budget, np.random.default_rng(0))
    assert len(set(np.asarray(picked).tolist())) == budget


def run(name, pool, labeled, probs, head, budget):
    """Seconds from an untraced run (tracing slows Python-heavy loops), then peak memory from a traced one."""
    start = time.perf_counter()
    query(name, pool, labeled, probs, head, budget)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    query(name, pool, labeled, probs, head, budget)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["50000:10", "100000:200"], help="pool_size:classes")
    ap.add_argument("--budget", type=int, default=5000)
    ap.add_argument("--strategies", nargs="+", default=list(S.REGISTRY))
    ap.add_argument("--centre-scale", type=float, default=1.0, help="class centres times this (0: no classes)")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
          f"budget {args.budget}, labelled set {LABELED}, features {DIM}-d float32, centre scale {args.centre_scale}")
    print("| pool | strategy | seconds | peak extra MiB | features MiB |")
    print("|---|---|---|---|---|")
    for spec in args.sizes:
        n, classes = (int(v) for v in spec.split(":"))
        pool, labeled, probs, head = make_pool(n, classes, centre_scale=args.centre_scale)
        for name in args.strategies:
            seconds, peak = run(name, pool, labeled, probs, head, args.budget)
            print(f"| {n:,} x {DIM}, {classes} classes | {name} | {seconds:.2f} | {peak:,.0f} | {pool.nbytes / 2**20:,.0f} |", flush=True)


if __name__ == "__main__":
    main()

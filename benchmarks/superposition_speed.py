"""Seconds of the psi protocol (3 SAE seeds side by side, to the convergence rule) at a layer's sizes.

    python benchmarks/superposition_speed.py

Each row: synthetic activations of the given rows x neurons (3 active features per
vector, 3 features per neuron, 10 classes), measured with the protocol at the
settings named and the class labels, as a study measures (class gains on);
it prints the steps the convergence rule ran, whether the loss settled, and the
seconds, beside one SAE trained alone for the same steps (the plain baseline).
"""

from __future__ import annotations

import time

import torch

from superlens.analysis.groundtruth import synthetic_activations
from superlens.analysis.sae import train_sae
from superlens.analysis.superposition import measure_superposition
from superlens.specs import SAESettings

CASES = [  # (label, rows, neurons, protocol settings)
    ("demo layer4 (digits, width 8)", 5_388, 64, dict(batch_size=512, max_steps=600, window=100)),
    ("cifar10-cpu layer4 (width 16)", 16_000, 128, dict(batch_size=512, max_steps=1500, window=150)),
    ("analyze on a CPU, 512 units", 20_000, 512, dict(batch_size=256, max_steps=1000, window=100)),
]


def main() -> None:
    print("| case | vectors x neurons | steps | settled | protocol s (3 seeds) | one SAE alone, same steps s |")
    print("|---|---|---|---|---|---|")
    for label, rows, neurons, settings in CASES:
        data = synthetic_activations(rows, neurons, 3 * neurons, class_weight=1.0, seed=0)
        x = data.x
        t0 = time.perf_counter()
        m = measure_superposition(x, labels=data.labels, **settings)
        protocol = time.perf_counter() - t0
        sae = m["steps"]
        t0 = time.perf_counter()
        train_sae(x, SAESettings(k=4, expansion=8, steps=sae, batch_size=settings["batch_size"]))
        alone = time.perf_counter() - t0
        print(f"| {label} | {rows:,} x {neurons} | {m['steps']} | {m['converged']} | {protocol:.1f} | {alone:.1f} |",
              flush=True)
    x = synthetic_activations(20_000, 512, 3 * 512, seed=0).x
    t0 = time.perf_counter()
    train_sae(x, SAESettings(steps=500, batch_size=512))  # the decoding SAE at analyze's CPU sizes
    print(f"\ndecoding SAE at analyze's CPU sizes (500 steps, batch 512, 4,096 latents, k 16) on 20,000 x 512: "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()

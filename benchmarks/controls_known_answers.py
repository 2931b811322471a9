"""The psi protocol's controls against constructions with known answers (about 4 minutes on 2 CPU cores).

    python benchmarks/controls_known_answers.py

A 16-neuron layer without sparse structure (a Gaussian with a random covariance and a
mean far enough from 0 that the ReLU rarely acts), 6,000 vectors, 4 random classes:
- psi of the layer and of its Gaussian null (superlens.analysis.controls.gaussian_null):
  both should be near 0 (a reproduced latent adds at least 1/16 = 0.06);
- 8 planted sparse non-negative directions (K/N = 0.5) at frequency 0.05 and magnitude 4:
  psi should rise and most planted directions should be reproduced (recall at cosine 0.9).
The protocol at its library defaults with 2 SAE seeds.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import superlens
from superlens.analysis.controls import gaussian_null, planted_response


def main() -> None:
    started = time.perf_counter()
    rng = np.random.default_rng(1)
    pre = (rng.normal(size=(6000, 16)) @ (rng.normal(size=(16, 16)) * 0.3) + 4.0).astype(np.float32)
    layer = np.maximum(pre, 0)
    labels = rng.integers(0, 4, len(layer))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; share of values the ReLU cut: "
          f"{(pre < 0).mean():.4f}")
    psi_layer = superlens.measure_superposition(layer, labels=labels, seeds=2)["psi"]
    psi_null = superlens.measure_superposition(gaussian_null(pre, seed=2), labels=labels, seeds=2)["psi"]
    print(f"| construction | psi |\n|---|---|\n| layer without sparse structure | {psi_layer:.3f} |\n"
          f"| its Gaussian null | {psi_null:.3f} |")
    r = planted_response(layer, labels=labels, ks=[8], frequency=0.05, magnitude=4.0, seeds=2)
    row = r["response"][0]
    print(f"| + 8 planted directions (K/N = 0.5) | {row['psi']:.3f} ({row['psi_sd']:.3f}); rise per planted feature "
          f"per neuron {row['psi_rise_per_planted_per_neuron']:.2f}; recall {row['recall']:.2f} |")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

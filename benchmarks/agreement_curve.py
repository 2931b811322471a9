"""The psi protocol's agreement with itself on a real layer and on the bench (superlens.analysis.agreement).

    python benchmarks/agreement_curve.py --run runs/cifar10-cpu-lens --root /work/data/cifar10 [--arm al-random --seed 0]

Real layer: layer4 of a `cifar10-cpu-lens` study's final model (the arm and seed given), on the study's
5,000 measurement images (training images outside the pool, 80,000 vectors), at the study's protocol
settings. Bench: the design generator at 32 neurons, 64 and 96 features (G/N = 2 and 3, two features active
per vector, exponential magnitudes, 10 classes at class weight 2), 16,000 vectors, the same settings.
For each: the reproduced fraction against the match threshold (0.5-0.95) between two SAE seeds trained on
the same vectors, and between SAEs trained on two disjoint halves of the images (4 vectors per bench "image").
About 3 minutes per case on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from superlens.analysis.agreement import split_half_agreement
from superlens.analysis.features import capture
from superlens.analysis.groundtruth import synthetic_activations
from superlens.analysis.sae import conv_vectors, vector_labels
from superlens.data import fixed_subset, load
from superlens.fileio import read_json
from superlens.models.build import trained_model
from superlens.rundir import RunDir
from superlens.specs import ModelSpec, make_recipe


def real_layer(run_dir: Path, root: str, arm: str, seed: int, keep_images: bool = False) -> tuple:
    """layer4 vectors of a study's final model on the study's measurement images, their class labels, the image of
    each vector and the study's config (and the images, with ``keep_images``)."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    train, _ = load(cfg["data"]["name"], root=root)
    wanted = read_json(run_dir / "arms" / arm / f"seed{seed}" / "sae.json")["measurement_images"]["ids"]
    images = train.subset(np.flatnonzero(np.isin(train.ids, wanted)))
    pool = fixed_subset(train, cfg["data"]["train_subset"])
    images = replace(images, mean=pool.mean, std=pool.std)
    model = trained_model(ModelSpec.from_section(cfg["model"]), len(train.classes),
                          run_dir / "arms" / arm / f"seed{seed}" / "model.pt")
    acts = capture(model, images, "layer4", pool="none", recipe=make_recipe(cfg["recipe"]), device="cpu")["layer4"]
    x = conv_vectors(acts)
    positions = len(x) // len(images)
    out = (x, vector_labels(images.labels.numpy(), len(x)), np.repeat(np.arange(len(images)), positions), cfg)
    return out + (images,) if keep_images else out


def layer_arguments(description: str) -> argparse.ArgumentParser:
    """The options naming a study's layer: the run, the data root, the arm and seed of the final model."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--arm", default="al-random")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def table(name: str, out: dict, seconds: float) -> None:
    print(f"\n{name}: {out['vectors_per_half']} vectors per half, steps {out['steps']}, converged {out['converged']}, "
          f"{seconds:.0f} s")
    print("| match threshold | " + " | ".join(f"{t:g}" for t in out["thresholds"]) + " |")
    print("|---|" + "---|" * len(out["thresholds"]))
    print("| two seeds, same half | " + " | ".join(f"{v:.3f}" for v in out["within_half"]) + " |")
    print("| disjoint halves | " + " | ".join(f"{v:.3f}" for v in out["across_halves"]) + " |", flush=True)


def main() -> None:
    parser = layer_arguments(__doc__.splitlines()[0])
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x, labels, groups, cfg = real_layer(args.run, args.root, args.arm, args.seed)
    settings = {k: v for k, v in cfg["sae"]["superposition"].items() if k != "seeds"}
    started = time.perf_counter()
    table(f"layer4 of {args.arm} seed {args.seed} ({args.run})",
          split_half_agreement(x, groups=groups, labels=labels, **settings), time.perf_counter() - started)
    if args.skip_bench:
        return
    for features in (64, 96):
        d = synthetic_activations(16000, 32, features, active=2, magnitude="exponential", class_weight=2.0, seed=5)
        started = time.perf_counter()
        table(f"bench: 32 neurons, {features} features (G/N = {features // 32})",
              split_half_agreement(d.x, groups=np.repeat(np.arange(4000), 4), labels=d.labels, **settings),
              time.perf_counter() - started)


if __name__ == "__main__":
    main()

"""The psi protocol's controls on one real layer at chosen settings: where does psi start to count?

    python benchmarks/real_layer_controls.py --run runs/cifar10-cpu-lens --root /work/data/cifar10 \
        [--arm al-random --seed 0] [--settings study|library] [--planted 1.0]

On layer4 of a study's final model (the arm and seed given) and the study's measurement images: psi of
the trained layer, of the same network at its initial weights (the seed's own draw, as the study's
floor), of the layer's Gaussian null (its mean and covariance, ReLU'd) and of the layer with K = ratio x
neurons planted sparse directions (``controls.planted_response``). ``--settings study`` uses the study's
protocol settings (sae.superposition of its config); ``library`` the library defaults of
``measure_superposition`` (expansion 8, a 3,000-step cap, batch 2,048), which cost several times more.
Prints one table with seconds per row.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from superlens.active.loop import derive_seed
from superlens.analysis.controls import gaussian_null, planted_response
from superlens.analysis.features import capture
from superlens.analysis.sae import conv_vectors
from superlens.analysis.superposition import measure_superposition
from superlens.models.build import build_model
from superlens.specs import ModelSpec, make_recipe

from agreement_curve import layer_arguments, real_layer


def main() -> None:
    parser = layer_arguments(__doc__.splitlines()[0])
    parser.add_argument("--settings", choices=("study", "library"), default="study")
    parser.add_argument("--planted", type=float, nargs="*", default=[1.0], help="K / N ratios to plant")
    parser.add_argument("--planted-only", action="store_true", help="skip the trained, initial and Gaussian rows")
    args = parser.parse_args()
    x, labels, _, cfg, images = real_layer(args.run, args.root, args.arm, args.seed, keep_images=True)
    settings = dict(cfg["sae"]["superposition"]) if args.settings == "study" else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(x)} vectors of {x.shape[1]} channels; "
          f"settings: {args.settings} {settings}")
    print("\n| layer4 vectors | psi (SAE-seed SD) | reproduced | steps | converged | seconds |\n|---|---|---|---|---|---|")

    def row(name: str, vectors: np.ndarray) -> dict:
        started = time.perf_counter()
        m = measure_superposition(vectors, labels=labels, **settings)
        print(f"| {name} | {m['psi']:.3f} ({m['psi_sd']:.3f}) | {m['stable_fraction']:.1%} | {m['steps']} | "
              f"{m['converged']} | {time.perf_counter() - started:.0f} |", flush=True)
        return m

    if not args.planted_only:
        row(f"trained ({args.arm} seed {args.seed})", x)
        model = build_model(ModelSpec.from_section(cfg["model"]), len(images.classes), derive_seed(args.seed, "init"))
        init = conv_vectors(capture(model, images, "layer4", pool="none", recipe=make_recipe(cfg["recipe"]),
                                    device="cpu")["layer4"])
        row("the same network at its initial weights", init)
        row("Gaussian null of the trained layer", gaussian_null(x, seed=args.seed))
    if args.planted:
        started = time.perf_counter()
        ks = [max(1, round(r * x.shape[1])) for r in args.planted]
        r = planted_response(x, labels, ks, plant_seed=args.seed, **settings)
        for entry in r["response"]:
            print(f"| trained + {entry['planted']} planted directions (K/N {entry['planted_per_neuron']:.2f}) | "
                  f"{entry['psi']:.3f} ({entry['psi_sd']:.3f}) | recall {entry['recall']:.2f}; rise per planted "
                  f"feature per neuron {entry['psi_rise_per_planted_per_neuron']:.2f} | | | "
                  f"{time.perf_counter() - started:.0f} (with the base) |", flush=True)


if __name__ == "__main__":
    main()

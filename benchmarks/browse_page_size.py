"""Size and build time of a feature page at the size of CIFAR-10 layer4 at default settings.

    python benchmarks/browse_page_size.py --root /path/to/cifar10 [--steps 300] [--images 10000]

A full-width ResNet-18 (CIFAR stem, 512 channels at 4 x 4 positions in layer4; random weights,
since no trained one is at hand here) is run over the CIFAR-10 test images; a TopK SAE at the
default expansion 8 (4,096 latents) is trained briefly on 5,000 training images' vectors; then
the page is built exactly as ``superlens browse`` builds it (``superlens.browse.layer_page``).
It prints the page's size in MB and the seconds of each step. The page's size is set by the
units (neurons + latents), the exemplars per unit and how many distinct images they use (one
thumbnail each), not by the weights, so the figure is the size a trained model's page has up to
how many distinct exemplar images its units pick.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch

    from superlens.analysis.features import capture
    from superlens.analysis.sae import conv_vectors, train_sae
    from superlens.browse import layer_page
    from superlens.data import fixed_subset, load
    from superlens.models import resnet18
    from superlens.specs import SAESettings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--steps", type=int, default=300, help="SAE steps (the default study trains 3,000)")
    p.add_argument("--images", type=int, default=10_000, help="test images on the page (analysis.max_samples)")
    args = p.parse_args()
    torch.manual_seed(0)
    train, test = load("cifar10", root=args.root)
    model = resnet18(num_classes=10, stem="cifar").eval()
    t = time.perf_counter()
    vectors = conv_vectors(capture(model, fixed_subset(train, 5000), "layer4", pool="none")["layer4"])
    sae = train_sae(vectors, SAESettings(steps=args.steps)).sae
    print(f"SAE: {sae.W_dec.shape[0]} latents on {len(vectors):,} vectors, {time.perf_counter() - t:.0f} s")
    test = fixed_subset(test, args.images)
    t = time.perf_counter()
    acts = capture(model, test, "layer4", pool="none")["layer4"]
    print(f"capture of {len(test):,} test images: {time.perf_counter() - t:.0f} s")
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        path = layer_page(Path(folder) / "page.html", "size", [], acts, sae, test, f"{len(test)} test images")
        seconds = time.perf_counter() - t
        print(f"page: {path.stat().st_size / 1e6:.1f} MB, built in {seconds:.0f} s "
              f"({acts.shape[1]} neurons + {sae.W_dec.shape[0]} latents)")


if __name__ == "__main__":
    main()

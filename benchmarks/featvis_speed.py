"""Seconds for activation maximization of the study's 11 units of layer4.1.conv2.

    python benchmarks/featvis_speed.py [--device cuda] [--steps 512] [--width 64] [--stem cifar]

A randomly initialized ResNet-18 (weights do not change the cost), 32x32 images,
all 11 units optimized as one batch with the default settings (Fourier basis,
decorrelated colour, random transforms), and once with the study notebook's setting
of upsampling the 32-px image to 224 before the model.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace

import torch

from superlens.analysis.featvis import PAPER_UNITS, FeatVisSettings, visualize
from superlens.data import load
from superlens.models import resnet18


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--stem", default="cifar")
    ap.add_argument("--upsampled", action="store_true", help="also time the 224-px upsampled setting")
    args = ap.parse_args()
    data = load("synthetic", n_train=500, n_test=10, image_size=32).train
    torch.manual_seed(0)
    model = resnet18(10, stem=args.stem, width=args.width)
    name = torch.cuda.get_device_name(args.device) if "cuda" in args.device else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; ResNet-18 width {args.width}, {args.stem} stem")
    print("| setting | units | steps | seconds | steps/s |")
    print("|---|---|---|---|---|")
    settings = [("native 32 px", FeatVisSettings(steps=args.steps))]
    if args.upsampled:
        settings.append(("upsampled to 224", FeatVisSettings(steps=args.steps, upsample_to=224)))
    for label, s in settings:
        visualize(model, "layer4.1.conv2", PAPER_UNITS, data, replace(s, steps=2), device=args.device)  # warm-up
        start = time.perf_counter()
        visualize(model, "layer4.1.conv2", PAPER_UNITS, data, s, device=args.device)
        if "cuda" in args.device:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"| {label} | {len(PAPER_UNITS)} | {s.steps} | {seconds:.1f} | {s.steps / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()

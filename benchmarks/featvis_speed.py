"""Seconds for activation maximization of the study's 11 units of layer4.1.conv2.

    python benchmarks/featvis_speed.py [--device cuda] [--steps 512] [--width 64] [--stem cifar]

A randomly initialized ResNet-18 (weights do not change the cost), 32x32 images,
all 11 units optimized as one batch with the default settings (Fourier basis,
decorrelated colour, random transforms), and once with the study notebook's setting
of upsampling the 32-px image to 224 before the model. In the same run, a plain
hand-written loop (pixels as parameters, no transforms, the same model, units and
steps) gives the floor: ``ours / plain`` is the cost of the parametrization and
the transformation robustness.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from common import device_name, sync
from superlens.analysis.featvis import PAPER_UNITS, FeatVisSettings, visualize
from superlens.data import load
from superlens.models import resnet18


def plain_loop(model, units, steps, device, size=32) -> None:
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    images = torch.full((len(units), 3, size, size), 0.5, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([images], lr=0.05)
    out = {}
    handle = model.layer4[1].conv2.register_forward_hook(lambda m, i, o: out.__setitem__("act", o))
    channel = torch.tensor(units, device=device)
    rows = torch.arange(len(units), device=device)
    for _ in range(steps):
        model(images)
        loss = -out["act"][rows, channel].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    handle.remove()
    for p in model.parameters():
        p.requires_grad_(True)


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
    device = torch.device(args.device)
    print(f"{device_name(device)}; torch {torch.__version__}; ResNet-18 width {args.width}, {args.stem} stem")
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
    plain_loop(model, PAPER_UNITS, 2, device)
    sync(device)
    start = time.perf_counter()
    plain_loop(model, PAPER_UNITS, args.steps, device)
    sync(device)
    seconds = time.perf_counter() - start
    print(f"| plain pixel loop, 32 px | {len(PAPER_UNITS)} | {args.steps} | {seconds:.1f} | {args.steps / seconds:.1f} |")


if __name__ == "__main__":
    main()

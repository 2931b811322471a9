"""Training and evaluation throughput of ResNet-18 at 32x32, against a plain hand-written loop.

    python benchmarks/train_throughput.py [--device cuda] [--images 50000] [--widths 64 16] [--compile]

For each width: images/s of ``superlens.training.fit`` (data on the device as uint8,
crop + flip + normalize in batches, the recipe's mixed precision, channels_last and
fused optimizer on CUDA) and of ``evaluate``; then, in the same run, a plain
hand-written PyTorch loop on the same model and batch size: data already normalized
as one float tensor on the device, no augmentation, the same autocast, SGD and
memory format. ``ours / plain`` is superlens's overhead (1.0 = none). On CUDA the
fraction of the device's dense peak is printed from the model's counted FLOPs
(training = 3 x forward). ``--dataloader`` also times the usual per-sample
DataLoader pipeline.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import device_name, forward_flops, fraction_of_peak, sync
from superlens.data import ImageDataset
from superlens.models import resnet18
from superlens.training import amp_dtype, autocast, compiled, evaluate, fit, make_optimizer, make_recipe


def random_dataset(n: int, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, [str(i) for i in range(10)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def time_fit(width, data, recipe, device):
    model = resnet18(10, stem="cifar", width=width)
    warm = data.subset(np.arange(min(len(data), 8 * recipe.batch_size)))
    fit(model, warm, recipe, device=device, progress=False)  # kernels chosen, compiled graph built
    sync(device)
    start = time.perf_counter()
    result = fit(model, data, recipe, device=device, progress=False)
    sync(device)
    train_rate = result.images_seen / (time.perf_counter() - start)
    evaluate(model, warm, recipe, device=device)
    sync(device)
    start = time.perf_counter()
    evaluate(model, data, recipe, device=device)
    sync(device)
    return train_rate, len(data) / (time.perf_counter() - start)


def time_plain(width, data, recipe, device):
    """The loop a user would write by hand: no augmentation, no bookkeeping."""
    model = resnet18(10, stem="cifar", width=width).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.std, device=device).view(1, 3, 1, 1) * 255
    x_all = ((data.images.to(device).float() - mean) / std).contiguous(
        memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    y_all = data.labels.to(device)
    optimizer = make_optimizer(model, recipe)
    net = compiled(model, recipe)
    dtype = amp_dtype(recipe, device)
    bs = recipe.batch_size

    def epoch(limit: int) -> int:
        order = torch.randperm(len(y_all), device=device)
        steps = min(limit, len(order) // bs)
        for s in range(steps):
            idx = order[s * bs : (s + 1) * bs]
            with autocast(device, dtype):
                loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return steps * bs

    model.train()
    epoch(8)
    sync(device)
    start = time.perf_counter()
    seen = epoch(10**9)
    sync(device)
    return seen / (time.perf_counter() - start)


def time_dataloader(width, data, recipe, device, workers):
    from torch.utils.data import DataLoader, Dataset

    class PerSample(Dataset):
        """The common per-image pipeline: pad + random crop, flip, to float, normalize."""

        def __init__(self):
            self.images = data.images.permute(0, 2, 3, 1).numpy()
            self.labels = data.labels.numpy()
            self.mean, self.std = np.array(data.mean, np.float32) * 255, np.array(data.std, np.float32) * 255
            self.rng = np.random.default_rng(0)

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            img = np.pad(self.images[i], ((4, 4), (4, 4), (0, 0)))
            y, x = self.rng.integers(0, 9, 2)
            img = img[y : y + 32, x : x + 32]
            if self.rng.random() < 0.5:
                img = img[:, ::-1]
            img = (img.astype(np.float32) - self.mean) / self.std
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(self.labels[i])

    model = resnet18(10, stem="cifar", width=width).to(device)
    optimizer = make_optimizer(model, recipe)
    dtype = amp_dtype(recipe, device)
    loader = DataLoader(PerSample(), batch_size=recipe.batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0)

    def run_epoch():
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        return seen

    run_epoch()
    sync(device)
    start = time.perf_counter()
    seen = run_epoch()
    sync(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=None, help="images per timed epoch (default: 50000 on CUDA, 512 on CPU)")
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 16])
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="recipe.compile=true for ours and the plain loop")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend with --compile (eager: the compile path without code generation)")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode with --compile: default, reduce-overhead (CUDA graphs), max-autotune")
    ap.add_argument("--amp", choices=["true", "false", "bf16"], default="true",
                    help="recipe.amp: true (bf16 on a GPU or a CPU with bf16 units, else fp32), false (fp32), bf16")
    ap.add_argument("--dataloader", action="store_true", help="also time the per-sample DataLoader pipeline")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPU cores, at most 8)")
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.images or (50_000 if device.type == "cuda" else 512)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    backend = True if args.compile_backend == "inductor" else args.compile_backend
    recipe = make_recipe("standard", epochs=1, batch_size=args.batch_size, eval_batch_size=1024,
                         compile=backend if args.compile else False,
                         amp={"true": True, "false": False, "bf16": "bf16"}[args.amp],
                         compile_mode=args.compile_mode)
    data = random_dataset(n)
    dtype = amp_dtype(recipe, device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; {n} images/epoch, batch {args.batch_size}, "
          f"autocast {dtype}, compile {args.compile}")
    extra = f" per-sample DataLoader ({workers} workers) img/s |" if args.dataloader else ""
    print(f"| width | GFLOP/img (train) | ours train img/s | plain loop img/s | ours / plain | of peak |{extra} eval img/s |")
    print("|---|---|---|---|---|---|" + ("---|" if args.dataloader else "") + "---|")
    for width in args.widths:
        flops = 3 * forward_flops(resnet18(10, stem="cifar", width=width).eval(), torch.zeros(2, 3, 32, 32))
        train_rate, eval_rate = time_fit(width, data, recipe, device)
        plain = time_plain(width, data, recipe, device)
        cells = [f"{width}", f"{flops / 1e9:.3f}", f"{train_rate:,.0f}", f"{plain:,.0f}", f"{train_rate / plain:.2f}",
                 fraction_of_peak(train_rate, flops, device, dtype is not None)]
        if args.dataloader:
            cells.append(f"{time_dataloader(width, data, recipe, device, workers):,.0f}")
        cells.append(f"{eval_rate:,.0f}")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

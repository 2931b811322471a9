"""Training and evaluation throughput of ResNet-18 at 32x32, and the per-sample pipeline it replaces.

    python benchmarks/train_throughput.py [--device cuda] [--images 20000] [--widths 64 16]

For each width: images/s of ``superlens.training.fit`` (data on the device as uint8,
crop + flip + normalize in batches) and of ``evaluate``; then the usual pipeline: a
Dataset that crops, flips and normalizes one numpy image at a time, batched by a
DataLoader with worker processes, feeding the same model and optimizer. Prints a
Markdown table; the ratio column is on-device / per-sample training speed.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from superlens.data import ImageDataset
from superlens.models import resnet18
from superlens.training import _autocast, evaluate, fit, make_optimizer, make_recipe


def random_dataset(n: int, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, [str(i) for i in range(10)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


class PerSampleDataset(torch.utils.data.Dataset):
    """The common per-image pipeline: pad + random crop, flip, to float, normalize."""

    def __init__(self, data: ImageDataset):
        self.images = data.images.permute(0, 2, 3, 1).numpy()  # HWC, as decoded images are
        self.labels = data.labels.numpy()
        self.mean = np.array(data.mean, np.float32) * 255
        self.std = np.array(data.std, np.float32) * 255
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fit(width, data, recipe, device):
    model = resnet18(10, stem="cifar", width=width)
    fit(model, data.subset(np.arange(min(len(data), 4 * recipe.batch_size))), recipe, device=device, progress=False)
    sync(device)
    start = time.perf_counter()
    fit(model, data, recipe, device=device, progress=False)
    sync(device)
    train_rate = len(data) * recipe.epochs / (time.perf_counter() - start)
    evaluate(model, data.subset(np.arange(min(len(data), recipe.eval_batch_size))), recipe, device=device)
    sync(device)
    start = time.perf_counter()
    evaluate(model, data, recipe, device=device)
    sync(device)
    return train_rate, len(data) / (time.perf_counter() - start)


def time_dataloader(width, data, recipe, device, workers):
    model = resnet18(10, stem="cifar", width=width).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    loader = torch.utils.data.DataLoader(
        PerSampleDataset(data), batch_size=recipe.batch_size, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
    )
    model.train()

    def run_epoch():
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, recipe.amp):
                loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        return seen

    run_epoch()  # warm-up: workers start, kernels are chosen
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
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPU cores, at most 8)")
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.images or (50_000 if device.type == "cuda" else 512)
    import os

    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    recipe = make_recipe("standard", epochs=1, batch_size=args.batch_size, eval_batch_size=1024)
    data = random_dataset(n)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {n} images/epoch, batch {args.batch_size}, bf16={device.type == 'cuda'}")
    print("| width | train img/s (on-device) | eval img/s | train img/s (per-sample DataLoader, %d workers) | ratio |" % workers)
    print("|---|---|---|---|---|")
    for width in args.widths:
        train_rate, eval_rate = time_fit(width, data, recipe, device)
        loader_rate = time_dataloader(width, data, recipe, device, workers)
        print(f"| {width} | {train_rate:,.0f} | {eval_rate:,.0f} | {loader_rate:,.0f} | {train_rate / loader_rate:.2f} |")


if __name__ == "__main__":
    main()

"""Trains examples/outside_cnn.py on CIFAR-10 with plain PyTorch (no superlens) and saves its weights
as safetensors: a stand-in for a model trained elsewhere, for the walkthrough in docs/analyze.md.

    python examples/train_outside_cnn.py CIFAR_ROOT OUT.safetensors [EPOCHS]

CIFAR_ROOT holds cifar-10-batches-py (the official python version). Inputs are raw 0..255 pixels,
with random crops and flips.
"""

import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from outside_cnn import build  # noqa: E402


def batches(root: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in names:
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[b"labels"], np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.manual_seed(0)
    x, y = batches(root, [f"data_batch_{i}" for i in range(1, 6)])
    xt, yt = batches(root, ["test_batch"])
    model = build(10)
    steps = epochs * (len(x) // 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(len(x) // 128):
            idx = order[i * 128:(i + 1) * 128]
            xb = F.pad(x[idx].float(), (4, 4, 4, 4), mode="reflect")
            dx, dy = np.random.randint(0, 9, 2)
            xb = xb[:, :, dy:dy + 32, dx:dx + 32]
            flip = torch.rand(len(xb)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(xt[i:i + 1000].float()).argmax(1) == yt[i:i + 1000]).sum().item()
                      for i in range(0, len(xt), 1000)) / len(xt)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {acc:.4f}, {time.time() - t0:.0f} s",
              flush=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    print(f"saved {out}")


if __name__ == "__main__":
    main()

"""A known answer inside a real network: K extra binary features the network must carry at layer4.

    python benchmarks/glyph_known_answer.py --root /work/data/cifar10 [--ks 0,32,64,128,256]

The `cifar10-cpu` network (width-16 CIFAR-stem ResNet-18, layer4: 128 channels, 4 x 4 positions) is
trained on its 5,000-image pool with K small glyphs stamped on the images: glyph i is a fixed 5 x 5
two-colour pattern, present on an image with probability 2 / K (two glyphs per image on average, at
random places), and an auxiliary multi-label head on the pooled layer4 output must say which glyphs an
image carries (binary cross-entropy added to the class loss). So the network must hold K more binary
features at layer4 than the classes ask for. The psi protocol at the `cifar10-cpu-lens` settings then
reads layer4 on 5,000 other training images, stamped the same way. Per K it prints psi (SAE-seed SD),
the reproduced fraction of latents, the glyph recall (the share of glyphs for which a reproduced latent's
image-level activation, max over positions, separates the images carrying the glyph from the others at
ROC AUC >= 0.9) and the head's own mean AUC (does the network carry the glyphs at all?).

Known answer: psi rises with K as long as the network carries the glyphs. About 1.5 minutes per K on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from superlens.analysis.features import capture
from superlens.analysis.sae import conv_vectors, vector_labels
from superlens.analysis.superposition import _per_seed_metrics, fit_protocol
from superlens.config import load_config
from superlens.data import fixed_subset, load
from superlens.models.build import build_model
from superlens.specs import ModelSpec, SuperpositionSettings, make_recipe
from superlens.training import lr_factor, make_optimizer, prepare_batch

GLYPH = 5  # pixels on a side
AUC_BAR = 0.9


def make_glyphs(k: int, seed: int) -> torch.Tensor:
    """(k, 3, GLYPH, GLYPH) uint8 patterns: a random half of the pixels in one saturated colour, the rest in
    another."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(k, 1, GLYPH, GLYPH, generator=g) < 0.5
    colours = (torch.rand(k, 2, 3, 1, 1, generator=g) > 0.5).to(torch.uint8) * 255
    return torch.where(mask, colours[:, 0], colours[:, 1])


def stamp(images: torch.Tensor, glyphs: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``images`` with each glyph present with probability 2 / K at a random place; and which
    glyphs each image carries, (n, K) float."""
    n, k = len(images), len(glyphs)
    out = images.clone()
    if k == 0:
        return out, torch.zeros(n, 0)
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(n, k, generator=g) < min(0.5, 2.0 / k)
    side = images.shape[-1] - GLYPH + 1
    rows, cols = torch.randint(side, (n, k), generator=g), torch.randint(side, (n, k), generator=g)
    for i, j in present.nonzero().tolist():
        r, c = int(rows[i, j]), int(cols[i, j])
        out[i, :, r : r + GLYPH, c : c + GLYPH] = glyphs[j]
    return out, present.float()


class WithGlyphHead(nn.Module):
    """The network and a linear glyph head on its pooled layer4 output (what its ``avgpool`` returns)."""

    def __init__(self, net: nn.Module, k: int) -> None:
        super().__init__()
        self.net, self.head = net, nn.Linear(net.fc.in_features, max(k, 1))
        self.pooled: torch.Tensor | None = None
        net.avgpool.register_forward_hook(lambda _m, _i, out: setattr(self, "pooled", out.flatten(1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, self.head(self.pooled)


def train(model: WithGlyphHead, data, present: torch.Tensor, recipe, seed: int) -> None:
    optimizer = make_optimizer(model, recipe)
    generator = torch.Generator().manual_seed(seed)
    n, batch = len(data), recipe.batch_size
    per_epoch = n // batch
    total = per_epoch * recipe.epochs
    model.train()
    for step in range(total):
        if step % per_epoch == 0:
            order = torch.randperm(n, generator=generator)
        idx = order[(step % per_epoch) * batch : (step % per_epoch + 1) * batch]
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(recipe, step, total, per_epoch)
        logits, glyph_logits = model(prepare_batch(data.images[idx], data, recipe, train=True, generator=generator))
        loss = nn.functional.cross_entropy(logits, data.labels[idx], label_smoothing=recipe.label_smoothing)
        if present.shape[1]:
            loss = loss + nn.functional.binary_cross_entropy_with_logits(glyph_logits, present[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def auc_matrix(present: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each score column (n, M) for each binary column of ``present`` (n, K): (K, M), from ranks
    (ties averaged), 0.5 where a glyph is on no image or on every one."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    pos = present.sum(0)
    neg = len(present) - pos
    rank_sum = present.T @ ranks
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - (pos * (pos + 1) / 2)[:, None]) / (pos * neg)[:, None]
    return np.where(((pos > 0) & (neg > 0))[:, None], auc, 0.5)


def measure(model: nn.Module, images, present: np.ndarray, recipe, opts: SuperpositionSettings) -> dict:
    acts = capture(model, images, "layer4", pool="none", recipe=recipe, device="cpu")["layer4"]
    positions = acts.shape[2] * acts.shape[3]
    x = conv_vectors(acts)
    labels = vector_labels(images.labels.numpy(), len(x))
    fit = fit_protocol(x, labels, opts)
    per_seed = _per_seed_metrics(fit.decoders, fit.summaries, opts.match, fit.neurons)
    psi = np.array(per_seed["psi"])
    kept = fit.kept(0, opts.match)
    out = {"psi": float(psi.mean()), "psi_sd": float(psi.std(ddof=1)), "reproduced": float(np.mean(per_seed["stable_fraction"])),
           "latents_reproduced": int(kept.sum()), "steps": fit.batch.steps, "converged": fit.batch.converged,
           "recall": float("nan")}
    if present.shape[1] and kept.any():
        sae = fit.batch.saes[0]
        xt = torch.as_tensor(fit.x, dtype=torch.float32)
        gains = None
        if fit.batch.gains is not None:
            gains = torch.as_tensor(fit.batch.gains[0], dtype=torch.float32)[torch.as_tensor(fit.classes)]
        with torch.no_grad():
            z = sae.encode(xt * sae.scale, gains)[:, torch.as_tensor(kept)]
        image_level = z.reshape(len(images), positions, -1).amax(1).numpy()
        out["recall"] = float((auc_matrix(present, image_level).max(1) >= AUC_BAR).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--ks", default="0,32,64,128,256")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = load_config("cifar10-cpu-lens")
    recipe = make_recipe(cfg["recipe"])
    opts = SuperpositionSettings.from_settings(cfg["sae"]["superposition"])
    train_split, _ = load("cifar10", root=args.root)
    pool = fixed_subset(train_split, cfg["data"]["train_subset"], seed=0)
    rest = np.flatnonzero(~np.isin(train_split.ids, pool.ids))
    others = fixed_subset(train_split.subset(rest), cfg["sae"]["max_images"])  # the study's measurement images
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; pool {len(pool)}, measurement images "
          f"{len(others)}; protocol: expansion {opts.expansion}, k {opts.k}, at most {opts.max_steps} steps, "
          f"batch {opts.batch_size}, {opts.seeds} seeds")
    print("\n| K | K / N | psi (SAE-seed SD) | latents reproduced | glyph recall | head AUC (mean) | class accuracy "
          "(measurement images) | steps | seconds |\n|---|---|---|---|---|---|---|---|---|")
    for k in [int(v) for v in args.ks.split(",")]:
        started = time.perf_counter()
        torch.manual_seed(args.seed)
        glyphs = make_glyphs(k, seed=args.seed)
        train_images, train_present = stamp(pool.images, glyphs, seed=args.seed + 1)
        measure_images, measure_present = stamp(others.images, glyphs, seed=args.seed + 2)
        train_data, measure_data = replace(pool, images=train_images), replace(others, images=measure_images)
        model = WithGlyphHead(build_model(ModelSpec(stem="cifar", width=16), 10, seed=args.seed), k)
        train(model, train_data, train_present, recipe, seed=args.seed)
        model.eval()
        with torch.no_grad():
            batches = [model(prepare_batch(measure_data.images[i : i + 500], measure_data, recipe, train=False))
                       for i in range(0, len(measure_data), 500)]
        logits = torch.cat([b[0] for b in batches])
        accuracy = float((logits.argmax(1) == measure_data.labels).float().mean())
        head_auc = float("nan")
        if k:
            head = torch.cat([b[1] for b in batches]).numpy()
            head_auc = float(np.mean(np.diag(auc_matrix(measure_present.numpy(), head))))
        m = measure(model.net, measure_data, measure_present.numpy(), recipe, opts)
        print(f"| {k} | {k / 128:.2f} | {m['psi']:.3f} ({m['psi_sd']:.3f}) | {m['latents_reproduced']} "
              f"({m['reproduced']:.1%}) | {m['recall']:.2f} | {head_auc:.3f} | {accuracy:.3f} | {m['steps']} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()

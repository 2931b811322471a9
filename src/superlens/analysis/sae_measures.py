"""What is measured with a trained sparse autoencoder (``sae.SparseAutoencoder``).

Metrics, each with one definition:
    L0             mean number of non-zero latents per vector
    FVU            sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (fraction of variance unexplained)
    dead_fraction  latents that never fire on the evaluation vectors
    cosine         mean cos(x, x_hat)
    recovered      (acc(x_hat spliced in) - acc(ablated)) / (acc(clean) - acc(ablated)), for
                   zero ablation and mean ablation of the layer
    stability      mean cosine of decoder rows matched one-to-one (Hungarian) between two seeds
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from superlens.analysis.sae import SparseAutoencoder, conv_vectors


@torch.no_grad()
def latent_activity(sae: SparseAutoencoder, vectors, chunk: int = 65536) -> np.ndarray:
    """(latents,) mean absolute code of each latent over ``vectors``, streamed in chunks (float64 sums)."""
    x = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    total = torch.zeros(sae.W_dec.shape[0], dtype=torch.float64, device=sae.W_dec.device)
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(sae.W_dec.device, non_blocking=True)
        total += sae.encode(xb * sae.scale).abs().sum(0, dtype=torch.float64)
    return (total / max(1, len(x))).cpu().numpy()


@torch.no_grad()
def sae_metrics(sae: SparseAutoencoder, vectors, chunk: int = 65536) -> dict[str, float]:
    """L0, FVU, dead fraction and mean cosine on evaluation vectors (raw units)."""
    x = torch.as_tensor(np.asarray(vectors), dtype=torch.float32, device=sae.W_dec.device)
    mean = x.mean(0)
    err = total = l0 = cos = 0.0
    fired = torch.zeros(sae.W_dec.shape[0], dtype=torch.bool, device=x.device)
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        z = sae.encode(xb * sae.scale)
        x_hat = sae.decode(z) / sae.scale
        err += float(((xb - x_hat) ** 2).sum())
        total += float(((xb - mean) ** 2).sum())
        l0 += float((z > 0).sum())
        cos += float(F.cosine_similarity(xb, x_hat, dim=1).sum())
        fired |= (z > 0).any(0)
    n = len(x)
    return {"l0": l0 / n, "fvu": err / max(total, 1e-30), "dead_fraction": float(1 - fired.float().mean()),
            "cosine": cos / n}


def matched_decoder_cosine(a: SparseAutoencoder | np.ndarray, b: SparseAutoencoder | np.ndarray) -> float:
    """Mean cosine of decoder rows paired one-to-one to maximize the total (Hungarian matching)."""
    from scipy.optimize import linear_sum_assignment

    da = a.W_dec.detach().cpu().numpy() if isinstance(a, SparseAutoencoder) else np.asarray(a)
    db = b.W_dec.detach().cpu().numpy() if isinstance(b, SparseAutoencoder) else np.asarray(b)
    da = da / np.linalg.norm(da, axis=1, keepdims=True)
    db = db / np.linalg.norm(db, axis=1, keepdims=True)
    sim = da @ db.T
    rows, cols = linear_sum_assignment(-sim)
    return float(sim[rows, cols].mean())


def effective_features(codes=None, activity=None) -> float:
    """F = exp(H(p)), p the normalized mean absolute activity of each latent (Bereska et al. 2025).

    Pass the (n, latents) ``codes``, or their per-latent mean absolute ``activity``
    (``latent_activity``), which is all F depends on.
    """
    if activity is None:
        activity = np.abs(np.asarray(codes, dtype=np.float64)).mean(0)
    activity = np.asarray(activity, dtype=np.float64)
    if activity.sum() <= 0:
        return 0.0
    p = activity / activity.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@torch.no_grad()
def image_latents(sae: SparseAutoencoder, acts: np.ndarray, images_per_chunk: int = 256) -> np.ndarray:
    """(images, latents) latent activity per image: the mean of its codes over its positions.

    Streamed a few images at a time, so the codes of every position are never held at once.
    """
    positions = 1 if acts.ndim == 2 else acts.shape[2] * acts.shape[3]
    out = []
    for i in range(0, len(acts), images_per_chunk):
        block = acts[i : i + images_per_chunk]
        x = torch.as_tensor(conv_vectors(block), dtype=torch.float32).to(sae.W_dec.device)
        out.append(sae.codes(x).view(len(block), positions, -1).mean(1))
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, sae.W_dec.shape[0]), np.float32)


def spliced_accuracies(model: nn.Module, layer: str, sae: SparseAutoencoder, data, mean_activation: torch.Tensor,
                       recipe=None, device=None, pooled: bool = False, accuracy=None) -> dict[str, float]:
    """Test accuracy with the layer's output clean, replaced by its SAE reconstruction,
    by zeros, and by its mean over the data; plus the fraction recovered against each ablation.

    ``pooled``: the SAE was trained on spatially averaged vectors, so only that average
    is replaced: each image's output becomes out - mean_hw(out) + sae(mean_hw(out)),
    its spatial deviations kept (exact for a layer read through global average pooling,
    as ResNet's last block is). ``mean_activation`` is (C,) or (C, H, W); a (C,) mean
    ablates every position with the channel's mean. The SAE always runs in float32,
    outside any autocast, so spliced accuracy means the same on every device.
    ``accuracy``: a function of no arguments that measures the model's accuracy on
    ``data`` (default: ``evaluate``, for models with ``embed`` and ``fc``); token outputs
    (N, T, D) are spliced token by token.
    """
    from superlens.analysis.features import resolve_module
    from superlens.training import evaluate

    module = resolve_module(model, layer)

    def first(fn):  # modules that return a tuple (attention blocks): replace its first tensor
        def hook(m, i, out):
            return (fn(m, i, out[0]),) + tuple(out[1:]) if isinstance(out, (tuple, list)) else fn(m, i, out)
        return hook

    def run(replace) -> float:
        handle = module.register_forward_hook(first(replace)) if replace else None
        try:
            return accuracy() if accuracy is not None else evaluate(model, data, recipe, device=device).accuracy
        finally:
            if handle:
                handle.remove()

    def through_sae(m, i, out):
        with torch.autocast(device_type=out.device.type, enabled=False):
            if out.ndim == 4 and pooled:
                avg = out.float().mean((2, 3))
                return (out.float() - avg[:, :, None, None] + sae(avg)[:, :, None, None]).to(out.dtype)
            if out.ndim == 4:
                b, c, h, w = out.shape
                flat = out.permute(0, 2, 3, 1).reshape(-1, c).float()
                return sae(flat).view(b, h, w, c).permute(0, 3, 1, 2).to(out.dtype)
            flat = out.reshape(-1, out.shape[-1]).float()
            return sae(flat).view(out.shape).to(out.dtype)

    def mean_ablation(m, i, out):
        mean = mean_activation.to(out)
        if out.ndim == 4 and mean.ndim == 1:
            mean = mean[:, None, None]
        return mean.expand_as(out)

    clean = run(None)
    spliced = run(through_sae)
    zero = run(lambda m, i, out: torch.zeros_like(out))
    mean = run(mean_ablation)

    def recovered(ablated: float) -> float:
        return (spliced - ablated) / (clean - ablated) if clean != ablated else float("nan")

    return {"accuracy_clean": clean, "accuracy_spliced": spliced, "accuracy_zero_ablation": zero,
            "accuracy_mean_ablation": mean, "recovered_vs_zero": recovered(zero), "recovered_vs_mean": recovered(mean)}

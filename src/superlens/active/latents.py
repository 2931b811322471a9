"""The lens inside the loop: sparse-autoencoder latents of the current model's layer for the two
strategies that select by them (``latent_coverage`` and ``interference``, docs/config.md).

At each query a small SAE pair is fitted afresh on the layer's vectors of a sample of the
training pool (labelled and unlabelled images alike, raw vectors: a class's own features
count as features here), with two seeds trained side by side; the latents the second
seed reproduces (mutual nearest decoder directions at cosine ``match``, as the psi
protocol counts them) are the ones the strategies look at. When fewer than
``min_latents`` are reproduced, every latent of the first seed is used instead, and the
round's record says so (``lens_latents``, ``lens_reproduced`` in rounds.csv). The whole pool then passes through the layer
and the SAE once, a chunk of images at a time, and each image is summarised by which
used latents fire on it (at any position) and by its pair interference: the share of
its code energy that falls on pairs of used latents whose decoder directions overlap,

    pair(i) = sum_p sum_{j != l} z_pj z_pl |cos(d_j, d_l)|  /  sum_p sum_j z_pj^2,

over the image's positions p, where z_p are the codes at position p and d_j the decoder
rows. The selection rules on those summaries are plain functions of arrays, tested on
constructed pools where the answer is known.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

CHUNK = 1024  # pool images through the layer and the SAE at a time


@dataclass
class LatentLens:
    sae: object  # the first seed's SparseAutoencoder
    keep: torch.Tensor  # (M,) bool on the SAE's device: the latents the strategies use
    overlap: torch.Tensor  # (m, m) |decoder cosine| of the used latents, zero diagonal
    reproduced: int  # latents the second seed reproduced
    used: str  # "reproduced", or "all" when fewer than min_latents were


def _vectors(model, data, layer: str, recipe, device) -> np.ndarray:
    from superlens.analysis.features import capture

    return capture(model, data, layer, pool="none", recipe=recipe, device=device)[layer]


def fit_lens(model, data, layer: str, recipe, device, rng: np.random.Generator, *, fit_images: int, expansion: int,
             k: int, steps: int, batch_size: int, match: float, min_latents: int, window: int = 100,
             tolerance: float = 0.01) -> LatentLens:
    """Two TopK SAEs on the layer's vectors of ``fit_images`` pool images drawn with ``rng``."""
    from superlens.analysis.sae import conv_vectors
    from superlens.analysis.sae_batched import train_saes
    from superlens.analysis.superposition import reproduced, unit_rows
    from superlens.specs import SAESettings

    device = torch.device(device) if device is not None else torch.device("cpu")
    ids = np.sort(rng.choice(len(data), min(fit_images, len(data)), replace=False))
    vectors = conv_vectors(_vectors(model, data.subset(ids), layer, recipe, device))
    seed = int(rng.integers(2**31))
    settings = SAESettings(kind="topk", expansion=expansion, k=k, steps=steps, batch_size=batch_size, seed=seed)
    batch = train_saes(vectors, settings, [seed, seed + 1], tolerance=tolerance, window=window, device=device)
    decoders = [sae.W_dec.detach().cpu().numpy() for sae in batch.saes]
    found = reproduced(decoders[0], decoders[1], match)
    used = "reproduced" if found.sum() >= min_latents else "all"
    keep = found if used == "reproduced" else np.ones(len(found), bool)
    unit = unit_rows(decoders[0][keep])
    overlap = np.abs(unit @ unit.T)
    np.fill_diagonal(overlap, 0.0)
    sae = batch.saes[0].to(device)
    return LatentLens(sae, torch.as_tensor(keep, device=device), torch.as_tensor(overlap, dtype=torch.float32,
                      device=device), int(found.sum()), used)


@torch.no_grad()
def summaries(lens: LatentLens, model, data, ids: np.ndarray, layer: str, recipe, device,
              chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(fires, pair) of the images ``ids`` of ``data``: (n, m) bool, which used latents fire on each image at
    any position, and (n,) its pair interference (0 for an image on which no used latent fires)."""
    from superlens.analysis.sae import conv_vectors

    fires, pair = [], []
    for start in range(0, len(ids), chunk):
        block = ids[start : start + chunk]
        acts = _vectors(model, data.subset(block), layer, recipe, device)
        positions = acts.shape[2] * acts.shape[3] if acts.ndim == 4 else 1
        x = torch.as_tensor(conv_vectors(acts), dtype=torch.float32, device=lens.sae.W_dec.device)
        z = lens.sae.codes(x)[:, lens.keep].reshape(len(block), positions, -1)
        fires.append((z > 0).any(1).cpu().numpy())
        pair.append(pair_interference(z, lens.overlap).cpu().numpy())
    m = int(lens.keep.sum())
    return (np.concatenate(fires) if fires else np.zeros((0, m), bool),
            np.concatenate(pair).astype(np.float64) if pair else np.zeros(0))


def pair_interference(z: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """(images,) pair interference of codes ``z`` (images, positions, latents) under ``overlap`` (latents x
    latents, zero diagonal); 0 for an image with no code energy. At most k - 1 with k latents active per
    position."""
    energy = (z * z).sum((1, 2))
    shared = ((z @ overlap) * z).sum((1, 2))
    return torch.where(energy > 0, shared / energy.clamp_min(1e-30), torch.zeros_like(energy))


def coverage_gain(counts: np.ndarray) -> np.ndarray:
    """What one more labelled image carrying a latent adds to sum_j log(1 + c_j): log((2 + c) / (1 + c))."""
    return np.log1p(1.0 / (1.0 + counts))


def coverage_picks(pool_fires: np.ndarray, labeled_fires: np.ndarray, k: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy picks that even out how many labelled images carry each latent.

    The labelled set's objective is F = sum_j log(1 + c_j), c_j the number of its images on which latent j
    fires: each pick is the image that raises F most, so a latent the labelled set has seldom seen weighs
    about 1 / (1 + c_j), and the counts are updated after every pick. F is monotone and submodular, so the
    greedy set is within 1 - 1/e of the best and gains only shrink: candidates are re-scored lazily
    (a stale gain is an upper bound). Ties, images that carry no latent among them, go in ``rng``'s order.
    Returns (picks, the gain of each pick when it was made, every image's gain before the first pick).
    """
    n = len(pool_fires)
    k = min(k, n)
    counts = labeled_fires.sum(0).astype(np.float64) if len(labeled_fires) else np.zeros(pool_fires.shape[1])
    rows, cols = np.nonzero(pool_fires)
    latents = np.split(cols, np.searchsorted(rows, np.arange(1, n)))
    tiebreak = rng.permutation(n)
    gains0 = np.array([coverage_gain(counts[c]).sum() for c in latents])  # as re-scored below, bit for bit
    heap = [(-g, int(t), i) for i, (g, t) in enumerate(zip(gains0, tiebreak))]
    heapq.heapify(heap)
    picks, gains = [], []
    while len(picks) < k:
        _, t, i = heapq.heappop(heap)
        g = float(coverage_gain(counts[latents[i]]).sum())
        if heap and (-heap[0][0], -heap[0][1]) > (g, -t):  # another's bound (or tie-break) beats this fresh gain
            heapq.heappush(heap, (-g, t, i))
            continue
        picks.append(i)
        gains.append(g)
        counts[latents[i]] += 1
    return np.asarray(picks, np.int64), np.asarray(gains), gains0


def interference_picks(pair: np.ndarray, k: int, random_share: float, rng: np.random.Generator) -> np.ndarray:
    """The ``k - round(random_share * k)`` images of largest pair interference, then the rest of the batch
    uniformly at random from the images left (best first, the random ones after)."""
    k = min(k, len(pair))
    top = np.argsort(-pair, kind="stable")[: k - int(round(random_share * k))]
    rest = np.setdiff1d(np.arange(len(pair)), top)
    return np.concatenate([top, rng.permutation(rest)[: k - len(top)]]).astype(np.int64)

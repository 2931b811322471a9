"""Per-unit records of a layer: what the feature pages show for every neuron and every SAE latent.

``values`` is (images, units): a neuron's activation per image averaged over positions, or a
latent's code averaged over the image's positions (``sae_measures.image_latents``), the same per-image
activity the study's neuron and latent metrics use. ``maps`` gives a unit's activation over the
positions of one image, for the heatmaps of its exemplars.
"""

from __future__ import annotations

import numpy as np

from superlens.analysis import neurons

BINS = 20


def unit_table(values: np.ndarray, labels: np.ndarray, top: int = 50) -> dict[str, np.ndarray]:
    """One entry per unit: ``density`` (fraction of images on which it is active), ``mean`` activation,
    ``class_selectivity`` (Morcos et al. 2018; 0 for a unit that never fires), ``top_class`` (the class of
    its largest class mean), ``live`` (fires on at least one image), ``hist`` (``BINS`` counts of its
    non-zero activations between 0 and its maximum) and ``top_classes`` (class counts among its ``top``
    most activating images)."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = neurons.class_means(values, labels)
    top = min(top, len(values))
    order = np.argsort(-values, axis=0, kind="stable")[:top]  # (top, units)
    codes = np.searchsorted(classes, labels)
    top_classes = np.stack([np.bincount(codes[order[:, u]], minlength=len(classes)) for u in range(values.shape[1])])
    peak = values.max(0)
    hist = np.stack([np.histogram(v[v > 0], bins=BINS, range=(0.0, p if p > 0 else 1.0))[0]
                     for v, p in zip(values.T, peak)])
    return {"density": (values > 0).mean(0), "mean": values.mean(0), "class_selectivity": neurons.class_selectivity(values, labels),
            "top_class": classes[means.argmax(0)], "live": peak > 0, "peak": peak, "hist": hist,
            "top_classes": top_classes}


def top_images(values: np.ndarray, k: int) -> np.ndarray:
    """(units, k) indices of each unit's ``k`` most activating images, largest first (ties: lower index)."""
    return np.argsort(-np.asarray(values), axis=0, kind="stable")[: min(k, len(values))].T


def decoder_shares(w_dec: np.ndarray) -> np.ndarray:
    """(latents, neurons) share of each latent's decoder energy on each neuron: W_dec[j, i]^2 / |W_dec[j]|^2."""
    w = np.asarray(w_dec, dtype=np.float64) ** 2
    return w / np.maximum(w.sum(1, keepdims=True), 1e-30)


def loadings(w_dec: np.ndarray, live: np.ndarray, threshold: float) -> np.ndarray:
    """(latents, neurons) bool: live latent j loads on neuron i when its share there is at least ``threshold``."""
    return (decoder_shares(w_dec) >= threshold) & np.asarray(live, bool)[:, None]

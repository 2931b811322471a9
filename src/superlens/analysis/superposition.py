"""Superposition measured with sparse autoencoders: train on a layer's vectors, measure on others.

Arrays and models in, numbers out; shared by studies and ``superlens analyze``.
"""

from __future__ import annotations

import numpy as np

from superlens.analysis import neurons
from superlens.analysis.sae import (effective_features, latent_activity, matched_decoder_cosine, sae_metrics,
                                    spliced_accuracies, train_sae)
from superlens.specs import SAESettings


def measure_sae(model, layer: str, train_vectors: np.ndarray, test_vectors: np.ndarray, settings: SAESettings,
                stability: bool, device, splice: dict | None = None):
    """Train an SAE on ``train_vectors`` and measure it on ``test_vectors``: the ``sae_*`` metrics,
    psi, with ``stability`` a second seed's matched decoders, and with ``splice`` (keyword
    arguments of ``spliced_accuracies``) the accuracies with the layer replaced. Returns (sae, metrics)."""
    from dataclasses import replace

    sae = train_sae(train_vectors, settings, device=device).sae
    m = {f"sae_{k}": v for k, v in sae_metrics(sae, test_vectors).items()}
    if splice is not None:
        m.update({f"sae_{k}": v for k, v in spliced_accuracies(model, layer, sae, device=device, **splice).items()})
    if stability:
        second = train_sae(train_vectors, replace(settings, seed=settings.seed + 10_000), device=device).sae
        m["sae_stability"] = matched_decoder_cosine(sae, second)
    m.update(psi_of(sae, test_vectors))
    return sae, m


def psi_of(sae, test_vectors: np.ndarray) -> dict[str, float]:
    """Effective features F of the SAE's latent activity on ``test_vectors``, and psi = F / neurons."""
    f = effective_features(activity=latent_activity(sae, test_vectors))
    return {"sae_effective_features": f, "psi": f / test_vectors.shape[1]}


def neurons_and_latents(acts: np.ndarray, latents: np.ndarray, labels: np.ndarray, topk: int) -> dict[str, float]:
    """Class selectivity and top-k class entropy of the layer's neurons and of the live SAE latents."""
    out = {}
    for name, values in (("neuron", acts), ("latent", latents)):
        live = values.max(0) > 0
        if not live.any():
            continue
        v = values[:, live]
        out[f"sae_{name}_class_selectivity_mean"] = float(neurons.class_selectivity(v, labels).mean())
        out[f"sae_{name}_topk_class_entropy_mean"] = float(neurons.topk_class_entropy(v, labels, k=topk).mean())
    return out

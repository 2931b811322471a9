"""The per-round metrics of a model (``ROUND_METRICS``), cheap enough to take after every round.

One capture pass over the analysis subset of the test split (the same images every
job analyses) gives the feature layer and the neuron layer together; the numbers
carry the same names as in ``analysis.json`` and ``summary.json``.
"""

from __future__ import annotations

import torch

from superlens.analysis import cosine, geometry, neurons
from superlens.analysis.features import features_and_units
from superlens.data.dataset import ImageDataset
from superlens.specs import SnapshotSpec

ROUND_METRICS = ("silhouette_features", "davies_bouldin_features", "cosine_centered_mean", "class_selectivity_mean", "nc1")


def snapshot_metrics(model: torch.nn.Module, test: ImageDataset, spec: SnapshotSpec, recipe, device) -> dict[str, float]:
    """``ROUND_METRICS`` of ``model`` on ``test`` (already the analysis subset)."""
    layer, neuron_layer = spec.layer, spec.neuron_layer
    kw = dict(recipe=recipe, device=device, repeat_block=spec.repeat_block)
    x, units = features_and_units(model, test, layer, spec.pool, neuron_layer, **kw)
    y = test.labels.cpu().numpy()
    geo_device = device if torch.device(device).type == "cuda" else None
    out = {
        "silhouette_features": geometry.silhouette_score(x, y, device=geo_device),
        "davies_bouldin_features": geometry.davies_bouldin_score(x, y),
        "cosine_centered_mean": cosine.pairwise_cosine_stats(x, center=True, device=geo_device).mean,
        "nc1": geometry.nc1(x, y),
    }
    alive = units.max(0) > 0
    if (units >= 0).all() and alive.any():  # the neuron metrics need non-negative activations
        out["class_selectivity_mean"] = float(neurons.class_selectivity(units[:, alive], y).mean())
    else:
        out["class_selectivity_mean"] = float("nan")
    return {k: float(v) for k, v in out.items()}

"""The analysis of one representation: class geometry, t-SNE, cosine views, neuron metrics.

Arrays and models in, numbers out. The test images analysed are the same for every
job (a fixed stratified subset when the test split is larger than
``analysis.max_samples``), so arms and seeds are compared on the same images.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from superlens.analysis import cosine, geometry, neurons
from superlens.analysis.embedding import tsne
from superlens.analysis.features import capture, features_and_units, resolve_module
from superlens.data.dataset import DatasetSplits, fixed_subset
from superlens.errors import UserError
from superlens.specs import AnalysisSpec, Recipe

HIST_BINS = 100  # bins kept for plots (of the 2,000 used for the statistics)


def _conv_weight(model: torch.nn.Module, name: str) -> torch.Tensor:
    module = resolve_module(model, name)
    weight = getattr(module, "weight", None)
    if weight is None or weight.ndim != 4:
        raise UserError(f"analysis.filter_layer={name!r} is not a convolution; use e.g. 'layer4.1.conv2'")
    return weight


def analyze_model(model: torch.nn.Module, splits: DatasetSplits, spec: AnalysisSpec, recipe: Recipe, seed: int,
                  device) -> dict[str, Any]:
    """Every analysis of a study's model: features of ``spec.layer``, units of ``spec.neuron_layer``,
    filters of ``spec.filter_layer``."""
    test = fixed_subset(splits.test, spec.max_samples)
    train = fixed_subset(splits.train, spec.probe_samples)
    t0 = time.perf_counter()
    kw = dict(recipe=recipe, device=device, repeat_block=spec.repeat_block)
    x, units = features_and_units(model, test, spec.layer, spec.pool, spec.neuron_layer, **kw)
    x_train = capture(model, train, spec.layer, pool=spec.pool, **kw)[spec.layer]
    seconds = time.perf_counter() - t0
    if (units < 0).any():
        raise UserError(
            f"analysis.neuron_layer={spec.neuron_layer!r} has negative activations; the neuron metrics need "
            "non-negative (post-ReLU) ones, e.g. a block output such as 'layer4.1'"
        )
    result = representation_metrics(
        x, test.labels.cpu().numpy(), x_train, train.labels.cpu().numpy(), units,
        _conv_weight(model, spec.filter_layer), spec, seed, device,
    )
    result["timings"]["features"] = seconds
    result["features"] = x  # the analysed test images' features (a study keeps them for CKA)
    return result


def representation_metrics(x: np.ndarray, y_test: np.ndarray, x_train: np.ndarray | None, y_train: np.ndarray | None,
                           units: np.ndarray | None, weight: torch.Tensor | None, spec: AnalysisSpec, seed: int,
                           device, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The analysis of one representation, shared by studies and ``superlens analyze``.

    ``x``: (n, d) features of the test images; ``x_train``: of training images, for the
    probes (skipped when None); ``units``: (n, units) non-negative unit activations for
    the neuron metrics (skipped when None); ``weight``: filters for their cosines
    (skipped when None). Of ``spec``, ``tsne``, ``perplexity``, ``knn_k`` and ``topk`` are used.
    ``log`` hears each slow step as it starts (the probes, t-SNE: neither can tell its progress).
    """
    log = log or (lambda line: None)
    timings: dict[str, float] = {}
    m: dict[str, Any] = {}
    t0 = time.perf_counter()
    geo_device = device if torch.device(device).type == "cuda" else None
    m["silhouette_features"] = geometry.silhouette_score(x, y_test, device=geo_device)
    m["silhouette_features_cosine"] = geometry.silhouette_score(x, y_test, metric="cosine", device=geo_device)
    m["davies_bouldin_features"] = geometry.davies_bouldin_score(x, y_test)
    m["nc1"] = geometry.nc1(x, y_test)
    if x_train is not None:
        log(f"k-NN and linear probe: {len(x_train):,} training vectors of {x.shape[1]:,} values")
        m["knn_accuracy"] = geometry.knn_accuracy(x_train, y_train, x, y_test, k=spec.knn_k, device=geo_device)
        m["linear_probe_accuracy"] = geometry.linear_probe_accuracy(x_train, y_train, x, y_test, device=geo_device)
    timings["geometry"] = time.perf_counter() - t0
    coords = None
    if spec.tsne:
        t0 = time.perf_counter()
        log(f"t-SNE of {len(x):,} points (probes took {timings['geometry']:.0f} s)")
        coords = tsne(x, seed=seed, perplexity=spec.perplexity, n_jobs=torch.get_num_threads())
        m["silhouette_tsne"] = geometry.silhouette_score(coords, y_test)
        m["davies_bouldin_tsne"] = geometry.davies_bouldin_score(coords, y_test)
        timings["tsne"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    hists = {}
    views = {
        "cosine": lambda: cosine.pairwise_cosine_stats(x, device=geo_device),
        "cosine_centered": lambda: cosine.pairwise_cosine_stats(x, center=True, device=geo_device),
        "neuron_correlation": None if units is None else lambda: cosine.neuron_correlation_stats(units, device=geo_device),
        "filter_cosine": None if weight is None else lambda: cosine.filter_cosine_stats(weight),
    }
    for name, view in views.items():
        if view is None:
            continue
        stats = view()
        for key, value in stats.summary().items():
            if key != "pairs":
                m[f"{name}_{key}"] = value
        hists[name] = stats.coarse_counts(HIST_BINS).tolist()
    timings["cosine"] = time.perf_counter() - t0

    per_unit, alive = {}, np.zeros(0, bool)
    if units is not None:
        t0 = time.perf_counter()
        per_unit = {
            "class_selectivity": neurons.class_selectivity(units, y_test),
            "topk_class_entropy": neurons.topk_class_entropy(units, y_test, k=spec.topk),
            "classes_for_90_mass": neurons.classes_for_mass(units, y_test, 0.9),
        }
        alive = units.max(0) > 0
        m["dead_unit_fraction"] = float(1 - alive.mean())
        for name, values in per_unit.items():
            m[f"{name}_mean"] = float(values[alive].mean()) if alive.any() else float("nan")
        timings["neurons"] = time.perf_counter() - t0
    return {
        "metrics": m, "histograms": hists, "per_unit": {k: v.tolist() for k, v in per_unit.items()},
        "alive_units": alive.tolist(), "tsne": coords, "labels": y_test, "timings": timings,
        "n_samples": len(y_test), "feature_dim": int(x.shape[1]),
    }

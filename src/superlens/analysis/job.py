"""All analyses of one trained job's final model, written to its folder as ``analysis.json``.

Reads ``model.pt``, never trains. The test images analysed are the same for every
job (a fixed stratified subset when the test split is larger than
``analysis.max_samples``), so arms and seeds are compared on the same images.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superlens.analysis import cosine, geometry, neurons
from superlens.analysis.embedding import tsne
from superlens.analysis.features import capture, resolve_module
from superlens.data.dataset import DatasetSplits, ImageDataset
from superlens.errors import UserError
from superlens.fileio import atomic_path, read_json, write_json
from superlens.training import make_recipe

HIST_BINS = 100  # bins kept for plots (of the 2,000 used for the statistics)


def fixed_subset(data: ImageDataset, limit: int, seed: int = 0) -> ImageDataset:
    """``data`` itself, or a stratified subset of ``limit`` images that depends only on ``seed``."""
    if len(data) <= limit:
        return data
    from sklearn.model_selection import train_test_split

    labels = data.labels.cpu().numpy()
    keep, _ = train_test_split(np.arange(len(data)), train_size=limit, stratify=labels, random_state=seed)
    return data.subset(np.sort(keep))


def _conv_weight(model: torch.nn.Module, name: str) -> torch.Tensor:
    module = resolve_module(model, name)
    weight = getattr(module, "weight", None)
    if weight is None or weight.ndim != 4:
        raise UserError(f"analysis.filter_layer={name!r} is not a convolution; use e.g. 'layer4.1.conv2'")
    return weight


def analyze_model(model: torch.nn.Module, splits: DatasetSplits, cfg: dict[str, Any], seed: int, device) -> dict[str, Any]:
    """Every analysis of a study's model: features of ``analysis.layer``, units of
    ``analysis.neuron_layer``, filters of ``analysis.filter_layer``."""
    a = cfg["analysis"]
    recipe = make_recipe(dict(cfg["recipe"]))
    test = fixed_subset(splits.test, a["max_samples"])
    train = fixed_subset(splits.train, a["probe_samples"])
    t0 = time.perf_counter()
    kw = dict(recipe=recipe, device=device, repeat_block=a["repeat_block"])
    x = capture(model, test, a["layer"], pool=a["pool"], **kw)[a["layer"]]
    units = capture(model, test, a["neuron_layer"], pool="avg", **kw)[a["neuron_layer"]]
    x_train = capture(model, train, a["layer"], pool=a["pool"], **kw)[a["layer"]]
    seconds = time.perf_counter() - t0
    if (units < 0).any():
        raise UserError(
            f"analysis.neuron_layer={a['neuron_layer']!r} has negative activations; the neuron metrics need "
            "non-negative (post-ReLU) ones, e.g. a block output such as 'layer4.1'"
        )
    result = representation_metrics(
        x, test.labels.cpu().numpy(), x_train, train.labels.cpu().numpy(), units,
        _conv_weight(model, a["filter_layer"]), a, seed, device,
    )
    result["timings"]["features"] = seconds
    return result


def representation_metrics(x: np.ndarray, y_test: np.ndarray, x_train: np.ndarray | None, y_train: np.ndarray | None,
                           units: np.ndarray | None, weight: torch.Tensor | None, a: dict[str, Any], seed: int,
                           device) -> dict[str, Any]:
    """The analysis of one representation, shared by studies and ``superlens analyze``.

    ``x``: (n, d) features of the test images; ``x_train``: of training images, for the
    probes (skipped when None); ``units``: (n, units) non-negative unit activations for
    the neuron metrics (skipped when None); ``weight``: filters for their cosines
    (skipped when None). ``a`` holds ``tsne``, ``perplexity``, ``knn_k`` and ``topk``.
    """
    timings: dict[str, float] = {}
    m: dict[str, Any] = {}
    t0 = time.perf_counter()
    geo_device = device if torch.device(device).type == "cuda" else None
    m["silhouette_features"] = geometry.silhouette_score(x, y_test, device=geo_device)
    m["silhouette_features_cosine"] = geometry.silhouette_score(x, y_test, metric="cosine", device=geo_device)
    m["davies_bouldin_features"] = geometry.davies_bouldin_score(x, y_test)
    m["nc1"] = geometry.nc1(x, y_test)
    if x_train is not None:
        m["knn_accuracy"] = geometry.knn_accuracy(x_train, y_train, x, y_test, k=a["knn_k"])
        m["linear_probe_accuracy"] = geometry.linear_probe_accuracy(x_train, y_train, x, y_test)
    timings["geometry"] = time.perf_counter() - t0
    coords = None
    if a["tsne"]:
        t0 = time.perf_counter()
        coords = tsne(x, seed=seed, perplexity=a["perplexity"])
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
            "topk_class_entropy": neurons.topk_class_entropy(units, y_test, k=a["topk"]),
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


def load_job_model(cfg: dict[str, Any], job_dir: Path, num_classes: int, weights: Path | None = None) -> torch.nn.Module:
    """The job's final model (or the one in ``weights``), built from the config (no download)."""
    from superlens.models import config_model

    model = config_model(cfg["model"], num_classes)
    model.load_state_dict(torch.load(weights or job_dir / "model.pt", map_location="cpu", weights_only=True))
    return model


def model_input_settings(settings, recipe):
    """Optimize images at the size the model was trained on (``recipe.input_size``) unless the
    settings name a size, so the optimized images and the exemplars are measured alike."""
    from dataclasses import replace

    if recipe.input_size and settings.size is None and settings.upsample_to is None:
        return replace(settings, size=recipe.input_size)
    return settings


def featvis_path(job_dir: Path, layer: str) -> Path:
    return job_dir / f"featvis-{layer}.npz"


def featvis_job(cfg: dict[str, Any], job_dir: Path, splits: DatasetSplits, layer: str, units: list[int], device,
                settings=None) -> Path:
    """Activation maximization and dataset exemplars of ``units``, saved as ``featvis-<layer>.npz``."""
    from superlens.analysis.featvis import exemplars, visualize
    from superlens.config import featvis_settings

    settings = model_input_settings(settings or featvis_settings(cfg["featvis"]), make_recipe(dict(cfg["recipe"])))
    model = load_job_model(cfg, job_dir, splits.train.num_classes)
    t0 = time.perf_counter()
    result = visualize(model, layer, units, splits.train, settings, device=device)
    seconds = time.perf_counter() - t0
    ex = exemplars(model, layer, units, splits.train, top=cfg["featvis"]["top"], recipe=make_recipe(dict(cfg["recipe"])),
                   device=device)
    path = featvis_path(job_dir, layer)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f, layer=layer, units=np.asarray(units), images=(result.images * 255).round().astype(np.uint8),
                activation=result.activation, exemplar_indices=ex.indices, exemplar_activation=ex.activation,
                exemplar_labels=ex.labels, exemplar_images=splits.train.images[ex.indices.reshape(-1)].cpu().numpy()
                .reshape(ex.indices.shape + tuple(splits.train.images.shape[1:])),
                seconds=seconds, steps=settings.steps,
            )
    return path


def analyze_job(cfg: dict[str, Any], job_dir: Path, splits: DatasetSplits, seed: int, device) -> dict[str, Any]:
    """Analyse the job's final model once; a second call reads ``analysis.json`` back."""
    out = job_dir / "analysis.json"
    if out.exists():
        return read_json(out)
    model = load_job_model(cfg, job_dir, splits.train.num_classes)
    result = analyze_model(model, splits, cfg, seed, device)
    coords, labels = result.pop("tsne"), result.pop("labels")
    if coords is not None:
        with atomic_path(job_dir / "tsne.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, coords=coords.astype(np.float32), labels=labels)
    write_json(out, result)
    return result

"""Sparse-autoencoder measurements of one trained job, written to its folder as ``sae.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superlens.analysis import neurons
from superlens.analysis.features import capture
from superlens.analysis.job import fixed_subset, load_job_model
from superlens.analysis.sae import (conv_vectors, effective_features, image_latents, latent_activity,
                                    matched_decoder_cosine, sae_metrics, spliced_accuracies, train_sae)
from superlens.config import sae_settings
from superlens.data.dataset import DatasetSplits
from superlens.fileio import read_json, write_json
from superlens.training import make_recipe


def _side_by_side(acts: np.ndarray, latents: np.ndarray, labels: np.ndarray, topk: int) -> dict[str, float]:
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


def measure_sae(model, layer: str, train_vectors: np.ndarray, test_vectors: np.ndarray, section: dict[str, Any],
                seed: int, device, splice: dict[str, Any] | None = None):
    """Train an SAE on ``train_vectors`` and measure it on ``test_vectors``: the ``sae_*``
    metrics, psi, with ``section["stability"]`` a second seed's matched decoders, and with
    ``splice`` (keyword arguments of ``spliced_accuracies``) the accuracies with the layer
    replaced. Shared by studies and ``superlens analyze``; returns (sae, metrics)."""
    sae = train_sae(train_vectors, sae_settings(section, seed), device=device).sae
    m = {f"sae_{k}": v for k, v in sae_metrics(sae, test_vectors).items()}
    if splice is not None:
        m.update({f"sae_{k}": v for k, v in spliced_accuracies(model, layer, sae, device=device, **splice).items()})
    if section["stability"]:
        second = train_sae(train_vectors, sae_settings(section, seed + 10_000), device=device).sae
        m["sae_stability"] = matched_decoder_cosine(sae, second)
    f = effective_features(activity=latent_activity(sae, test_vectors))
    m["sae_effective_features"] = f
    m["psi"] = f / test_vectors.shape[1]
    return sae, m


def sae_job(cfg: dict[str, Any], job_dir: Path, splits: DatasetSplits, seed: int, device) -> dict[str, Any]:
    """Train the job's SAE once (and a second one for stability); a second call reads ``sae.json``."""
    path = job_dir / "sae.json"
    if path.exists():
        return read_json(path)
    section, a = cfg["sae"], cfg["analysis"]
    model = load_job_model(cfg, job_dir, splits.train.num_classes)
    recipe = make_recipe(dict(cfg["recipe"]))
    pool = "avg" if section["pooled"] else "none"
    train = fixed_subset(splits.train, section["max_images"])
    test = fixed_subset(splits.test, a["max_samples"])
    layer = section["layer"]
    train_acts = capture(model, train, layer, pool=pool, recipe=recipe, device=device)[layer]
    test_acts = capture(model, test, layer, pool=pool, recipe=recipe, device=device)[layer]
    train_vectors, test_vectors = conv_vectors(train_acts), conv_vectors(test_acts)
    splice = dict(data=test, mean_activation=torch.from_numpy(test_acts.mean(0)), recipe=recipe, pooled=section["pooled"])
    sae, m = measure_sae(model, layer, train_vectors, test_vectors, section, seed, device, splice)
    labels = test.labels.cpu().numpy()
    pooled_acts = test_acts if test_acts.ndim == 2 else test_acts.mean(axis=(2, 3))
    m.update(_side_by_side(pooled_acts, image_latents(sae, test_acts), labels, a["topk"]))
    result = {"layer": layer, "latents": int(sae.W_dec.shape[0]), "dim": int(test_vectors.shape[1]),
              "train_vectors": int(len(train_vectors)), "metrics": m}
    if section["per_round"]:
        result["per_round"] = _per_round_psi(cfg, job_dir, splits, train, test, seed, device)
    write_json(path, result)
    return result


def _per_round_psi(cfg, job_dir: Path, splits: DatasetSplits, train, test, seed: int, device) -> list[dict[str, float]]:
    """psi and FVU of an SAE trained on the model of each active-learning round (saved by the loop)."""
    records = {r["round"]: r for r in json.loads((job_dir / "records.json").read_text())} if (job_dir / "records.json").exists() else {}
    layer, recipe = cfg["sae"]["layer"], make_recipe(dict(cfg["recipe"]))
    pool = "avg" if cfg["sae"]["pooled"] else "none"
    out = []
    for path in sorted((job_dir / "rounds").glob("model*.pt"), key=lambda p: int(p.stem[5:])):
        round_ = int(path.stem[5:])
        model = load_job_model(cfg, job_dir, splits.train.num_classes, weights=path)
        train_vectors = conv_vectors(capture(model, train, layer, pool=pool, recipe=recipe, device=device)[layer])
        test_vectors = conv_vectors(capture(model, test, layer, pool=pool, recipe=recipe, device=device)[layer])
        sae = train_sae(train_vectors, sae_settings(cfg["sae"], seed), device=device).sae
        f = effective_features(activity=latent_activity(sae, test_vectors))
        out.append({"round": round_, "n_labeled": records.get(round_, {}).get("n_labeled"),
                    "psi": f / test_vectors.shape[1], "sae_fvu": sae_metrics(sae, test_vectors)["fvu"]})
    return out

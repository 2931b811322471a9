"""What ``superlens analyze`` keeps: each layer's results (``LayerResult``) written as the layer
finishes and read back by a rerun with the same weights and settings, and the run's summary,
settings, manifest and report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superlens.data.dataset import ImageDataset


@dataclass
class LayerResult:
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    histograms: dict[str, list[float]] = field(default_factory=dict)
    per_unit: dict[str, np.ndarray] = field(default_factory=dict)
    tsne: np.ndarray | None = None
    labels: np.ndarray | None = None  # of the analysed test images, for the t-SNE panels
    featvis: dict[str, np.ndarray] | None = None
    shape: tuple[int, ...] = ()


@dataclass
class ModelResult:
    label: str
    layers: dict[str, LayerResult]
    accuracy: float | None
    notes: list[str] = field(default_factory=list)


def layer_key(setup: dict[str, Any], fingerprint: str, layer: str) -> str:
    import hashlib
    import json

    text = json.dumps({"setup": setup, "model": fingerprint, "layer": layer}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_folder(out: Path, label: str) -> Path:
    """Where an analysed model's layers (``<layer>/``) and SAEs (``sae-<layer>/``) are kept."""
    return Path(out) / "models" / label.replace("/", "_")


def layer_folder(out: Path, label: str, layer: str) -> Path:
    return model_folder(out, label) / layer


def write_layer(folder: Path, key: str, lr: LayerResult) -> None:
    """One analysed layer, complete: ``analysis.json`` (metrics, notes, histograms, and the key of the
    model and settings it was computed with) and ``arrays.npz`` (per-unit values, t-SNE, activation
    maximization). The json is written last, so a layer with a json is whole."""
    from superlens.fileio import atomic_path, write_json

    arrays = {f"unit_{k}": np.asarray(v) for k, v in lr.per_unit.items()}
    if lr.tsne is not None:
        arrays["coords"] = lr.tsne.astype(np.float32)
    if lr.labels is not None:
        arrays["labels"] = np.asarray(lr.labels)
    for k, v in (lr.featvis or {}).items():
        arrays[f"featvis_{k}"] = np.asarray(v)
    with atomic_path(folder / "arrays.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    write_json(folder / "analysis.json", {"metrics": summary_metrics(lr), "notes": lr.notes,
                                          "histograms": lr.histograms, "shape": list(lr.shape), "key": key})


def read_layer(folder: Path, key: str) -> LayerResult | None:
    """The layer kept in ``folder`` when it was computed with ``key``, else None (to be computed again)."""
    from superlens.fileio import read_json

    meta, arrays = folder / "analysis.json", folder / "arrays.npz"
    if not (meta.exists() and arrays.exists()):
        return None
    kept = read_json(meta)
    if kept.get("key") != key:
        return None
    with np.load(arrays, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    featvis = {k[len("featvis_"):]: v for k, v in a.items() if k.startswith("featvis_")}
    if "layer" in featvis:
        featvis["layer"] = str(featvis["layer"])
    metrics = {k: (float("nan") if v is None else v) for k, v in kept["metrics"].items()}
    return LayerResult(metrics, notes=list(kept["notes"]), histograms=kept["histograms"],
                       per_unit={k[len("unit_"):]: v for k, v in a.items() if k.startswith("unit_")},
                       tsne=a.get("coords"), labels=a.get("labels"), featvis=featvis or None,
                       shape=tuple(kept["shape"]))


def lens_summary(results: list[ModelResult], layers: list[str], test: ImageDataset, options, input_size) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for r in results:
        per_layer = {}
        for layer, lr in r.layers.items():
            metrics = summary_metrics(lr)
            if r.accuracy is not None:
                metrics = {"test_accuracy": r.accuracy, **metrics}
            per_layer[layer] = metrics
        entry: dict[str, Any] = per_layer[layers[0]] if len(layers) == 1 else {"layers": per_layer}
        if len(layers) > 1 and r.accuracy is not None:
            entry = {"test_accuracy": r.accuracy, **entry}
        notes = r.notes + [n for lr in r.layers.values() for n in lr.notes]
        if notes:
            entry = {**entry, "notes": notes}
        arms[r.label] = entry
    return {"name": "analyze", "dataset": test.name, "layers": layers, "test_images": min(len(test), options["analysis"]["max_samples"]),
            "input_size": input_size, "arms": arms}


def write_run(out: Path, results: list[ModelResult], summary: dict[str, Any], layers: list[str], classes: list[str],
              setup: dict[str, Any], device, started: float) -> Path:
    """The run's summary, settings, manifest and report (each layer's files were written as it finished)."""
    import platform

    from superlens.fileio import write_json
    from superlens.report.lens import build_lens_report
    from superlens.study.run import package_version

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    write_json(out / "options.json", setup)
    write_json(out / "manifest.json", {"superlens": package_version(), "torch": torch.__version__, "device": str(device),
                                       "python": platform.python_version(), "seconds": round(time.time() - started, 2)})
    return build_lens_report(out, results, summary, layers, classes)


def summary_metrics(lr: LayerResult) -> dict[str, float | None]:
    return {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in lr.metrics.items()}

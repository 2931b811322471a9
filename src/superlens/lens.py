"""The superposition lens on any trained vision model: ``superlens analyze`` and ``superlens.analyze``.

No training. For each model and each named layer: activation capture (conv outputs
(N, C, H, W), linear (N, D) and token (N, T, D) outputs; the channels or features are
the units), test accuracy when the model's output is (N, classes), the geometry of
the features and their t-SNE, the cosine views, the neuron polysemanticity metrics
(when the layer's activations are non-negative), an SAE with psi, and activation
maximization with dataset exemplars for chosen units of conv layers. Every number is
computed by the same functions, and carries the same name, as in a study. What a run
keeps on disk (each layer as it finishes, the summary, the report) is ``lens_files``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from superlens.errors import UserError
from superlens.lens_files import (
    LayerResult, ModelResult, layer_folder, layer_key, lens_summary, model_folder, read_layer, write_layer, write_run)

DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "seed": 0,
    "model": {"stem": "cifar", "width": 64, "dropout": 0.0},  # for MODEL=resnet18
    "analysis": {"pool": "avg", "max_samples": 10000, "probe_samples": 10000, "tsne": True, "perplexity": 30.0,
                 "topk": 100, "knn_k": 10, "eval_batch_size": 256},
    "sae": {"enabled": True, "max_images": 5000, "stability": False, "floor": True, "gaussian_floor": True,
            "planted": [0.5, 1.0], "settings": {}, "superposition": {}},
    "featvis": {"top": 9, "settings": {}},
    "data": {"options": {}},  # keyword arguments of the dataset's loader, e.g. data.options.image_size=16
}


def options_from(overrides: Sequence[str] = (), base: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS merged with ``key=value`` overrides; an unknown key is an error that names it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.create(DEFAULTS)
    OmegaConf.set_struct(cfg, True)
    for key in ("sae.settings", "sae.superposition", "featvis.settings", "data.options"):
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    if base:
        cfg = OmegaConf.merge(cfg, base)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"option {item!r} must look like key=value (e.g. analysis.max_samples=2000)")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or item.split("=")[0]
            raise UserError(f"unknown or invalid option {key!r}; known: device, seed, model.*, analysis.*, sae.*, featvis.*, "
                            "data.options.*") from None
    return OmegaConf.to_container(cfg, resolve=True)


# On a CPU the SAEs get fewer steps and smaller batches unless the user set them: at the GPU sizes a
# 512-unit layer takes tens of minutes on 2 cores; these finish a layer in a few minutes (docs/analyze.md).
CPU_SAE = {"settings": {"steps": 500, "batch_size": 512},
           "superposition": {"max_steps": 1000, "batch_size": 256, "window": 100}}


def fit_to_device(options: dict[str, Any], device) -> dict[str, Any]:
    """``options`` with the CPU sizes of ``CPU_SAE`` filled in where the user left them unset."""
    if torch.device(device).type != "cpu":
        return options
    sae = options["sae"]
    return {**options, "sae": {**sae, **{part: {**CPU_SAE[part], **sae[part]} for part in CPU_SAE}}}


def _recipe(options: dict[str, Any], input_size: int | None):
    from superlens.specs import make_recipe

    return make_recipe("standard", input_size=input_size, eval_batch_size=options["analysis"]["eval_batch_size"])


def capture_progress(log, what: str, every: float = 10.0):
    """A ``capture`` progress callback that logs ``what``'s images done and the time left, at most once per
    ``every`` seconds (None when ``log`` is None)."""
    if log is None:
        return None
    start = time.perf_counter()
    last = [start]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every and done < total:
            last[0] = now
            log(f"{what}: {done:,}/{total:,} images, about {(now - start) / done * (total - done):.0f} s left")
    return report


def _sae_vectors(acts: np.ndarray) -> np.ndarray:
    from superlens.analysis.sae import conv_vectors

    if acts.ndim == 3:  # tokens: one vector per token
        return acts.reshape(-1, acts.shape[2])
    return conv_vectors(acts)


def _layer(model, name, test, train, recipe, options, device, accuracy_known, units_to_show, seed,
           progress=None, keep: tuple[Path, str] | None = None) -> LayerResult:
    """One layer's analysis; ``keep`` (the model's folder, its fingerprint) is where its SAE is saved."""
    from superlens.analysis.features import capture, resolve_module
    from superlens.analysis.representation import representation_metrics
    from superlens.specs import AnalysisSpec

    a = options["analysis"]
    raw = capture(model, test, name, pool="none", recipe=recipe, device=device,
                  progress=capture_progress(progress, "capture of the test images"))[name]
    result = LayerResult({}, shape=tuple(raw.shape[1:]))
    if not np.isfinite(raw).all():
        result.notes.append(f"{name}: activations contain NaN or inf on the analysed images; layer skipped")
        return result
    if not raw.any():
        result.notes.append(f"{name}: every activation is zero on the analysed images; layer skipped")
        return result
    if raw.ndim not in (2, 3, 4):
        result.notes.append(f"{name}: output of shape {raw.shape[1:]} per image is not (C, H, W), (T, D) or (D,); skipped")
        return result
    x = _reduce(raw, a["pool"])
    units = _reduce(raw, "avg")  # channels averaged over positions, features over tokens
    if (units < 0).any():
        result.notes.append(f"{name}: activations take negative values (not after a ReLU), so the neuron "
                            "polysemanticity metrics, which need non-negative units, are skipped")
        units = None
    x_train = _reduce(capture(model, train, name, pool="none", recipe=recipe, device=device,
                              progress=capture_progress(progress, "capture of the probes' training images"))[name], a["pool"])
    module = resolve_module(model, name)
    weight = getattr(module, "weight", None)
    n_units = raw.shape[1] if raw.ndim == 4 else raw.shape[-1]
    if not (isinstance(weight, torch.Tensor) and weight.ndim in (2, 4) and weight.shape[0] == n_units):
        weight = None
    out = representation_metrics(x, test.labels.cpu().numpy(), x_train, train.labels.cpu().numpy(), units,
                                 weight, AnalysisSpec.from_section(a), seed, device, log=progress)
    result.metrics, result.histograms, result.tsne = out["metrics"], out["histograms"], out["tsne"]
    result.labels = out["labels"]
    if units is not None:
        alive = np.asarray(out["alive_units"], bool)
        result.per_unit = {k: np.asarray(v)[alive] for k, v in out["per_unit"].items()}
    conv = raw.ndim == 4
    if options["sae"]["enabled"]:
        from superlens.analysis.controls import control_notes

        test_vectors = _sae_vectors(raw)  # the SAE's copy of the activations: the capture itself is let go
        del raw
        result.metrics.update(_sae(model, name, test_vectors, train, test, recipe, options, device, accuracy_known,
                                   seed, progress, keep))
        m = result.metrics
        if m.get("psi_clears_floor") == 0.0:
            result.notes.append(f"{name}: psi {m['psi']:.3g} is at the level of an untrained network: the same network "
                                f"at fresh initial weights reads {m['psi_init_floor']:.3g} on the same images, and psi "
                                "does not exceed that by more than the SAE-seed spread")
        result.notes.extend(control_notes(name, m))
    if units_to_show:
        if not conv:
            result.notes.append(f"{name}: activation maximization is for conv layers (C, H, W); skipped")
        else:
            if progress is not None:
                progress(f"activation maximization of {len(units_to_show)} units")
            result.featvis = _featvis(model, name, units_to_show, train, recipe, options, device)
    return result


def _reduce(acts: np.ndarray, pool: str) -> np.ndarray:
    """The study's reduction of a layer's output (``analysis.features``), on a captured array."""
    from superlens.analysis.features import reduce_outputs

    return reduce_outputs(torch.from_numpy(acts), pool).numpy()


def _sae(model, name, test_vectors, train, test, recipe, options, device, accuracy_known, seed, progress=None,
         keep: tuple[Path, str] | None = None) -> dict[str, float]:
    from superlens.analysis.controls import control_metrics, layer_controls
    from superlens.analysis.features import capture
    from superlens.analysis.sae import progress_log, train_sae, vector_labels
    from superlens.analysis.superposition import measure_sae, measure_superposition, superposition_metrics
    from superlens.data import fixed_subset
    from superlens.saefiles import kept_or_trained, sae_folder, sae_identity
    from superlens.specs import SAESettings
    from superlens.training import output_accuracy

    section = options["sae"]
    sae_train = fixed_subset(train, section["max_images"])
    train_vectors = _sae_vectors(capture(model, sae_train, name, pool="none", recipe=recipe, device=device,
                                         progress=capture_progress(progress, "capture of the SAE's training images"))[name])
    splice = dict(data=test, mean_activation=torch.from_numpy(test_vectors.mean(0)), recipe=recipe,
                  accuracy=lambda: output_accuracy(model, test, recipe, device)[0]) if accuracy_known else None
    settings = SAESettings.from_settings(section["settings"], seed=seed)
    if progress is not None:
        progress(f"SAEs on {len(train_vectors):,} vectors of {train_vectors.shape[1]:,} values: the decoding SAE, "
                 f"then the psi protocol")

    def train():
        return train_sae(train_vectors, settings, device=device, progress=progress_log(progress, "decoding SAE")).sae

    sae = train() if keep is None else kept_or_trained(
        sae_folder(keep[0], name), sae_identity(name, False, settings, keep[1], len(train_vectors)), train, device)
    metrics = measure_sae(model, name, sae, train_vectors, test_vectors, section["stability"], device, splice)
    labels = vector_labels(sae_train.labels.cpu().numpy(), len(train_vectors))
    protocol = measure_superposition(train_vectors, labels=labels, layer_name=name, device=device,
                                     progress=progress_log(progress, "superposition SAEs"),
                                     details=bool(section["planted"]), **section["superposition"])
    metrics.update(superposition_metrics(protocol))
    controls = layer_controls(train_vectors, labels, section["planted"], gaussian=section["gaussian_floor"],
                              plant_seed=seed, device=device, base=protocol, log=progress, **section["superposition"])
    metrics.update(control_metrics(controls, section["planted"], train_vectors.shape[1]))
    if section["floor"]:  # the same protocol on the same images through the network at fresh initial weights
        from superlens.analysis.controls import floor_metrics, floor_verdict, reinitialized

        fresh, _ = reinitialized(model, seed)
        floor_vectors = _sae_vectors(capture(fresh, sae_train, name, pool="none", recipe=recipe, device=device)[name])
        floor = measure_superposition(floor_vectors, labels=labels, layer_name=name, device=device,
                                      progress=progress_log(progress, "initialized-network psi"),
                                      **section["superposition"])
        metrics.update(floor_metrics({"psi": floor["psi"], **floor_verdict(protocol["psi"], protocol["psi_sd"],
                                                                            floor["psi"], floor["psi_sd"])}))
    return metrics


def _featvis(model, name, units, train, recipe, options, device) -> dict[str, np.ndarray]:
    from superlens.analysis.featvis import check_units, exemplars, visualize
    from superlens.specs import FeatVisSettings

    settings = FeatVisSettings.from_settings(options["featvis"]["settings"]).at_input_size(recipe.input_size)
    side = settings.upsample_to or settings.size or train.image_size[0]
    check_units(model.to(device), name, units, torch.zeros(1, 3, side, side, device=device))
    result = visualize(model, name, units, train, settings, device=device)
    ex = exemplars(model, name, units, train, top=options["featvis"]["top"], recipe=recipe, device=device)
    return {"layer": name, "units": np.asarray(units), "images": result.images, "activation": result.activation,
            "exemplar_images": train.images[torch.as_tensor(ex.indices.reshape(-1))].cpu().numpy()
            .reshape(ex.indices.shape + tuple(train.images.shape[1:])).astype(np.float32) / 255.0,
            "exemplar_labels": ex.labels, "exemplar_activation": ex.activation}


def _label(i: int, model: nn.Module, weights: str | None, labels: Sequence[str] | None, taken: set[str]) -> str:
    if labels and i < len(labels):
        label = labels[i]
    elif weights and weights.split(":", 1)[0] == "pretrained":
        label = f"{type(model).__name__} ({weights})"
    elif weights:
        p = Path(weights)
        generic = p.stem in ("model", "checkpoint", "weights", "state_dict", "best", "last")
        label = "/".join(p.parts[-3:-1]) if generic else p.stem  # a study's job: <arm>/seed<k>
    else:
        label = type(model).__name__
    base, k = label, 2
    while label in taken:
        label, k = f"{base} ({k})", k + 1
    taken.add(label)
    return label


def analyze(models, data, layers: Sequence[str] | str, *, weights: Sequence[str | None] | None = None,
            labels: Sequence[str] | None = None, units: Sequence[int] | None = None, out: str | Path | None = None,
            options: dict[str, Any] | None = None, input_size: int | None = None, progress=print,
            normalization: str | None = None, browse: bool = False) -> dict[str, Any]:
    """The lens on one or several trained models, side by side.

    ``models``: an ``nn.Module`` or a list of them (built and with weights loaded);
    ``data``: a dataset name (``"cifar10"``, ``"digits"``, ...), ``DatasetSplits``, or a
    (train, test) pair of ``ImageDataset``; ``layers``: module names (see
    ``list_layers``); ``units``: channels of conv layers to visualize. ``options``
    overrides ``DEFAULTS`` (e.g. ``{"analysis": {"max_samples": 2000}}``). Returns the
    summary dict (as ``summary.json``); with ``out``, also writes the run directory
    and its ``report.html``, each layer's SAE (``models/<label>/sae-<layer>/``), and with
    ``browse`` a feature page per model and layer (``browse/<label>-<layer>.html``).
    """
    from superlens.analysis.features import check_layers
    from superlens.data import fixed_subset, load
    from superlens.saefiles import model_fingerprint
    from superlens.training import output_accuracy, resolve_device

    options = options_from((), options)
    if browse and (out is None or not options["sae"]["enabled"]):
        raise UserError("feature pages (browse) need an output folder (out) and the SAE (sae.enabled=true)")
    progress = progress or (lambda line: None)
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    layers = [layers] if isinstance(layers, str) else list(layers)
    if isinstance(data, str):
        data = load(data, **options["data"]["options"])
    train, test = data
    device = resolve_device(options["device"])
    options = fit_to_device(options, device)
    recipe = _recipe(options, input_size)
    a = options["analysis"]
    test_sub = fixed_subset(test, a["max_samples"]).to(device)
    train_sub = fixed_subset(train, a["probe_samples"]).to(device)
    taken: set[str] = set()
    results: list[ModelResult] = []
    started = time.time()
    out = Path(out) if out is not None else None
    normalization = normalization or "0..1 pixels normalized with the dataset's mean and std"
    setup = {"options": options, "input_size": input_size, "normalization": normalization, "dataset": test.name,
             "test_images": len(test_sub), "train_images": len(train_sub), "units": list(units or [])}
    pace = _Pace(len(models) * len(layers), progress)
    for i, model in enumerate(models):
        check_layers(model, layers)
        label = _label(i, model, (weights or [None] * len(models))[i] if weights else None, labels, taken)
        model.to(device).eval()
        accuracy, why = output_accuracy(model, test_sub, recipe, device)
        result = ModelResult(label, {}, accuracy, [why] if why else [])
        chance = near_chance(accuracy, test.num_classes)
        if chance:
            progress(f"warning: {label}: {chance}")
            result.notes.append(chance)
        fingerprint = model_fingerprint(model) if out is not None else None
        for layer in layers:
            folder = layer_folder(out, label, layer) if out is not None else None
            key = layer_key(setup, fingerprint, layer) if out is not None else None
            kept = read_layer(folder, key) if folder is not None else None
            if kept is not None:
                progress(f"{label}: {layer}: kept from an earlier run in {folder}")
                result.layers[layer] = kept
                pace.skip()
            else:
                progress(f"{label}: {layer}")
                result.layers[layer] = _layer(model, layer, test_sub, train_sub, recipe, options, device,
                                              accuracy is not None, list(units or []), options["seed"],
                                              _prefixed(progress, f"{label}: {layer}"),
                                              (model_folder(out, label), fingerprint) if out is not None else None)
                if folder is not None:
                    write_layer(folder, key, result.layers[layer])
                pace.done(f"{label}: {layer}")
            if browse:
                _browse(out, label, model, layer, test_sub, recipe, device, accuracy, result.layers[layer], progress)
        results.append(result)
    summary = lens_summary(results, layers, test, options, input_size)
    summary["normalization"] = normalization
    if out is not None:
        write_run(out, results, summary, layers, test.classes, setup, device, started)
    return summary


def _browse(out: Path, label: str, model, layer: str, test, recipe, device, accuracy, result: LayerResult,
            progress) -> None:
    """The feature page of one analysed layer, ``browse/<label>-<layer>.html``, from its saved SAE."""
    from superlens.analysis.features import capture
    from superlens.browse import layer_page
    from superlens.saefiles import load_sae, sae_folder

    folder = sae_folder(model_folder(out, label), layer)
    if not (folder / "cfg.json").exists():
        result.notes.append(f"{layer}: no SAE was trained (see the notes above), so it has no feature page")
        return
    acts = capture(model, test, layer, pool="none", recipe=recipe, device=device)[layer]
    if acts.ndim not in (2, 4):
        result.notes.append(f"{layer}: feature pages are for (C, H, W) and (D,) layers; this one gives "
                            f"{acts.shape[1:]} per image")
        return
    featvis = None
    if result.featvis is not None:
        featvis = (list(result.featvis["units"]), (np.asarray(result.featvis["images"])[:, 0] * 255).round()
                   .astype(np.uint8))
    path = layer_page(Path(out) / "browse" / f"{label.replace('/', '_')}-{layer}.html",
                      f"Feature pages: {label}, {layer}",
                      [("model", label), ("layer", layer), ("test accuracy", "n/a" if accuracy is None else f"{accuracy:.4f}")],
                      acts, load_sae(folder, device), test, f"{len(test)} test images (analysis.max_samples)",
                      featvis=featvis)
    progress(f"{label}: {layer}: feature page {path}")


def _prefixed(progress, prefix: str):
    return None if progress is None else (lambda line: progress(f"{prefix}: {line}"))


class _Pace:
    """Logs, after each analysed (model, layer), the seconds it took and the time the rest should take
    at the mean pace so far (layers kept from an earlier run are not counted)."""

    def __init__(self, total: int, log) -> None:
        self.left, self.log, self.times, self.t0 = total, log, [], time.perf_counter()

    def skip(self) -> None:
        self.left -= 1
        self.t0 = time.perf_counter()

    def done(self, what: str) -> None:
        self.left -= 1
        self.times.append(time.perf_counter() - self.t0)
        self.t0 = time.perf_counter()
        if self.log is not None:
            rest = f"; about {np.mean(self.times) * self.left:.0f} s for the {self.left} left" if self.left else ""
            self.log(f"{what}: done in {self.times[-1]:.0f} s{rest}")


def near_chance(accuracy: float | None, classes: int) -> str | None:
    """A warning when a model's accuracy is within 1.5x of chance: the usual sign of wrong preprocessing."""
    if accuracy is None or classes < 2 or accuracy >= 1.5 / classes:
        return None
    return (f"test accuracy {accuracy:.4f} is near chance (1/{classes} = {1 / classes:.4f}): usually the inputs are "
            "not what the model was trained on; check --pixels (raw for 0..255 inputs), --mean/--std and --input-size, "
            "and read every metric below with that in mind")



"""What a job's SAE stage measures with: the images its SAEs read (``sae.images``), one run of the psi
protocol on a model's layer, and the protocol results shared by every arm of a seed (the round-0 model's
psi, the initialized-network floor), kept beside round 0."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from superlens.data import DatasetSplits, fixed_subset, outside_pool
from superlens.fileio import read_json, write_json
from superlens.study.jobs import ArmJob, Round0Job


def _sae_vectors(model, data, spec, recipe, device) -> tuple[np.ndarray, np.ndarray]:
    """The layer's activations on ``data`` and the SAE's vectors made of them."""
    from superlens.analysis.features import capture
    from superlens.analysis.sae import conv_vectors

    acts = capture(model, data, spec.layer, pool="avg" if spec.pooled else "none", recipe=recipe, device=device)[spec.layer]
    return acts, conv_vectors(acts)


def _superposition(model, train, spec, recipe, device, log=None, label: str = "", curve=None,
                   vectors: np.ndarray | None = None, details: bool = False) -> dict[str, Any]:
    """The psi protocol on the layer's vectors of the SAE training images (class means removed); with
    ``curve`` (a list), its (step, loss) points are appended there. ``vectors``: those vectors, when the
    caller has captured them already (``model`` is then not run again); ``details``: as
    ``measure_superposition``'s."""
    from superlens.analysis.sae import progress_log, vector_labels
    from superlens.analysis.superposition import measure_superposition
    from superlens.tracking import curve_recorder

    if vectors is None:
        _, vectors = _sae_vectors(model, train, spec, recipe, device)
    progress = progress_log(log, label)
    if curve is not None:
        progress = curve_recorder(curve, progress)
    return measure_superposition(vectors, labels=vector_labels(train.labels.cpu().numpy(), len(vectors)),
                                 layer_name=spec.layer, device=device, progress=progress, details=details,
                                 **asdict(spec.superposition))


def measurement_images(job: ArmJob | Round0Job, splits: DatasetSplits, device):
    """The images whose layer vectors the job's SAEs are trained on, and what sae.json records of them.

    With ``sae.images=outside_pool`` (the default): ``sae.max_images`` training images outside the pool,
    which no arm can label and the test split does not hold, the same fixed stratified draw for every
    arm, seed and round; labelled with their dataset class, which only the class centring reads. When
    the pool is the whole training split, or fewer than ``max_images`` images lie outside it, and with
    ``sae.images=pool``: the pool's fixed draw, as every arm, seed and round shares too."""
    import hashlib

    spec = job.sae
    outside = outside_pool(job.data, splits.train) if spec.images == "outside_pool" else None  # on the CPU
    if outside is not None and len(outside) >= spec.max_images:
        images = fixed_subset(outside, spec.max_images)  # only the draw goes to the device
        images, source = (images.to(device) if device is not None else images), "outside_pool"
        why = f"{len(outside)} training images lie outside the pool"
    else:
        images, source = fixed_subset(splits.train, spec.max_images), "pool"
        if spec.images == "pool":
            why = "asked for (sae.images=pool)"
        elif outside is None:
            why = "the pool is the whole training split"
        else:
            why = (f"only {len(outside)} training images lie outside the pool, fewer than "
                   f"sae.max_images={spec.max_images}")
    ids = [str(i) for i in images.ids]
    record = {"source": source, "why": why, "images": len(ids),
              "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "ids": ids}
    return images, record


def kept_protocol(path: Path, spec, measure: Callable[[], dict[str, Any]],
                  images_sha256: str | None = None) -> dict[str, Any]:
    """A protocol result shared by the arms of a seed (the round-0 model's psi, the floor), measured by the
    first arm that needs it and kept in ``path`` with the settings and images it was measured with; a kept
    result of other settings or other images is measured again."""
    key = json.loads(json.dumps({"layer": spec.layer, "max_images": spec.max_images, "pooled": spec.pooled,
                                 "superposition": asdict(spec.superposition), "images_sha256": images_sha256}))
    kept = read_json(path) if path.exists() else None
    if kept is not None and kept.get("settings") == key:
        return kept["protocol"]
    protocol = measure()
    write_json(path, {"settings": key, "protocol": protocol})
    return protocol


def init_floor(job: ArmJob, splits: DatasetSplits, train, device, final: dict[str, Any], log=None,
               images_sha256: str | None = None) -> dict[str, Any]:
    """psi of the seed's network at its initial weights (random ones, also where the study starts from
    pretrained weights) on the same images by the same protocol, and whether the final model's psi
    (``final``) clears it by more than the SAE-seed spread (the larger of the two SDs). Measured once per
    seed, by the first arm that needs it, and kept beside round 0 for the others."""
    from dataclasses import replace

    from superlens.active.loop import derive_seed
    from superlens.analysis.controls import floor_verdict
    from superlens.models import build_model

    def measure() -> dict[str, Any]:
        spec = replace(job.model, pretrained=None) if job.model.pretrained else job.model
        model = build_model(spec, splits.train.num_classes, derive_seed(job.seed, "init"))
        return _superposition(model, train, job.sae, job.recipe, device, log, f"{job.label}: initialized-network psi")

    protocol = kept_protocol(job.floor, job.sae, measure, images_sha256) if job.floor else measure()
    return {"psi": protocol["psi"], "psi_sd": protocol["psi_sd"], "converged": protocol["converged"],
            "steps": protocol["steps"], "weights": "initial (random, the seed's own draw)",
            **floor_verdict(final["psi"], final["psi_sd"], protocol["psi"], protocol["psi_sd"])}


def planted_control(job: ArmJob, vectors: np.ndarray, train, device, log=None, base: dict | None = None
                    ) -> dict[str, Any]:
    """The positive control on this layer at the study's settings: psi of the layer's own vectors with
    K = ratio x neurons known sparse directions added, for each ratio of ``sae.planted``, at the median
    firing frequency and magnitude of the latents the protocol finds in them; per K the rise of psi per
    planted feature per neuron and the recall of the planted directions; and the Gaussian floor: psi of
    as many ReLU'd Gaussian vectors with the layer's mean and covariance, what the second-order statistics
    alone give (``controls.layer_controls``). ``base``: the job's own protocol measurement of ``vectors``
    with details, which the planted control starts from."""
    from superlens.analysis.controls import layer_controls
    from superlens.analysis.sae import vector_labels

    labels = vector_labels(train.labels.cpu().numpy(), len(vectors))
    controls = layer_controls(vectors, labels, job.sae.planted, plant_seed=job.seed, device=device, base=base,
                              log=None if log is None else (lambda line: log(f"{job.label}: {line}")),
                              **asdict(job.sae.superposition))
    return {**controls["planted"], "model": job.label, "gaussian_floor": controls["gaussian_floor"]}

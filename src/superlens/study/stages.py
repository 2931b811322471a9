"""The stages of a job, run in order, each turning specs and data into the one file it writes.

This is the glue between the pure stage code (training, active learning, analysis)
and the run directory: it loads what a stage needs, calls it, and writes its result
where ``JobPaths`` says. A job that raises writes its traceback into its folder and
reports failure; the other jobs go on.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from superlens.active.loop import load_checkpoint, run_arm, run_baseline, run_round0
from superlens.analysis.features import capture_dtype_name
from superlens.data import DatasetSplits, fixed_subset, load_spec
from superlens.errors import UserError, describe
from superlens.fileio import atomic_path, read_json, write_json
from superlens.layout import JobPaths
from superlens.models import trained_model
from superlens.study.jobs import ArmJob, Job, JobResult, Round0Job, ToyJob
from superlens.study.dose import dose_reference_stage
from superlens.study.measure import (_sae_vectors, _superposition, init_floor, kept_protocol, measurement_images,
                                     planted_control)
from superlens.training import resolve_device


def execute(job: Job, splits: DatasetSplits | None = None, device: torch.device | None = None, progress: bool = False,
            log: Callable[[str], None] = lambda _: None) -> JobResult:
    """Run every unfinished stage of ``job``; never raises for the job's own failures.

    Without ``splits`` the job loads its data itself onto its own device (a Ray worker).
    On failure the result carries a one-line error and the traceback goes to the job's
    error file.
    """
    paths = job.paths
    paths.folder.mkdir(parents=True, exist_ok=True)
    paths.error.unlink(missing_ok=True)
    seconds: dict[str, float] = {}
    try:
        _record_worker(paths)
        if isinstance(job, ToyJob):
            _toy(job, log, seconds)
        else:
            if splits is None:
                device = resolve_device(job.device)
                splits = load_spec(job.data, device)
            if isinstance(job, Round0Job):
                _round0(job, splits, device, progress, log, seconds)
            else:
                _arm(job, splits, device, progress, log, seconds)
        _finish_worker(paths)
        return JobResult(job.label, True, seconds)
    except Exception as exc:  # the job failed; its folder says why and the study goes on
        paths.error.write_text(traceback.format_exc())
        return JobResult(job.label, False, seconds, describe(exc))


def _timed(seconds: dict[str, float], stage: str, work: Callable[[], Any]) -> None:
    t0 = time.perf_counter()
    work()
    seconds[stage] = time.perf_counter() - t0


def _toy(job: ToyJob, log, seconds) -> None:
    from superlens.toy import run_lab

    log("toy models of superposition")
    _timed(seconds, "toy", lambda: write_json(job.path, run_lab(job.toy)))


def _round0(job: Round0Job, splits, device, progress, log, seconds) -> None:
    _readable_model(job.paths, redo=True, log=log)
    if not job.paths.done.exists():
        log(f"round 0 of seed {job.seed} (shared by every active-learning arm)")
    _timed(seconds, "training", lambda: run_round0(
        job.seed, job.paths, splits, device, model=job.model, recipe=job.recipe, active=job.active,
        snapshot=job.snapshot, baseline=job.baseline, progress=progress))
    if job.dose and not job.paths.dose.exists():
        _timed(seconds, "dose", lambda: dose_reference_stage(job, splits, device, log))


def _arm(job: ArmJob, splits, device, progress, log, seconds) -> None:
    if job.round0 is not None:
        _readable_model(job.round0, redo=False, log=log)
    _readable_model(job.paths, redo=True, log=log)
    checkpoint = _readable_checkpoint(job.paths, log)
    track = (lambda _round: job.tracking.rounds(read_json(job.paths.records))) if job.tracking else None
    runners = {
        "training": lambda: train_arm(job, splits, device, progress, checkpoint, after_round=track),
        "analysis": lambda: analysis_stage(job, splits, device),
        "sae": lambda: sae_stage(job, splits, device, log),
        "featvis": lambda: featvis_stage(job, splits, device),
    }
    try:
        for stage, output in job.outputs().items():
            if output.exists():
                continue
            log(f"{job.label}: {stage}")
            _timed(seconds, stage, runners[stage])
            if stage == "training" and job.tracking is not None:  # round 0, and any round a stop left untracked
                job.tracking.rounds(read_json(job.paths.done)["records"])
    finally:
        if job.tracking is not None:
            job.tracking.finish()


def train_arm(job: ArmJob, splits, device, progress: bool = False, checkpoint: dict[str, Any] | None = None,
              after_round: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """The training stage of an arm: the baseline on all data, or the rounds of an AL arm."""
    if job.active is None:
        return run_baseline(job.seed, job.paths, splits, device, model=job.model, recipe=job.recipe,
                            snapshot=job.snapshot, progress=progress)
    return run_arm(job.arm, job.seed, job.paths, splits, device, model=job.model, recipe=job.recipe, active=job.active,
                   round0=job.round0, snapshot=job.snapshot, baseline=job.baseline,
                   keep_round_models=job.sae is not None and job.sae.per_round, checkpoint=checkpoint,
                   progress=progress, after_round=after_round)


def final_model(job: ArmJob, splits: DatasetSplits, weights=None) -> torch.nn.Module:
    """The job's trained model (or the weights at ``weights``, e.g. a round's), on the CPU."""
    return trained_model(job.model, splits.train.num_classes, weights or job.paths.model)


def analysis_stage(job: ArmJob, splits: DatasetSplits, device) -> None:
    """``analysis.json`` (and the t-SNE points) of the job's final model."""
    from superlens.analysis.representation import analyze_model

    result = analyze_model(final_model(job, splits), splits, job.analysis, job.recipe, job.seed, device)
    result["capture_dtype"] = capture_dtype_name(job.recipe, device)  # the precision the features were captured in
    coords, labels, features = result.pop("tsne"), result.pop("labels"), result.pop("features")
    if coords is not None:
        with atomic_path(job.paths.tsne) as tmp, open(tmp, "wb") as f:
            np.savez(f, coords=coords.astype(np.float32), labels=labels)
    if job.arm != "baseline":  # CKA against al-random reads them: the driver then needs no device and no capture
        with atomic_path(job.paths.features) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=features.astype(np.float32), layer=job.analysis.layer)
    write_json(job.paths.analysis, result)


def sae_stage(job: ArmJob, splits: DatasetSplits, device, log=None) -> None:
    """``sae.json``: the decoding SAE on the final model's layer (reconstruction, splicing, latents
    vs neurons), psi and the dictionary metrics by the superposition protocol, and with
    ``sae.per_round`` psi of every round's model."""
    from superlens.analysis.sae_measures import image_latents
    from superlens.analysis.controls import floor_metrics
    from superlens.analysis.superposition import measure_sae, neurons_and_latents, superposition_metrics

    spec = job.sae
    model = final_model(job, splits)
    train, measured = measurement_images(job, splits, device)
    test = fixed_subset(splits.test, spec.test_images)
    _, train_vectors = _sae_vectors(model, train, spec, job.recipe, device)
    test_acts, test_vectors = _sae_vectors(model, test, spec, job.recipe, device)
    splice = dict(data=test, mean_activation=torch.from_numpy(test_acts.mean(0)), recipe=job.recipe, pooled=spec.pooled)
    sae = decoding_sae(job, splits, device, model, log, train_vectors, measured["ids_sha256"])
    m = measure_sae(model, spec.layer, sae, train_vectors, test_vectors, spec.stability, device, splice)
    pooled_acts = test_acts if test_acts.ndim == 2 else test_acts.mean(axis=(2, 3))
    m.update(neurons_and_latents(pooled_acts, image_latents(sae, test_acts), test.labels.cpu().numpy(), spec.topk))
    curve: list[tuple[int, float]] = []
    plants = bool(job.planted and spec.planted)
    protocol = _superposition(model, train, spec, job.recipe, device, log, f"{job.label}: superposition SAEs", curve,
                              vectors=train_vectors, details=plants)  # the decoding SAE's capture, not a second one
    m.update(superposition_metrics(protocol))
    m.update(_head_and_tail_psi(model, train, splits, spec, job.recipe, device, log, job.label))
    floor = init_floor(job, splits, train, device, protocol, log, measured["ids_sha256"]) if spec.floor else None
    if floor is not None:
        m.update(floor_metrics(floor))
    planted = planted_control(job, train_vectors, train, device, log, base=protocol) if plants else None
    protocol.pop("details", None)  # the reproduced decoder rows: the planted control's base, not sae.json's
    result = {"layer": spec.layer, "latents": int(sae.W_dec.shape[0]), "dim": int(test_vectors.shape[1]),
              "train_vectors": int(len(train_vectors)), "capture_dtype": capture_dtype_name(job.recipe, device),
              "measurement_images": measured, "metrics": m, "superposition": protocol, "floor": floor,
              "planted": planted}
    if spec.per_round:
        result["per_round"] = _per_round_psi(job, splits, train, device, protocol, log, measured["ids_sha256"])
    write_json(job.paths.sae, result)
    if job.tracking is not None:
        job.tracking.sae({"superposition_SAEs": curve}, result.get("per_round", []))


def decoding_sae(job: ArmJob, splits: DatasetSplits, device, model=None, log=None, train_vectors=None,
                 images_sha256: str | None = None):
    """The job's decoding SAE (``sae-<layer>/``): the one kept for these weights, layer, settings and
    vectors, or else trained now on the SAE's training vectors (``train_vectors`` when already made,
    of the images whose ids hash to ``images_sha256``) and kept. The sae stage makes it; ``browse``
    finds it, or trains it for a run that predates it."""
    from superlens.analysis.sae import progress_log, train_sae
    from superlens.saefiles import file_sha256, kept_or_trained, model_fingerprint, sae_folder, sae_identity

    spec = job.sae
    model = model if model is not None else final_model(job, splits)
    if train_vectors is None:
        images, measured = measurement_images(job, splits, device)
        _, train_vectors = _sae_vectors(model, images, spec, job.recipe, device)
        images_sha256 = measured["ids_sha256"]
    folder = sae_folder(job.paths.root, spec.layer)
    identity = sae_identity(spec.layer, spec.pooled, spec.settings_for(job.seed), model_fingerprint(model),
                            len(train_vectors), images_sha256)

    def train():
        if log is not None:
            log(f"{job.label}: training its decoding SAE ({folder} holds none for these weights and settings)")
        return train_sae(train_vectors, spec.settings_for(job.seed), device=device,
                         progress=progress_log(log, f"{job.label}: decoding SAE")).sae

    return kept_or_trained(folder, identity, train, device, model_sha256=file_sha256(job.paths.model))


def _head_and_tail_psi(model, train, splits: DatasetSplits, spec, recipe, device, log, label: str) -> dict[str, float]:
    """On a long-tailed pool: psi of the layer on the SAE images of the minority (tail) classes and of the
    others (head), each by the same protocol; nothing on a balanced pool."""
    from superlens.active.loop import tail_classes

    pool = splits.train.labels.cpu().numpy()
    tail = tail_classes(pool, splits.train.num_classes)
    if tail is None:
        return {}
    labels = train.labels.cpu().numpy()
    out = {}
    for name, members in (("tail", tail[labels]), ("head", ~tail[labels])):
        if members.sum() >= 2:
            protocol = _superposition(model, train.subset(np.flatnonzero(members)), spec, recipe, device, log,
                                      f"{label}: {name}-class psi")
            out[f"psi_{name}"] = protocol["psi"]
    return out


def _per_round_psi(job: ArmJob, splits: DatasetSplits, train, device, final: dict[str, Any], log=None,
                   images_sha256: str | None = None) -> list[dict[str, Any]]:
    """psi (with its SAE-seed SD) of the model of each active-learning round (kept by the loop).

    The last round's model is the final model, measured already (``final``); round 0's
    model is the one every arm of the seed starts from, so its psi is measured once and
    kept in the round-0 folder for the other arms."""
    records = {r["round"]: r for r in read_json(job.paths.records)} if job.paths.records.exists() else {}
    rounds = job.paths.round_models()
    last = rounds[-1][0] if rounds else None
    out = []
    for round_, path in rounds:
        def measure() -> dict[str, Any]:
            model = final_model(job, splits, weights=path)
            return _superposition(model, train, job.sae, job.recipe, device, log, f"{job.label}: round {round_} psi")

        if round_ == last:
            protocol = final
        elif round_ == 0 and job.round0 is not None:
            protocol = kept_protocol(job.round0.round_psi, job.sae, measure, images_sha256)
        else:
            protocol = measure()
        out.append({"round": round_, "n_labeled": records.get(round_, {}).get("n_labeled"), "psi": protocol["psi"],
                    "psi_sae_sd": protocol["psi_sd"], "converged": protocol["converged"]})
    return out


def similarity_stage(arm: ArmJob, control: ArmJob, splits: DatasetSplits | None = None, device=None) -> dict[str, Any]:
    """Linear CKA between the features of ``arm``'s and ``control``'s final models on the analysed test
    images, at the analysis layer (as analysed: same pooling, same images): from the features both
    jobs' analysis kept (``features.npz``), on the CPU; for a run that predates them, captured again
    here from ``splits`` on ``device``."""
    from superlens.analysis.similarity import linear_cka

    spec = arm.analysis
    kept = [kept_features(job, spec.layer) for job in (arm, control)]
    if kept[0] is not None and kept[1] is not None:
        x, y = kept
    elif splits is None:
        raise UserError(f"{arm.label}: CKA needs the data: {arm.paths.features} or {control.paths.features} is missing")
    else:
        from superlens.analysis.features import capture

        test = fixed_subset(splits.test, spec.max_samples)
        kw = dict(pool=spec.pool, recipe=arm.recipe, device=device, repeat_block=spec.repeat_block)
        x = capture(final_model(arm, splits), test, spec.layer, **kw)[spec.layer]
        y = capture(final_model(control, splits), test, spec.layer, **kw)[spec.layer]
    result = {"against": control.arm, "layers": {spec.layer: linear_cka(x, y)}, "images": len(x)}
    write_json(arm.paths.similarity, result)
    return result


def kept_features(job: ArmJob, layer: str) -> np.ndarray | None:
    """The analysed test images' features at ``layer`` that the job's analysis kept, or None."""
    if not job.paths.features.exists():
        return None
    with np.load(job.paths.features) as kept:
        return kept["features"] if str(kept["layer"]) == layer else None


def featvis_stage(job: ArmJob, splits: DatasetSplits, device, layer: str | None = None, units=None,
                  settings=None) -> Path:
    """Activation maximization and dataset exemplars of the featvis units (or ``layer``/``units``),
    saved in the job's featvis file of that layer."""
    from superlens.analysis.featvis import exemplars, visualize

    spec = job.featvis
    layer, units = layer or spec.layer, list(units if units is not None else spec.units)
    settings = (settings or spec.settings).at_input_size(job.recipe.input_size)
    model = final_model(job, splits)
    t0 = time.perf_counter()
    result = visualize(model, layer, units, splits.train, settings, device=device)
    seconds = time.perf_counter() - t0
    ex = exemplars(model, layer, units, splits.train, top=spec.top, recipe=job.recipe, device=device)
    path = job.paths.featvis(layer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f, layer=layer, units=np.asarray(units), images=(result.images * 255).round().astype(np.uint8),
            activation=result.activation, exemplar_indices=ex.indices, exemplar_activation=ex.activation,
            exemplar_labels=ex.labels, exemplar_images=splits.train.images[ex.indices.reshape(-1)].cpu().numpy()
            .reshape(ex.indices.shape + tuple(splits.train.images.shape[1:])),
            seconds=seconds, steps=settings.steps,
        )
    return path


def _record_worker(paths: JobPaths) -> None:
    """The worker record: where and how often the job ran (a retried job counts its attempts)."""
    attempts = 0
    if paths.worker.exists():
        try:
            attempts = read_json(paths.worker).get("attempts", 0)
        except (UserError, OSError):  # a half-written record from a killed worker
            attempts = 0
    write_json(paths.worker, {"pid": os.getpid(), "host": socket.gethostname(), "attempts": attempts + 1,
                              "torch_threads": torch.get_num_threads(),
                              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                              "gpu_uuid": _gpu_uuid(), "started": time.time()})


def _gpu_uuid() -> str | None:
    """The physical GPU this process computes on (cuda:0), by its UUID; None without a visible GPU.
    CUDA_VISIBLE_DEVICES names a GPU by index; the UUID shows which card ran the job."""
    if not os.environ.get("CUDA_VISIBLE_DEVICES") or not torch.cuda.is_available():
        return None
    try:
        return str(torch.cuda.get_device_properties(0).uuid)
    except (AttributeError, RuntimeError):  # a torch without the field, or a GPU that cannot be read
        return None


def _finish_worker(paths: JobPaths) -> None:
    if paths.worker.exists():
        write_json(paths.worker, {**read_json(paths.worker), "finished": time.time()})


def _readable_model(paths: JobPaths, redo: bool, log) -> None:
    """A finished job whose model cannot be read is trained again (``redo``) or named in an error."""
    if not paths.done.exists() or not paths.model.exists():
        return
    try:
        torch.load(paths.model, map_location="cpu", weights_only=True)
        return
    except Exception as exc:
        reason = describe(exc)
    if not redo:
        raise UserError(f"{paths.model} is unreadable ({reason}); delete {paths.folder} and run `superlens resume` "
                        "to train it again")
    log(f"{paths.model} is unreadable ({reason}); training this job again")
    for path in paths.trained_outputs():
        path.unlink(missing_ok=True)


def _readable_checkpoint(paths: JobPaths, log) -> dict[str, Any] | None:
    """The job's checkpoint (read once, handed to the job), or None. An unreadable one is
    dropped: the job restarts from its last good state, round 0."""
    if not paths.checkpoint.exists():
        return None
    try:
        return load_checkpoint(paths.checkpoint)
    except Exception as exc:
        log(f"{paths.checkpoint} is unreadable ({type(exc).__name__}); this job restarts from round 0")
        for path in (paths.checkpoint, paths.pool, paths.records):
            path.unlink(missing_ok=True)
        return None

"""The dose of each active-learning arm in a study (``superlens.analysis.dose``): the reference each
seed's round-0 job keeps (``round0/seed<k>/dose.npz``), and the per-round dose of every AL arm
against ``al-random`` of its seed that ``summary.json`` reports, with the A/A arm's as the yardstick."""

from __future__ import annotations

from typing import Any

import numpy as np

from superlens.analysis.dose import DISTANCES, DoseReference, arm_dose, reference_from, within_reference
from superlens.analysis.stats import mean_ci, none_if_nan
from superlens.data import DatasetSplits
from superlens.fileio import atomic_path
from superlens.rundir import RunDir
from superlens.study.jobs import Round0Job

CHUNK = 2048  # pool images captured at a time for the latents
KNN = 20  # typicality's neighbours, as the typicality strategies count them


def dose_reference_stage(job: Round0Job, splits: DatasetSplits, device, log=None) -> None:
    """``dose.npz`` of the seed: margin, typicality (in the round-0 model's penultimate features) and, with
    ``sae`` on, which latents of one SAE (the decoding SAE's settings, trained on the round-0 model's
    layer over the study's SAE images) fire on each pool image."""
    from superlens.active.typical import knn_mean_distance
    from superlens.analysis.sae import train_sae
    from superlens.analysis.sae_measures import image_latents
    from superlens.models import trained_model
    from superlens.study.measure import _sae_vectors, measurement_images
    from superlens.training import evaluate

    model = trained_model(job.model, splits.train.num_classes, job.paths.model)
    pool = splits.train
    result = evaluate(model, pool, job.recipe, device=device)
    fires = None
    if job.sae is not None:
        if log is not None:
            log(f"{job.label}: the dose's reference SAE on the round-0 model's {job.sae.layer}")
        images, _ = measurement_images(job, splits, device)
        _, vectors = _sae_vectors(model, images, job.sae, job.recipe, device)
        sae = train_sae(vectors, job.sae.settings_for(job.seed), device=device).sae
        blocks = []
        for start in range(0, len(pool), CHUNK):
            chunk = pool.subset(np.arange(start, min(start + CHUNK, len(pool))))
            acts, _ = _sae_vectors(model, chunk, job.sae, job.recipe, device)
            blocks.append(image_latents(sae, acts) > 0)
        fires = np.concatenate(blocks)
    distance = knn_mean_distance(result.embeddings, KNN)
    reference = reference_from(result.probs, distance, pool.labels.cpu().numpy(), fires)
    with atomic_path(job.paths.dose) as tmp, open(tmp, "wb") as f:
        np.savez(f, labels=reference.labels, margin=reference.margin, typicality=reference.typicality,
                 num_classes=reference.num_classes,
                 **({} if fires is None else {"fires": np.packbits(fires, axis=1), "latents": fires.shape[1]}))


def load_reference(path) -> DoseReference:
    with np.load(path) as kept:
        fires = None
        if "fires" in kept:
            fires = np.unpackbits(kept["fires"], axis=1, count=int(kept["latents"])).astype(bool)
        return DoseReference(kept["labels"], kept["margin"], kept["typicality"], fires, int(kept["num_classes"]))


def study_dose(run: RunDir, arms: list[str], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """``dose`` of every AL arm but al-random: per round and at the final round (mean, 95% interval and
    per-seed values over the seeds that have it), and, where the study has an A/A arm (al-random@k),
    whether the final dose lies within the A/A arm's (``changed_the_data``)."""
    per_arm: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for arm in arms:
        if arm in ("baseline", "al-random"):
            continue
        for seed in seeds:
            reference = run.round0(seed).dose
            mine, theirs = run.job(arm, seed), run.job("al-random", seed)
            if reference.exists() and mine.done.exists() and theirs.done.exists():
                rounds = arm_dose(load_reference(reference), np.load(mine.pool), np.load(theirs.pool))
                per_arm.setdefault(arm, {})[seed] = rounds
    aa = next((arm for arm in per_arm if arm.startswith("al-random@")), None)
    out = {arm: _block(by_seed) for arm, by_seed in per_arm.items()}
    for arm, block in out.items():
        block["reference_arm"] = aa if arm != aa else None
        changed = None
        if aa is not None and arm != aa:
            inside = within_reference({m: v["per_seed"] for m, v in block["final"].items()},
                                      {m: v["per_seed"] for m, v in out[aa]["final"].items()})
            changed = None if inside is None else not inside
        block["changed_the_data"] = changed
    return out


def _block(by_seed: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    seeds = sorted(by_seed)
    measures = [k for k in by_seed[seeds[0]][0] if k not in ("round", "n_labeled")] if by_seed[seeds[0]] else []

    def stats(column: list, measure: str) -> dict[str, Any]:
        values = [none_if_nan(v) if v is not None else None for v in column]
        if not any(v is not None for v in values):
            return {"mean": None, "ci95": [None, None], "per_seed": values}
        s = mean_ci(values, bounds=(0.0, 1.0) if measure in DISTANCES else (-1.0, 1.0))
        return {"mean": none_if_nan(s["mean"]), "ci95": [none_if_nan(v) for v in s["ci95"]], "per_seed": values}

    rounds = sorted(set.intersection(*(set(r["round"] for r in by_seed[s]) for s in seeds)))
    per_round = []
    for round_ in rounds:
        rows = [next(r for r in by_seed[s] if r["round"] == round_) for s in seeds]
        per_round.append({"round": round_, "n_labeled": rows[0]["n_labeled"],
                          **{m: stats([row[m] for row in rows], m)["mean"] for m in measures}})
    final = [by_seed[s][-1] for s in seeds]
    return {"seeds": seeds, "per_round": per_round,
            "final": {m: stats([row[m] for row in final], m) for m in measures}}

"""The units of work of a study, as types: each carries only the specs its stages use.

A study is one ``Round0Job`` per seed (the model every AL arm of that seed starts
from), one ``ArmJob`` per (arm, seed) (training over all rounds -> analysis -> SAE ->
featvis for the first seed), and one ``ToyJob`` for the toy-model lab. Jobs are
frozen and picklable, so Ray can ship them to another machine. Each stage writes one
file, listed by ``outputs()``: a job run again continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Union

from superlens.layout import JobPaths, RunLayout
from superlens.specs import (ActiveSpec, AnalysisSpec, DataSpec, FeatVisSpec, ModelSpec, Recipe, SAESpec, SnapshotSpec,
                             StageSpecs, ToySpec)
from superlens.tracking import Tracking


@dataclass(frozen=True)
class TrainingJob:
    """What every job that trains a model carries."""

    seed: int
    paths: JobPaths
    device: str  # "auto", "cpu", "cuda:1", ...: resolved where the job runs
    data: DataSpec
    model: ModelSpec
    recipe: Recipe


@dataclass(frozen=True)
class Round0Job(TrainingJob):
    """The initial labelled set of ``seed`` and the model trained on it, shared by every AL arm."""

    active: ActiveSpec
    snapshot: SnapshotSpec | None
    baseline: JobPaths | None  # the trained baseline round 0 continues (active.start_from_baseline)
    dose: bool = False  # keep the reference of every AL arm's dose (with analysis on)
    sae: SAESpec | None = None  # the SAE images and settings of the dose's latents (with sae on)

    needs_gpu = True

    @property
    def label(self) -> str:
        return f"round0/seed{self.seed}"

    def outputs(self) -> dict[str, Path]:
        return {"training": self.paths.done, **({"dose": self.paths.dose} if self.dose else {})}


@dataclass(frozen=True)
class ArmJob(TrainingJob):
    """One (arm, seed): training over every round, then the analyses of its final model."""

    arm: str
    active: ActiveSpec | None  # None for the baseline (full data, no rounds)
    snapshot: SnapshotSpec | None
    analysis: AnalysisSpec | None
    sae: SAESpec | None
    featvis: FeatVisSpec | None  # activation maximization: the first seed of each arm only
    round0: JobPaths | None  # the round 0 an AL arm starts from
    baseline: JobPaths | None  # the trained baseline round 0 continued, if it did
    tracking: Tracking | None = None  # where its rounds and SAE curves are mirrored (tracking: tensorboard|wandb)
    floor: Path | None = None  # the seed's initialized-network psi, measured once for every arm of the seed
    planted: bool = False  # this job measures the study's planted-feature response (one job per study)

    needs_gpu = True

    @property
    def label(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    def outputs(self) -> dict[str, Path]:
        """The file each stage writes, in the order the stages run."""
        stages = {"training": self.paths.done}
        if self.analysis is not None:
            stages["analysis"] = self.paths.analysis
        if self.sae is not None:
            stages["sae"] = self.paths.sae
        if self.featvis is not None:
            stages["featvis"] = self.paths.featvis(self.featvis.layer)
        return stages


@dataclass(frozen=True)
class ToyJob:
    """The toy-model lab, once per study (it uses no trained model and no GPU)."""

    toy: ToySpec
    path: Path
    folder: Path  # where its error and worker records go

    needs_gpu = False
    label = "toy"

    @property
    def paths(self) -> JobPaths:
        return JobPaths(self.folder)

    def outputs(self) -> dict[str, Path]:
        return {"toy": self.path}


Job = Union[Round0Job, ArmJob, ToyJob]


def done(job: Job) -> bool:
    """Every file the job writes exists (nothing left to do)."""
    return all(p.exists() for p in job.outputs().values())


@dataclass(frozen=True)
class JobResult:
    """What an executor reports for one job."""

    job: str
    ok: bool
    seconds: dict[str, float]
    error: str | None = None


def _tracking(kind: str, run: RunLayout, arm: str, seed: int) -> Tracking | None:
    if kind == "none":
        return None
    log_dir = run.tensorboard(arm, seed) if kind == "tensorboard" else run.path
    return Tracking(kind, log_dir, run.config, run.job(arm, seed).tracked, run.path.name, arm, seed)


def plan(specs: StageSpecs, arms: list[str], run: RunLayout) -> tuple[list[Job], dict[str, list[str]]]:
    """Every job of a study in an order that respects dependencies, and each job's dependencies (labels)."""
    first = specs.seeds[0]
    common = dict(device=specs.device, data=specs.data, model=specs.model, recipe=specs.recipe, snapshot=specs.snapshot)
    from_baseline = specs.active.start_from_baseline
    jobs: list[Job] = []
    deps: dict[str, list[str]] = {}

    def add(job: Job, needs: list[str]) -> None:
        jobs.append(job)
        deps[job.label] = needs

    planter = "al-random" if "al-random" in arms else arms[0]  # its first seed's job measures the planted response

    def analysis(seed: int) -> AnalysisSpec | None:
        if specs.analysis is None or specs.analysis.tsne != "first_seed":
            return specs.analysis
        return replace(specs.analysis, tsne=seed == first)  # t-SNE for the report's panels only

    def arm_job(arm: str, seed: int, active: ActiveSpec | None) -> ArmJob:
        return ArmJob(arm=arm, seed=seed, planted=arm == planter and seed == first, paths=run.job(arm, seed), active=active, analysis=analysis(seed),
                      sae=specs.sae, featvis=specs.featvis if seed == first else None,
                      round0=run.round0(seed) if active is not None else None,
                      baseline=run.job("baseline", seed) if active is not None and from_baseline else None,
                      tracking=_tracking(specs.tracking, run, arm, seed), floor=run.round0(seed).root / "floor.json",
                      **common)

    if specs.toy is not None:  # first: it needs no other job, and side by side with them it adds no wall time
        add(ToyJob(specs.toy, run.toy, run.path / "toy"), [])
    if "baseline" in arms:
        for seed in specs.seeds:
            add(arm_job("baseline", seed, None), [])
    al = [arm for arm in arms if arm != "baseline"]
    if al:
        for seed in specs.seeds:
            add(Round0Job(seed=seed, paths=run.round0(seed), active=specs.active,
                          baseline=run.job("baseline", seed) if from_baseline else None,
                          dose=specs.analysis is not None, sae=specs.sae, **common),
                [f"baseline/seed{seed}"] if from_baseline else [])
        for arm in al:
            for seed in specs.seeds:
                add(arm_job(arm, seed, specs.active), [f"round0/seed{seed}"])
    return jobs, deps

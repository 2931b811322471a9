"""A study: every job of a config, run into one run directory, then summarized and reported."""

from __future__ import annotations

import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superlens.data import load_spec
from superlens.errors import UserError
from superlens.fileio import read_json, write_json
from superlens.models import config_model
from superlens.report.html import build_report
from superlens.rundir import RunDir
from superlens.specs import FeatVisSettings, StageSpecs, featvis_spec, stage_specs
from superlens.study.executors import run_local, run_ray, run_workers
from superlens.study.jobs import ArmJob, JobResult, plan
from superlens.study.summary import summarize
from superlens.tracking import check_available
from superlens.training import resolve_device


def check_layers(specs: StageSpecs, num_classes: int, image_size: int) -> None:
    """Every layer the analyses name exists, and the featvis units lie in their layer: checked before training."""
    from superlens.analysis.features import resolve_module

    model = config_model(specs.model, num_classes)
    stages = [specs.analysis, specs.snapshot, specs.sae]
    names = [getattr(spec, key, None) for spec in stages if spec is not None
             for key in ("layer", "neuron_layer", "filter_layer", "repeat_block")]
    for name in dict.fromkeys(n for n in names if n):
        resolve_module(model, name)
    if specs.featvis is not None:
        check_units(model, specs.featvis.layer, specs.featvis.units, specs.featvis.settings, image_size)


def check_units(model, layer: str, units, settings: FeatVisSettings, image_size: int) -> None:
    """Raise a UserError when ``layer`` is unknown or a unit lies outside its channels."""
    from superlens.analysis.featvis import check_units as check

    side = settings.upsample_to or settings.size or image_size
    check(model, layer, list(units), torch.zeros(1, 3, side, side))


class StageClock:
    """Seconds spent per stage and per job, merged with those of earlier invocations on the same run."""

    def __init__(self, earlier: dict[str, dict[str, float]] | None = None) -> None:
        self.seconds: dict[str, dict[str, float]] = {k: dict(v) for k, v in (earlier or {}).items()}

    def add(self, stage: str, job: str, seconds: float) -> None:
        self.seconds.setdefault(stage, {})[job] = round(self.seconds.get(stage, {}).get(job, 0.0) + seconds, 3)

    def totals(self) -> dict[str, float]:
        return {stage: round(sum(per.values()), 3) for stage, per in self.seconds.items()}


class JobsFailed(Exception):
    """Some jobs of a study failed; the others finished and the summary covers them."""

    def __init__(self, failures: list[JobResult], run_dir: Path) -> None:
        self.failures, self.run_dir = failures, run_dir
        super().__init__(f"{len(failures)} job(s) failed")


def run_study(cfg: dict[str, Any], out: str | Path, progress: bool = True, log=print) -> dict[str, Any]:
    """Run every unfinished job of ``cfg`` into ``out`` and write its summary files.

    Jobs already done are skipped and an interrupted one continues from its last
    round, so calling this again on the same directory finishes what is left. Jobs run
    where ``cfg["executor"]`` says. When some fail, the summary and report of the others
    are written and ``JobsFailed`` is raised.
    """
    run = RunDir(out)
    specs = stage_specs(cfg)
    check_available(specs.tracking)  # a missing tracking package is one line before anything runs
    with run.lock():
        run.bind_config(cfg)
        started = time.time()
        earlier = read_json(run.manifest) if run.manifest.exists() else {}
        clock = StageClock(earlier.get("stage_job_seconds"))
        revisions = _revisions(earlier)
        t0 = time.perf_counter()
        splits = load_spec(specs.data)
        if any(arm != "baseline" for arm in cfg["arms"]):
            specs.active.query_sizes(len(splits.train))  # a budget larger than the pool fails here
        check_layers(specs, splits.train.num_classes, splits.train.image_size[0])  # before training, not after
        write_json(run.classes, splits.train.classes)
        jobs, deps = plan(specs, cfg["arms"], run)
        if cfg["executor"] == "ray":
            if specs.device.startswith("cuda:") and specs.device != "cuda:0":
                raise UserError(f"device={specs.device!r} with executor=ray: each Ray job sees the one GPU it is given "
                                "as cuda:0; use device=auto (Ray picks the GPUs)")
            device = splits = None  # each Ray worker resolves the device and loads the data itself
            clock.add("data", "study", time.perf_counter() - t0)
            results = run_ray(jobs, deps, specs.ray, log)
        else:
            device = resolve_device(specs.device)
            splits = type(splits)(splits.train.to(device), splits.test.to(device))
            clock.add("data", "study", time.perf_counter() - t0)
            if cfg["workers"] > 1:
                results = run_workers(jobs, deps, cfg["workers"], job_threads(cfg), log)
            else:
                results = run_local(jobs, deps, splits, device, progress, log)
        for result in results:
            for stage, seconds in result.seconds.items():
                clock.add(stage, result.job, seconds)
        _similarities(jobs, specs, splits, device, clock, log)
        failures = [r for r in results if not r.ok]
        summary = None
        if run.finished_jobs():
            t0 = time.perf_counter()
            summary = summarize(run)
            clock.add("summary", "study", time.perf_counter() - t0)
            write_manifest(run, cfg, device, started, clock, revisions)
            t0 = time.perf_counter()
            build_report(run, summary)
            clock.add("report", "study", time.perf_counter() - t0)
        write_manifest(run, cfg, device, started, clock, revisions)
        if failures:
            raise JobsFailed(failures, run.path)
        return summary


def _similarities(jobs, specs: StageSpecs, splits, device, clock: StageClock, log) -> None:
    """CKA of every finished AL arm against al-random of its seed (``similarity.json``), on the driver,
    from the features the jobs' analyses kept (on a run from before them, captured again here)."""
    from superlens.study.stages import kept_features, similarity_stage

    arms = {(j.arm, j.seed): j for j in jobs if isinstance(j, ArmJob)}
    pairs = [(job, arms[("al-random", job.seed)]) for (arm, seed), job in arms.items()
             if arm not in ("baseline", "al-random") and ("al-random", seed) in arms and job.analysis is not None]
    pairs = [(a, b) for a, b in pairs if a.paths.model.exists() and a.paths.done.exists() and b.paths.done.exists()
             and not a.paths.similarity.exists()]
    if not pairs:
        return
    if all(kept_features(job, job.analysis.layer) is not None for pair in pairs for job in pair):
        splits = device = None  # CKA from the features the jobs kept: no data, no device
    elif device is None:  # a run from before the kept features, by Ray: the driver loads the data itself
        try:
            device = resolve_device(specs.device)
        except UserError:  # device=cuda for the workers, and a driver without a GPU
            device = resolve_device("cpu")
            log(f"similarity (CKA) on the driver's CPU: device={specs.device} is not available here")
        splits = load_spec(specs.data, device)
    for arm, control in pairs:
        t0 = time.perf_counter()
        log(f"{arm.label}: similarity to {control.label}")
        similarity_stage(arm, control, splits, device)
        clock.add("similarity", arm.label, time.perf_counter() - t0)


def arm_job(cfg: dict[str, Any], run: RunDir, arm: str, seed: int) -> ArmJob:
    """The job of (``arm``, ``seed``) as the study planned it, with the config's featvis spec even
    where the study did not render (the featvis command renders on demand)."""
    from dataclasses import replace

    specs = replace(stage_specs(cfg), seeds=(seed,), featvis=featvis_spec(cfg["featvis"]))
    jobs, _ = plan(specs, [arm], run)
    return next(j for j in jobs if isinstance(j, ArmJob))


def package_version() -> str:
    """This installation's version, from the package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("superlens")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _revisions(earlier: dict[str, Any]) -> list[str]:
    """The git revisions of the code that worked on a run, oldest first: the earlier manifest's, then
    this invocation's when it differs (a run resumed after the code changed mixes revisions)."""
    revisions = list(earlier.get("git_revisions") or ([earlier["git_revision"]] if earlier.get("git_revision") else []))
    current = _git_revision()
    if current is not None and (not revisions or revisions[-1] != current):
        revisions.append(current)
    return revisions


def _precision(cfg: dict[str, Any], device: torch.device | None) -> dict[str, Any]:
    """The arithmetic the study's training and evaluation used on the driver's device (Ray jobs on GPUs
    use their GPU's: bf16 where it computes it)."""
    from superlens.training import precision_record

    return precision_record(stage_specs(cfg).recipe, device if device is not None else torch.device("cpu"))


def job_threads(cfg: dict[str, Any]) -> int:
    """The torch threads of each local job: this process's, divided among ``workers``."""
    return max(1, torch.get_num_threads() // cfg["workers"])


def write_manifest(run: RunDir, cfg: dict[str, Any], device: torch.device | None, started: float, clock: StageClock,
                   revisions: list[str]) -> None:
    import sklearn

    jobs_ = {f"{j['arm']}/seed{j['seed']}": round(j["seconds"], 3) for j in run.finished_jobs()}
    write_json(run.manifest, {
        "superlens": package_version(), "git_revision": _git_revision(), "git_revisions": revisions,
        "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "scikit_learn": sklearn.__version__,
        "platform": platform.platform(), "executor": cfg["executor"],
        "device": str(device) if device is not None else "per Ray worker (see worker.json in each job folder)",
        "device_name": (torch.cuda.get_device_name(device) if device is not None and device.type == "cuda"
                        else platform.processor() or "cpu"),
        "workers": cfg["workers"], "torch_threads": job_threads(cfg), "seeds": cfg["seeds"],
        "precision": _precision(cfg, device),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "this_invocation_seconds": round(time.time() - started, 3), "job_seconds": jobs_,
        "stage_seconds": clock.totals(), "stage_job_seconds": clock.seconds,
    })

"""Units of work of a study, each described by a small picklable spec and run end to end.

A study is: one round-0 job per seed (the model every AL arm of that seed starts
from), one job per (arm, seed) (training over all rounds -> analysis -> SAE ->
featvis for the first seed), and the toy-model lab. Each stage writes one file into
the job's folder, so a job run again, in this process or on another machine,
continues where it stopped. A job that raises writes ``error.txt`` (its traceback)
into its folder and reports failure; the other jobs go on.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from superlens.active.loop import load_checkpoint, run_job, run_round0
from superlens.analysis.decode import sae_job
from superlens.analysis.job import analyze_job, featvis_job, featvis_path
from superlens.errors import UserError, describe
from superlens.fileio import read_json, write_json

# The config sections a job reads; the rest of the config (arms, seeds, executor, stats, quirks, paper)
# stays with the driver.
JOB_SECTIONS = ("name", "device", "data", "model", "recipe", "active", "analysis", "sae", "featvis", "toy", "seeds")


@dataclass(frozen=True)
class JobSpec:
    kind: str  # "round0", "arm" or "toy"
    seed: int
    arm: str | None
    run_dir: str
    settings: dict[str, Any] = field(hash=False)  # the resolved sections in JOB_SECTIONS
    featvis: bool = False  # activation maximization in this job (the first seed of each arm)

    @property
    def label(self) -> str:
        if self.kind == "toy":
            return "toy"
        return f"round0/seed{self.seed}" if self.kind == "round0" else f"{self.arm}/seed{self.seed}"

    @property
    def folder(self) -> Path:
        run = Path(self.run_dir)
        if self.kind == "toy":
            return run / "toy"
        return run / "round0" / f"seed{self.seed}" if self.kind == "round0" else run / "arms" / self.arm / f"seed{self.seed}"

    def outputs(self) -> dict[str, Path]:
        """The file each stage of this job writes, stage by stage in the order they run."""
        s, f = self.settings, self.folder
        if self.kind == "toy":
            return {"toy": Path(self.run_dir) / "toy.json"}
        stages = {"training": f / "done.json"}
        if self.kind == "arm":
            if s["analysis"]["enabled"]:
                stages["analysis"] = f / "analysis.json"
            if s["sae"]["enabled"]:
                stages["sae"] = f / "sae.json"
            if self.featvis and s["featvis"]["enabled"]:
                stages["featvis"] = featvis_path(f, s["featvis"]["layer"])
        return stages

    def done(self) -> bool:
        """Every file this job writes exists (nothing left to do)."""
        return all(p.exists() for p in self.outputs().values())

    def result(self, ok: bool, error: str | None = None, seconds: dict[str, float] | None = None) -> dict[str, Any]:
        """What an executor reports for this job."""
        out = {"job": self.label, "ok": ok, "seconds": seconds or {}}
        return out if error is None else {**out, "error": error}


def plan(cfg: dict[str, Any], run_dir: str | Path) -> tuple[list[JobSpec], dict[str, list[str]]]:
    """Every job of ``cfg`` in an order that respects dependencies, and each job's dependencies."""
    settings = {k: cfg[k] for k in JOB_SECTIONS}
    run_dir = str(run_dir)
    first = cfg["seeds"][0]
    specs, deps = [], {}
    baseline = "baseline" in cfg["arms"]
    for seed in cfg["seeds"]:
        if baseline:
            spec = JobSpec("arm", seed, "baseline", run_dir, settings, featvis=seed == first)
            specs.append(spec)
            deps[spec.label] = []
    al = [arm for arm in cfg["arms"] if arm != "baseline"]
    if al:
        for seed in cfg["seeds"]:
            spec = JobSpec("round0", seed, None, run_dir, settings)
            specs.append(spec)
            deps[spec.label] = [f"baseline/seed{seed}"] if cfg["active"]["start_from_baseline"] else []
        for arm in al:
            for seed in cfg["seeds"]:
                spec = JobSpec("arm", seed, arm, run_dir, settings, featvis=seed == first)
                specs.append(spec)
                deps[spec.label] = [f"round0/seed{seed}"]
    if cfg["toy"]["enabled"]:
        spec = JobSpec("toy", 0, None, run_dir, settings)
        specs.append(spec)
        deps[spec.label] = []
    return specs, deps


def _record_worker(folder: Path) -> None:
    """``worker.json``: where and how often the job ran (a retried job counts its attempts)."""
    path = folder / "worker.json"
    attempts = 0
    if path.exists():
        try:
            attempts = read_json(path).get("attempts", 0)
        except (ValueError, OSError):  # a half-written record from a killed worker
            attempts = 0
    write_json(path, {"pid": os.getpid(), "host": socket.gethostname(), "attempts": attempts + 1,
                      "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "started": time.time()})


def _finish_worker(folder: Path) -> None:
    path = folder / "worker.json"
    if path.exists():
        write_json(path, {**read_json(path), "finished": time.time()})


def execute(spec: JobSpec, splits=None, device: torch.device | None = None, progress: bool = False,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run every unfinished stage of ``spec``; never raises for the job's own failures.

    Returns ``{"job", "ok", "seconds": {stage: s}}`` and, on failure, ``"error"`` (one
    line); the traceback goes to ``error.txt`` in the job's folder.
    """
    from superlens.study import load_data, resolve_device

    folder = spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").unlink(missing_ok=True)
    seconds: dict[str, float] = {}
    try:
        _record_worker(folder)
        if spec.kind == "toy":
            from superlens.toy import run_lab

            t0 = time.perf_counter()
            log("toy models of superposition")
            write_json(Path(spec.run_dir) / "toy.json", run_lab(spec.settings["toy"], spec.settings["seeds"]))
            seconds["toy"] = time.perf_counter() - t0
        else:
            if splits is None:
                device = resolve_device(spec.settings["device"])
                splits = load_data(spec.settings)
                splits = type(splits)(splits.train.to(device), splits.test.to(device))
            _run_stages(spec, splits, device, progress, log, seconds)
        _finish_worker(folder)
        return spec.result(True, seconds=seconds)
    except Exception as exc:  # the job failed; its folder says why and the study goes on
        (folder / "error.txt").write_text(traceback.format_exc())
        return spec.result(False, describe(exc), seconds)


def _run_stages(spec: JobSpec, splits, device, progress, log, seconds) -> None:
    s, folder, run = spec.settings, spec.folder, Path(spec.run_dir)
    if spec.kind == "round0":
        _readable_model(folder, redo=True, log=log)
        if not (folder / "done.json").exists():
            log(f"round 0 of seed {spec.seed} (shared by every active-learning arm)")
        t0 = time.perf_counter()
        run_round0(s, spec.seed, folder, splits, device, progress=progress, baseline_dir=run / "arms" / "baseline" / f"seed{spec.seed}")
        seconds["training"] = time.perf_counter() - t0
        return
    round0 = run / "round0" / f"seed{spec.seed}"
    if spec.arm != "baseline":
        _readable_model(round0, redo=False, log=log)
    _readable_model(folder, redo=True, log=log)
    checkpoint = _readable_checkpoint(folder, log)
    fv = s["featvis"]
    runners = {
        "training": lambda: run_job(s, spec.arm, spec.seed, folder, splits, device, progress=progress,
                                    round0_dir=round0, checkpoint=checkpoint),
        "analysis": lambda: analyze_job(s, folder, splits, spec.seed, device),
        "sae": lambda: sae_job(s, folder, splits, spec.seed, device),
        "featvis": lambda: featvis_job(s, folder, splits, fv["layer"], fv["units"], device),
    }
    for stage, output in spec.outputs().items():
        if output.exists():
            continue
        log(f"{spec.label}: {stage}")
        t0 = time.perf_counter()
        runners[stage]()
        seconds[stage] = time.perf_counter() - t0


def _readable_model(folder: Path, redo: bool, log) -> None:
    """A finished job whose ``model.pt`` cannot be read is trained again (``redo``) or named in an error."""
    path = folder / "model.pt"
    if not (folder / "done.json").exists() or not path.exists():
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return
    except Exception as exc:
        reason = describe(exc)
    if not redo:
        raise UserError(f"{path} is unreadable ({reason}); delete {folder} and run `superlens resume` to train it again")
    log(f"{path} is unreadable ({reason}); training this job again")
    for name in ("done.json", "model.pt", "optimizer.pt", "analysis.json", "sae.json", "tsne.npz"):
        (folder / name).unlink(missing_ok=True)
    for fv in folder.glob("featvis-*.npz"):
        fv.unlink()


def _readable_checkpoint(folder: Path, log) -> dict[str, Any] | None:
    """The job's ``checkpoint.pt`` (read once, handed to the job), or None. An unreadable one is
    dropped: the job restarts from its last good state, round 0."""
    path = folder / "checkpoint.pt"
    if not path.exists():
        return None
    try:
        return load_checkpoint(path)
    except Exception as exc:
        log(f"{path} is unreadable ({type(exc).__name__}); this job restarts from round 0")
        for name in ("checkpoint.pt", "pool.npy", "records.json"):
            (folder / name).unlink(missing_ok=True)
        return None

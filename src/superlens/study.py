"""A study: every (arm, seed) job of a config, run into one run directory, then summarized."""

from __future__ import annotations

import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from superlens import __version__
from superlens.active.curves import aubc, label_efficiency
from superlens.analysis.snapshot import ROUND_METRICS
from superlens.analysis.stats import (CI_METHOD, TESTS, adjust_family, compare_paired, finite, mean_ci, metric_bounds,
                                     none_if_nan, smallest_p)
from superlens.config import query_sizes
from superlens.data import DatasetSplits, load
from superlens.errors import UserError
from superlens.fileio import read_json, write_json
from superlens.models import config_model
from superlens.report.html import build_report
from superlens.rundir import RunDir


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but this torch has no CUDA device; use device=cpu or device=auto")
    return device


def load_data(cfg: dict[str, Any]):
    """The config's dataset, with its subsets and normalization overrides applied."""
    from dataclasses import replace

    from superlens.analysis.job import fixed_subset

    d = cfg["data"]
    train, test = load(d["name"], root=d["root"], download=d["download"], **d["options"])
    if d["train_subset"]:
        train = fixed_subset(train, d["train_subset"])
    if d["test_subset"]:
        test = fixed_subset(test, d["test_subset"])
    if d["mean"] or d["std"]:
        stats = {k: tuple(float(v) for v in d[k]) for k in ("mean", "std") if d[k]}
        train, test = replace(train, **stats), replace(test, **stats)
    return DatasetSplits(train, test)


def check_analysis_layers(cfg: dict[str, Any], num_classes: int, image_size: int) -> None:
    from superlens.analysis.features import resolve_module

    model = config_model(cfg["model"], num_classes)
    a = cfg["analysis"]
    for name in (a["layer"], a["neuron_layer"], a["filter_layer"], cfg["sae"]["layer"]) + ((a["repeat_block"],) if a["repeat_block"] else ()):
        resolve_module(model, name)
    fv = cfg["featvis"]
    if fv["enabled"]:
        from superlens.config import featvis_settings

        _check_units(model, fv["layer"], fv["units"], featvis_settings(fv), image_size)


def _check_units(model, layer, units, settings, image_size: int) -> None:
    from superlens.analysis.featvis import check_units

    side = settings.upsample_to or settings.size or image_size
    check_units(model, layer, units, torch.zeros(1, 3, side, side))


def check_units_for(cfg: dict[str, Any], train, layer: str, units: list[int], settings) -> None:
    """Raise a UserError when ``layer`` is unknown or a unit lies outside its channels."""
    _check_units(config_model(cfg["model"], train.num_classes), layer, units, settings, train.image_size[0])


def jobs(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    return [(arm, seed) for arm in cfg["arms"] for seed in cfg["seeds"]]


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

    def __init__(self, failures: list[dict[str, Any]], run_dir: Path) -> None:
        self.failures, self.run_dir = failures, run_dir
        super().__init__(f"{len(failures)} job(s) failed")


def run_study(cfg: dict[str, Any], out: str | Path, progress: bool = True, log=print) -> dict[str, Any]:
    """Run every unfinished job of ``cfg`` into ``out`` and write its summary files.

    Jobs already done are skipped and an interrupted one continues from its last
    round, so calling this again on the same directory finishes what is left. Jobs run
    where ``cfg["executor"]`` says. When some fail, the summary and report of the others
    are written and ``JobsFailed`` is raised.
    """
    from superlens.executors import run_local, run_ray
    from superlens.jobs import plan

    run = RunDir(out)
    with run.lock():
        run.bind_config(cfg)
        started = time.time()
        earlier = read_json(run.path / "manifest.json") if (run.path / "manifest.json").exists() else {}
        clock = StageClock(earlier.get("stage_job_seconds"))
        t0 = time.perf_counter()
        splits = load_data(cfg)
        if any(arm != "baseline" for arm in cfg["arms"]):
            query_sizes(cfg["active"], len(splits.train))  # a budget larger than the pool fails here
        check_analysis_layers(cfg, splits.train.num_classes, splits.train.image_size[0])  # before training, not after
        write_json(run.path / "classes.json", splits.train.classes)
        specs, deps = plan(cfg, run.path)
        if cfg["executor"] == "ray":
            device = None  # each Ray worker resolves cfg["device"] and loads the data itself
            del splits
            clock.add("data", "study", time.perf_counter() - t0)
            results = run_ray(specs, deps, cfg["ray"], log)
        else:
            device = resolve_device(cfg["device"])
            splits = type(splits)(splits.train.to(device), splits.test.to(device))
            clock.add("data", "study", time.perf_counter() - t0)
            results = run_local(specs, deps, splits, device, progress, log)
        for result in results:
            for stage, seconds in result["seconds"].items():
                clock.add(stage, result["job"], seconds)
        failures = [r for r in results if not r["ok"]]
        summary = None
        if run.finished_jobs():
            t0 = time.perf_counter()
            summary = summarize(run)
            clock.add("summary", "study", time.perf_counter() - t0)
            write_manifest(run, cfg, device, started, clock)
            t0 = time.perf_counter()
            build_report(run, summary)
            clock.add("report", "study", time.perf_counter() - t0)
        write_manifest(run, cfg, device, started, clock)
        if failures:
            raise JobsFailed(failures, run.path)
        return summary


# Compared per AL arm with al-random (and with the baseline); Holm's adjustment runs over
# this family together, and separately over every other metric (the secondary family).
HEADLINE = ("test_accuracy", "aubc") + ROUND_METRICS + tuple(f"{m}_area" for m in ROUND_METRICS) + ("psi",)
NOT_COMPARED = ("label_efficiency", "images_seen_total", "optimizer_steps_total")


def _job_values(run: RunDir, arm: str, seed: int, rows: list[dict[str, Any]],
                reference: list[dict[str, Any]] | None) -> dict[str, float]:
    """Every per-seed number of one finished job: final accuracy, areas over the budget, analyses, SAE."""
    values: dict[str, float] = {}
    for name in ("analysis.json", "sae.json"):
        path = run.job_dir(arm, seed) / name
        if path.exists():
            values.update(read_json(path)["metrics"])
    n = np.array([r["n_labeled"] for r in rows], dtype=float)
    acc = np.array([r["test_accuracy"] for r in rows])
    values["test_accuracy"] = float(acc[-1])
    values["images_seen_total"] = float(rows[-1].get("images_seen_total", np.nan))
    values["optimizer_steps_total"] = float(rows[-1].get("optimizer_steps_total", np.nan))
    if arm != "baseline":
        values["aubc"] = aubc(n, acc)
        for metric in ROUND_METRICS:
            curve = [r.get(metric) for r in rows]
            if all(v is not None and np.isfinite(v) for v in curve):
                values[f"{metric}_area"] = aubc(n, np.array(curve))
                values.setdefault(metric, float(curve[-1]))
        if reference is not None:
            ref_n = np.array([r["n_labeled"] for r in reference], dtype=float)
            ref_acc = np.array([r["test_accuracy"] for r in reference])
            values["label_efficiency"] = label_efficiency(n, acc, ref_n, ref_acc)
    elif all(rows[-1].get(m) is not None for m in ROUND_METRICS):
        for metric in ROUND_METRICS:
            values.setdefault(metric, float(rows[-1][metric]))
    return values


def _comparisons(mine: dict[int, dict[str, float]], other: dict[int, dict[str, float]], method: str) -> dict[str, Any]:
    keys = [k for k in dict.fromkeys(k for v in mine.values() for k in v) if k not in NOT_COMPARED
            and any(k in v for v in other.values())]
    block = {k: {**compare_paired({s: v.get(k) for s, v in mine.items()}, {s: v.get(k) for s, v in other.items()}, method),
                 "family": "headline" if k in HEADLINE else "secondary"} for k in keys}
    block = {k: v for k, v in block.items() if v["seeds"]}
    adjust_family(block, [k for k in block if block[k]["family"] == "headline"])
    adjust_family(block, [k for k in block if block[k]["family"] == "secondary"])
    return block


def summarize(run: RunDir) -> dict[str, Any]:
    """Build ``rounds.csv`` and ``summary.json`` from the finished jobs."""
    cfg = run.read_config()
    finished = {(job["arm"], job["seed"]): job["records"] for job in run.finished_jobs()}
    if not finished:
        raise UserError(f"{run.path} has no finished jobs yet; run `superlens resume {run.path}`")
    run.write_rounds_csv([row for arm, seed in jobs(cfg) for row in finished.get((arm, seed), [])])
    values: dict[str, dict[int, dict[str, float]]] = {}
    arms: dict[str, Any] = {}
    for arm in cfg["arms"]:
        seeds = [s for s in cfg["seeds"] if (arm, s) in finished]
        if not seeds:
            continue
        values[arm] = {s: _job_values(run, arm, s, finished[(arm, s)], finished.get(("al-random", s))) for s in seeds}
        entry: dict[str, Any] = {"seeds": seeds, "n_labeled": finished[(arm, seeds[0])][-1]["n_labeled"]}
        keys = list(dict.fromkeys(k for v in values[arm].values() for k in v))
        per_seed = {k: [none_if_nan(values[arm][s].get(k)) for s in seeds] for k in keys}
        for metric, column in per_seed.items():
            if len(finite(column)):
                stats = mean_ci(column, bounds=metric_bounds(metric))
                entry[metric] = stats["mean"]
                entry[f"{metric}_ci95"] = [none_if_nan(v) for v in stats["ci95"]]
        space = cfg["analysis"]["headline_space"]
        for name in ("silhouette", "davies_bouldin"):
            if f"{name}_{space}" in entry:  # the headline follows analysis.headline_space
                entry[name] = entry[f"{name}_{space}"]
                entry[f"{name}_ci95"] = entry[f"{name}_{space}_ci95"]
        entry["per_seed"] = {k: v for k, v in per_seed.items() if any(x is not None for x in v)}
        arms[arm] = entry
    method = cfg["stats"]["test"]
    for arm, entry in arms.items():
        if arm == "baseline":
            continue
        if "al-random" in values and arm != "al-random":
            entry["vs_random"] = _comparisons(values[arm], values["al-random"], method)
        if "baseline" in values:
            entry["vs_baseline"] = _comparisons(values[arm], values["baseline"], method)
    n_seeds = len(cfg["seeds"])
    summary = {
        "name": cfg["name"], "dataset": cfg["data"]["name"], "seeds": cfg["seeds"],
        "complete": len(finished) == len(jobs(cfg)),
        "statistics": {
            "interval": f"95% {CI_METHOD}", "test": TESTS[method], "adjustment": "Holm, within each family",
            "headline_family": list(HEADLINE), "smallest_p": smallest_p(n_seeds, method),
            "can_reach_0.05": n_seeds >= 2 and smallest_p(n_seeds, method) < 0.05,
        },
        "arms": arms,
    }
    if cfg["paper"]:
        summary["paper_comparison"] = paper_comparison(cfg, arms)
    write_json(run.path / "summary.json", summary)
    return summary


def paper_comparison(cfg: dict[str, Any], arms: dict[str, Any]) -> dict[str, Any]:
    """Each number the paper reports beside this run's (mean and 95% CI over seeds), and the quirks on."""
    rows = []
    for arm, numbers in cfg["paper"]["numbers"].items():
        for metric, value in numbers.items():
            ours = arms.get(arm, {})
            rows.append({"arm": arm, "metric": metric, "paper": value, "ours": ours.get(metric),
                         "ours_ci95": ours.get(f"{metric}_ci95"), "seeds": len(ours.get("seeds", []))})
    return {"reference": cfg["paper"].get("reference"), "notes": cfg["paper"].get("notes"),
            "quirks_on": [name for name, on in cfg["quirks"].items() if on], "rows": rows}


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_manifest(run: RunDir, cfg: dict[str, Any], device: torch.device | None, started: float, clock: StageClock) -> None:
    import sklearn

    jobs_ = {f"{j['arm']}/seed{j['seed']}": round(j["seconds"], 3) for j in run.finished_jobs()}
    write_json(run.path / "manifest.json", {
        "superlens": __version__, "git_revision": _git_revision(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "scikit_learn": sklearn.__version__,
        "platform": platform.platform(), "executor": cfg["executor"],
        "device": str(device) if device is not None else "per Ray worker (see worker.json in each job folder)",
        "device_name": (torch.cuda.get_device_name(device) if device is not None and device.type == "cuda"
                        else platform.processor() or "cpu"),
        "torch_threads": torch.get_num_threads(), "seeds": cfg["seeds"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "this_invocation_seconds": round(time.time() - started, 3), "job_seconds": jobs_,
        "stage_seconds": clock.totals(), "stage_job_seconds": clock.seconds,
    })

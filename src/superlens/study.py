"""A study: every (arm, seed) job of a config, run into one run directory, then summarized."""

from __future__ import annotations

import json
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
from superlens.active.loop import config_model, run_job
from superlens.analysis.decode import sae_job
from superlens.analysis.job import analyze_job, featvis_job, featvis_path
from superlens.analysis.stats import hedges_g, mean_ci, permutation_test
from superlens.config import query_sizes
from superlens.data import DatasetSplits, load
from superlens.errors import UserError
from superlens.fileio import write_json
from superlens.report.html import build_report
from superlens.rundir import RunDir
from superlens.toy import run_lab


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

    model = config_model(cfg, num_classes)
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
    _check_units(config_model(cfg, train.num_classes), layer, units, settings, train.image_size[0])


def jobs(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    return [(arm, seed) for arm in cfg["arms"] for seed in cfg["seeds"]]


def run_study(cfg: dict[str, Any], out: str | Path, progress: bool = True, log=print) -> dict[str, Any]:
    """Run every unfinished job of ``cfg`` into ``out`` and write its summary files.

    Jobs already done are skipped and an interrupted one continues from its last
    round, so calling this again on the same directory finishes what is left.
    """
    run = RunDir(out)
    with run.lock():
        run.bind_config(cfg)
        started = time.time()
        splits = load_data(cfg)
        if any(arm != "baseline" for arm in cfg["arms"]):
            query_sizes(cfg["active"], len(splits.train))  # a budget larger than the pool fails here
        check_analysis_layers(cfg, splits.train.num_classes, splits.train.image_size[0])  # before training, not after
        device = resolve_device(cfg["device"])
        splits = type(splits)(splits.train.to(device), splits.test.to(device))
        write_json(run.path / "classes.json", splits.train.classes)
        todo = jobs(cfg)
        for i, (arm, seed) in enumerate(todo, start=1):
            job_dir = run.job_dir(arm, seed)
            state = "done" if (job_dir / "done.json").exists() else "running"
            log(f"[{i}/{len(todo)}] {arm} seed {seed}: training ({state})")
            run_job(cfg, arm, seed, job_dir, splits, device, progress=progress)
        # Per-job stages after training; each writes one file, so a finished one is never redone.
        stages = [("analysis", "analysis.json", "analysis", analyze_job),
                  ("sae", "sae.json", f"sparse autoencoder on {cfg['sae']['layer']}", sae_job)]
        for section, filename, label, stage in stages:
            if not cfg[section]["enabled"]:
                continue
            for i, (arm, seed) in enumerate(todo, start=1):
                job_dir = run.job_dir(arm, seed)
                if not (job_dir / filename).exists():
                    log(f"[{i}/{len(todo)}] {arm} seed {seed}: {label}")
                    stage(cfg, job_dir, splits, seed, device)
        if cfg["toy"]["enabled"] and not (run.path / "toy.json").exists():
            log("toy models of superposition")
            write_json(run.path / "toy.json", run_lab(cfg["toy"], cfg["seeds"]))
        if cfg["featvis"]["enabled"]:
            fv = cfg["featvis"]
            for arm in cfg["arms"]:
                job_dir = run.job_dir(arm, cfg["seeds"][0])
                if not featvis_path(job_dir, fv["layer"]).exists():
                    log(f"{arm} seed {cfg['seeds'][0]}: activation maximization of {len(fv['units'])} units of {fv['layer']}")
                    featvis_job(cfg, job_dir, splits, fv["layer"], fv["units"], device)
        write_manifest(run, cfg, device, started)
        summary = summarize(run)
        build_report(run, summary)
        return summary


def summarize(run: RunDir) -> dict[str, Any]:
    """Build ``rounds.csv`` and ``summary.json`` from the finished jobs."""
    cfg = run.read_config()
    finished = {(job["arm"], job["seed"]): job["records"] for job in run.finished_jobs()}
    if not finished:
        raise UserError(f"{run.path} has no finished jobs yet; run `superlens resume {run.path}`")
    run.write_rounds_csv([row for arm, seed in jobs(cfg) for row in finished.get((arm, seed), [])])
    arms: dict[str, Any] = {}
    for arm in cfg["arms"]:
        seeds = [s for s in cfg["seeds"] if (arm, s) in finished]
        if not seeds:
            continue
        per_seed: dict[str, list[float]] = {"test_accuracy": [], "aubc": [], "label_efficiency": []}
        for seed in seeds:
            for name in ("analysis.json", "sae.json"):
                path = run.job_dir(arm, seed) / name
                if path.exists():
                    for key, value in json.loads(path.read_text())["metrics"].items():
                        per_seed.setdefault(key, []).append(value)
            rows = finished[(arm, seed)]
            n = np.array([r["n_labeled"] for r in rows], dtype=float)
            acc = np.array([r["test_accuracy"] for r in rows])
            per_seed["test_accuracy"].append(float(acc[-1]))
            if arm != "baseline":
                per_seed["aubc"].append(aubc(n, acc))
                reference = finished.get(("al-random", seed))
                if reference is not None:
                    ref_n = np.array([r["n_labeled"] for r in reference], dtype=float)
                    ref_acc = np.array([r["test_accuracy"] for r in reference])
                    per_seed["label_efficiency"].append(label_efficiency(n, acc, ref_n, ref_acc))
        entry: dict[str, Any] = {"seeds": seeds, "n_labeled": finished[(arm, seeds[0])][-1]["n_labeled"]}
        for metric, values in per_seed.items():
            values = [v for v in values if np.isfinite(v)]
            if values:
                stats = mean_ci(values)
                entry[metric] = stats["mean"]
                entry[f"{metric}_ci95"] = stats["ci95"]
        space = cfg["analysis"]["headline_space"]
        for name in ("silhouette", "davies_bouldin"):
            if f"{name}_{space}" in entry:  # the headline follows analysis.headline_space
                entry[name] = entry[f"{name}_{space}"]
                entry[f"{name}_ci95"] = entry[f"{name}_{space}_ci95"]
        entry["per_seed"] = {k: [v if np.isfinite(v) else None for v in vals] for k, vals in per_seed.items() if vals}
        arms[arm] = entry
    if "baseline" in arms:
        base = arms["baseline"]["per_seed"]
        for arm, entry in arms.items():
            if arm == "baseline":
                continue
            entry["vs_baseline"] = {
                key: {"p_value": permutation_test(_finite(values), _finite(base[key])),
                      "hedges_g": _nan_to_none(hedges_g(_finite(values), _finite(base[key])))}
                for key, values in entry["per_seed"].items() if key in base
            }
    summary = {
        "name": cfg["name"], "dataset": cfg["data"]["name"], "seeds": cfg["seeds"],
        "complete": len(finished) == len(jobs(cfg)), "arms": arms,
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


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and np.isfinite(v)]


def _nan_to_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_manifest(run: RunDir, cfg: dict[str, Any], device: torch.device, started: float) -> None:
    import sklearn

    jobs_ = {f"{j['arm']}/seed{j['seed']}": round(j["seconds"], 3) for j in run.finished_jobs()}
    write_json(run.path / "manifest.json", {
        "superlens": __version__, "git_revision": _git_revision(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "scikit_learn": sklearn.__version__,
        "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "seeds": cfg["seeds"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "this_invocation_seconds": round(time.time() - started, 3), "job_seconds": jobs_,
    })

"""The summary of a study: ``rounds.csv`` and ``summary.json`` from its finished jobs.

Per arm: mean and 95% t-interval over seeds of every per-seed number; per AL arm, the
paired comparison with ``al-random`` and with the baseline (difference, interval,
test, Holm within a family, effect size). Reads the config dict and the run
directory; computes nothing from models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from superlens.active.curves import aubc, label_efficiency
from superlens.analysis.snapshot import ROUND_METRICS
from superlens.analysis.stats import (CI_METHOD, TESTS, adjust_family, compare_paired, finite, mean_ci, metric_bounds,
                                     none_if_nan, smallest_p)
from superlens.errors import UserError
from superlens.fileio import read_json, write_json
from superlens.rundir import RunDir


def jobs(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    """Every (arm, seed) of a study, in the order of its config."""
    return [(arm, seed) for arm in cfg["arms"] for seed in cfg["seeds"]]


# Compared per AL arm with al-random (and with the baseline); Holm's adjustment runs over
# this family together, and separately over every other metric (the secondary family).
HEADLINE = ("test_accuracy", "aubc") + ROUND_METRICS + tuple(f"{m}_area" for m in ROUND_METRICS) + ("psi",)
NOT_COMPARED = ("label_efficiency", "images_seen_total", "optimizer_steps_total")


def _job_values(run: RunDir, arm: str, seed: int, rows: list[dict[str, Any]],
                reference: list[dict[str, Any]] | None) -> dict[str, float]:
    """Every per-seed number of one finished job: final accuracy, areas over the budget, analyses, SAE."""
    values: dict[str, float] = {}
    job = run.job(arm, seed)
    for path in (job.analysis, job.sae):
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
    write_json(run.summary, summary)
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

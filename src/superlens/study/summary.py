"""The summary of a study: ``rounds.csv`` and ``summary.json`` from its finished jobs.

Per arm: mean and 95% t-interval over seeds of every per-seed number; per AL arm, the
paired comparison with ``al-random`` and with the baseline (difference, interval,
test, Holm within a family over every arm of the study, effect size). Reads the config dict and the run
directory; computes nothing from models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from superlens.active.curves import aubc, label_efficiency
from superlens.analysis.snapshot import ROUND_METRICS
from superlens.analysis.stats import (CI_METHOD, TESTS, accuracy_matched, adjust_together, compare_paired,
                                     detectable_effect, finite, mean_ci, metric_bounds, none_if_nan, seeds_needed,
                                     smallest_p)
from superlens.errors import UserError
from superlens.fileio import read_json, write_json
from superlens.rundir import RunDir
from superlens.study.dose import study_dose


def jobs(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    """Every (arm, seed) of a study, in the order of its config."""
    return [(arm, seed) for arm in cfg["arms"] for seed in cfg["seeds"]]


# Compared per AL arm with al-random (and with the baseline); Holm's adjustment runs within each
# family over the comparisons of every arm together (adding arms adds no false positives): the
# headline (accuracy and the superposition metrics that pass the ground-truth bench,
# docs/superposition.md), representation quality (class separation, which moves with accuracy),
# and every other metric (secondary).
SUPERPOSITION = ("psi",)
HEADLINE = ("test_accuracy", "aubc") + SUPERPOSITION
QUALITY = ("silhouette_features", "davies_bouldin_features", "nc1")
REPRESENTATION_QUALITY = QUALITY + tuple(f"{m}_area" for m in QUALITY)
FAMILIES = {"headline": HEADLINE, "representation_quality": REPRESENTATION_QUALITY}
NOT_COMPARED = ("label_efficiency", "images_seen_total", "optimizer_steps_total", "psi_sae_sd", "psi_init_floor",
                "psi_above_floor", "psi_clears_floor")  # the floor is the seed's, the same for every arm


def family(metric: str) -> str:
    return next((name for name, members in FAMILIES.items() if metric in members), "secondary")


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
    for key in ("test_balanced_accuracy", "test_ece", "test_head_accuracy", "test_tail_accuracy",
                "labeled_minority_share"):  # runs made before these existed lack them
        if rows[-1].get(key) is not None:
            values[key] = float(rows[-1][key])
    shares = [r["query_minority_share"] for r in rows if r.get("query_minority_share") is not None]
    if shares:  # a long-tailed pool: the share of minority-class images among everything the arm queried
        values["query_minority_share"] = float(np.mean(shares))
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
                 "family": family(k)} for k in keys}
    return {k: v for k, v in block.items() if v["seeds"]}  # adjusted study-wide by ``summarize``


MATCHED = ROUND_METRICS + ("psi",)  # metrics with a value per round, compared at equal accuracy


def _curves(run: RunDir, arm: str, seed: int, rows: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric measured every round: (test accuracy, value) over the rounds of one job."""
    accuracy = {r["round"]: r["test_accuracy"] for r in rows}
    per_round = {m: {r["round"]: r.get(m) for r in rows} for m in ROUND_METRICS}
    sae = run.job(arm, seed).sae
    if sae.exists():
        per_round["psi"] = {r["round"]: r.get("psi") for r in read_json(sae).get("per_round", [])}
    out = {}
    for metric, values in per_round.items():
        rounds = [k for k, v in values.items() if v is not None and k in accuracy]
        if len(rounds) >= 2:
            out[metric] = (np.array([accuracy[k] for k in rounds]), np.array([values[k] for k in rounds], dtype=float))
    return out


def _matched(run: RunDir, finished: dict, arms: list[str], seeds: list[int], method: str) -> dict[str, dict]:
    """``vs_random_matched`` of every AL arm: each per-round metric against al-random at equal test
    accuracy, paired over seeds; one Holm adjustment over every (arm, metric) of the study."""
    out: dict[str, dict] = {}
    for arm in arms:
        if arm in ("baseline", "al-random"):
            continue
        both = [s for s in seeds if (arm, s) in finished and ("al-random", s) in finished]
        mine = {s: _curves(run, arm, s, finished[(arm, s)]) for s in both}
        theirs = {s: _curves(run, "al-random", s, finished[("al-random", s)]) for s in both}
        block = {}
        for metric in MATCHED:
            used = [s for s in both if metric in mine[s] and metric in theirs[s]]
            if len(used) >= 2:
                result = accuracy_matched([mine[s][metric] for s in used], [theirs[s][metric] for s in used], method)
                block[metric] = {**result, "seeds": [used[i] for i in result["seeds"]], "p_adjusted": None}
        if block:
            out[arm] = block
    adjust_together([c for block in out.values() for c in block.values()])
    return out


def _primary(metric: str, values: dict[str, dict[int, dict[str, float]]], arms: dict[str, Any]) -> dict[str, Any]:
    """The declared primary endpoint: each AL arm minus al-random, tested alone (no adjustment), with the
    smallest effect the seeds detect with 80% power and the seeds the observed effect would need."""
    out: dict[str, Any] = {"metric": metric, "alpha": 0.05, "arms": {}}
    if "al-random" not in values:
        return out
    for arm, entry in arms.items():
        vs = entry.get("vs_random", {}).get(metric)
        if arm in ("baseline", "al-random") or vs is None or vs["difference"] is None:
            continue
        d = finite([values[arm][s].get(metric, np.nan) - values["al-random"][s].get(metric, np.nan) for s in vs["seeds"]])
        sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
        out["arms"][arm] = {
            "difference": vs["difference"], "difference_ci95": vs["difference_ci95"], "p_value": vs["p_value"],
            "significant": vs["p_value"] is not None and vs["p_value"] < 0.05, "seeds": vs["seeds"],
            "at_equal_accuracy": entry.get("vs_random_matched", {}).get(metric),
            "detectable_effect_80": none_if_nan(detectable_effect(sd, len(d))),
            "seeds_for_observed_effect": seeds_needed(vs["difference"], sd),
        }
    return out


def _similarity(run: RunDir, arm: str, seeds: list[int]) -> dict[str, Any]:
    """``cka_vs_random`` of an AL arm: per layer, the mean linear CKA with al-random over seeds."""
    per_layer: dict[str, list] = {}
    for seed in seeds:
        path = run.job(arm, seed).similarity
        for layer, value in (read_json(path)["layers"] if path.exists() else {}).items():
            per_layer.setdefault(layer, [None] * len(seeds))[seeds.index(seed)] = none_if_nan(value)
    out = {}
    for layer, column in per_layer.items():
        stats = mean_ci(column, bounds=(0.0, 1.0))
        out[layer] = {"mean": none_if_nan(stats["mean"]), "ci95": [none_if_nan(v) for v in stats["ci95"]],
                      "per_seed": column}
    return out


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
        similarity = _similarity(run, arm, seeds)
        if similarity:
            entry["cka_vs_random"] = similarity
        arms[arm] = entry
    method = cfg["stats"]["test"]
    for arm, entry in arms.items():
        if arm == "baseline":
            continue
        if "al-random" in values and arm != "al-random":
            entry["vs_random"] = _comparisons(values[arm], values["al-random"], method)
        if "baseline" in values:
            entry["vs_baseline"] = _comparisons(values[arm], values["baseline"], method)
    for key in ("vs_random", "vs_baseline"):  # one Holm per family over every arm's comparisons: study-wide
        for name in (*FAMILIES, "secondary"):
            adjust_together([c for entry in arms.values() for c in entry.get(key, {}).values() if c["family"] == name])
    for arm, block in _matched(run, finished, list(arms), cfg["seeds"], method).items():
        arms[arm]["vs_random_matched"] = block
    n_seeds = len(cfg["seeds"])
    summary = {
        "name": cfg["name"], "dataset": cfg["data"]["name"], "seeds": cfg["seeds"],
        "complete": len(finished) == len(jobs(cfg)),
        "statistics": {
            "interval": f"95% {CI_METHOD}", "test": TESTS[method],
            "adjustment": "Holm, within each family (headline, representation_quality, secondary) over every arm's "
                          "comparisons with the same reference (study-wide), and over every arm and metric at equal accuracy",
            "headline_family": list(HEADLINE), "representation_quality_family": list(REPRESENTATION_QUALITY),
            "smallest_p": smallest_p(n_seeds, method),
            "can_reach_0.05": n_seeds >= 2 and smallest_p(n_seeds, method) < 0.05,
        },
        "arms": arms,
    }
    summary["primary"] = _primary(cfg["stats"]["primary"], values, arms)
    planted = _planted(run, finished)
    if planted is not None:
        summary["planted_response"] = planted
        _in_planted_features(summary["primary"], planted)
    for arm, block in study_dose(run, list(arms), cfg["seeds"]).items():
        arms[arm]["dose"] = block
    images = _sae_images(run, finished)
    if images is not None:
        summary["sae_images"] = images
    if cfg["paper"]:
        summary["paper_comparison"] = paper_comparison(cfg, arms)
    write_json(run.summary, summary)
    return summary


def _planted(run: RunDir, finished) -> dict[str, Any] | None:
    """The study's planted-feature control (measured by one job, sae.json ``planted``), or None."""
    for arm, seed in finished:
        path = run.job(arm, seed).sae
        if path.exists():
            planted = read_json(path).get("planted")
            if planted:
                return planted
    return None


def _in_planted_features(primary: dict[str, Any], planted: dict[str, Any]) -> None:
    """Each primary psi comparison's smallest detectable effect in planted features per neuron: divided by
    the rise of psi per planted feature per neuron at the largest K the control planted."""
    if primary.get("metric") != "psi" or not planted.get("response"):
        return
    rise = planted["response"][-1]["psi_rise_per_planted_per_neuron"]
    for entry in primary["arms"].values():
        effect = entry.get("detectable_effect_80")
        entry["detectable_in_planted_per_neuron"] = (none_if_nan(effect / rise) if effect is not None and rise > 0
                                                     else None)


def _sae_images(run: RunDir, finished) -> dict[str, Any] | None:
    """Where the SAEs' images came from (one fixed set for every job): source, count and why, from the first
    finished job's sae.json that records them (runs made before it was recorded have none)."""
    for arm, seed in finished:
        path = run.job(arm, seed).sae
        if path.exists():
            kept = read_json(path).get("measurement_images")
            if kept:
                return {k: kept[k] for k in ("source", "images", "why", "ids_sha256")}
    return None


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

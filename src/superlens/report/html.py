"""``report.html``: one self-contained page (figures embedded) built from a run directory."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from superlens.analysis.snapshot import ROUND_METRICS
from superlens.report import figures
from superlens.report.figures import b64 as _b64
from superlens.report.browse import feature_sections
from superlens.report.dose import dose_rows, planted_rows
from superlens.report.toy import toy_section
from superlens.report.metrics import TABLES
from superlens.report.metrics import fmt as _fmt
from superlens.report.metrics import signed as _signed
from superlens.fileio import read_json
from superlens.rundir import RunDir

HIST_TITLES = {
    "cosine": "samples (raw)", "cosine_centered": "samples (mean-centred)",
    "neuron_correlation": "units (correlation)", "filter_cosine": "conv filters",
}
UNIT_TITLES = {
    "class_selectivity": "class selectivity", "topk_class_entropy": "top-k class entropy (nats)",
    "classes_for_90_mass": "classes for 90% of mass",
}

# A long-tailed pool (data.imbalance): the labelled set's share of minority classes and accuracy at both ends.
LONG_TAIL = ("labeled_minority_share", "test_tail_accuracy", "test_head_accuracy", "test_balanced_accuracy")


def _precision_note(manifest: dict) -> str:
    """", training and evaluation in bfloat16" (or float32, float16) as the run's manifest records it; empty for
    older runs."""
    precision = manifest.get("precision")
    if not precision:
        return ""
    layout = ", channels_last" if precision.get("channels_last") else ""
    return f", training and evaluation in {precision.get('autocast')}{layout}"


def _workers_note(manifest: dict) -> str:
    """"; 2 jobs side by side, 1 torch thread each" for a local run with workers > 1; empty otherwise."""
    workers = manifest.get("workers") or 1
    if manifest.get("executor") != "local" or workers == 1:
        return ""
    threads = manifest.get("torch_threads")
    return f"; {workers} jobs side by side, {threads} torch thread{'s' if threads != 1 else ''} each"


# (metric, family) in the order the verdict lists them
VERDICT_METRICS = (("test_accuracy", "headline"), ("aubc", "headline"), ("psi", "headline"),
                   ("silhouette_features", "representation quality"), ("davies_bouldin_features", "representation quality"),
                   ("nc1", "representation quality"))


def _verdict(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per AL arm against al-random, per headline metric: the difference, its interval, adjusted p, in words."""
    stats = summary.get("statistics", {})
    out = []
    for arm, entry in summary["arms"].items():
        block = entry.get("vs_random")
        if not block:
            continue
        lines = []
        for key, family in VERDICT_METRICS:
            vs = block.get(key)
            if not vs or vs["difference"] is None:
                continue
            lo, hi = vs["difference_ci95"]
            n = len(vs["seeds"])
            alo, ahi = vs.get("difference_ci95_adjusted") or (None, None)
            interval = f"[{_fmt(lo)}, {_fmt(hi)}]" + (f", adjusted [{_fmt(alo)}, {_fmt(ahi)}]" if alo is not None else "")
            if vs["p_adjusted"] is None:
                words = f"not testable with {n} seed{'s' if n != 1 else ''} (difference {_signed(vs['difference'])})"
            elif vs["p_adjusted"] < 0.05:
                words = f"{'higher' if vs['difference'] > 0 else 'lower'} by {_fmt(abs(vs['difference']))} {interval}"
            else:
                words = f"no detectable difference with {n} seeds ({_signed(vs['difference'])} {interval})"
            matched = entry.get("vs_random_matched", {}).get(key)
            at_accuracy = "-"
            if matched and matched["difference"] is not None:
                mlo, mhi = matched["difference_ci95"]
                acc_lo, acc_hi = matched["accuracy_range"]
                at_accuracy = (f"{_signed(matched['difference'])} [{_fmt(mlo)}, {_fmt(mhi)}], p_adj={_fmt(matched['p_adjusted'])}"
                               f" (accuracy {_fmt(acc_lo)}-{_fmt(acc_hi)})")
            lines.append({"metric": key, "family": family, "words": words, "p": _fmt(vs["p_adjusted"]), "matched": at_accuracy,
                          "sig": vs["p_adjusted"] is not None and vs["p_adjusted"] < 0.05})
        note = None
        if arm.startswith("al-random@"):
            hits = sum(line["sig"] for line in lines)
            note = (f"{arm} is an A/A control: a second random-sampling arm with its own draws. Any difference from "
                    f"al-random is noise of the whole pipeline; here {hits} of {len(lines)} verdict lines reach "
                    "p_adj < 0.05.")
        out.append({"arm": arm, "lines": lines, "note": note})
    if out and stats and not stats.get("can_reach_0.05", True):
        out[0]["warning"] = (f"With {len(summary['seeds'])} seeds the {stats['test']} cannot reach p < 0.05 "
                             f"(smallest attainable p = {_fmt(stats['smallest_p'])}); no difference can be called significant.")
    return out


def _primary_rows(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The declared primary endpoint, per AL arm, in words."""
    primary = summary.get("primary")
    if not primary or not primary.get("arms"):
        return None
    rows = []
    for arm, p in primary["arms"].items():
        lo, hi = p["difference_ci95"]
        matched = p.get("at_equal_accuracy")
        at_acc = "needs a value per round" if not matched or matched["difference"] is None else (
            f"{_signed(matched['difference'])} [{_fmt(matched['difference_ci95'][0])}, {_fmt(matched['difference_ci95'][1])}]"
            f", p={_fmt(matched['p_value'])}")
        rows.append({"arm": arm, "difference": f"{_signed(p['difference'])} [{_fmt(lo)}, {_fmt(hi)}]",
                     "p": _fmt(p["p_value"]), "sig": p["significant"], "matched": at_acc,
                     "detectable": _fmt(p["detectable_effect_80"]),
                     "needed": str(p["seeds_for_observed_effect"]) if p["seeds_for_observed_effect"] else "more than 1,000",
                     "in_planted": _fmt(p.get("detectable_in_planted_per_neuron"))})
    return {"metric": primary["metric"], "rows": rows, "n": len(summary.get("seeds", []))}


def _compute_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for arm, entry in summary["arms"].items():
        if "images_seen_total" in entry:
            rows.append({"arm": arm, "labels": str(entry["n_labeled"]), "accuracy": _fmt(entry.get("test_accuracy")),
                         "images": f"{entry['images_seen_total']:,.0f}", "steps": f"{entry['optimizer_steps_total']:,.0f}"})
    return rows


def _metric_rows(summary: dict[str, Any], which: str) -> list[dict[str, Any]]:
    """Table rows of one group of metrics (a key of ``TABLES``), or ``other`` (every undocumented one)."""
    arms = list(summary["arms"])
    keys: list[str] = []
    for entry in summary["arms"].values():
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not key.endswith("_ci95") and key != "n_labeled" and key not in keys:
                keys.append(key)
    documented = {k: doc for table in TABLES.values() for k, doc in table.items()}
    keys = [k for k in TABLES[which] if k in keys] if which in TABLES else [k for k in keys if k not in documented]
    rows = []
    for key in keys:
        cells = []
        for arm in arms:
            entry = summary["arms"][arm]
            if key not in entry:
                cells.append(None)
                continue
            lo, hi = entry.get(f"{key}_ci95", [None, None])
            against, vs = "random", entry.get("vs_random", {}).get(key)
            if vs is None:
                against, vs = "baseline", entry.get("vs_baseline", {}).get(key)
            cell = {"mean": _fmt(entry[key]), "lo": _fmt(lo), "hi": _fmt(hi), "vs": None, "note": None}
            if key == "psi" and entry.get("psi_sae_sd") is not None:
                cell["note"] = f"SAE-seed SD {_fmt(entry['psi_sae_sd'])} per model"
            if vs and vs["difference"] is not None:
                dlo, dhi = vs["difference_ci95"]
                cell["vs"] = (f"vs {against}: {_signed(vs['difference'])} [{_fmt(dlo)}, {_fmt(dhi)}], "
                              f"p_adj={_fmt(vs['p_adjusted'])}")
                cell["sig"] = vs["p_adjusted"] is not None and vs["p_adjusted"] < 0.05
            cells.append(cell)
        rows.append({"key": key, "doc": documented.get(key, ""), "cells": cells})
    return rows


def _similarity_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """CKA of each AL arm's features with al-random's, per layer: mean [95% CI] over seeds."""
    rows = []
    for arm, entry in summary["arms"].items():
        for layer, cka in entry.get("cka_vs_random", {}).items():
            lo, hi = cka["ci95"]
            rows.append({"arm": arm, "layer": layer, "cka": f"{_fmt(cka['mean'])} [{_fmt(lo)}, {_fmt(hi)}]",
                         "seeds": str(sum(v is not None for v in cka["per_seed"]))})
    return rows


def build_report(run: RunDir, summary: dict[str, Any], extra_sections: list[dict[str, str]] | None = None) -> Path:
    """Write ``report.html`` for ``run`` from its finished jobs and ``summary``; returns its path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    cfg = run.read_config()
    arms = [arm for arm in cfg["arms"] if arm in summary["arms"]]
    rows = [row for job in run.finished_jobs() for row in job["records"]]
    classes = _class_names(run)
    figs, tsne_seed, n_samples, per_round = _figures(run, cfg, arms, rows, classes)
    sections = (list(extra_sections or []) + _psi_rounds_section(run, cfg, arms) + _featvis_sections(run, cfg, arms, classes)
                + feature_sections(run, cfg, arms))
    manifest = _read(run.manifest) or {}
    n_seeds = len(cfg["seeds"])

    env = Environment(loader=PackageLoader("superlens.report", "templates"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        name=cfg["name"], run_dir=str(run.path), complete=summary.get("complete", True),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        setup=_setup_rows(cfg, manifest, classes, summary.get("sae_images")), figures=figs, arms=arms,
        metric_rows=_metric_rows(summary, "main"),
        more_rows=_metric_rows(summary, "other"), sae_rows=_metric_rows(summary, "sae"), sae=cfg["sae"],
        superposition_rows=_metric_rows(summary, "superposition"), quality_rows=_metric_rows(summary, "quality"),
        similarity_rows=_similarity_rows(summary), dose_rows=dose_rows(summary), planted=planted_rows(summary), protocol=_protocol(run, cfg, arms), primary=_primary_rows(summary),
        toy=toy_section(run.toy), paper=_paper_section(summary), headline_space=cfg["analysis"]["headline_space"],
        n_seeds=n_seeds, statistics=summary.get("statistics", {}), verdict=_verdict(summary),
        compute=_compute_rows(summary), per_round_metrics=per_round,
        layer=cfg["analysis"]["layer"], neuron_layer=cfg["analysis"]["neuron_layer"],
        filter_layer=cfg["analysis"]["filter_layer"], topk=cfg["analysis"]["topk"],
        tsne_seed=tsne_seed, n_samples=n_samples, extra_sections=sections,
    )
    from superlens.fileio import write_text

    write_text(run.report, html)
    return run.report


def _figures(run: RunDir, cfg: dict[str, Any], arms: list[str], rows: list[dict[str, Any]], classes: list[str]):
    """The report's figures (base64 PNGs, None where there is nothing to draw), the seed and size of
    the t-SNE panels, and the per-round metrics drawn."""
    figs: dict[str, str | None] = {"accuracy": _b64(figures.accuracy_curves(rows, arms))}
    per_round = [m for m in ROUND_METRICS if any(r.get(m) is not None for r in rows if r["arm"] != "baseline")]
    figs["rounds"] = _b64(figures.round_metric_curves(rows, arms, per_round)) if per_round else None
    figs["long_tail"] = None
    if any(r.get("labeled_minority_share") is not None for r in rows):  # only a long-tailed pool has them
        tail = [m for m in LONG_TAIL if any(r.get(m) is not None for r in rows if r["arm"] != "baseline")]
        figs["long_tail"] = _b64(figures.round_metric_curves(rows, arms, tail))
    analyses = {arm: {seed: _read(run.job(arm, seed).analysis) for seed in cfg["seeds"]} for arm in arms}
    analyses = {arm: {s: a for s, a in per.items() if a} for arm, per in analyses.items()}

    panels, tsne_seed, n_samples = [], None, None
    for arm in arms:
        for seed in cfg["seeds"]:
            path = run.job(arm, seed).tsne
            if path.exists():
                z = np.load(path)
                panels.append((f"{arm} (seed {seed})", z["coords"], z["labels"]))
                tsne_seed, n_samples = seed, len(z["labels"])
                break
    figs["tsne"] = _b64(figures.tsne_panels(panels, classes)) if panels else None

    hist_views = {view: {arm: np.mean([a["histograms"][view] for a in per.values()], axis=0)
                         for arm, per in analyses.items() if per} for view in HIST_TITLES}
    figs["cosine"] = _b64(figures.histogram_overlays(hist_views, HIST_TITLES)) if any(hist_views.values()) else None
    unit_views = {}
    for metric in UNIT_TITLES:
        unit_views[metric] = {
            arm: np.concatenate([np.asarray(a["per_unit"][metric])[np.asarray(a["alive_units"], bool)] for a in per.values()])
            for arm, per in analyses.items() if per
        }
    figs["neurons"] = _b64(figures.distributions(unit_views, UNIT_TITLES)) if any(unit_views.values()) else None

    queried = {}
    for arm in arms:
        if arm == "baseline":
            continue
        mine = [r for r in rows if r["arm"] == arm and r["round"] > 0 and r["query_class_hist"]]
        if mine:
            rounds = sorted({r["round"] for r in mine})
            queried[arm] = np.array([np.sum([r["query_class_hist"] for r in mine if r["round"] == k], axis=0) for k in rounds])
    figs["queries"] = _b64(figures.query_histograms(queried, classes)) if queried else None

    return figs, tsne_seed, n_samples, per_round


def _protocol(run: RunDir, cfg: dict[str, Any], arms: list[str]) -> dict[str, Any] | None:
    """How the psi protocol ran: its settings and how many of the models' SAEs converged."""
    kept = {(arm, seed): _read(run.job(arm, seed).sae) or {} for arm in arms for seed in cfg["seeds"]}
    runs = [r["superposition"] for r in kept.values() if r.get("superposition")]
    if not runs:
        return None
    first = runs[0]
    floors = {k: r["floor"] for k, r in kept.items() if r.get("floor")}
    at_floor = [f"{arm} seed {seed}" for (arm, seed), f in floors.items() if not f["clears"]]
    return {"seeds": first["seeds"], "k": first["k"], "expansion": first["expansion"], "models": len(runs),
            "converged": sum(bool(r["converged"]) for r in runs), "steps": max(r["steps"] for r in runs),
            "vectors": first["vectors"], "layer": first.get("layer"), "class_gains": bool(first.get("class_gains")),
            "floors": len(floors), "at_floor": at_floor,
            "floor_psi": _fmt(float(np.mean([f["psi"] for f in floors.values()]))) if floors else None}


def _psi_rounds_section(run: RunDir, cfg: dict[str, Any], arms: list[str]) -> list[dict[str, str]]:
    from markupsafe import Markup

    per_arm = {}
    for arm in arms:
        runs = [(_read(run.job(arm, seed).sae) or {}).get("per_round") for seed in cfg["seeds"]]
        runs = [r for r in runs if r]
        if runs:
            per_arm[arm] = runs
    if not per_arm:
        return []
    html = (f'<img src="data:image/png;base64,{_b64(figures.psi_per_round(per_arm))}" alt="psi per round">'
            '<p class="note">An SAE trained on the model of every active-learning round (same settings as above); '
            "psi by the superposition protocol (effective features per neuron).</p>")
    return [{"title": f"Superposition per active-learning round ({cfg['sae']['layer']})", "html": Markup(html)}]


def _featvis_sections(run: RunDir, cfg: dict[str, Any], arms: list[str], classes: list[str]) -> list[dict[str, str]]:
    """One section per visualized layer: a grid per arm (first seed), optimized images framed in red."""
    from markupsafe import Markup

    by_layer: dict[str, list[str]] = {}
    for arm in arms:
        for path in run.job(arm, cfg["seeds"][0]).featvis_files():
            z = np.load(path)
            layer = str(z["layer"])
            png = figures.featvis_grid(z, classes, f"{arm} (seed {cfg['seeds'][0]}), {layer}")
            by_layer.setdefault(layer, []).append(
                f'<img src="data:image/png;base64,{_b64(png)}" alt="activation maximization, {arm}">'
            )
    settings = cfg["featvis"]["settings"]
    note = (
        '<p class="note">Each row is a unit: its optimized image (red frame), then the training images that '
        "activate it most, with their classes. Exemplars from several classes mark a polysemantic unit. "
        f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items()) or 'defaults'} "
        "(Fourier basis with 1/f scaling, decorrelated colour, random pad/jitter/scale/rotation).</p>"
    )
    return [{"title": f"Activation maximization ({layer})", "html": Markup("\n".join(imgs) + note)}
            for layer, imgs in by_layer.items()]


def _paper_section(summary: dict[str, Any]) -> dict[str, Any] | None:
    comparison = summary.get("paper_comparison")
    if not comparison:
        return None
    rows = []
    for row in comparison["rows"]:
        ci = row["ours_ci95"] if row["seeds"] and row["seeds"] > 1 and row["ours_ci95"] else None
        rows.append({**row, "ours": _fmt(row["ours"]) if row["ours"] is not None else "not computed",
                     "ci": [_fmt(ci[0]), _fmt(ci[1])] if ci else None})
    return {**comparison, "rows": rows}


def _read(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def _class_names(run: RunDir) -> list[str]:
    return json.loads(run.classes.read_text()) if run.classes.exists() else []


def _setup_rows(cfg: dict[str, Any], manifest: dict[str, Any], classes: list[str],
                sae_images: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    recipe = ", ".join(f"{k}={v}" for k, v in cfg["recipe"].items())
    al = cfg["active"]
    rows = [
        ("dataset", f"{cfg['data']['name']} ({len(classes)} classes)"),
        ("model", f"ResNet-18, {cfg['model']['stem']} stem, width {cfg['model']['width']}"
                  + (f", weights {cfg['model']['pretrained']}" if cfg["model"]["pretrained"] else ", random init")),
        ("recipe", recipe),
        ("arms", ", ".join(cfg["arms"])),
        ("seeds", ", ".join(str(s) for s in cfg["seeds"])),
        ("active learning", f"{al['initial_size']} initial ({al['initial']}), query {al['query_size']} per round, "
                            f"{'until the pool is exhausted' if al['rounds'] == 'exhaust' else str(al['rounds']) + ' rounds'}, "
                            f"reset {al['reset']}" + (", starting from the trained baseline" if al["start_from_baseline"] else "")),
        ("analysis", f"features {cfg['analysis']['layer']} ({'flattened' if cfg['analysis']['pool'] == 'flatten' else cfg['analysis']['pool'] + '-pooled'}), "
                     f"units {cfg['analysis']['neuron_layer']}, up to {cfg['analysis']['max_samples']} test images"),
    ]
    if sae_images:
        where = "training images outside the pool" if sae_images["source"] == "outside_pool" else "pool images"
        rows.append(("SAE images", f"{sae_images['images']} {where}, the same for every arm, seed and round "
                                   f"({sae_images['why']})"))
    if manifest:
        rows += [
            ("device", f"{manifest.get('device')} ({manifest.get('device_name')})" + _precision_note(manifest)
             + _workers_note(manifest)),
            ("software", f"superlens {manifest.get('superlens')}, torch {manifest.get('torch')}, "
                         f"numpy {manifest.get('numpy')}, scikit-learn {manifest.get('scikit_learn')}"),
            ("git revision", str(manifest.get("git_revision"))
             + (f" (this run was resumed; earlier parts by {', '.join(r[:7] for r in manifest['git_revisions'][:-1])})"
                if len(manifest.get("git_revisions") or []) > 1 else "")),
            ("seconds per stage", ", ".join(f"{k}: {v:.1f}" for k, v in manifest.get("stage_seconds", {}).items())),
            ("seconds per job (training)", ", ".join(f"{k}: {v:.1f}" for k, v in
                                                     manifest.get("stage_job_seconds", {}).get("training", {}).items())),
        ]
    return rows

"""The report's controls of what the study's data and instrument could show: the dose table (how far each
AL arm's labelled set is from al-random's, ``summary.json``'s ``dose``, with the A/A arm's values and the
verdict in words) and the planted-feature response (what change in features psi sees on this layer)."""

from __future__ import annotations

from typing import Any

from superlens.analysis.dose import DISTANCES
from superlens.report.metrics import fmt, signed

LABELS = {
    "class_js": "class histogram (JS divergence, bits)",
    "latent_js": "latent-frequency profile (JS divergence, bits)",
    "margin_shift": "mean margin of its picks minus random's",
    "typicality_shift": "mean typicality percentile of its picks minus random's",
}


def dose_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per AL arm with a dose: each measure's mean [95% CI] over seeds and the verdict."""
    rows = []
    for arm, entry in summary["arms"].items():
        block = entry.get("dose")
        if not block:
            continue
        cells = []
        for measure in LABELS:
            value = block["final"].get(measure)
            if not value or value["mean"] is None:
                cells.append("-")
                continue
            lo, hi = value["ci95"]
            mean = fmt(value["mean"]) if measure in DISTANCES else signed(value["mean"])
            cells.append(f"{mean} [{fmt(lo)}, {fmt(hi)}]")
        changed = block.get("changed_the_data")
        if block.get("reference_arm") is None:
            words = "the A/A control itself" if arm.startswith("al-random@") else "no A/A arm to compare with"
        elif changed is None:
            words = "not comparable"
        else:
            words = ("changed the data" if changed else
                     f"did not change the data: within {block['reference_arm']}'s spread, so no effect on "
                     "superposition is expected")
        rows.append({"arm": arm, "cells": cells, "words": words, "changed": changed,
                     "seeds": len(block["seeds"])})
    return rows


def planted_rows(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The planted-feature control: per K, psi, its rise per planted feature per neuron and the recall."""
    planted = summary.get("planted_response")
    if not planted:
        return None
    rows = [{"planted": r["planted"], "per_neuron": fmt(r["planted_per_neuron"]),
             "psi": f"{fmt(r['psi'])} (SD {fmt(r['psi_sd'])})", "rise": fmt(r["psi_rise_per_planted_per_neuron"]),
             "recall": fmt(r["recall"]), "weak": r["psi_rise_per_planted_per_neuron"] < 0.5}
            for r in planted["response"]]
    gaussian = planted.get("gaussian_floor")
    return {"model": planted["model"], "psi": fmt(planted["psi"]), "frequency": fmt(planted["frequency"]),
            "gaussian": None if gaussian is None else f"{fmt(gaussian['psi'])} (SD {fmt(gaussian['psi_sd'])})",
            "magnitude": fmt(planted["magnitude"]), "rows": rows, "weak": any(r["weak"] for r in rows)}

"""The report's toy section: the lab's sparsity sweep, phase diagram and selection experiment, and the three
questions of ``superlens.toy.questions`` when the lab ran them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from superlens.analysis.stats import t_interval
from superlens.fileio import read_json
from superlens.report import figures
from superlens.report.figures import b64 as _b64
from superlens.report.metrics import fmt as _fmt


def toy_section(path: Path) -> dict[str, Any] | None:
    """The toy lab's figures and tables (``toy.json`` at ``path``), or None when the run has no lab."""
    if not path.exists():
        return None
    lab = read_json(path)
    selection = []
    for arm in ("random", "uncertain"):
        row = {"arm": arm}
        for key in ("represented", "dims_per_feature", "mean_interference", "input_density", "loss"):
            values = [s[arm][key] for s in lab["selection"]]
            lo, hi = t_interval(values)
            row[key] = f"{_fmt(float(np.mean(values)))} [{_fmt(lo)}, {_fmt(hi)}]"
        selection.append(row)
    return {"lab": lab, "selection": selection, "n_seeds": len(lab["selection"]),
            "sweep_png": _b64(figures.toy_sweep(lab)), "phase_png": _b64(figures.toy_phase(lab)),
            **(toy_questions(lab) if "mediation" in lab else {})}


def toy_questions(lab: dict[str, Any]) -> dict[str, Any]:
    """The three questions' tables and the memorisation figure."""
    mediation = [{"rule": rule, "metric": key, **{k: _fmt(v) for k, v in row.items() if k != "verdict"},
                  "verdict": row["verdict"]}
                 for rule, metrics in lab["mediation"]["answers"].items() for key, row in metrics.items()]
    lens = lab["lens_strategies"]
    coverage = []
    for arm in ("random", "coverage"):
        mine = [r for r in lens["coverage"] if r["arm"] == arm]
        coverage.append({"arm": arm, **{k: _fmt(float(np.mean([r[k] for r in mine])))
                                        for k in ("evenness", "represented", "rare_represented")}})
    pairs = lens["interference"]
    interference = {**lens["interference_summary"],
                    **{k: _fmt(float(np.mean([r[k] for r in pairs]))) if pairs else "-"
                       for k in ("random_cofire", "interference_cofire", "random_overlap", "interference_overlap")}}
    return {"mediation": mediation, "mediation_settings": lab["mediation"]["settings"], "coverage": coverage,
            "interference": interference, "memorisation_png": _b64(figures.toy_memorisation(lab["memorisation"])),
            "memorisation_settings": lab["memorisation"]["settings"]}

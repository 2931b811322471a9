"""The toy lab a study reports, once per study (no trained network, no GPU)."""

from __future__ import annotations

import numpy as np

from superlens.analysis.superposition import feature_dimensionality
from superlens.toy.model import phase_diagram, selection_experiment, train_toy
from superlens.toy.questions import composition_mediation, lens_strategies, memorisation_curve


def run_lab(spec) -> dict:
    """The lab (``spec``: a ``ToySpec``): a sparsity sweep at (n, m), the n=2/m=1 phase diagram, the
    random-vs-uncertain selection experiment over the spec's seeds, and (``spec.questions``) the three
    questions of ``superlens.toy.questions`` at the selection experiment's sizes."""
    n, m, steps, seeds = spec.n, spec.m, spec.steps, list(spec.seeds)
    sweep = []
    for s in spec.sparsities:
        model = train_toy(n, m, s, steps=steps, seed=seeds[0])
        sweep.append({"sparsity": s, "norms": model.norms.tolist(), "dimensionality": feature_dimensionality(model.w).tolist(),
                      **model.summary()})
    grid = np.linspace(0.0, 0.99, spec.phase_grid).tolist()
    importances = np.geomspace(0.1, 10.0, spec.phase_grid).tolist()
    phase = phase_diagram(grid, importances, steps=max(500, steps // 3), seed=seeds[0])
    sel = spec.selection
    selection = [selection_experiment(n, m, sel.sparsity, sel.pool, sel.budget, sel.initial, steps, seed)
                 for seed in seeds]
    lab = {"n": n, "m": m, "sweep": sweep, "phase": {"sparsity": grid, "importance": importances, "outcome": phase.tolist()},
           "selection": selection, "selection_settings": spec.selection_settings()}
    if spec.questions:
        sizes = {"n": n, "m": m, "pool": sel.pool, "budget": sel.budget, "initial": sel.initial, "steps": steps,
                 "seeds": seeds}
        lab["mediation"] = composition_mediation(sparsity=sel.sparsity, **sizes)
        lab["lens_strategies"] = lens_strategies(sparsity=sel.sparsity, **sizes)
        lab["memorisation"] = memorisation_curve(steps=steps, seeds=seeds[:1])
    return lab

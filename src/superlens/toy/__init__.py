"""Toy models of superposition: the model and its exact geometry (``model``), three questions about how
the choice of data can change superposition (``questions``), and the lab a study reports (``lab``)."""

from superlens.analysis.superposition import feature_dimensionality, interference
from superlens.toy.lab import run_lab
from superlens.toy.model import (ToyModel, dimensions_per_feature, phase_diagram, reconstruction, selection_experiment,
                                 sparse_batch, train_toy)
from superlens.toy.questions import (composition_mediation, lens_strategies, matched_inputs, memorisation_curve,
                                     point_dimensionality)

__all__ = ["ToyModel", "dimensions_per_feature", "feature_dimensionality", "interference", "phase_diagram",
           "reconstruction", "selection_experiment", "sparse_batch", "train_toy", "run_lab", "composition_mediation",
           "lens_strategies", "matched_inputs", "memorisation_curve", "point_dimensionality"]

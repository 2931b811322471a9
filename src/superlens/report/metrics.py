"""What each metric of a study's report means: one line per key, grouped as the report's tables are; and
how the report writes a number."""

import math


def fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def signed(v: float) -> str:
    return ("+" if v > 0 else "") + fmt(v)


SUPERPOSITION_DOCS = {
    "psi": "effective features per neuron: exp(entropy of the activity shares of the SAE latents another SAE seed "
           "reproduces) / neurons, on class-centred vectors with a gain per class and neuron; mean over SAE seeds "
           "(checked on the ground-truth bench, docs/superposition.md)",
    "psi_sae_sd": "SD of psi over the SAE seeds of one model (the measurement's own noise)",
    "psi_init_floor": "psi of the seed's network at its initial (random) weights on the same images, same protocol: "
                      "what the instrument reads where nothing was learned",
    "psi_above_floor": "psi minus its initialized-network floor, per seed",
    "psi_clears_floor": "share of seeds whose psi exceeds its floor by more than the SAE-seed spread (the larger SD)",
    "psi_gaussian_floor": "psi of as many ReLU'd Gaussian vectors with the layer's mean and covariance, same "
                          "protocol: what the second-order statistics alone give (no sparse feature)",
    "psi_per_live_neuron": "psi counted per neuron that ever responds (dead units left out of the denominator)",
    "psi_tail": "long-tailed pool: psi on the SAE images of the minority classes only (same protocol)",
    "psi_head": "long-tailed pool: psi on the SAE images of the other classes only (same protocol)",
    "features_per_neuron": "latents another SAE seed reproduces, per neuron (a count, not weighted by activity)",
    "feature_dimensionality_mean": "mean D_i = 1 / sum_j cos^2(W_i, W_j) over the reproduced decoder directions "
                                   "(Elhage et al. 2022); falls as features crowd the neurons",
    "interference": "frequency-weighted mean over reproduced latents of sum_{j != i} cos^2(W_i, W_j)",
    "sae_stable_fraction": "share of the live latents that another SAE seed reproduces",
    "superposition_dead_fraction": "share of the protocol SAEs' latents that never fire",
}
QUALITY_DOCS = {
    "silhouette_features": "mean silhouette (euclidean) of the features with the true labels",
    "davies_bouldin_features": "Davies-Bouldin index of the features (lower = better separated)",
    "nc1": "within-class variability collapse tr(S_W S_B^+)/C (0 = classes collapse to points)",
    "silhouette_features_area": "silhouette over the labelling budget (area under its curve / budget range)",
    "davies_bouldin_features_area": "Davies-Bouldin over the labelling budget (area / budget range)",
    "nc1_area": "NC1 over the labelling budget (area / budget range)",
}
METRIC_DOCS = {
    "test_accuracy": "accuracy of the final model on the test split",
    "aubc": "area under the accuracy-vs-labels curve over the budget range, divided by that range",
    "label_efficiency": "labels random sampling needs for the same accuracy, divided by the labels used (mean over rounds)",
    "silhouette_features_cosine": "mean silhouette with cosine distance on the features",
    "silhouette_tsne": "mean silhouette of the 2-D t-SNE points with the true labels",
    "davies_bouldin_tsne": "Davies-Bouldin index of the t-SNE points",
    "knn_accuracy": "k-NN (cosine) accuracy of training features on test features",
    "linear_probe_accuracy": "logistic-regression probe accuracy on standardized features",
    "cosine_mean": "mean cosine similarity over all pairs of test images",
    "cosine_centered_mean": "mean cosine similarity after subtracting the mean feature (equals (n|u|^2 - 1)/(n - 1), "
                            "u the mean of the unit-normalized centred features: a norm/direction asymmetry)",
    "neuron_correlation_mean": "mean correlation between pairs of units",
    "filter_cosine_mean": "mean cosine similarity between pairs of conv filters",
    "class_selectivity_mean": "mean class selectivity index over live units (Morcos et al. 2018)",
    "topk_class_entropy_mean": "mean entropy (nats) of the classes of each unit's top-k images",
    "classes_for_90_mass_mean": "mean number of classes holding 90% of a unit's activation mass",
    "dead_unit_fraction": "fraction of units that never fire on the test images",
}
SAE_DOCS = {
    "sae_l0": "mean number of active latents per vector",
    "sae_fvu": "fraction of variance unexplained by the reconstruction",
    "sae_cosine": "mean cosine between vectors and their reconstructions",
    "sae_dead_fraction": "fraction of latents that never fire on the test vectors",
    "sae_recovered_vs_zero": "accuracy recovered by splicing the reconstruction in, against zero ablation",
    "sae_recovered_vs_mean": "accuracy recovered by splicing the reconstruction in, against mean ablation",
    "sae_accuracy_spliced": "test accuracy with the layer replaced by its reconstruction",
    "sae_stability": "mean decoder cosine between two seeds' decoding SAEs, matched one-to-one",
    "sae_neuron_class_selectivity_mean": "class selectivity of the layer's neurons",
    "sae_latent_class_selectivity_mean": "class selectivity of the SAE latents",
    "sae_neuron_topk_class_entropy_mean": "top-k class entropy of the layer's neurons",
    "sae_latent_topk_class_entropy_mean": "top-k class entropy of the SAE latents",
}
TABLES = {"superposition": SUPERPOSITION_DOCS, "quality": QUALITY_DOCS, "main": METRIC_DOCS, "sae": SAE_DOCS}


def planted_docs(keys) -> dict[str, str]:
    """The meaning of ``analyze``'s planted-feature keys among ``keys`` (planted_rise_<ratio>,
    planted_recall_<ratio>, one pair per ratio of ``sae.planted``)."""
    docs = {}
    for key in keys:
        if key.startswith("planted_rise_"):
            docs[key] = (f"psi's rise per planted feature per neuron with {key[13:]} x neurons known sparse "
                         "directions added to the layer's vectors (1 when each is counted; under 0.5 the protocol "
                         "undercounts here)")
        elif key.startswith("planted_recall_"):
            docs[key] = (f"share of those {key[15:]} x neurons planted directions a reproduced latent matches at "
                         "the protocol's cosine threshold")
    return dict(sorted(docs.items(), key=lambda kv: (float(kv[0].split("_")[-1]), "recall" in kv[0])))
